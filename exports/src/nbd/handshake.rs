//! The fixed newstyle handshake: greeting, client flags and option
//! haggling, up to the choice of an export (or the client's goodbye).
//!
//! Every option is answered as the spec says; a client that breaks a MUST
//! (bad magic, unknown client flags, an oversized option, an
//! `NBD_OPT_EXPORT_NAME` that cannot succeed) is disconnected. The number
//! and size of options are bounded.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{be16, be32, be64, push_option_reply, ReplyMode};
use super::export::{ClientGuard, ExportTable, NbdExport};
use super::meta::{ContextSet, MetaContext, QueryUse};
use super::proto::*;
use super::request::MAX_PAYLOAD;
use crate::trace::*;

/// Options one handshake may send before it is considered abuse.
pub const MAX_OPTIONS: usize = 4096;
/// The largest option data accepted at all (larger closes the connection).
pub const MAX_OPTION_LEN: u32 = 32 << 20;
/// The largest option data read into memory; a known option with more is
/// skipped and answered `NBD_REP_ERR_TOO_BIG`. Holds the longest valid
/// `NBD_OPT_GO` (a 4 KiB name and 65535 information requests).
pub const MAX_BUFFERED_OPTION_LEN: u32 = 256 << 10;
/// Preferred block size advertised with `NBD_INFO_BLOCK_SIZE`.
const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Characters of an unknown export name quoted back in an error.
const QUOTED_NAME_LEN: usize = 80;

/// The result of a successful handshake.
pub struct Session {
    pub client: ClientGuard,
    pub mode: ReplyMode,
    /// Selected metadata contexts (empty unless selected for this export).
    pub contexts: Vec<MetaContext>,
    /// Minimum block size the client promised to honour (1 if none).
    pub alignment: u32,
}

/// How a handshake ended without failing.
pub enum Outcome {
    Transmission(Session),
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
}

/// A handshake that ended with the connection to be dropped.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("option negotiation failed: {0}")]
    Protocol(String),
}

pub fn protocol(message: impl Into<String>) -> HandshakeError {
    HandshakeError::Protocol(message.into())
}

/// What the handshake needs from the server.
pub struct HandshakeConfig {
    pub exports: Arc<ExportTable>,
}

/// What the client said in answer to the greeting.
#[derive(Debug, Clone, Copy)]
pub struct ClientFlags {
    fixed: bool,
    no_zeroes: bool,
}

impl ClientFlags {
    /// Whether the client speaks fixed newstyle (without it, only
    /// `NBD_OPT_EXPORT_NAME` is possible, and no option can be refused).
    pub fn fixed(&self) -> bool {
        self.fixed
    }
}

/// Runs the handshake on `reader`/`writer`, without TLS.
pub async fn negotiate<R, W>(
    reader: &mut R,
    writer: &mut W,
    config: &HandshakeConfig,
) -> Result<Outcome, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let flags = greet(reader, writer).await?;
    haggle(reader, writer, config, flags, false).await
}

/// Sends the greeting and reads the client's flags.
pub async fn greet<R, W>(reader: &mut R, writer: &mut W) -> Result<ClientFlags, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    schema::trace!(NBD_NEGOTIATE_BEGIN, "Beginning negotiation");
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    writer.write_all(&greeting).await?;
    writer.flush().await?;
    let client_flags = reader.read_u32().await?;
    schema::trace!(
        NBD_NEGOTIATE_OPTIONS_FLAGS,
        "Received client flags {client_flags:#x}"
    );
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(protocol(format!(
            "Unknown client flags {client_flags:#x} received"
        )));
    }
    Ok(ClientFlags {
        fixed: client_flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// Reads an option's header: its number and data length (not yet read).
pub async fn option_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(u32, u32), HandshakeError> {
    let mut header = [0; 16];
    reader.read_exact(&mut header).await?;
    schema::trace!(
        NBD_NEGOTIATE_OPTIONS_CHECK_MAGIC,
        "Checking opts magic {:#x}",
        be64(&header, 0)
    );
    if be64(&header, 0) != IHAVEOPT {
        return Err(protocol("Bad magic received"));
    }
    let option = be32(&header, 8);
    let len = be32(&header, 12);
    if len > MAX_OPTION_LEN {
        return Err(protocol(format!(
            "len ({len}) is larger than max len ({MAX_OPTION_LEN})"
        )));
    }
    Ok((option, len))
}

/// The option haggling after the greeting (and after `NBD_OPT_STARTTLS`
/// when `tls` says the connection runs over TLS).
pub async fn haggle<R, W>(
    reader: &mut R,
    writer: &mut W,
    config: &HandshakeConfig,
    flags: ClientFlags,
    tls: bool,
) -> Result<Outcome, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut haggle = Haggle {
        config,
        fixed: flags.fixed,
        no_zeroes: flags.no_zeroes,
        tls,
        mode: ReplyMode::Simple,
        selection: None,
        out: Vec::new(),
    };
    for _ in 0..MAX_OPTIONS {
        let (option, len) = option_header(reader).await?;
        let step = haggle.option(reader, option, len).await?;
        writer.write_all(&haggle.out).await?;
        writer.flush().await?;
        haggle.out.clear();
        match step {
            Step::Continue => {}
            Step::Abort => return Ok(Outcome::Aborted),
            Step::Go(session) => {
                schema::trace!(NBD_NEGOTIATE_SUCCESS, "Negotiation succeeded");
                return Ok(Outcome::Transmission(session));
            }
        }
    }
    Err(protocol(format!("more than {MAX_OPTIONS} options")))
}

enum Step {
    Continue,
    Abort,
    Go(Session),
}

/// Contexts chosen by the last `NBD_OPT_SET_META_CONTEXT`, for one export.
struct Selection {
    export: Arc<NbdExport>,
    contexts: Vec<MetaContext>,
}

/// The state of one option haggling.
struct Haggle<'a> {
    config: &'a HandshakeConfig,
    fixed: bool,
    no_zeroes: bool,
    /// Whether the connection runs over TLS already.
    tls: bool,
    mode: ReplyMode,
    selection: Option<Selection>,
    /// Replies to the current option, written in one go.
    out: Vec<u8>,
}

impl Haggle<'_> {
    async fn option<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        option: u32,
        len: u32,
    ) -> Result<Step, HandshakeError> {
        schema::trace!(
            NBD_NEGOTIATE_OPTIONS_CHECK_OPTION,
            "Checking option {option} ({})",
            option_name(option)
        );
        if !self.fixed && option != OPT_EXPORT_NAME {
            return Err(protocol(format!(
                "Unsupported option {option} ({})",
                option_name(option)
            )));
        }
        let known = matches!(
            option,
            OPT_EXPORT_NAME
                | OPT_ABORT
                | OPT_LIST
                | OPT_STARTTLS
                | OPT_INFO
                | OPT_GO
                | OPT_STRUCTURED_REPLY
                | OPT_LIST_META_CONTEXT
                | OPT_SET_META_CONTEXT
                | OPT_EXTENDED_HEADERS
        );
        if !known {
            skip(reader, len).await?;
            let text = format!("Unsupported option {option} ({})", option_name(option));
            self.error(option, REP_ERR_UNSUP, &text);
            return Ok(Step::Continue);
        }
        if option == OPT_EXPORT_NAME {
            return self.export_name(reader, len).await;
        }
        if len > MAX_BUFFERED_OPTION_LEN {
            skip(reader, len).await?;
            self.error(option, REP_ERR_TOO_BIG, "option data too large");
            return Ok(Step::Continue);
        }
        // Read as it arrives: a client that announces a long option and
        // stalls holds what it sent, not the length it announced.
        let mut data = Vec::new();
        (&mut *reader)
            .take(u64::from(len))
            .read_to_end(&mut data)
            .await?;
        if data.len() < len as usize {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        Ok(self.buffered_option(option, &data))
    }

    /// Options whose data has been read.
    fn buffered_option(&mut self, option: u32, data: &[u8]) -> Step {
        let no_data = data.is_empty();
        match option {
            OPT_ABORT => {
                self.ack(option);
                return Step::Abort;
            }
            OPT_INFO | OPT_GO => return self.info(option, data),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data),
            _ if !no_data => self.unexpected_length(option),
            OPT_LIST => self.list(),
            OPT_STARTTLS if self.tls => {
                self.error(option, REP_ERR_INVALID, "TLS already negotiated")
            }
            OPT_STARTTLS => self.error(option, REP_ERR_POLICY, "TLS not configured"),
            OPT_STRUCTURED_REPLY => match self.mode {
                ReplyMode::Simple => {
                    self.mode = ReplyMode::Structured;
                    self.ack(option);
                }
                ReplyMode::Structured => self.error(
                    option,
                    REP_ERR_INVALID,
                    "structured reply already negotiated",
                ),
                ReplyMode::Extended => self.error(
                    option,
                    REP_ERR_EXT_HEADER_REQD,
                    "extended headers already negotiated",
                ),
            },
            OPT_EXTENDED_HEADERS => {
                if self.mode == ReplyMode::Extended {
                    self.error(
                        option,
                        REP_ERR_INVALID,
                        "extended headers already negotiated",
                    );
                } else {
                    self.mode = ReplyMode::Extended;
                    self.ack(option);
                }
            }
            _ => unreachable!("every known option is handled above"),
        }
        Step::Continue
    }

    /// `NBD_OPT_EXPORT_NAME`: no error reply exists, so failures disconnect.
    async fn export_name<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        len: u32,
    ) -> Result<Step, HandshakeError> {
        if len as usize > MAX_STRING_LEN {
            return Err(protocol("Bad length received"));
        }
        let mut name = vec![0; len as usize];
        reader.read_exact(&mut name).await?;
        schema::trace!(
            NBD_NEGOTIATE_HANDLE_EXPORT_NAME_REQUEST,
            "Client requested export '{}'",
            String::from_utf8_lossy(&name)
        );
        if self.mode == ReplyMode::Extended {
            return Err(protocol("Extended headers already negotiated"));
        }
        let export = std::str::from_utf8(&name)
            .ok()
            .and_then(|name| self.config.exports.find(name))
            .ok_or_else(|| protocol("export not found"))?;
        let client = export
            .attach_client()
            .ok_or_else(|| protocol("export not found"))?;
        self.out.extend_from_slice(&export.size().to_be_bytes());
        let flags = export.transmission_flags(self.mode.structured());
        self.out.extend_from_slice(&flags.to_be_bytes());
        if !self.no_zeroes {
            self.out.extend_from_slice(&[0; 124]);
        }
        Ok(Step::Go(self.session(client, 1)))
    }

    fn session(&mut self, client: ClientGuard, alignment: u32) -> Session {
        let contexts = match self.selection.take() {
            Some(s) if Arc::ptr_eq(&s.export, client.export()) => s.contexts,
            _ => Vec::new(),
        };
        Session {
            client,
            mode: self.mode,
            contexts,
            alignment,
        }
    }

    fn list(&mut self) {
        for export in self.config.exports.list() {
            let name = export.name().as_bytes();
            let desc = export.description().unwrap_or("").as_bytes();
            let name_len = (name.len() as u32).to_be_bytes();
            push_option_reply(
                &mut self.out,
                OPT_LIST,
                REP_SERVER,
                &[&name_len, name, desc],
            );
        }
        self.ack(OPT_LIST);
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`.
    fn info(&mut self, option: u32, data: &[u8]) -> Step {
        let mut cursor = Cursor::new(data);
        let parsed = (|| {
            let name = cursor.string()?;
            let count = cursor.u16()?;
            let mut requests = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                requests.push(cursor.u16()?);
            }
            Ok((name, requests))
        })();
        let (name, requests) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                self.parse_error(option, e);
                return Step::Continue;
            }
        };
        schema::trace!(
            NBD_NEGOTIATE_HANDLE_EXPORT_NAME_REQUEST,
            "Client requested export '{name}'"
        );
        if !cursor.is_empty() {
            self.unexpected_length(option);
            return Step::Continue;
        }
        let Some(export) = self.config.exports.find(name) else {
            self.unknown_export(option, name);
            return Step::Continue;
        };
        let client = if option == OPT_GO {
            match export.attach_client() {
                Some(client) => Some(client),
                None => {
                    self.unknown_export(option, name);
                    return Step::Continue;
                }
            }
        } else {
            None
        };
        let wants_block_size = requests.contains(&INFO_BLOCK_SIZE);
        if requests.contains(&INFO_NAME) {
            self.info_reply(option, INFO_NAME, &[export.name().as_bytes()]);
        }
        if let Some(desc) = export.description() {
            self.info_reply(option, INFO_DESCRIPTION, &[desc.as_bytes()]);
        }
        // Clients that promise to honour block sizes get the node's real
        // alignment; others may send anything, which the node layer pads.
        // The maximum is the node's largest transfer (as QEMU's), within
        // the largest payload.
        let limits = export.backend().limits();
        let minimum = if option == OPT_INFO || wants_block_size {
            limits.request_alignment.max(1)
        } else {
            1
        };
        let preferred = PREFERRED_BLOCK_SIZE
            .max(minimum)
            .max(limits.opt_transfer.unwrap_or(0));
        let maximum = limits
            .max_transfer
            .map_or(MAX_PAYLOAD as u32, |max| max.min(MAX_PAYLOAD as u32))
            .max(minimum);
        self.info_reply(
            option,
            INFO_BLOCK_SIZE,
            &[
                &minimum.to_be_bytes(),
                &preferred.to_be_bytes(),
                &maximum.to_be_bytes(),
            ],
        );
        let flags = export.transmission_flags(self.mode.structured());
        self.info_reply(
            option,
            INFO_EXPORT,
            &[&export.size().to_be_bytes(), &flags.to_be_bytes()],
        );
        self.ack(option);
        match client {
            Some(client) => {
                let alignment = if wants_block_size { minimum } else { 1 };
                Step::Go(self.session(client, alignment))
            }
            None => Step::Continue,
        }
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context(&mut self, option: u32, data: &[u8]) {
        let usage = if option == OPT_SET_META_CONTEXT {
            // A set replaces the previous selection, even when it fails.
            self.selection = None;
            if !self.mode.structured() {
                let text = format!(
                    "request option '{}' when structured reply is not negotiated",
                    option_name(option)
                );
                self.error(option, REP_ERR_INVALID, &text);
                return;
            }
            QueryUse::Set
        } else {
            QueryUse::List
        };
        let mut cursor = Cursor::new(data);
        let name = match cursor.string() {
            Ok(name) => name,
            Err(e) => return self.parse_error(option, e),
        };
        let Some(export) = self.config.exports.find(name) else {
            return self.unknown_export(option, name);
        };
        let meta = export.meta();
        let parsed = (|| {
            let count = cursor.u32()?;
            if count == 0 && usage == QueryUse::List {
                return Ok(ContextSet::all(meta));
            }
            let mut set = ContextSet::new(meta);
            for _ in 0..count {
                let len = cursor.u32()? as usize;
                let query = cursor.bytes(len)?;
                // Over-long queries match nothing and are ignored.
                if len <= MAX_STRING_LEN {
                    set.add_query(meta, parse_str(query)?, usage);
                }
            }
            Ok(set)
        })();
        let set = match parsed {
            Ok(set) => set,
            Err(e) => return self.parse_error(option, e),
        };
        if !cursor.is_empty() {
            return self.unexpected_length(option);
        }
        let contexts = set.contexts();
        for context in &contexts {
            let id = if usage == QueryUse::Set {
                context.id()
            } else {
                0
            };
            let name = context.name(meta);
            push_option_reply(
                &mut self.out,
                option,
                REP_META_CONTEXT,
                &[&id.to_be_bytes(), name.as_bytes()],
            );
        }
        self.ack(option);
        if usage == QueryUse::Set {
            self.selection = Some(Selection { export, contexts });
        }
    }

    fn info_reply(&mut self, option: u32, info: u16, data: &[&[u8]]) {
        let info = info.to_be_bytes();
        let mut parts = vec![&info[..]];
        parts.extend_from_slice(data);
        push_option_reply(&mut self.out, option, REP_INFO, &parts);
    }

    fn ack(&mut self, option: u32) {
        push_option_reply(&mut self.out, option, REP_ACK, &[]);
    }

    fn error(&mut self, option: u32, kind: u32, text: &str) {
        push_option_reply(&mut self.out, option, kind, &[text.as_bytes()]);
    }

    fn unexpected_length(&mut self, option: u32) {
        let text = format!("option '{}' has unexpected length", option_name(option));
        self.error(option, REP_ERR_INVALID, &text);
    }

    fn unknown_export(&mut self, option: u32, name: &str) {
        let text = format!("export '{}' not present", quote_name(name));
        self.error(option, REP_ERR_UNKNOWN, &text);
    }

    fn parse_error(&mut self, option: u32, error: ParseError) {
        let text = match error {
            ParseError::Short => format!("Inconsistent lengths in option {}", option_name(option)),
            ParseError::NameTooLong(len) => format!("Invalid name length: {len}"),
            ParseError::BadString => format!("Invalid string in option {}", option_name(option)),
        };
        self.error(option, REP_ERR_INVALID, &text);
    }
}

/// An export name shortened for an error message.
fn quote_name(name: &str) -> String {
    if name.chars().count() < QUOTED_NAME_LEN {
        return name.to_string();
    }
    let short: String = name.chars().take(QUOTED_NAME_LEN).collect();
    format!("{short}...")
}

/// Reads and drops `len` bytes of option data.
pub async fn skip<R: AsyncRead + Unpin>(reader: &mut R, len: u32) -> io::Result<()> {
    let copied = tokio::io::copy(&mut reader.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseError {
    /// A length points past the end of the option data.
    Short,
    NameTooLong(u32),
    /// Not UTF-8, or contains NUL.
    BadString,
}

/// Reads fields of option data in order.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], ParseError> {
        if len > self.data.len() {
            return Err(ParseError::Short);
        }
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(be16(self.bytes(2)?, 0))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(be32(self.bytes(4)?, 0))
    }

    /// A 32-bit length then that many bytes of string.
    fn string(&mut self) -> Result<&'a str, ParseError> {
        let len = self.u32()?;
        if len as usize > MAX_STRING_LEN {
            return Err(ParseError::NameTooLong(len));
        }
        parse_str(self.bytes(len as usize)?)
    }
}

fn parse_str(bytes: &[u8]) -> Result<&str, ParseError> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\0') => Ok(s),
        _ => Err(ParseError::BadString),
    }
}
