//! Format probing, as QEMU's for the two formats storaged has: an image
//! whose first bytes are the qcow2 magic is `qcow2`, anything else
//! (including a file too short for any header) is `raw`.

use std::os::unix::fs::FileExt;

/// The qcow2 header's magic, `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// The format of the image file at `path`; an error only if the file
/// cannot be opened or read.
pub fn probe_format(path: &str) -> std::io::Result<&'static str> {
    let mut magic = [0u8; QCOW2_MAGIC.len()];
    let read = std::fs::File::open(path).and_then(|file| file.read_exact_at(&mut magic, 0));
    match read {
        Ok(()) if magic == QCOW2_MAGIC => Ok("qcow2"),
        Ok(()) => Ok("raw"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok("raw"),
        Err(e) => Err(e),
    }
}
