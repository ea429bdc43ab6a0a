//! The second pass over the command line: each option that creates
//! something is applied in command-line order, as QSD does, through the
//! same functions as the QMP commands (`--blockdev` is `blockdev-add`).
//!
//! An error names nothing but the reason; the caller prefixes the option
//! as spelled (`storaged: --blockdev driver=x: Parameter 'driver' does not
//! accept value 'x'`).

use std::sync::Arc;

use schema::block::BlockdevOptions;
use schema::export::{BlockExportKind, BlockExportOptions, NbdServerOptions, EXPORT_IMPLIED_KEY};
use schema::metrics::MetricsOptions;
use schema::object::{ObjectOptions, OBJECT_IMPLIED_KEY};
use schema::sockets::SocketAddressKind;

use crate::chardev::{Chardevs, MonitorSource};
use crate::cli::{Step, StepKind};
use crate::commands;
use crate::metrics;
use crate::objects::qom_types::object_help;
use crate::socket_activation;
use crate::state::Daemon;
use crate::temp_overlay::{self, TempOverlay};

/// qemu-nbd's `--load-snapshot`: node `node` read as its internal
/// snapshot `id` and/or `name`, or the one whose id (else name) is
/// `id_or_name`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct LoadSnapshot {
    pub node: String,
    pub id: Option<String>,
    pub name: Option<String>,
    pub id_or_name: Option<String>,
}

impl LoadSnapshot {
    async fn apply(&self, graph: &block::BlockGraph) -> block::BlockResult<()> {
        match &self.id_or_name {
            Some(either) => match graph.load_snapshot(&self.node, Some(either), None).await {
                Ok(()) => Ok(()),
                Err(_) => graph.load_snapshot(&self.node, None, Some(either)).await,
            },
            None => {
                graph
                    .load_snapshot(&self.node, self.id.as_deref(), self.name.as_deref())
                    .await
            }
        }
    }
}

/// Help an option asked for: printed on standard output, then the daemon
/// exits, successfully or not as QSD does for that option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Help {
    pub text: String,
    /// Warnings about the option's syntax before it asked, for stderr.
    pub warnings: Vec<String>,
    pub success: bool,
}

/// The implied key of `--blockdev`.
const BLOCKDEV_IMPLIED_KEY: &str = "driver";

/// What the command-line options build on.
pub struct Startup {
    daemon: Arc<Daemon>,
    monitors: Arc<qmp::Monitors>,
    chardevs: Chardevs,
    daemonize: bool,
    /// The name messages start with.
    program: String,
    /// Warnings to print, with the option they concern.
    warnings: Vec<String>,
    /// The metrics endpoints, serving until this is dropped.
    metrics: Vec<metrics::Endpoint>,
}

impl Startup {
    pub fn new(
        daemon: Arc<Daemon>,
        monitors: Arc<qmp::Monitors>,
        daemonize: bool,
        program: &str,
    ) -> Self {
        if daemonize {
            daemon.chardevs.set_daemonized();
        }
        Self {
            daemon,
            monitors,
            chardevs: Chardevs::new(),
            daemonize,
            program: program.to_owned(),
            warnings: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// The help an option asks for instead of applying (`--object help`,
    /// `--object TYPE,help`, `--chardev socket,help`), as QSD prints it
    /// when it reaches the option.
    pub fn help(step: &Step) -> Option<Help> {
        match step.kind {
            StepKind::Object => object_help(&step.arg.value).map(|text| Help {
                text,
                warnings: Vec::new(),
                success: true,
            }),
            StepKind::Chardev => crate::chardev::chardev_help(&step.arg.value),
            _ => None,
        }
    }

    /// Applies one option.
    pub async fn apply(&mut self, step: &Step) -> Result<(), String> {
        let value = step.arg.value.as_str();
        match step.kind {
            StepKind::Blockdev => {
                let options: BlockdevOptions =
                    schema::parse_option(value, Some(BLOCKDEV_IMPLIED_KEY)).map_err(|e| e.desc)?;
                commands::blockdev_add(&self.daemon, &options)
                    .await
                    .map_err(|e| e.desc)
            }
            StepKind::Object => {
                let options: ObjectOptions =
                    schema::parse_option(value, Some(OBJECT_IMPLIED_KEY)).map_err(|e| e.desc)?;
                commands::object_add(&self.daemon, options).map_err(|e| e.desc)
            }
            StepKind::Chardev => {
                let (id, warnings) = self.chardevs.define(value, self.daemonize)?;
                let info = |message: String| {
                    eprintln!("{}: {}: info: {message}", self.program, step.arg.location)
                };
                self.chardevs.open(&id, info).await?;
                if let Some(backend) = self.chardevs.table_backend(&id) {
                    self.daemon.chardevs.add_command_line(&id, backend).await?;
                }
                self.daemon.chardevs.set_command_line(self.chardevs.rows());
                self.warnings.extend(
                    warnings
                        .into_iter()
                        .map(|warning| format!("{}: warning: {warning}", step.arg.location)),
                );
                Ok(())
            }
            StepKind::Metrics => {
                let options: MetricsOptions =
                    schema::parse_option(value, None).map_err(|e| e.desc)?;
                let endpoint = metrics::start(self.daemon.clone(), &options).await?;
                self.metrics.push(endpoint);
                Ok(())
            }
            StepKind::Monitor => self.start_monitor(value).await,
            StepKind::NbdServer => {
                let options: NbdServerOptions =
                    schema::parse_option(value, None).map_err(|e| e.desc)?;
                commands::nbd_server_start(&self.daemon, &options)
                    .await
                    .map_err(|e| e.desc)
            }
            StepKind::Export => {
                let mut options: BlockExportOptions =
                    schema::parse_option(value, Some(EXPORT_IMPLIED_KEY)).map_err(|e| e.desc)?;
                if let BlockExportKind::VhostUserBlk(vhost) = &mut options.kind {
                    // The command line may name an inherited socket.
                    if let SocketAddressKind::Fd(fd) = &mut vhost.addr.addr {
                        fd.str = socket_activation::resolve(&fd.str)?.to_string();
                    }
                }
                commands::block_export_add(&self.daemon, &options)
                    .await
                    .map_err(|e| e.desc)
            }
            StepKind::TempOverlay => {
                let overlay: TempOverlay =
                    serde_json::from_str(value).map_err(|e| e.to_string())?;
                temp_overlay::create(&self.daemon, &overlay).await
            }
            StepKind::LoadSnapshot => {
                let load: LoadSnapshot = serde_json::from_str(value).map_err(|e| e.to_string())?;
                load.apply(&self.daemon.graph).await.map_err(|e| e.message)
            }
            StepKind::KernelDevice => {
                let attach: crate::nbd_device::Attach =
                    serde_json::from_str(value).map_err(|e| e.to_string())?;
                crate::nbd_device::attach(&self.daemon, &attach).await
            }
            StepKind::Unexpected => Err("Unexpected argument".to_owned()),
        }
    }

    /// Takes the warnings gathered so far.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Ends startup: sockets that no monitor took are served without one.
    pub fn finish(&mut self) {
        for (id, spec, opened) in self.chardevs.take_unused() {
            self.daemon.chardevs.serve_unused(&id, &spec, opened);
        }
    }

    async fn start_monitor(&mut self, value: &str) -> Result<(), String> {
        let (id, source, options) = self.chardevs.attach_monitor(value)?;
        match source {
            MonitorSource::Socket(opened) => {
                let connected = self.monitors.serve(opened, options);
                self.chardevs.monitor_serves(&id, connected);
            }
            MonitorSource::Stdio => {
                self.monitors
                    .serve_stream(tokio::io::stdin(), tokio::io::stdout(), options);
            }
        }
        self.daemon.chardevs.set_command_line(self.chardevs.rows());
        Ok(())
    }
}
