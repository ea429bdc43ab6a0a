//! The daemon's state as QMP commands see it: the block graph and the
//! objects, plus the request to stop. Monitors and chardevs are
//! not here: they belong to the life cycle ([`crate::lifecycle`]), which
//! owns the monitors that call into this state; only the chardevs' ids
//! and types are, for the QOM tree.

use std::sync::Arc;

use async_trait::async_trait;
use schema::QmpError;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use block::BlockGraph;
use exports::BlockExports;
use schema::event::EventSink;

use crate::commands;
use crate::objects::Objects;

/// Everything the QMP commands act on.
pub struct Daemon {
    pub graph: BlockGraph,
    /// Shared with the graph, whose drivers find throttle groups in it.
    pub objects: Arc<Objects>,
    /// The chardevs, of the command line and added at run time.
    pub chardevs: crate::chardev_table::ChardevTable,
    /// The block exports and the NBD server.
    pub exports: BlockExports,
    /// The background jobs (`blockdev-create`).
    pub jobs: block::job::JobRegistry,
    quit: CancellationToken,
}

impl Daemon {
    /// An empty daemon; `events` receives the events of the exports, the
    /// jobs and the block nodes (`BLOCK_IMAGE_CORRUPTED`).
    pub fn new(events: EventSink) -> Self {
        let objects = Arc::new(Objects::new());
        Self {
            graph: BlockGraph::with_events_and_objects(events.clone(), objects.clone()),
            objects,
            chardevs: Default::default(),
            jobs: block::job::JobRegistry::new(events.clone()),
            exports: BlockExports::new(events),
            quit: CancellationToken::new(),
        }
    }

    /// Asks the daemon to stop (the `quit` command).
    pub fn request_quit(&self) {
        self.quit.cancel();
    }

    /// Completes once [`Daemon::request_quit`] was called.
    pub async fn quit_requested(&self) {
        self.quit.cancelled().await
    }
}

#[async_trait]
impl qmp::Dispatcher for Daemon {
    fn commands(&self) -> Vec<String> {
        commands::names()
    }

    async fn execute(
        &self,
        command: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, QmpError> {
        commands::execute(self, command, arguments).await
    }
}
