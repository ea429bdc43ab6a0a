//! Logs and trace points: `tracing` logs to stderr (or to the file `-T
//! file=` names), filtered by `RUST_LOG`; and QSD's `-T` trace patterns,
//! which turn on trace points with QEMU's names (`nbd_negotiate_begin`,
//! `blk_co_preadv`, `job_state_transition`, `handle_qmp_command`, ...),
//! printed one line per event as QEMU's log backend prints them (see
//! [`schema::trace`]). `-T help` lists them. A pattern starting with `-`
//! turns points off; a pattern that names a Rust crate or module
//! (`block::graph`, `exports`) is a `tracing` target, logged at level
//! `trace` (storaged's own addition).

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;

use schema::trace::{glob_matches, TracePoint};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::cli::Located;

/// The filter when `RUST_LOG` is unset: quiet, like QSD.
const DEFAULT_FILTER: &str = "warn";

/// The environment variable holding `tracing` filter directives.
const FILTER_ENV: &str = "RUST_LOG";

/// Every trace point storaged has.
pub fn trace_points() -> impl Iterator<Item = &'static TracePoint> {
    [
        exports::trace::POINTS,
        block::trace::POINTS,
        qmp::trace::POINTS,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// `-T help`: the trace points, one per line.
pub fn trace_help() -> String {
    trace_points()
        .map(|point| format!("{}\n", point.name))
        .collect()
}

/// The Rust crates whose names may be given as patterns directly.
const RUST_TARGETS: &[&str] = &["storaged", "block", "exports", "qmp", "schema"];

/// The members of a `-T` value (QEMU's `qemu_trace_opts`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct TraceOptions {
    enable: Option<String>,
    /// A file of patterns, one per line (`#` starts a comment).
    events: Option<String>,
    /// Where log lines go instead of stderr.
    file: Option<String>,
}

/// What `-T` options ask for.
#[derive(Debug, Default)]
pub struct LogConfig {
    /// `tracing` directives added to `RUST_LOG`'s.
    directives: Vec<String>,
    /// Trace points to turn on (`true`) or off, in the order asked.
    points: Vec<(&'static TracePoint, bool)>,
    /// Whether a pattern was `help`.
    pub help: bool,
    file: Option<PathBuf>,
    /// Patterns that match nothing, reported as QSD does once logging is
    /// up.
    warnings: Vec<String>,
}

/// A `-T` option that cannot be used: the option as spelled, and why.
#[derive(Debug)]
pub struct TraceError {
    pub location: String,
    pub message: String,
}

impl LogConfig {
    /// Reads every `-T` option.
    pub fn from_traces(traces: &[Located]) -> Result<LogConfig, TraceError> {
        let mut config = LogConfig::default();
        for trace in traces {
            config.add(trace).map_err(|message| TraceError {
                location: trace.location.clone(),
                message,
            })?;
        }
        Ok(config)
    }

    fn add(&mut self, trace: &Located) -> Result<(), String> {
        let options: TraceOptions = schema::qemuopts::parse(&trace.value, Some("enable"))
            .map_err(|error| error.desc)?
            .options;
        if let Some(pattern) = &options.enable {
            self.add_pattern(pattern, &trace.location);
        }
        if let Some(events) = &options.events {
            let text = std::fs::read_to_string(events)
                .map_err(|error| format!("cannot read {events}: {}", io_text(&error)))?;
            for line in text.lines() {
                let pattern = line.split('#').next().unwrap_or("").trim();
                if !pattern.is_empty() {
                    self.add_pattern(pattern, &trace.location);
                }
            }
        }
        if let Some(file) = options.file {
            self.file = Some(file.into());
        }
        Ok(())
    }

    fn add_pattern(&mut self, pattern: &str, location: &str) {
        if pattern == "help" || pattern == "?" {
            self.help = true;
            return;
        }
        let (enabled, pattern) = match pattern.strip_prefix('-') {
            Some(rest) => (false, rest),
            None => (true, pattern),
        };
        if RUST_TARGETS.contains(&pattern.split("::").next().unwrap_or(pattern)) {
            let level = if enabled { "trace" } else { "off" };
            self.directives.push(format!("{pattern}={level}"));
            return;
        }
        let before = self.points.len();
        self.points.extend(
            trace_points()
                .filter(|point| glob_matches(pattern, point.name))
                .map(|point| (point, enabled)),
        );
        if self.points.len() == before {
            self.warnings.push(format!(
                "{location}: warning: trace event '{pattern}' does not exist"
            ));
        }
    }
}

fn io_text(error: &std::io::Error) -> String {
    block::error::os_error_text(error)
}

/// Installs the global subscriber. Call once, before any thread starts
/// logging. Returns an error text if the log file cannot be opened.
pub fn init(config: LogConfig, program: &str) -> Result<(), String> {
    let base = std::env::var(FILTER_ENV).unwrap_or_else(|_| DEFAULT_FILTER.to_owned());
    let mut filter = EnvFilter::try_new(&base).unwrap_or_else(|error| {
        eprintln!("{program}: warning: ignoring {FILTER_ENV}: {error}");
        EnvFilter::new(DEFAULT_FILTER)
    });
    for directive in &config.directives {
        match directive.parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(error) => {
                eprintln!("{program}: warning: ignoring trace pattern {directive}: {error}")
            }
        }
    }
    for warning in &config.warnings {
        eprintln!("{program}: {warning}");
    }
    for (point, on) in &config.points {
        point.set_enabled(*on);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.file {
        Some(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|error| format!("cannot open {}: {}", path.display(), io_text(&error)))?;
            let traces = file
                .try_clone()
                .map_err(|error| format!("cannot open {}: {}", path.display(), io_text(&error)))?;
            schema::trace::set_output(Box::new(traces));
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_turn_on_the_trace_points_they_match() {
        let mut config = LogConfig::default();
        config.add_pattern("nbd_negotiate_*", "-T nbd_negotiate_*");
        let names: Vec<&str> = config.points.iter().map(|(p, _)| p.name).collect();
        assert!(names.contains(&"nbd_negotiate_begin"), "{names:?}");
        assert!(names.iter().all(|name| name.starts_with("nbd_negotiate_")));
        config.add_pattern("-blk_co_preadv", "-T -blk_co_preadv");
        let last = config.points.last().map(|(p, on)| (p.name, *on));
        assert_eq!(last, Some(("blk_co_preadv", false)));
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn help_is_asked_for_by_its_pattern() {
        let mut config = LogConfig::default();
        config.add_pattern("help", "-T help");
        assert!(config.help);
        assert!(trace_help()
            .lines()
            .any(|name| name == "job_state_transition"));
    }

    #[test]
    fn rust_targets_pass_through() {
        let mut config = LogConfig::default();
        config.add_pattern("block::graph", "-T block::graph");
        config.add_pattern("-exports", "-T -exports");
        assert_eq!(config.directives, ["block::graph=trace", "exports=off"]);
    }

    #[test]
    fn trace_options_become_directives() {
        let traces = [
            Located {
                value: "nbd_*".into(),
                location: "-Tnbd_*".into(),
            },
            Located {
                value: "enable=-handle_qmp_*".into(),
                location: "-T enable=-handle_qmp_*".into(),
            },
            Located {
                value: "bogus_event".into(),
                location: "-T bogus_event".into(),
            },
        ];
        let config = LogConfig::from_traces(&traces).expect("valid options");
        let state = |name: &str| {
            config
                .points
                .iter()
                .find(|(p, _)| p.name == name)
                .map(|(_, on)| *on)
        };
        assert_eq!(state("nbd_negotiate_begin"), Some(true));
        assert_eq!(state("handle_qmp_command"), Some(false));
        assert_eq!(
            config.warnings,
            ["-T bogus_event: warning: trace event 'bogus_event' does not exist"]
        );
    }

    #[test]
    fn bad_trace_options_are_errors() {
        let error = LogConfig::from_traces(&[Located {
            value: "enable=x,bogus=1".into(),
            location: "-T enable=x,bogus=1".into(),
        }])
        .expect_err("unknown member");
        assert_eq!(error.location, "-T enable=x,bogus=1");
        assert_eq!(error.message, "Invalid parameter 'bogus'");
    }
}
