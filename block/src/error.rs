//! One error type for the whole block layer: a stable kind (which every
//! export maps once to its protocol's errno or status) plus a message.

use schema::QmpError;

/// What went wrong, independent of the protocol that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A request outside the node's bounds, or otherwise malformed.
    InvalidArgument,
    /// A write to something opened read-only, or a missing permission.
    PermissionDenied,
    /// The backing store is full.
    NoSpace,
    /// The driver cannot do this (e.g. write-zeroes with `no_fallback`).
    NotSupported,
    /// The request is too large to be served.
    TooLarge,
    /// The OS reported an I/O error.
    Io,
    /// The image's metadata is inconsistent.
    Corrupt,
}

/// An error of the block layer: what kind, what happened, and the OS errno
/// when a system call failed.
#[derive(Debug, Clone)]
pub struct BlockError {
    /// The stable kind exports map to their protocol's error.
    pub kind: ErrorKind,
    /// A message for people (QEMU's wording where QEMU has one).
    pub message: String,
    /// The OS errno, when the error came from a syscall.
    pub errno: Option<i32>,
}

/// The result of a block layer operation.
pub type BlockResult<T> = Result<T, BlockError>;

impl BlockError {
    /// An error of this kind with this message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            errno: None,
        }
    }

    /// The same error, reporting `errno` (e.g. one a server sent).
    pub fn with_errno(mut self, errno: i32) -> Self {
        self.errno = Some(errno);
        self
    }

    /// Wraps an OS error, keeping its errno and choosing the kind from it.
    pub fn from_io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        let errno = err.raw_os_error();
        let kind = match errno {
            Some(libc::EINVAL) => ErrorKind::InvalidArgument,
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) => {
                ErrorKind::PermissionDenied
            }
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            Some(libc::EOPNOTSUPP) => ErrorKind::NotSupported,
            Some(libc::EFBIG) | Some(libc::EOVERFLOW) => ErrorKind::TooLarge,
            _ => ErrorKind::Io,
        };
        Self {
            kind,
            message: format!("{context}: {}", os_error_text(&err)),
            errno,
        }
    }

    /// The errno a POSIX-like protocol (NBD, FUSE) should report.
    pub fn errno(&self) -> i32 {
        if let Some(e) = self.errno {
            return e;
        }
        match self.kind {
            ErrorKind::InvalidArgument => libc::EINVAL,
            ErrorKind::PermissionDenied => libc::EPERM,
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::NotSupported => libc::ENOTSUP,
            ErrorKind::TooLarge => libc::EOVERFLOW,
            ErrorKind::Io | ErrorKind::Corrupt => libc::EIO,
        }
    }
}

/// The OS error text without Rust's " (os error N)" suffix, as QEMU prints it.
pub fn os_error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(pos) => text[..pos].to_string(),
        None => text,
    }
}

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BlockError {}

impl From<BlockError> for QmpError {
    fn from(e: BlockError) -> Self {
        QmpError::generic(e.message)
    }
}
