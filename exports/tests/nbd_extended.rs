//! Extended headers (`NBD_OPT_EXTENDED_HEADERS`) through a raw client:
//! 64-bit effect lengths, extended reply chunks, `BLOCK_STATUS_EXT`, and
//! payloads on commands that take none.

mod common;

use common::raw::Raw;
use common::{fill, read, ExportSpec, Harness};
use exports::nbd::proto::*;

const MIB: u64 = 1 << 20;

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
}

fn be64(data: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(data[at..at + 8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_headers_end_to_end() {
    let h = Harness::start().await;
    let image = h.image("ext.raw", 8 * MIB);
    fill(&image, 2 * MIB, 4096, 0x31);
    h.export_file(
        &ExportSpec {
            allocation_depth: true,
            ..ExportSpec::new("ext")
        },
        &image,
    )
    .await;
    let mut c = Raw::connect(&h.socket).await;
    // Structured replies after extended headers are refused as the
    // extension says.
    let (size, flags) = c
        .go_extended("ext", &["base:allocation", "qemu:allocation-depth"])
        .await;
    assert_eq!(size, 8 * MIB);
    assert_ne!(flags & FLAG_SEND_DF, 0);

    // Write with a payload length, read it back.
    c.request(CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 1, MIB, 4, b"abcd")
        .await;
    let reply = c.chunk().await;
    assert_eq!(
        (reply.cookie, reply.kind, reply.offset),
        (1, REPLY_TYPE_NONE, MIB)
    );
    assert!(reply.done());
    c.request(0, CMD_READ, 2, MIB, 4, &[]).await;
    let reply = c.chunk().await;
    assert_eq!(reply.kind, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(be64(&reply.data, 0), MIB);
    assert_eq!(&reply.data[8..], b"abcd");

    eprintln!("step read ok");
    // Block status with a 64-bit effect length larger than 4 GiB.
    c.request(0, CMD_BLOCK_STATUS, 3, 0, 8 * MIB, &[]).await;
    let mut contexts = Vec::new();
    loop {
        let chunk = c.chunk().await;
        assert_eq!(chunk.kind, REPLY_TYPE_BLOCK_STATUS_EXT);
        let id = be32(&chunk.data, 0);
        let count = be32(&chunk.data, 4) as usize;
        assert_eq!(chunk.data.len(), 8 + 16 * count);
        let descriptors: Vec<(u64, u64)> = (0..count)
            .map(|i| {
                (
                    be64(&chunk.data, 8 + 16 * i),
                    be64(&chunk.data, 16 + 16 * i),
                )
            })
            .collect();
        contexts.push((id, descriptors));
        if chunk.done() {
            break;
        }
    }
    assert_eq!(contexts.len(), 2);
    let base = &contexts.iter().find(|c| c.0 == 0).unwrap().1;
    assert_eq!(base[0], (MIB, 3));
    assert_eq!(base[1].1, 0);
    let depth = &contexts.iter().find(|c| c.0 == 1).unwrap().1;
    assert_eq!(depth, &[(8 * MIB, 1)]);

    eprintln!("step bs ok");
    // A payload on a command without one is read and refused.
    c.request(CMD_FLAG_PAYLOAD_LEN, CMD_FLUSH, 4, 0, 8, &[7; 8])
        .await;
    let reply = c.chunk().await;
    assert_eq!((reply.cookie, reply.error()), (4, EINVAL));

    eprintln!("step payload ok");
    // Write zeroes over everything with one 64-bit effect length.
    c.request(0, CMD_WRITE_ZEROES, 5, 0, 8 * MIB, &[]).await;
    let reply = c.chunk().await;
    assert_eq!((reply.cookie, reply.kind), (5, REPLY_TYPE_NONE));
    eprintln!("wz1 ok");
    c.request(0, CMD_WRITE_ZEROES, 6, 0, 1 << 40, &[]).await;
    let reply = c.chunk().await;
    assert_eq!((reply.cookie, reply.error()), (6, ENOSPC));
    eprintln!("wz2 ok");
    c.request(0, CMD_FLUSH, 7, 0, 0, &[]).await;
    assert_eq!(c.chunk().await.kind, REPLY_TYPE_NONE);
    assert_eq!(read(&image, MIB, 4), vec![0; 4]);
    assert_eq!(read(&image, 2 * MIB, 4096), vec![0; 4096]);

    // A compact header (padded to the extended size) is now a bad magic:
    // the connection closes.
    let compact = common::raw::encode_request(false, 0, CMD_READ, 8, 0, 512, &[0; 4]);
    use tokio::io::AsyncWriteExt;
    c.stream.write_all(&compact).await.unwrap();
    assert!(c.closed().await);
    h.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_headers_option_rules() {
    let h = Harness::start().await;
    let image = h.image("x.raw", MIB);
    h.export_file(&ExportSpec::new("x"), &image).await;
    let mut c = Raw::connect(&h.socket).await;
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[]).await[0].kind, REP_ACK);
    assert_eq!(c.option(OPT_EXTENDED_HEADERS, &[]).await[0].kind, REP_ACK);
    assert_eq!(
        c.option(OPT_EXTENDED_HEADERS, &[]).await[0].kind,
        REP_ERR_INVALID
    );
    assert_eq!(
        c.option(OPT_STRUCTURED_REPLY, &[]).await[0].kind,
        REP_ERR_EXT_HEADER_REQD
    );
    assert_eq!(
        c.option(OPT_EXTENDED_HEADERS, b"x").await[0].kind,
        REP_ERR_INVALID
    );
    // NBD_OPT_EXPORT_NAME is forbidden once extended headers are on.
    c.send_option(OPT_EXPORT_NAME, b"x").await;
    assert!(c.closed().await);
    h.wait_idle().await;
}
