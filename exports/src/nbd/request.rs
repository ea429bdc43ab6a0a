//! Checking a request before anything touches the export: command, flags,
//! permissions, bounds and sizes, with the errno the spec names for each
//! failure. A rejected request has no effect.

use block::stats::IoKind;

use super::codec::{ReplyMode, Request};
use super::proto::*;

/// The largest payload (write data, read reply) of one request: 32 MiB, the
/// size the spec says no client should consider a denial of service.
pub const MAX_PAYLOAD: u64 = 32 << 20;

/// A request that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        df: bool,
    },
    Write {
        fua: bool,
    },
    Flush,
    Trim {
        fua: bool,
    },
    Cache,
    WriteZeroes {
        fua: bool,
        may_unmap: bool,
        fast: bool,
    },
    BlockStatus {
        req_one: bool,
    },
}

impl Command {
    /// Whether the request only reads (and may be dropped halfway when
    /// nobody waits for its reply); writes, flushes and the like finish.
    pub fn only_reads(&self) -> bool {
        matches!(
            self,
            Command::Read { .. } | Command::Cache | Command::BlockStatus { .. }
        )
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub error: u32,
    pub message: String,
}

fn reject(error: u32, message: impl Into<String>) -> Rejection {
    Rejection {
        error,
        message: message.into(),
    }
}

/// What the checks need to know about the connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub mode: ReplyMode,
    pub size: u64,
    pub writable: bool,
    /// Minimum block size the client promised to honour (1 if none).
    pub alignment: u32,
    /// Metadata contexts selected for this export.
    pub contexts: usize,
}

/// Bytes of payload that follow the header of `req` on the wire.
pub fn payload_len(req: &Request, mode: ReplyMode) -> u64 {
    let extended_payload = mode == ReplyMode::Extended && req.flags & CMD_FLAG_PAYLOAD_LEN != 0;
    if req.command == CMD_WRITE || extended_payload {
        req.length
    } else {
        0
    }
}

/// What a request counts as in the backend's statistics (cache and block
/// status requests count as nothing, as in QEMU).
pub fn io_kind(command: u16) -> Option<IoKind> {
    match command {
        CMD_READ => Some(IoKind::Read),
        CMD_WRITE | CMD_WRITE_ZEROES => Some(IoKind::Write),
        CMD_FLUSH => Some(IoKind::Flush),
        CMD_TRIM => Some(IoKind::Unmap),
        _ => None,
    }
}

/// Checks `req` (whose payload, if any, has been read) against `limits`.
pub fn check(req: &Request, limits: &Limits) -> Result<Command, Rejection> {
    let has_payload = payload_len(req, limits.mode) > 0;
    let mut valid_flags = CMD_FLAG_FUA;
    let command = match req.command {
        CMD_READ => {
            if limits.mode.structured() {
                valid_flags |= CMD_FLAG_DF;
            }
            Command::Read {
                df: req.flags & CMD_FLAG_DF != 0,
            }
        }
        CMD_WRITE => {
            if limits.mode == ReplyMode::Extended {
                valid_flags |= CMD_FLAG_PAYLOAD_LEN;
            }
            Command::Write {
                fua: req.flags & CMD_FLAG_FUA != 0,
            }
        }
        CMD_FLUSH => Command::Flush,
        CMD_TRIM => Command::Trim {
            fua: req.flags & CMD_FLAG_FUA != 0,
        },
        CMD_CACHE => Command::Cache,
        CMD_WRITE_ZEROES => {
            valid_flags |= CMD_FLAG_NO_HOLE;
            if limits.writable {
                valid_flags |= CMD_FLAG_FAST_ZERO;
            }
            Command::WriteZeroes {
                fua: req.flags & CMD_FLAG_FUA != 0,
                may_unmap: req.flags & CMD_FLAG_NO_HOLE == 0,
                fast: req.flags & CMD_FLAG_FAST_ZERO != 0,
            }
        }
        CMD_BLOCK_STATUS => {
            valid_flags |= CMD_FLAG_REQ_ONE;
            Command::BlockStatus {
                req_one: req.flags & CMD_FLAG_REQ_ONE != 0,
            }
        }
        other => {
            return Err(reject(
                EINVAL,
                format!("invalid request type ({other}) received"),
            ))
        }
    };
    let name = command_name(req.command);
    if req.flags & !valid_flags != 0 || (has_payload && req.command != CMD_WRITE) {
        return Err(reject(
            EINVAL,
            format!(
                "unsupported flags for command {name} (got {:#x})",
                req.flags
            ),
        ));
    }
    let writes = matches!(
        command,
        Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }
    );
    if writes && !limits.writable {
        return Err(reject(EPERM, "Export is read-only"));
    }
    if command == Command::Flush {
        return Ok(command);
    }
    let in_bounds = req.offset <= limits.size && req.length <= limits.size - req.offset;
    if !in_bounds {
        let error = if matches!(command, Command::Write { .. } | Command::WriteZeroes { .. }) {
            ENOSPC
        } else {
            EINVAL
        };
        return Err(reject(
            error,
            format!(
                "operation past EOF; From: {}, Len: {}, Size: {}",
                req.offset, req.length, limits.size
            ),
        ));
    }
    let align = u64::from(limits.alignment.max(1));
    if !(req.offset | req.length).is_multiple_of(align) {
        return Err(reject(
            EINVAL,
            format!("request not aligned to the minimum block size {align}"),
        ));
    }
    match command {
        Command::Read { .. } if req.length > MAX_PAYLOAD => Err(reject(
            EOVERFLOW,
            format!(
                "len ({}) is larger than max len ({MAX_PAYLOAD})",
                req.length
            ),
        )),
        // QEMU's limit too: a cache request is a read nobody receives.
        Command::Cache if req.length > MAX_PAYLOAD => Err(reject(
            EINVAL,
            format!(
                "len ({}) is larger than max len ({MAX_PAYLOAD})",
                req.length
            ),
        )),
        Command::BlockStatus { .. } if req.length == 0 => {
            Err(reject(EINVAL, "need non-zero length"))
        }
        Command::BlockStatus { .. } if limits.contexts == 0 => {
            Err(reject(EINVAL, "CMD_BLOCK_STATUS not negotiated"))
        }
        _ => Ok(command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        mode: ReplyMode::Structured,
        size: 1 << 20,
        writable: true,
        alignment: 1,
        contexts: 1,
    };

    fn req(command: u16, flags: u16, offset: u64, length: u64) -> Request {
        Request {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    fn error(r: Result<Command, Rejection>) -> u32 {
        r.unwrap_err().error
    }

    #[test]
    fn commands_and_flags() {
        assert_eq!(
            check(&req(CMD_READ, CMD_FLAG_DF, 0, 512), &LIMITS),
            Ok(Command::Read { df: true })
        );
        let simple = Limits {
            mode: ReplyMode::Simple,
            ..LIMITS
        };
        assert_eq!(
            error(check(&req(CMD_READ, CMD_FLAG_DF, 0, 512), &simple)),
            EINVAL
        );
        assert_eq!(
            error(check(&req(CMD_FLUSH, CMD_FLAG_NO_HOLE, 0, 0), &LIMITS)),
            EINVAL
        );
        assert_eq!(error(check(&req(42, 0, 0, 0), &LIMITS)), EINVAL);
        assert_eq!(
            check(
                &req(
                    CMD_WRITE_ZEROES,
                    CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                    0,
                    4096
                ),
                &LIMITS
            ),
            Ok(Command::WriteZeroes {
                fua: false,
                may_unmap: false,
                fast: true
            })
        );
    }

    #[test]
    fn permissions_bounds_and_sizes() {
        let read_only = Limits {
            writable: false,
            ..LIMITS
        };
        assert_eq!(error(check(&req(CMD_WRITE, 0, 0, 512), &read_only)), EPERM);
        assert_eq!(error(check(&req(CMD_TRIM, 0, 0, 512), &read_only)), EPERM);
        assert_eq!(
            error(check(&req(CMD_WRITE, 0, (1 << 20) - 1, 2), &LIMITS)),
            ENOSPC
        );
        assert_eq!(
            error(check(&req(CMD_WRITE_ZEROES, 0, u64::MAX, 2), &LIMITS)),
            ENOSPC
        );
        assert_eq!(error(check(&req(CMD_READ, 0, 1 << 20, 1), &LIMITS)), EINVAL);
        assert!(check(&req(CMD_READ, 0, 1 << 20, 0), &LIMITS).is_ok());
        let huge = Limits {
            size: 1 << 40,
            ..LIMITS
        };
        assert_eq!(
            error(check(&req(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &huge)),
            EOVERFLOW
        );
        assert!(check(&req(CMD_WRITE_ZEROES, 0, 0, 1 << 39), &huge).is_ok());
        let aligned = Limits {
            alignment: 512,
            ..LIMITS
        };
        assert_eq!(error(check(&req(CMD_READ, 0, 1, 512), &aligned)), EINVAL);
    }

    #[test]
    fn block_status_needs_contexts_and_length() {
        let none = Limits {
            contexts: 0,
            ..LIMITS
        };
        assert_eq!(
            error(check(&req(CMD_BLOCK_STATUS, 0, 0, 512), &none)),
            EINVAL
        );
        assert_eq!(
            error(check(&req(CMD_BLOCK_STATUS, 0, 0, 0), &LIMITS)),
            EINVAL
        );
        assert_eq!(
            check(&req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 512), &LIMITS),
            Ok(Command::BlockStatus { req_one: true })
        );
    }

    #[test]
    fn extended_payloads() {
        let ext = Limits {
            mode: ReplyMode::Extended,
            ..LIMITS
        };
        let flush = req(CMD_FLUSH, CMD_FLAG_PAYLOAD_LEN, 0, 8);
        assert_eq!(payload_len(&flush, ReplyMode::Extended), 8);
        assert_eq!(payload_len(&flush, ReplyMode::Structured), 0);
        assert_eq!(error(check(&flush, &ext)), EINVAL);
        assert!(check(&req(CMD_WRITE, CMD_FLAG_PAYLOAD_LEN, 0, 8), &ext).is_ok());
    }
}
