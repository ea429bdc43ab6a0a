//! The `nbd` driver: an export of an NBD server as a node (QEMU's
//! `driver=nbd`, `doc/proto.md`).
//!
//! Opening connects (`server`: a Unix socket or TCP), negotiates extended
//! headers or else structured replies, selects `base:allocation` (or the
//! context `x-dirty-bitmap` names, whose flags block status then reports
//! as QEMU does: a dirty range reads as a hole), and
//! enters transmission with `NBD_OPT_GO` on `export`; the server's block
//! sizes become the node's limits, its flags what the node may do (a
//! read-only export opens a read-only node only, or with `auto-read-only`).
//! Requests then share the one connection ([`connection`]), many in
//! flight at once.
//!
//! With `reconnect-delay`, a broken link is dialed again for that long and
//! the requests in flight are sent again on the new one.
//! With `open-timeout`, opening dials again until the server answers or
//! that many seconds have passed.

mod connection;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

use nbdwire::client::{self, ExportInfo, Handshake, ReplyMode, ServerAddress, Stream};
use nbdwire::proto::*;
use nbdwire::tls::{Side, TlsCreds};
use schema::block::BlockdevOptionsNbd;
use schema::sockets::{SocketAddress, SocketAddressKind};
use serde_json::{Map, Value as Json};

use crate::driver::{BlockDriver, Extent, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::limits::Limits;
use crate::open::OpenContext;
use connection::{extent_of, Connection, Dialer, Link, Redial, Request};

/// The metadata context block status reads by default.
const BASE_ALLOCATION: &str = "base:allocation";
/// The most one request moves when the server says nothing (32 MiB, the
/// NBD default maximum).
const DEFAULT_MAX_BLOCK: u32 = 32 << 20;
/// Read buffering of replies.
const REPLY_BUFFER: usize = 256 << 10;

/// An NBD export as a node.
pub struct NbdClient {
    connection: Connection,
    size: u64,
    flags: u16,
    limits: Limits,
    /// How the node names its server (`nbd+unix:///export?socket=...`).
    filename: String,
}

impl NbdClient {
    /// Connects and enters transmission.
    pub async fn open(cx: &OpenContext<'_>, options: &BlockdevOptionsNbd) -> BlockResult<Self> {
        let tls = match &options.tls_creds {
            Some(id) => Some(ClientTls::find(cx, id, options)?),
            None => None,
        };
        let export = options.export.clone().unwrap_or_default();
        let context = options
            .x_dirty_bitmap
            .clone()
            .unwrap_or_else(|| BASE_ALLOCATION.to_string());
        let open_timeout = Duration::from_secs(u64::from(options.open_timeout.unwrap_or(0)));
        let dialed = dial_within(open_timeout, || {
            dial(&options.server, &export, &context, tls.as_ref())
        })
        .await?;
        if let (Some(bitmap), None) = (&options.x_dirty_bitmap, dialed.allocation) {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                format!("requested x-dirty-bitmap {bitmap} not found"),
            ));
        }
        let settings = cx.settings();
        let info = dialed.info;
        if info.flags & FLAG_READ_ONLY != 0 && !settings.read_only && !settings.auto_read_only {
            return Err(BlockError::new(
                ErrorKind::PermissionDenied,
                "NBD export is read-only",
            ));
        }
        let (min, preferred, max) = info.block_sizes.unwrap_or((1, 4096, DEFAULT_MAX_BLOCK));
        let limits = Limits {
            request_alignment: min.max(1),
            max_transfer: Some(max.max(min)),
            opt_transfer: Some(preferred),
            ..Limits::default()
        };
        let redial = options
            .reconnect_delay
            .filter(|&seconds| seconds > 0)
            .map(|seconds| {
                redial(
                    &options.server,
                    &export,
                    &context,
                    tls,
                    dialed.mode,
                    seconds,
                )
            });
        Ok(NbdClient {
            connection: Connection::start(dialed.link, dialed.mode, dialed.allocation, redial),
            size: info.size,
            flags: info.flags,
            limits,
            filename: dialed.filename,
        })
    }

    fn can(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    async fn call(&self, command: u16, flags: u16, offset: u64, length: u64) -> BlockResult<()> {
        self.connection
            .call(Request {
                command,
                flags,
                offset,
                length,
                payload: None,
                into: None,
            })
            .await
            .map(|_| ())
    }
}

/// A link in transmission and what the handshake said.
struct Dialed {
    link: Link,
    mode: ReplyMode,
    allocation: Option<u32>,
    info: ExportInfo,
    filename: String,
}

/// TLS for the connection: the credentials, and the name the server's
/// certificate must show (`tls-hostname`, else the TCP host).
#[derive(Clone)]
struct ClientTls {
    creds: Arc<TlsCreds>,
    hostname: Option<String>,
}

impl ClientTls {
    /// The client credentials `id` names, with QEMU's messages.
    fn find(cx: &OpenContext<'_>, id: &str, options: &BlockdevOptionsNbd) -> BlockResult<Self> {
        let creds = cx
            .object(id)
            .and_then(|object| object.downcast::<TlsCreds>().ok())
            .ok_or_else(|| {
                BlockError::new(
                    ErrorKind::InvalidArgument,
                    format!("No TLS credentials with id '{id}'"),
                )
            })?;
        if creds.side() != Side::Client {
            return Err(BlockError::new(
                ErrorKind::InvalidArgument,
                "Expected TLS credentials for a client endpoint",
            ));
        }
        let hostname = options.tls_hostname.clone().or(match &options.server.addr {
            SocketAddressKind::Inet(inet) => Some(inet.host.clone()),
            _ => None,
        });
        Ok(ClientTls { creds, hostname })
    }
}

/// Connects to `server` and negotiates `export` (TLS if asked, extended
/// headers or structured replies, the metadata `context`, `GO`).
async fn dial(
    server: &SocketAddress,
    export: &str,
    context: &str,
    tls: Option<&ClientTls>,
) -> BlockResult<Dialed> {
    let (filename, stream) = connect(server, export).await?;
    let fail = |e: std::io::Error| BlockError::from_io("NBD handshake", e);
    let mut handshake = Handshake::start(stream).await.map_err(fail)?;
    if let Some(tls) = tls {
        handshake = handshake
            .starttls(&tls.creds, tls.hostname.as_deref())
            .await
            .map_err(fail)?;
    }
    let mode = handshake.negotiate_mode().await.map_err(fail)?;
    let allocation = if mode == ReplyMode::Simple {
        None
    } else {
        let contexts = handshake
            .set_meta_contexts(export, &[context])
            .await
            .map_err(fail)?;
        contexts
            .into_iter()
            .find(|(_, name)| name == context)
            .map(|(id, _)| id)
    };
    let (stream, info) = handshake.go(export).await.map_err(fail)?;
    let (read, write) = tokio::io::split(stream);
    Ok(Dialed {
        link: Link {
            // Replies are read a field at a time: buffered, that is not a
            // system call each.
            read: Box::new(tokio::io::BufReader::with_capacity(REPLY_BUFFER, read)),
            write: Box::new(write),
        },
        mode,
        allocation,
        info,
        filename,
    })
}

/// The first pause between attempts of `open-timeout`, doubled after each
/// up to [`MAX_OPEN_RETRY_PAUSE`].
const FIRST_OPEN_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_OPEN_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// `open-timeout`: runs `attempt` until it succeeds or `timeout` has
/// passed (once for zero, as QEMU); the last failure is the error.
async fn dial_within<F, Fut>(timeout: Duration, attempt: F) -> BlockResult<Dialed>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = BlockResult<Dialed>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_OPEN_RETRY_PAUSE;
    loop {
        match attempt().await {
            Ok(dialed) => return Ok(dialed),
            Err(error) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(error);
                }
                tokio::time::sleep(pause.min(deadline - now)).await;
                pause = (pause * 2).min(MAX_OPEN_RETRY_PAUSE);
            }
        }
    }
}

/// Dials `export` again after a break, for up to `seconds`; the new link
/// must speak the same reply mode.
fn redial(
    server: &SocketAddress,
    export: &str,
    context: &str,
    tls: Option<ClientTls>,
    mode: ReplyMode,
    seconds: u32,
) -> Redial {
    let server = server.clone();
    let export = export.to_string();
    let context = context.to_string();
    let dial: Dialer = Arc::new(move || {
        let server = server.clone();
        let export = export.clone();
        let context = context.clone();
        let tls = tls.clone();
        Box::pin(async move {
            let dialed = dial(&server, &export, &context, tls.as_ref())
                .await
                .map_err(|e| std::io::Error::other(e.message))?;
            if dialed.mode != mode {
                return Err(std::io::Error::other("the server changed its reply mode"));
            }
            Ok(dialed.link)
        })
    });
    Redial {
        dial,
        delay: Duration::from_secs(u64::from(seconds)),
    }
}

/// Connects to `server`; gives the node's file name too.
async fn connect(server: &SocketAddress, export: &str) -> BlockResult<(String, Box<dyn Stream>)> {
    let (address, filename) = match &server.addr {
        SocketAddressKind::Unix(unix) => (
            ServerAddress::Unix(unix.path.clone()),
            format!("nbd+unix:///{export}?socket={}", unix.path),
        ),
        SocketAddressKind::Inet(inet) => (
            ServerAddress::Tcp {
                host: inet.host.clone(),
                port: inet.port.clone(),
            },
            format!("nbd://{}:{}/{export}", inet.host, inet.port),
        ),
        SocketAddressKind::Vsock(_) | SocketAddressKind::Fd(_) => {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                "the nbd driver connects to unix and inet addresses only",
            ))
        }
    };
    let stream = client::connect(&address)
        .await
        .map_err(|e| BlockError::from_io(format!("Failed to connect to '{address}'"), e))?;
    Ok((filename, stream))
}

#[async_trait]
impl BlockDriver for NbdClient {
    fn format_name(&self) -> &'static str {
        "nbd"
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn is_protocol(&self) -> bool {
        true
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn filename(&self) -> String {
        self.filename.clone()
    }

    fn strong_options(&self) -> Map<String, Json> {
        Map::new()
    }

    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.connection
            .call(Request {
                command: CMD_READ,
                flags: 0,
                offset,
                length: buf.len() as u64,
                payload: None,
                into: Some(buf.clone()),
            })
            .await
            .map(|_| ())
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let fua = if flags.fua && self.can(FLAG_SEND_FUA) {
            CMD_FLAG_FUA
        } else {
            0
        };
        self.connection
            .call(Request {
                command: CMD_WRITE,
                flags: fua,
                offset,
                length: buf.len() as u64,
                payload: Some(buf.clone()),
                into: None,
            })
            .await?;
        if flags.fua && fua == 0 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        if !self.can(FLAG_SEND_WRITE_ZEROES) {
            if flags.no_fallback {
                return Err(BlockError::new(
                    ErrorKind::NotSupported,
                    "the NBD server cannot write zeroes",
                ));
            }
            let zeroes = IoBuf::zeroed(len as usize);
            return self
                .write(
                    offset,
                    &zeroes,
                    WriteFlags {
                        fua: flags.fua,
                        ..WriteFlags::default()
                    },
                )
                .await;
        }
        let mut command_flags = 0;
        if !flags.may_unmap {
            command_flags |= CMD_FLAG_NO_HOLE;
        }
        if flags.fua && self.can(FLAG_SEND_FUA) {
            command_flags |= CMD_FLAG_FUA;
        }
        if flags.no_fallback {
            if !self.can(FLAG_SEND_FAST_ZERO) {
                return Err(BlockError::new(
                    ErrorKind::NotSupported,
                    "the NBD server cannot zero fast",
                ));
            }
            command_flags |= CMD_FLAG_FAST_ZERO;
        }
        self.call(CMD_WRITE_ZEROES, command_flags, offset, len)
            .await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        if !self.can(FLAG_SEND_TRIM) {
            return Ok(());
        }
        self.call(CMD_TRIM, 0, offset, len).await
    }

    async fn flush(&self) -> BlockResult<()> {
        if !self.can(FLAG_SEND_FLUSH) {
            return Ok(());
        }
        self.call(CMD_FLUSH, 0, 0, 0).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        let all_data = Extent {
            length: len,
            data: true,
            zero: false,
            depth: 1,
        };
        if self.connection.allocation_context().is_none() {
            return Ok(all_data);
        }
        let length = len.min(u64::from(u32::MAX));
        let completion = self
            .connection
            .call(Request {
                command: CMD_BLOCK_STATUS,
                flags: CMD_FLAG_REQ_ONE,
                offset,
                length,
                payload: None,
                into: None,
            })
            .await?;
        Ok(extent_of(&completion.extents, len).unwrap_or(all_data))
    }
}
