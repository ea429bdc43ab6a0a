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
use std::fmt;
use std::path::PathBuf;

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
}

/// An option value and the arguments it was spelled with, which error
/// messages quote (`--blockdev driver=x`, `--blockdev=driver=x`, `-Tfoo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub value: String,
    pub location: String,
}

/// One option that creates something, applied in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub arg: Located,
}

/// The options that create things, plus a stray non-option argument,
/// which QSD reports in its place in the order ("foo: Unexpected
/// argument").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Blockdev,
    Chardev,
    Export,
    Monitor,
    NbdServer,
    Object,
    Unexpected,
}

/// A syntax error in the command line, worded as glibc's `getopt_long`
/// words it (without the program name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// What an option means; the tables below map names to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    Flag(Flag),
    Valued(Valued),
}

/// Options without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Help,
    Version,
    Daemonize,
}

/// Options with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Valued {
    Pidfile,
    Trace,
    Step(StepKind),
}

/// One option read from the arguments.
enum Parsed {
    Flag(Flag),
    Valued(Valued, Located),
}

/// QSD's long options.
const LONG_OPTIONS: &[(&str, Meaning)] = &[
    (
        "blockdev",
        Meaning::Valued(Valued::Step(StepKind::Blockdev)),
    ),
    ("chardev", Meaning::Valued(Valued::Step(StepKind::Chardev))),
    ("daemonize", Meaning::Flag(Flag::Daemonize)),
    ("export", Meaning::Valued(Valued::Step(StepKind::Export))),
    ("help", Meaning::Flag(Flag::Help)),
    ("monitor", Meaning::Valued(Valued::Step(StepKind::Monitor))),
    (
        "nbd-server",
        Meaning::Valued(Valued::Step(StepKind::NbdServer)),
    ),
    ("object", Meaning::Valued(Valued::Step(StepKind::Object))),
    ("pidfile", Meaning::Valued(Valued::Pidfile)),
    ("trace", Meaning::Valued(Valued::Trace)),
    ("version", Meaning::Flag(Flag::Version)),
];

/// QSD's short options (`hT:V`).
const SHORT_OPTIONS: &[(char, Meaning)] = &[
    ('h', Meaning::Flag(Flag::Help)),
    ('T', Meaning::Valued(Valued::Trace)),
    ('V', Meaning::Flag(Flag::Version)),
];

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
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        if arg == "--" {
            // getopt stops here; QSD then ignores the rest, storaged
            // reports it rather than silently dropping configuration.
            for rest in &args[index..] {
                invocation.steps.push(unexpected(rest));
            }
            break;
        }
        let parsed = if let Some(long) = arg.strip_prefix("--") {
            vec![long_option(long, arg, &args, &mut index)?]
        } else if arg.len() > 1 && arg.starts_with('-') {
            short_options(&arg[1..], &args, &mut index)?
        } else {
            invocation.steps.push(unexpected(arg));
            continue;
        };
        for option in parsed {
            match option {
                Parsed::Flag(Flag::Help) => return Ok(Action::Help),
                Parsed::Flag(Flag::Version) => return Ok(Action::Version),
                Parsed::Flag(Flag::Daemonize) => invocation.daemonize = true,
                Parsed::Valued(Valued::Pidfile, arg) => invocation.pidfile = Some(arg.value.into()),
                Parsed::Valued(Valued::Trace, arg) => invocation.traces.push(arg),
                Parsed::Valued(Valued::Step(kind), arg) => {
                    invocation.steps.push(Step { kind, arg })
                }
            }
        }
    }
    Ok(Action::Run(invocation))
}

fn located(value: &str, location: &str) -> Located {
    Located {
        value: value.to_owned(),
        location: location.to_owned(),
    }
}

fn unexpected(arg: &str) -> Step {
    Step {
        kind: StepKind::Unexpected,
        arg: located(arg, arg),
    }
}

/// `--name`, `--name=value` or `--name value`, with `name` any unique
/// prefix of a long option.
fn long_option(
    text: &str,
    arg: &str,
    args: &[String],
    index: &mut usize,
) -> Result<Parsed, CliError> {
    let (name, inline_value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (text, None),
    };
    let (full_name, meaning) = find_long(name, arg)?;
    let valued = match meaning {
        Meaning::Flag(_) if inline_value.is_some() => {
            return Err(CliError(format!(
                "option '--{full_name}' doesn't allow an argument"
            )))
        }
        Meaning::Flag(flag) => return Ok(Parsed::Flag(flag)),
        Meaning::Valued(valued) => valued,
    };
    let value = match inline_value {
        Some(value) => located(value, arg),
        None => {
            let Some(value) = args.get(*index) else {
                return Err(CliError(format!(
                    "option '--{full_name}' requires an argument"
                )));
            };
            *index += 1;
            located(value, &format!("{arg} {value}"))
        }
    };
    Ok(Parsed::Valued(valued, value))
}

/// An exact name, else the only long option `name` is a prefix of.
fn find_long(name: &str, arg: &str) -> Result<(&'static str, Meaning), CliError> {
    if let Some(&found) = LONG_OPTIONS.iter().find(|(long, _)| *long == name) {
        return Ok(found);
    }
    let candidates: Vec<_> = LONG_OPTIONS
        .iter()
        .filter(|(long, _)| !name.is_empty() && long.starts_with(name))
        .collect();
    match candidates.as_slice() {
        [&only] => Ok(only),
        [] => Err(CliError(format!("unrecognized option '{arg}'"))),
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|(long, _)| format!("'--{long}'"))
                .collect();
            Err(CliError(format!(
                "option '--{name}' is ambiguous; possibilities: {}",
                names.join(" ")
            )))
        }
    }
}

/// A bundle of short options (`-hV`, `-Tpattern`, `-T pattern`): flags
/// until the first option that takes a value, which takes the rest of the
/// bundle or the next argument.
fn short_options(
    bundle: &str,
    args: &[String],
    index: &mut usize,
) -> Result<Vec<Parsed>, CliError> {
    let mut parsed = Vec::new();
    for (position, letter) in bundle.char_indices() {
        let Some(&(_, meaning)) = SHORT_OPTIONS.iter().find(|(short, _)| *short == letter) else {
            return Err(CliError(format!("invalid option -- '{letter}'")));
        };
        let valued = match meaning {
            Meaning::Flag(flag) => {
                parsed.push(Parsed::Flag(flag));
                continue;
            }
            Meaning::Valued(valued) => valued,
        };
        let attached = &bundle[position + letter.len_utf8()..];
        let value = if !attached.is_empty() {
            located(attached, &format!("-{bundle}"))
        } else {
            let Some(value) = args.get(*index) else {
                return Err(CliError(format!(
                    "option requires an argument -- '{letter}'"
                )));
            };
            *index += 1;
            located(value, &format!("-{bundle} {value}"))
        };
        parsed.push(Parsed::Valued(valued, value));
        break;
    }
    Ok(parsed)
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

Logging: RUST_LOG takes tracing filter directives (default: warn); -T
patterns are mapped onto them (see docs/command-line.md).
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

    #[test]
    fn stray_arguments_become_steps_in_order() {
        let got = invocation(&["--blockdev", "null-co", "foo", "-", "--", "--bar"]);
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
                (StepKind::Unexpected, "--bar"),
            ]
        );
    }
}
