//! storaged: a storage daemon with qemu-storage-daemon's command line and
//! QMP, and qemu-nbd's command line when run as `qemu-nbd` or
//! `storaged nbd`.
//!
//! The order of things is QSD's: read the command line (syntax errors,
//! `--help`, `--version` end here), fork if `--daemonize` (before any
//! thread exists), set up logging, then start the tokio runtime and hand
//! over to [`lifecycle::run`].

mod chardev;
mod chardev_open;
mod chardev_socket;
mod chardev_table;
mod cli;
mod commands;
mod daemonize;
mod fd_limit;
mod getopt;
mod lifecycle;
mod logging;
mod metrics;
mod nbd_device;
mod nbd_list;
mod objects;
mod pidfile;
mod qemu_nbd;
mod sd_notify;
mod socket_activation;
mod startup;
mod state;
mod temp_overlay;
mod version;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use cli::Action;

/// How long the runtime waits at exit for blocking work still running.
const RUNTIME_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// The name error messages start with: the basename of argv[0], as QEMU's
/// `error_report` uses.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "storaged".to_owned())
}

fn main() -> ExitCode {
    // While only this thread exists: the environment changes here.
    socket_activation::adopt_from_environment();
    sd_notify::adopt_from_environment();
    let program = program_name();
    let mut args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let as_qemu_nbd = program == "qemu-nbd" || args.first().is_some_and(|a| a == "nbd");
    let invocation = if as_qemu_nbd {
        if program != "qemu-nbd" {
            args.remove(0);
        }
        let argv0 = std::env::args().next().unwrap_or_else(|| program.clone());
        match qemu_nbd::parse(&args, &program, &argv0) {
            Ok(qemu_nbd::Action::Help) => {
                print!("{}", qemu_nbd::help_text(&program));
                return ExitCode::SUCCESS;
            }
            Ok(qemu_nbd::Action::Version) => {
                print!("{}", qemu_nbd::version_text(&program));
                return ExitCode::SUCCESS;
            }
            Ok(qemu_nbd::Action::Run(invocation)) => invocation,
            Ok(qemu_nbd::Action::List(request)) => return nbd_list::run(&request, &program),
            Ok(qemu_nbd::Action::Disconnect(device)) => {
                return nbd_device::disconnect(&device, &program)
            }
            Err(error) => {
                eprintln!("{program}: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        match cli::parse(args.into_iter().map(OsString::from)) {
            Ok(Action::Help) => {
                print!("{}", cli::help_text(&program));
                return ExitCode::SUCCESS;
            }
            Ok(Action::Version) => {
                print!("{}", version::version_text());
                return ExitCode::SUCCESS;
            }
            Ok(Action::Run(invocation)) => invocation,
            Err(error) => {
                eprintln!("{program}: {error}");
                return ExitCode::FAILURE;
            }
        }
    };
    let log_config = match logging::LogConfig::from_traces(&invocation.traces) {
        Ok(config) if config.help => {
            print!("{}", logging::trace_help());
            return ExitCode::SUCCESS;
        }
        Ok(config) => config,
        Err(error) => {
            eprintln!("{program}: {}: {}", error.location, error.message);
            return ExitCode::FAILURE;
        }
    };
    let ready = if invocation.daemonize {
        match daemonize::daemonize() {
            Ok(notifier) => Some(notifier),
            Err(error) => {
                eprintln!("{program}: cannot daemonize: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if let Err(message) = logging::init(log_config, &program) {
        eprintln!("{program}: {message}");
        return ExitCode::FAILURE;
    }
    fd_limit::raise_open_file_limit();
    exports::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{program}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let status = runtime.block_on(lifecycle::run(invocation, ready, &program));
    // A blocked read of stdin (a stdio monitor) cannot be cancelled: do not
    // wait for it.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    status
}
