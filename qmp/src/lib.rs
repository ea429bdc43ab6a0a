//! TODO: filled in by the qmp work.
