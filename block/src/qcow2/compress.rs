//! Decompression of compressed clusters: raw deflate (zlib's window of
//! 4 KiB, no header) or zstd frames, as the header's compression type says.
//! The compressed bytes may be followed by unrelated bytes (the rest of
//! the last 512-byte sector): decompression stops once a cluster is full.

use std::io::Read;

use super::header::CompressionType;
use crate::error::{BlockError, BlockResult, ErrorKind};

fn failed(what: &str) -> BlockError {
    BlockError {
        kind: ErrorKind::Io,
        message: format!("Could not decompress a qcow2 cluster: {what}"),
        errno: Some(libc::EIO),
    }
}

/// Decompresses `input` into `out` (one cluster), which must be filled
/// exactly.
pub fn decompress(kind: CompressionType, input: &[u8], out: &mut [u8]) -> BlockResult<()> {
    match kind {
        CompressionType::Zlib => inflate_raw(input, out),
        CompressionType::Zstd => zstd_frames(input, out),
    }
}

fn inflate_raw(input: &[u8], out: &mut [u8]) -> BlockResult<()> {
    let mut inflater = flate2::Decompress::new(false);
    let status = inflater
        .decompress(input, out, flate2::FlushDecompress::Finish)
        .map_err(|_| failed("invalid deflate data"))?;
    // QEMU accepts the end of the stream or a full buffer.
    let produced = inflater.total_out() as usize;
    match status {
        _ if produced == out.len() => Ok(()),
        _ => Err(failed("deflate data ended early")),
    }
}

fn zstd_frames(input: &[u8], out: &mut [u8]) -> BlockResult<()> {
    let mut filled = 0;
    let mut rest = input;
    while filled < out.len() {
        if rest.is_empty() {
            return Err(failed("zstd data ended early"));
        }
        let before = rest.len();
        let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut rest)
            .map_err(|_| failed("invalid zstd frame header"))?;
        loop {
            let n = frame
                .read(&mut out[filled..])
                .map_err(|_| failed("invalid zstd data"))?;
            if n == 0 {
                break;
            }
            filled += n;
            if filled == out.len() {
                return Ok(());
            }
        }
        drop(frame);
        if rest.len() == before {
            return Err(failed("zstd frame made no progress"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn inflates_raw_deflate_with_trailing_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let mut compressed = enc.finish().unwrap();
        compressed.extend_from_slice(&[0xaa; 300]);
        let mut out = vec![0u8; 65536];
        decompress(CompressionType::Zlib, &compressed, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn short_or_bad_input_fails() {
        let mut out = vec![0u8; 4096];
        assert!(decompress(CompressionType::Zlib, &[0xff; 10], &mut out).is_err());
        assert!(decompress(CompressionType::Zstd, &[0x00; 10], &mut out).is_err());
        assert!(decompress(CompressionType::Zstd, &[], &mut out).is_err());
    }
}
