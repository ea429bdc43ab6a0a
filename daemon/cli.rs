//! The command line, read the way qemu-storage-daemon reads it.
//!
//! QSD uses `getopt_long` with the option string `-hT:V`: long options may
//! be abbreviated to any unique prefix (`--blockd`), take their value as
//! `--opt value` or `--opt=value`, short options may be bundled (`-hV`) and
//! `-T` takes its value attached (`-Tnbd_*`) or as the next argument. QSD
//! reads the command line in two passes and so does storaged: this module
//! is the first one. It finds syntax errors, `--help`, `--version`,
//! `--pidfile`, `--daemonize` and `-T` in argument order, and keeps every
//! other option, in order, as a [`Step`] that the daemon applies later
//! (`--object secret,...` before the `--blockdev` that uses it).
//!
//! Only the option syntax is checked here; the values are parsed when their
//! step is applied, with the error naming the argument as QSD does
//! (`--blockdev driver=x: Parameter 'driver' does not accept value 'x'`).

use std::ffi::OsString;
use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::getopt::{self, Item, Options, Takes};
pub use crate::getopt::{CliError, Located};

/// What the first pass decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `-h`/`--help`: print [`help_text`] and exit 0.
    Help,
    /// `-V`/`--version`: print the version and exit 0.
    Version,
    /// Run the daemon.
    Run(Invocation),
}

/// Everything the daemon needs from its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// The options that create things, in command-line order.
    pub steps: Vec<Step>,
    /// `-T` values, in order.
    pub traces: Vec<Located>,
    /// `--pidfile` (the last one wins, as in QSD).
    pub pidfile: Option<PathBuf>,
    pub daemonize: bool,
    /// Exit once the last NBD client that got through its handshake has
    /// left (qemu-nbd without `--persistent`).
    pub quit_when_idle: bool,
}

/// One option that creates something, applied in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub arg: Located,
    /// How its error is reported.
    pub report: Report,
}

/// How a step's error is reported, after the program name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// After the option as spelled (QSD: `--blockdev driver=x: ...`).
    Located,
    /// After this text (qemu-nbd: `Failed to blk_new_open 'f': ...`).
    Prefixed(String),
}

impl Step {
    /// The error of this step, worded for the program's own line.
    pub fn error(&self, message: &str) -> String {
        match &self.report {
            Report::Located => format!("{}: {message}", self.arg.location),
            Report::Prefixed(prefix) => format!("{prefix}{message}"),
        }
    }
}

/// The options that create things, plus a stray non-option argument,
/// which QSD reports in its place in the order ("foo: Unexpected
/// argument").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Blockdev,
    Chardev,
    Export,
    /// storaged's own metrics endpoint (QSD has no such option).
    Metrics,
    Monitor,
    NbdServer,
    Object,
    /// A temporary overlay over a node (qemu-nbd's `--snapshot`; QSD's
    /// command line has no such option).
    TempOverlay,
    /// A node read as one of its internal snapshots (qemu-nbd's
    /// `--load-snapshot`).
    LoadSnapshot,
    /// The kernel's NBD client attached to the export (qemu-nbd's
    /// `--connect`).
    KernelDevice,
    Unexpected,
}

/// What an option means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    Help,
    Version,
    Daemonize,
    Pidfile,
    Trace,
    Step(StepKind),
}

/// QSD's options (`getopt_long` with `-hT:V`).
const OPTIONS: Options<Meaning> = Options {
    long: &[
        ("blockdev", Takes::Value, Meaning::Step(StepKind::Blockdev)),
        ("chardev", Takes::Value, Meaning::Step(StepKind::Chardev)),
        ("daemonize", Takes::Nothing, Meaning::Daemonize),
        ("export", Takes::Value, Meaning::Step(StepKind::Export)),
        ("help", Takes::Nothing, Meaning::Help),
        ("metrics", Takes::Value, Meaning::Step(StepKind::Metrics)),
        ("monitor", Takes::Value, Meaning::Step(StepKind::Monitor)),
        (
            "nbd-server",
            Takes::Value,
            Meaning::Step(StepKind::NbdServer),
        ),
        ("object", Takes::Value, Meaning::Step(StepKind::Object)),
        ("pidfile", Takes::Value, Meaning::Pidfile),
        ("trace", Takes::Value, Meaning::Trace),
        ("version", Takes::Nothing, Meaning::Version),
    ],
    short: &[
        ('h', Takes::Nothing, Meaning::Help),
        ('T', Takes::Value, Meaning::Trace),
        ('V', Takes::Nothing, Meaning::Version),
    ],
};

/// Reads the command line (without the program name).
pub fn parse<I>(args: I) -> Result<Action, CliError>
where
    I: IntoIterator<Item = OsString>,
{
    let args: Vec<String> = args
        .into_iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let mut invocation = Invocation::default();
    let mut action = None;
    getopt::read(&args, &OPTIONS, |item| {
        match item {
            Item::Flag(Meaning::Help) => action = Some(Action::Help),
            Item::Flag(Meaning::Version) => action = Some(Action::Version),
            Item::Flag(Meaning::Daemonize) => invocation.daemonize = true,
            Item::Valued(Meaning::Pidfile, arg) => invocation.pidfile = Some(arg.value.into()),
            Item::Valued(Meaning::Trace, arg) => invocation.traces.push(arg),
            Item::Valued(Meaning::Step(kind), arg) => invocation.steps.push(Step {
                kind,
                arg,
                report: Report::Located,
            }),
            // getopt stops at `--`, and QSD ignores what follows.
            Item::EndOfOptions => return ControlFlow::Break(()),
            Item::Operand(arg) => invocation.steps.push(Step {
                kind: StepKind::Unexpected,
                arg: Located::new(&arg, &arg),
                report: Report::Located,
            }),
            Item::Flag(_) | Item::Valued(..) => unreachable!("the table says what takes a value"),
        }
        match action {
            Some(_) => ControlFlow::Break(()),
            None => ControlFlow::Continue(()),
        }
    })?;
    if let Some(action) = action {
        return Ok(action);
    }
    Ok(Action::Run(invocation))
}

/// The text of `--help`: QSD's, naming storaged.
pub fn help_text(program: &str) -> String {
    format!(
        "\
Usage: {program} [options]
storaged: a storage daemon compatible with qemu-storage-daemon

  -h, --help             display this help and exit
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                         specify tracing options
  -V, --version          output version information and exit

  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
             [,cache.direct=on|off][,cache.no-flush=on|off]
             [,read-only=on|off][,auto-read-only=on|off]
             [,force-share=on|off][,detect-zeroes=on|off|unmap]
             [,driver specific parameters...]
                         configure a block backend

  --chardev <options>    configure a character device backend
                         (socket with server=on, or stdio)

  --daemonize            daemonize the process, and have the parent exit
                         once startup is complete

  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]
           [,writable=on|off][,bitmap=<name>]
                         export the specified block node over NBD
                         (requires --nbd-server)

  --export [type=]fuse,id=<id>,node-name=<node-name>,mountpoint=<file>
           [,growable=on|off][,writable=on|off][,allow-other=on|off|auto]
                         export the specified block node over FUSE

  --export [type=]vhost-user-blk,id=<id>,node-name=<node-name>,
           addr.type=unix,addr.path=<socket-path>[,writable=on|off]
           [,logical-block-size=<block-size>][,num-queues=<num-queues>]
                         export the specified block node as a
                         vhost-user-blk device over UNIX domain socket
  --export [type=]vhost-user-blk,id=<id>,node-name=<node-name>,
           addr.type=fd,addr.str=<fd>[,writable=on|off]
           [,logical-block-size=<block-size>][,num-queues=<num-queues>]
                         export the specified block node as a
                         vhost-user-blk device over file descriptor

  --metrics addr.type=inet,addr.host=<host>,addr.port=<port>[,max-connections=<n>]
  --metrics addr.type=unix,addr.path=<path>[,max-connections=<n>]
                         serve Prometheus metrics over HTTP at /metrics
                         (storaged only; see docs/metrics.md)

  --monitor [chardev=]name[,mode=control][,pretty[=on|off]]
                         configure a QMP monitor

  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
               [,tls-creds=<id>][,tls-authz=<id>][,max-connections=<n>]
  --nbd-server addr.type=unix,addr.path=<path>
               [,tls-creds=<id>][,tls-authz=<id>][,max-connections=<n>]
                         start an NBD server for exporting block nodes

  --object <type>[,<property>=<value>...]
                         create a new object of type <type> (secret,
                         iothread, throttle-group, tls-creds-anon,
                         tls-creds-psk, tls-creds-x509, authz-simple,
                         authz-list, authz-listfile). Note that the 'id'
                         property must be set.

  --pidfile <path>       write process ID to a file after startup

Trace points have QEMU's names (-T help lists them). Logging: RUST_LOG
takes tracing filter directives (default: warn). Run as qemu-nbd (or
`storaged nbd ...`) for qemu-nbd's command line. See storaged(1).
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Action, CliError> {
        parse(args.iter().map(OsString::from))
    }

    fn invocation(args: &[&str]) -> Invocation {
        match run(args) {
            Ok(Action::Run(invocation)) => invocation,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match run(args) {
            Err(CliError(message)) => message,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn both_value_forms_keep_order_and_spelling() {
        let got = invocation(&[
            "--object",
            "secret,id=s,data=x",
            "--blockdev=null-co,node-name=n",
            "--export",
            "nbd,id=e,node-name=n",
        ]);
        let kinds: Vec<_> = got.steps.iter().map(|step| step.kind).collect();
        assert_eq!(
            kinds,
            [StepKind::Object, StepKind::Blockdev, StepKind::Export]
        );
        assert_eq!(got.steps[0].arg.location, "--object secret,id=s,data=x");
        assert_eq!(got.steps[1].arg.value, "null-co,node-name=n");
        assert_eq!(got.steps[1].arg.location, "--blockdev=null-co,node-name=n");
    }

    #[test]
    fn value_may_start_with_a_dash() {
        let got = invocation(&["--pidfile", "-weird"]);
        assert_eq!(got.pidfile, Some(PathBuf::from("-weird")));
    }

    #[test]
    fn unique_prefixes_are_accepted() {
        assert_eq!(run(&["--hel"]), Ok(Action::Help));
        assert_eq!(run(&["--v"]), Ok(Action::Version));
        let got = invocation(&["--nbd", "addr.type=unix,addr.path=x", "--daem"]);
        assert_eq!(got.steps[0].kind, StepKind::NbdServer);
        assert!(got.daemonize);
    }

    #[test]
    fn short_options_bundle_and_take_attached_values() {
        assert_eq!(run(&["-hV"]), Ok(Action::Help));
        assert_eq!(run(&["-Vh"]), Ok(Action::Version));
        let got = invocation(&["-Tnbd_*", "-T", "enable=blk_*"]);
        assert_eq!(got.traces[0].value, "nbd_*");
        assert_eq!(got.traces[0].location, "-Tnbd_*");
        assert_eq!(got.traces[1].location, "-T enable=blk_*");
    }

    #[test]
    fn help_wins_over_later_errors_but_not_earlier_ones() {
        assert_eq!(run(&["--help", "--bogus"]), Ok(Action::Help));
        assert_eq!(
            error(&["--bogus", "--help"]),
            "unrecognized option '--bogus'"
        );
        // Values are checked later: a bad one does not hide --help.
        assert_eq!(
            run(&["--blockdev", "driver=nope", "--help"]),
            Ok(Action::Help)
        );
    }

    #[test]
    fn getopt_messages() {
        assert_eq!(error(&["--bogus=1"]), "unrecognized option '--bogus=1'");
        assert_eq!(
            error(&["--blockdev"]),
            "option '--blockdev' requires an argument"
        );
        assert_eq!(
            error(&["--help=x"]),
            "option '--help' doesn't allow an argument"
        );
        assert_eq!(error(&["-x"]), "invalid option -- 'x'");
        assert_eq!(error(&["-T"]), "option requires an argument -- 'T'");
    }

    /// `--help` and the man page name every option and export type.
    #[test]
    fn help_and_man_page_name_every_option_and_export_type() {
        let help = help_text("storaged");
        let man = include_str!("../docs/storaged.1");
        for (name, ..) in OPTIONS.long {
            assert!(help.contains(&format!("--{name}")), "--help lacks --{name}");
            let escaped = format!("\\-\\-{}", name.replace('-', "\\-"));
            assert!(man.contains(&escaped), "storaged.1 lacks {escaped}");
        }
        for driver in exports::EXPORT_DRIVERS {
            let kind = serde_json::to_value(driver.kind).expect("a name");
            let kind = kind.as_str().expect("a string");
            assert!(
                help.contains(&format!("[type=]{kind},")),
                "--help lacks {kind}"
            );
            assert!(
                man.contains(&format!(".B {kind}\n")),
                "storaged.1 lacks {kind}"
            );
        }
    }

    #[test]
    fn stray_arguments_become_steps_in_order_and_the_rest_after_dashes_is_ignored() {
        let got = invocation(&["--blockdev", "null-co", "foo", "-", "--", "--bar", "baz"]);
        let spelled: Vec<_> = got
            .steps
            .iter()
            .map(|step| (step.kind, step.arg.location.as_str()))
            .collect();
        assert_eq!(
            spelled,
            [
                (StepKind::Blockdev, "--blockdev null-co"),
                (StepKind::Unexpected, "foo"),
                (StepKind::Unexpected, "-"),
            ]
        );
    }
}
