//! The client side of the NBD handshake (fixed newstyle, `doc/proto.md`):
//! connecting to a server, the greeting, reply-mode negotiation (extended headers, else
//! structured replies), the options that describe a server's exports
//! without entering transmission (`LIST`, `INFO`, `LIST_META_CONTEXT`,
//! `ABORT`), and those that enter it (`SET_META_CONTEXT`, `GO`).
//!
//! Every reply is bounded: a server that sends more than
//! [`MAX_REPLY_LEN`] bytes in one option reply, or a malformed one, ends
//! the handshake with an `InvalidData` error.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::*;
use crate::tls::TlsCreds;

/// The longest option reply read (a name, a description, a context).
pub const MAX_REPLY_LEN: usize = 64 << 10;

/// Where an NBD server listens, as a client reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    Unix(String),
    Tcp { host: String, port: String },
}

impl std::fmt::Display for ServerAddress {
    /// As QEMU names the address in its messages (`/path`, `host:port`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Unix(path) => f.write_str(path),
            ServerAddress::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A connected byte stream to a server, whatever its transport.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to `address` (TCP without Nagle's delay: requests are small
/// and must not wait).
pub async fn connect(address: &ServerAddress) -> io::Result<Box<dyn Stream>> {
    match address {
        ServerAddress::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        ServerAddress::Tcp { .. } => {
            let stream = tokio::net::TcpStream::connect(address.to_string()).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
    }
}

/// How replies will be framed once in transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    Simple,
    Structured,
    /// Extended headers: 64-bit lengths.
    Extended,
}

/// One option reply.
#[derive(Debug)]
struct OptionReply {
    kind: u32,
    data: Vec<u8>,
}

/// What `NBD_OPT_INFO` tells of an export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    /// Minimum, preferred and maximum block sizes, if the server gave them.
    pub block_sizes: Option<(u32, u32, u32)>,
}

/// An export as `NBD_OPT_LIST` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedExport {
    pub name: String,
    /// The rest of the reply (empty when the server gave none).
    pub description: String,
}

/// A refusal of an option by the server.
fn refused(option: u32, kind: u32, data: &[u8]) -> io::Error {
    let message = String::from_utf8_lossy(data);
    io::Error::other(format!(
        "server refused option {} ({:#x}){}",
        option_name(option),
        kind,
        if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        }
    ))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A handshake in progress on `stream`.
pub struct Handshake<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handshake<S> {
    /// Reads the server's greeting and answers it (fixed newstyle, no
    /// zeroes when the server offers that).
    pub async fn start(mut stream: S) -> io::Result<Handshake<S>> {
        if stream.read_u64().await? != NBD_MAGIC {
            return Err(invalid("not an NBD server"));
        }
        if stream.read_u64().await? != IHAVEOPT {
            return Err(invalid("the server does not speak the newstyle protocol"));
        }
        let flags = stream.read_u16().await?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(invalid("the server does not speak fixed newstyle"));
        }
        let mut client = FLAG_C_FIXED_NEWSTYLE;
        if flags & FLAG_NO_ZEROES != 0 {
            client |= FLAG_C_NO_ZEROES;
        }
        stream.write_u32(client).await?;
        Ok(Handshake { stream })
    }

    /// `NBD_OPT_STARTTLS`, then the TLS handshake with `creds`: the rest
    /// of the handshake and the transmission run over TLS. `hostname` is
    /// what the server's certificate must name (with X.509).
    pub async fn starttls(
        mut self,
        creds: &TlsCreds,
        hostname: Option<&str>,
    ) -> io::Result<Handshake<Box<dyn Stream>>>
    where
        S: Stream + 'static,
    {
        self.send(OPT_STARTTLS, &[]).await?;
        let reply = self.reply(OPT_STARTTLS).await?;
        if reply.kind != REP_ACK {
            return Err(refused(OPT_STARTTLS, reply.kind, &reply.data));
        }
        let stream = creds.connect(self.stream, hostname).await?;
        Ok(Handshake {
            stream: Box::new(stream),
        })
    }

    /// Asks for extended headers, else structured replies (as QEMU's
    /// client does), and says which the server accepted.
    pub async fn negotiate_mode(&mut self) -> io::Result<ReplyMode> {
        for (option, mode) in [
            (OPT_EXTENDED_HEADERS, ReplyMode::Extended),
            (OPT_STRUCTURED_REPLY, ReplyMode::Structured),
        ] {
            self.send(option, &[]).await?;
            let reply = self.reply(option).await?;
            if reply.kind == REP_ACK {
                return Ok(mode);
            }
            if reply.kind & (1 << 31) == 0 {
                return Err(invalid("unexpected reply to a reply-mode option"));
            }
        }
        Ok(ReplyMode::Simple)
    }

    /// `NBD_OPT_LIST`: the exports the server names.
    pub async fn list(&mut self) -> io::Result<Vec<ListedExport>> {
        self.send(OPT_LIST, &[]).await?;
        let mut exports = Vec::new();
        loop {
            let reply = self.reply(OPT_LIST).await?;
            match reply.kind {
                REP_ACK => return Ok(exports),
                REP_SERVER => {
                    let data = reply.data;
                    let len = u32_at(&data, 0)? as usize;
                    let name = data
                        .get(4..4 + len)
                        .ok_or_else(|| invalid("short list reply"))?;
                    exports.push(ListedExport {
                        name: String::from_utf8_lossy(name).into_owned(),
                        description: String::from_utf8_lossy(&data[4 + len..]).into_owned(),
                    });
                }
                kind => return Err(refused(OPT_LIST, kind, &reply.data)),
            }
        }
    }

    /// `NBD_OPT_INFO` for `name`, asking for block sizes.
    pub async fn info(&mut self, name: &str) -> io::Result<ExportInfo> {
        self.info_or_go(OPT_INFO, name).await
    }

    /// `NBD_OPT_INFO` or `NBD_OPT_GO`: the same request and replies.
    async fn info_or_go(&mut self, option: u32, name: &str) -> io::Result<ExportInfo> {
        let mut data = named(name);
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.send(option, &data).await?;
        let mut info = ExportInfo::default();
        let mut has_export = false;
        loop {
            let reply = self.reply(option).await?;
            match reply.kind {
                REP_ACK if has_export => return Ok(info),
                REP_ACK => return Err(invalid("no export information in the reply")),
                REP_INFO => {
                    let data = &reply.data;
                    let kind = u16::from_be_bytes(
                        data.get(0..2)
                            .ok_or_else(|| invalid("short info reply"))?
                            .try_into()
                            .expect("two bytes"),
                    );
                    match kind {
                        INFO_EXPORT if data.len() == 12 => {
                            info.size = u64::from_be_bytes(data[2..10].try_into().expect("8"));
                            info.flags = u16::from_be_bytes(data[10..12].try_into().expect("2"));
                            has_export = true;
                        }
                        INFO_BLOCK_SIZE if data.len() == 14 => {
                            info.block_sizes =
                                Some((u32_at(data, 2)?, u32_at(data, 6)?, u32_at(data, 10)?));
                        }
                        INFO_EXPORT | INFO_BLOCK_SIZE => {
                            return Err(invalid("info reply of the wrong length"))
                        }
                        // Names, descriptions and unknown kinds are not needed.
                        _ => {}
                    }
                }
                kind => return Err(refused(option, kind, &reply.data)),
            }
        }
    }

    /// `NBD_OPT_LIST_META_CONTEXT` for `name` without queries: every
    /// context the server offers for the export.
    pub async fn meta_contexts(&mut self, name: &str) -> io::Result<Vec<String>> {
        let contexts = self.contexts(OPT_LIST_META_CONTEXT, name, &[]).await?;
        Ok(contexts.into_iter().map(|(_, name)| name).collect())
    }

    /// `NBD_OPT_SET_META_CONTEXT` for `name`: the contexts of `queries` the
    /// server selected, with the ids its block status replies will use.
    pub async fn set_meta_contexts(
        &mut self,
        name: &str,
        queries: &[&str],
    ) -> io::Result<Vec<(u32, String)>> {
        self.contexts(OPT_SET_META_CONTEXT, name, queries).await
    }

    async fn contexts(
        &mut self,
        option: u32,
        name: &str,
        queries: &[&str],
    ) -> io::Result<Vec<(u32, String)>> {
        let mut data = named(name);
        data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for query in queries {
            data.extend_from_slice(&named(query));
        }
        self.send(option, &data).await?;
        let mut contexts = Vec::new();
        loop {
            let reply = self.reply(option).await?;
            match reply.kind {
                REP_ACK => return Ok(contexts),
                REP_META_CONTEXT if reply.data.len() >= 4 => {
                    let id = u32_at(&reply.data, 0)?;
                    contexts.push((id, String::from_utf8_lossy(&reply.data[4..]).into_owned()));
                }
                REP_META_CONTEXT => return Err(invalid("short meta context reply")),
                kind => return Err(refused(option, kind, &reply.data)),
            }
        }
    }

    /// `NBD_OPT_GO` for `name`: on success the handshake is over and the
    /// stream is in transmission.
    pub async fn go(mut self, name: &str) -> io::Result<(S, ExportInfo)> {
        let info = self.info_or_go(OPT_GO, name).await?;
        Ok((self.stream, info))
    }

    /// `NBD_OPT_ABORT`, then the end of the connection (the server's ack
    /// is optional and not waited for). The server may close first: a
    /// failed shutdown (a TLS close_notify into a closed socket) is no
    /// error.
    pub async fn abort(mut self) -> io::Result<()> {
        self.send(OPT_ABORT, &[]).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    async fn send(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        let mut message = Vec::with_capacity(16 + data.len());
        message.extend_from_slice(&IHAVEOPT.to_be_bytes());
        message.extend_from_slice(&option.to_be_bytes());
        message.extend_from_slice(&(data.len() as u32).to_be_bytes());
        message.extend_from_slice(data);
        self.stream.write_all(&message).await?;
        self.stream.flush().await
    }

    async fn reply(&mut self, option: u32) -> io::Result<OptionReply> {
        if self.stream.read_u64().await? != REP_MAGIC {
            return Err(invalid("bad option reply magic"));
        }
        if self.stream.read_u32().await? != option {
            return Err(invalid("a reply to another option"));
        }
        let kind = self.stream.read_u32().await?;
        let len = self.stream.read_u32().await? as usize;
        if len > MAX_REPLY_LEN {
            return Err(invalid("option reply too long"));
        }
        let mut data = vec![0; len];
        self.stream.read_exact(&mut data).await?;
        Ok(OptionReply { kind, data })
    }
}

/// An export name as options carry it: its length, then its bytes.
fn named(name: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(4 + name.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data
}

fn u32_at(data: &[u8], at: usize) -> io::Result<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("four bytes")))
        .ok_or_else(|| invalid("short option reply"))
}
