//! The daemon's life: start everything the command line asks for, in
//! order; announce readiness (pid file, the `--daemonize` parent, systemd's
//! `READY=1`); serve until `quit`, SIGINT, SIGTERM or SIGHUP; then stop the
//! monitors, flush every node and exit.
//!
//! A failure during startup prints the option and the reason, undoes what
//! was started (socket files) and exits 1 before anything was announced.
//! A signal during startup (say, while `wait=on` waits for a first client)
//! stops the daemon as it would later.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cli::Invocation;
use crate::daemonize::ReadyNotifier;
use crate::pidfile::PidFile;
use crate::sd_notify;
use crate::startup::Startup;
use crate::state::Daemon;
use crate::version;

/// The signals that stop the daemon, as QEMU's `os_setup_signal_handling`.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The name of the next stop signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// Why startup ended early.
enum StartupEnd {
    Failed(String),
    Stopped(&'static str),
    /// An option asked for help, which was printed; whether the exit
    /// is a success.
    Helped {
        success: bool,
    },
}

/// Runs the daemon to its end; the exit status is the process's.
pub async fn run(invocation: Invocation, ready: Option<ReadyNotifier>, program: &str) -> ExitCode {
    let mut signals = match StopSignals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("{program}: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let events = qmp::EventBus::new();
    let daemon = Arc::new(Daemon::new(events.sink()));
    let monitors = Arc::new(qmp::Monitors::new(
        daemon.clone(),
        version::version_info(),
        events,
    ));
    // As QSD, answer no command before the whole command line is applied:
    // a client-mode monitor connects, and is greeted, at its `--chardev`.
    monitors.hold_commands();
    let mut startup = Startup::new(
        daemon.clone(),
        monitors.clone(),
        invocation.daemonize,
        program,
    );

    let started = tokio::select! {
        result = start(&mut startup, &invocation, program) => result,
        name = signals.recv() => Err(StartupEnd::Stopped(name)),
    };
    let announced = match started {
        Ok(()) => announce_ready(&invocation, ready),
        Err(StartupEnd::Failed(message)) => Err(message),
        Err(StartupEnd::Stopped(name)) => {
            tracing::info!("{name} during startup; stopping");
            return stop_or_force(&daemon, &monitors, &mut signals, program).await;
        }
        Err(StartupEnd::Helped { success }) => {
            let _ = stop(&daemon, &monitors).await;
            return if success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let pidfile = match announced {
        Ok(pidfile) => pidfile,
        Err(message) => {
            eprintln!("{program}: {message}");
            sd_notify::failed(&message);
            // Undo what started: monitor and NBD sockets go away.
            let _ = stop(&daemon, &monitors).await;
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("ready");
    monitors.release_commands();
    sd_notify::ready(&serving(&daemon));

    tokio::select! {
        name = signals.recv() => tracing::info!("{name} received; stopping"),
        () = daemon.quit_requested() => tracing::info!("quit requested; stopping"),
        () = last_client_gone(&daemon), if invocation.quit_when_idle => {
            tracing::info!("the last NBD client left; stopping")
        }
    }
    let status = stop_or_force(&daemon, &monitors, &mut signals, program).await;
    drop(pidfile);
    status
}

/// How long an orderly stop may take (requests that never complete, a
/// server that stopped answering) before the daemon exits anyway.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// [`stop`], unless a second stop signal comes or it takes longer than
/// [`STOP_GRACE`]: then the daemon exits at once with status 1 (what was
/// flushed is flushed; what was not, QEMU would not have either).
async fn stop_or_force(
    daemon: &Daemon,
    monitors: &qmp::Monitors,
    signals: &mut StopSignals,
    program: &str,
) -> ExitCode {
    tokio::select! {
        status = stop(daemon, monitors) => status,
        name = signals.recv() => {
            eprintln!("{program}: {name} while stopping: exiting without waiting");
            ExitCode::FAILURE
        }
        () = tokio::time::sleep(STOP_GRACE) => {
            eprintln!("{program}: stopping took longer than {}s: exiting", STOP_GRACE.as_secs());
            ExitCode::FAILURE
        }
    }
}

/// Completes when the NBD server's last client that got through its
/// handshake has left; never without a server.
async fn last_client_gone(daemon: &Daemon) {
    match daemon.exports.nbd_server() {
        Some(server) => server.emptied().await,
        None => std::future::pending().await,
    }
}

/// What the daemon does, for systemd's `STATUS=`.
fn serving(daemon: &Daemon) -> String {
    let exports = daemon.exports.query().len();
    let plural = if exports == 1 { "" } else { "s" };
    format!("Serving {exports} block export{plural}")
}

/// Tells the world the daemon is ready: the pid file, then the waiting
/// `--daemonize` parent. Returns the pid file to remove at exit.
fn announce_ready(
    invocation: &Invocation,
    ready: Option<ReadyNotifier>,
) -> Result<Option<PidFile>, String> {
    let pidfile = invocation
        .pidfile
        .as_deref()
        .map(PidFile::create)
        .transpose()?;
    if let Some(ready) = ready {
        ready
            .ready()
            .map_err(|error| format!("cannot finish daemonizing: {error}"))?;
    }
    Ok(pidfile)
}

/// Applies every option in order, printing warnings as they come.
async fn start(
    startup: &mut Startup,
    invocation: &Invocation,
    program: &str,
) -> Result<(), StartupEnd> {
    for step in &invocation.steps {
        if let Some(help) = Startup::help(step) {
            for warning in &help.warnings {
                eprintln!("{program}: {}: warning: {warning}", step.arg.location);
            }
            print!("{}", help.text);
            return Err(StartupEnd::Helped {
                success: help.success,
            });
        }
        let applied = startup.apply(step).await;
        for warning in startup.take_warnings() {
            eprintln!("{program}: {warning}");
        }
        applied.map_err(|message| StartupEnd::Failed(step.error(&message)))?;
    }
    startup.finish();
    Ok(())
}

/// Stops serving, closes the exports (as QSD's `blk_exp_close_all`),
/// cancels the jobs and waits for them (`job_cancel_sync_all`), flushes every node and closes them (as QSD's `bdrv_close_all`: drivers
/// write out what they cache, `preallocate` gives its preallocation
/// back). A failed flush makes the exit status 1: acknowledged writes may
/// not be on disk.
async fn stop(daemon: &Daemon, monitors: &qmp::Monitors) -> ExitCode {
    sd_notify::stopping();
    monitors.shutdown().await;
    daemon.exports.close_all().await;
    daemon.jobs.cancel_all().await;
    let flushed = daemon.graph.flush_all().await;
    daemon.graph.close_all().await;
    match flushed {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("flush at exit failed: {error}");
            ExitCode::FAILURE
        }
    }
}
