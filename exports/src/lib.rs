//! TODO: filled in by the exports work.
