//! Trace points with QEMU's names, printed as QEMU's `log` trace backend
//! prints them: one line per event, `name message`, to stderr or the
//! file `-T file=` names.
//!
//! Each crate declares its points with [`trace_points!`] (a static per
//! point and a list of them) and fires one with [`trace!`], which costs
//! one relaxed atomic load while the point is off. The daemon turns points
//! on and off by name (`-T nbd_*`) and lists them (`-T help`). Names and
//! messages follow QEMU's `trace-events` files, with pointers printed as
//! the addresses of storaged's own objects.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// One trace point.
#[derive(Debug)]
pub struct TracePoint {
    pub name: &'static str,
    enabled: AtomicBool,
}

impl TracePoint {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            enabled: AtomicBool::new(false),
        }
    }

    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }
}

/// Where trace lines go: stderr until [`set_output`] names a file.
static OUTPUT: Mutex<Option<Box<dyn Write + Send>>> = Mutex::new(None);

/// Sends trace lines to `output` instead of stderr.
pub fn set_output(output: Box<dyn Write + Send>) {
    *OUTPUT.lock().unwrap_or_else(|e| e.into_inner()) = Some(output);
}

/// Prints one event of `point`; [`trace!`] calls it when the point is on.
pub fn emit(point: &TracePoint, message: fmt::Arguments<'_>) {
    let line = format!("{} {message}\n", point.name);
    let mut output = OUTPUT.lock().unwrap_or_else(|e| e.into_inner());
    // A trace line that cannot be written is dropped, as in QEMU.
    let _ = match output.as_mut() {
        Some(output) => output.write_all(line.as_bytes()),
        None => std::io::stderr().write_all(line.as_bytes()),
    };
}

/// Fires a trace point: `trace!(POINT, "format", args...)`.
#[macro_export]
macro_rules! trace {
    ($point:expr, $($format:tt)+) => {
        if $point.enabled() {
            $crate::trace::emit(&$point, format_args!($($format)+));
        }
    };
}

/// Declares trace points: `NAME = "qemu_name",` each, and `POINTS`, the
/// list of them all.
#[macro_export]
macro_rules! trace_points {
    ($( $(#[$meta:meta])* $ident:ident = $name:literal, )+) => {
        $(
            $(#[$meta])*
            #[doc = concat!("The `", $name, "` trace point.")]
            pub static $ident: $crate::trace::TracePoint = $crate::trace::TracePoint::new($name);
        )+

        /// Every trace point of this crate.
        pub static POINTS: &[&$crate::trace::TracePoint] = &[$(&$ident),+];
    };
}

/// Whether `name` matches the QEMU glob `pattern` (`*` any run, `?` one
/// character).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    // The last `*` seen and the name position it was tried at.
    let (mut p, mut n, mut star) = (0, 0, None::<(usize, usize)>);
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_qemu_patterns_do() {
        assert!(glob_matches("nbd_*", "nbd_negotiate_begin"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("nbd_*_begin", "nbd_negotiate_begin"));
        assert!(glob_matches("blk_co_p?eadv", "blk_co_preadv"));
        assert!(glob_matches("job_state_transition", "job_state_transition"));
        assert!(!glob_matches("job_state", "job_state_transition"));
        assert!(!glob_matches("nbd_*", "blk_co_preadv"));
        assert!(!glob_matches("*_x", "a_y"));
    }
}
