//! The daemon's monitors: listening sockets (and streams such as stdio)
//! whose clients speak QMP, and their orderly end.
//!
//! A socket monitor is what QEMU's `--chardev socket,...,server=on` plus
//! `--monitor chardev=...` gives: it serves one client at a time; a second
//! client's connection waits in the listen backlog until the first
//! disconnects, then gets its own greeting and must negotiate again. Like
//! QEMU, binding a Unix socket first removes whatever is at its path, and
//! the socket file is removed when the monitors shut down. The sockets
//! themselves are opened and their connections made by [`crate::socket`],
//! as for a chardev without a monitor.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::builtin::Commands;
use crate::dispatcher::Dispatcher;
use crate::events::EventBus;
use crate::reply::VersionInfo;
use crate::session::{self, MonitorOptions, Shared};
use crate::socket::{
    self, BoundAddress, Connection, ListenAddress, Opened, SocketFile, SocketSpec,
};

/// How long [`Monitors::shutdown`] waits for running commands to finish and
/// for replies and events already queued to be written, before it closes
/// the remaining connections without flushing.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Every monitor of the daemon, sharing one dispatcher and one event bus.
pub struct Monitors {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    socket_files: Mutex<Vec<SocketFile>>,
}

impl Monitors {
    /// Monitors that run `dispatcher`'s commands, greet with `version`, and
    /// deliver the events emitted on `events`. Reads
    /// [`Dispatcher::commands`] once, here.
    pub fn new(dispatcher: Arc<dyn Dispatcher>, version: VersionInfo, events: EventBus) -> Self {
        let commands = Commands::new(dispatcher.commands());
        Self {
            shared: Arc::new(Shared {
                dispatcher,
                commands,
                version,
                events,
                command_lock: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                abort: CancellationToken::new(),
                commands_released: tokio::sync::watch::Sender::new(true),
            }),
            tasks: TaskTracker::new(),
            socket_files: Mutex::new(Vec::new()),
        }
    }

    /// The bus whose events reach this set's negotiated clients.
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// Holds every in-band request, of every session, until
    /// [`Monitors::release_commands`]: as QSD, which answers nothing
    /// before it has applied its whole command line, the daemon calls it
    /// before its first monitor starts. Clients get their greeting and
    /// their requests are read, but not answered, meanwhile.
    pub fn hold_commands(&self) {
        self.shared.commands_released.send_replace(false);
    }

    /// Lets the requests held since [`Monitors::hold_commands`] run.
    pub fn release_commands(&self) {
        self.shared.commands_released.send_replace(true);
    }

    /// Starts a monitor listening on `address`. With `wait_for_client`
    /// (QEMU's `wait=on`) this returns only once a first client has
    /// connected (or shutdown began); that client gets the greeting first.
    pub async fn listen(
        &self,
        address: &ListenAddress,
        wait_for_client: bool,
        options: MonitorOptions,
    ) -> io::Result<BoundAddress> {
        let spec = SocketSpec::Listen {
            address: address.clone(),
            wait: wait_for_client,
        };
        let opened = socket::open(&spec, &self.shared.shutdown, |_| {}).await?;
        let bound = opened
            .bound
            .clone()
            .ok_or_else(|| io::Error::other("a listening socket has an address"))?;
        self.serve(opened, options);
        Ok(bound)
    }

    /// Serves a monitor on a connection the daemon opens itself (QEMU's
    /// client-mode socket chardev, `server=off`): connects to `address`
    /// now, and fails if that fails and there is no `reconnect`. When the
    /// peer closes (or a connection fails) and `reconnect` is set, it
    /// connects again after that delay, until shutdown; each connection
    /// gets its own greeting.
    pub async fn connect(
        &self,
        address: &ListenAddress,
        reconnect: Option<Duration>,
        options: MonitorOptions,
    ) -> io::Result<()> {
        let spec = SocketSpec::Connect {
            address: address.clone(),
            reconnect,
        };
        let opened = socket::open(&spec, &self.shared.shutdown, |_| {}).await?;
        self.serve(opened, options);
        Ok(())
    }

    /// Serves a session on each connection of an opened socket chardev
    /// (`--chardev` opens it, `--monitor` serves it), until shutdown; its
    /// socket file goes when the monitors shut down. The flag returned
    /// says whether a client is connected (QEMU's `connected` property).
    pub fn serve(&self, opened: Opened, options: MonitorOptions) -> Arc<AtomicBool> {
        let Opened {
            endpoint,
            first,
            socket_file,
            ..
        } = opened;
        self.lock_socket_files().extend(socket_file);
        let shared = self.shared.clone();
        let cancel = shared.shutdown.clone();
        let connected = Arc::new(AtomicBool::new(false));
        let flag = connected.clone();
        self.tasks
            .spawn(endpoint.serve(first, cancel, move |connection| {
                let shared = shared.clone();
                let flag = flag.clone();
                async move {
                    flag.store(true, Ordering::Relaxed);
                    serve_connection(shared, connection, options).await;
                    flag.store(false, Ordering::Relaxed);
                }
            }));
        connected
    }

    /// Serves one client on an already open stream, e.g. stdin and stdout
    /// for QEMU's `--chardev stdio`. The session ends at the end of input,
    /// once everything before it is answered.
    pub fn serve_stream<R, W>(&self, input: R, output: W, options: MonitorOptions)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        self.tasks
            .spawn(session::serve(shared, input, output, options));
    }

    /// Stops every monitor: no new clients or requests; commands already
    /// running finish and their replies (say, `quit`'s `{"return": {}}`),
    /// like events already queued, are written, for at most
    /// [`SHUTDOWN_FLUSH_TIMEOUT`]; then every connection is closed and the
    /// Unix socket files are removed. Call it from outside a command (a
    /// command that wants the daemon to stop signals the main task, which
    /// calls this), since it waits for running commands.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.remove_socket_files();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("QMP clients still busy after {SHUTDOWN_FLUSH_TIMEOUT:?}; closing them");
            self.shared.abort.cancel();
        }
    }

    fn lock_socket_files(&self) -> std::sync::MutexGuard<'_, Vec<SocketFile>> {
        self.socket_files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove_socket_files(&self) {
        // Dropping a socket file removes it.
        self.lock_socket_files().clear();
    }
}

impl Drop for Monitors {
    /// Without [`Monitors::shutdown`]: close everything at once and remove
    /// the socket files.
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.abort.cancel();
        self.remove_socket_files();
    }
}

impl std::fmt::Debug for Monitors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitors")
            .field("socket_files", &*self.lock_socket_files())
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

async fn serve_connection(shared: Arc<Shared>, connection: Connection, options: MonitorOptions) {
    match connection {
        Connection::Unix(stream) => {
            let (input, output) = stream.into_split();
            session::serve(shared, input, output, options).await;
        }
        Connection::Tcp(stream) => {
            // Replies are small and a client waits for each: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let (input, output) = stream.into_split();
            session::serve(shared, input, output, options).await;
        }
    }
}
