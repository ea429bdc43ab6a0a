//! Logs: `tracing` to stderr (or to the file `-T file=` names), filtered by
//! `RUST_LOG` and by QSD's `-T` trace patterns.
//!
//! QEMU names its trace events `<subsystem>_<event>` (`nbd_negotiate_begin`,
//! `blk_co_preadv`, `qmp_enter`); storaged's events are `tracing` events
//! whose target is the Rust module that emits them (`exports::nbd::server`).
//! A `-T` pattern is mapped onto the targets of the subsystems it can
//! match, at level `trace`; a pattern starting with `-` turns them off
//! instead. The table [`SUBSYSTEMS`] is the whole mapping, and
//! docs/command-line.md shows it. A pattern that is already a Rust target
//! (`block::graph`, `exports`) is used as it is.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::cli::Located;

/// The filter when `RUST_LOG` is unset: quiet, like QSD.
const DEFAULT_FILTER: &str = "warn";

/// The environment variable holding `tracing` filter directives.
const FILTER_ENV: &str = "RUST_LOG";

/// QEMU trace-event prefixes and the `tracing` targets that emit the
/// matching events in storaged.
pub const SUBSYSTEMS: &[(&str, &str)] = &[
    ("nbd_", "exports::nbd"),
    ("vhost_user_blk_", "exports::vhost_user_blk"),
    ("fuse_", "exports::fuse"),
    ("vduse_", "exports::vduse"),
    ("bdrv_", "block"),
    ("blk_", "block"),
    ("file_", "block"),
    ("raw_", "block"),
    ("null_", "block"),
    ("qcow2_", "block"),
    ("throttle_", "block"),
    ("job_", "block"),
    ("monitor_", "qmp"),
    ("qmp_", "qmp"),
    ("handle_qmp_command", "qmp"),
];

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
        let (enabled, pattern) = match pattern.strip_prefix('-') {
            Some(rest) => (false, rest),
            None => (true, pattern),
        };
        let level = if enabled { "trace" } else { "off" };
        let targets = targets_for(pattern);
        if targets.is_empty() {
            self.warnings.push(format!(
                "{location}: warning: trace event '{pattern}' does not exist"
            ));
        }
        self.directives
            .extend(targets.into_iter().map(|target| match target {
                Target::All => level.to_owned(),
                Target::Named(name) => format!("{name}={level}"),
            }));
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Target {
    All,
    Named(String),
}

/// The targets a pattern (QEMU glob syntax: `*` and `?`) stands for.
fn targets_for(pattern: &str) -> Vec<Target> {
    if RUST_TARGETS.contains(&pattern.split("::").next().unwrap_or(pattern))
        && !pattern.contains(['*', '?'])
    {
        return vec![Target::Named(pattern.to_owned())];
    }
    let literal_end = pattern.find(['*', '?']);
    let literal = &pattern[..literal_end.unwrap_or(pattern.len())];
    if literal_end.is_some() && literal.is_empty() {
        return vec![Target::All];
    }
    let mut targets: Vec<Target> = Vec::new();
    for (prefix, target) in SUBSYSTEMS {
        let matches = match literal_end {
            // An event name: it belongs to the subsystem it starts with.
            None => literal.starts_with(prefix),
            // A glob: it may match events of every subsystem whose prefix
            // agrees with its literal start.
            Some(_) => literal.starts_with(prefix) || prefix.starts_with(literal),
        };
        let target = Target::Named((*target).to_owned());
        if matches && !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.file {
        Some(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|error| format!("cannot open {}: {}", path.display(), io_text(&error)))?;
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

    fn named(names: &[&str]) -> Vec<Target> {
        names
            .iter()
            .map(|name| Target::Named((*name).to_owned()))
            .collect()
    }

    #[test]
    fn qemu_patterns_map_to_subsystem_targets() {
        assert_eq!(targets_for("nbd_*"), named(&["exports::nbd"]));
        assert_eq!(targets_for("nbd_negotiate_begin"), named(&["exports::nbd"]));
        assert_eq!(targets_for("bdrv_co_*"), named(&["block"]));
        assert_eq!(targets_for("*"), vec![Target::All]);
        assert_eq!(targets_for("qmp_*"), named(&["qmp"]));
        assert!(targets_for("nosuch_event").is_empty());
    }

    #[test]
    fn a_glob_may_span_several_subsystems() {
        assert_eq!(targets_for("f*"), named(&["exports::fuse", "block"]));
    }

    #[test]
    fn rust_targets_pass_through() {
        assert_eq!(targets_for("block::graph"), named(&["block::graph"]));
        assert_eq!(targets_for("exports"), named(&["exports"]));
    }

    #[test]
    fn trace_options_become_directives() {
        let traces = [
            Located {
                value: "nbd_*".into(),
                location: "-Tnbd_*".into(),
            },
            Located {
                value: "enable=-qmp_*".into(),
                location: "-T enable=-qmp_*".into(),
            },
            Located {
                value: "bogus_event".into(),
                location: "-T bogus_event".into(),
            },
        ];
        let config = LogConfig::from_traces(&traces).expect("valid options");
        assert_eq!(config.directives, ["exports::nbd=trace", "qmp=off"]);
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
