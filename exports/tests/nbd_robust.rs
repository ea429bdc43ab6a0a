//! Misbehaving clients: garbage, truncated and stalled requests, bad magic,
//! oversized payloads, vanishing mid-reply. Each costs only its own
//! connection; the others keep working and nothing leaks. Also the
//! connection and handshake limits, and `NBD_CMD_DISC` with requests in
//! flight.

mod common;

use std::time::{Duration, Instant};

use common::raw::{encode_request, Raw, SIMPLE_REPLY};
use common::{fill, ExportSpec, Harness};
use exports::nbd::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const MIB: u64 = 1 << 20;

async fn structured(h: &Harness, export: &str) -> Raw {
    let mut c = Raw::connect(&h.socket).await;
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[]).await[0].kind, REP_ACK);
    c.go(export).await;
    c
}

/// Reads `len` bytes at `offset` and checks they are all `byte`.
async fn check_read(c: &mut Raw, cookie: u64, offset: u64, byte: u8) {
    c.request(0, CMD_READ, cookie, offset, 4096, &[]).await;
    let reply = c.chunk().await;
    assert_eq!(reply.cookie, cookie);
    assert_eq!(reply.kind, REPLY_TYPE_OFFSET_DATA, "{reply:?}");
    assert!(reply.data[8..].iter().all(|b| *b == byte));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_harm_no_one() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", 4 * MIB);
    fill(&image, 0, 4 * MIB as usize, 0x5c);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let mut good = structured(&h, "disk").await;
    check_read(&mut good, 1, 0, 0x5c).await;

    // Garbage instead of the client flags.
    let mut garbage = UnixStream::connect(&h.socket).await.unwrap();
    let mut greeting = [0; 18];
    garbage.read_exact(&mut greeting).await.unwrap();
    garbage.write_all(&[0xff; 1024]).await.unwrap();
    // Garbage instead of an option.
    let mut bad_option = Raw::connect(&h.socket).await;
    bad_option.stream.write_all(&[0x13; 64]).await.unwrap();
    // Garbage instead of a request.
    let mut bad_magic = structured(&h, "disk").await;
    bad_magic.stream.write_all(&[0xab; 28]).await.unwrap();
    // Half a request, then silence.
    let mut truncated = structured(&h, "disk").await;
    let header = encode_request(false, 0, CMD_READ, 9, 0, 4096, &[]);
    truncated.stream.write_all(&header[..10]).await.unwrap();
    // A write whose payload never arrives.
    let mut stalled = structured(&h, "disk").await;
    let header = encode_request(false, 0, CMD_WRITE, 10, 0, MIB, &[0x66; 100]);
    stalled.stream.write_all(&header).await.unwrap();

    assert!(bad_option.closed().await);
    assert!(bad_magic.closed().await);
    let mut byte = [0; 1];
    assert!(matches!(garbage.read(&mut byte).await, Ok(0) | Err(_)));
    for cookie in 2..50 {
        check_read(&mut good, cookie, cookie * 4096, 0x5c).await;
    }
    drop(truncated);
    // The stalled write changed nothing.
    assert_eq!(common::read(&image, 0, 100), vec![0x5c; 100]);

    // Stopping the server does not wait for the stalled client.
    let started = Instant::now();
    h.exports.nbd_server_stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(stalled.closed().await);
    assert!(good.closed().await);
    assert_eq!(h.deleted(), ["disk"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests() {
    let h = Harness::start().await;
    let image = h.image("big.raw", 128 * MIB);
    h.export_file(&ExportSpec::new("big"), &image).await;
    // A read larger than the maximum payload is refused, not fatal.
    let mut c = structured(&h, "big").await;
    c.request(0, CMD_READ, 1, 0, 64 * MIB, &[]).await;
    let reply = c.chunk().await;
    assert_eq!((reply.cookie, reply.error()), (1, EOVERFLOW));
    check_read(&mut c, 2, 0, 0).await;
    // A write payload larger than the maximum closes the connection.
    let header = encode_request(false, 0, CMD_WRITE, 3, 0, 64 * MIB, &[]);
    c.stream.write_all(&header).await.unwrap();
    assert!(c.closed().await);
    // Simple replies: same rules.
    let mut s = Raw::connect(&h.socket).await;
    s.go("big").await;
    s.request(0, CMD_READ, 4, 0, 33 * MIB, &[]).await;
    let reply = s.chunk().await;
    assert_eq!(reply.kind, SIMPLE_REPLY);
    assert_eq!(
        u32::from_be_bytes(reply.data[..4].try_into().unwrap()),
        EOVERFLOW
    );
    drop(s);
    h.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_finishes_requests_in_flight() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", 16 * MIB);
    fill(&image, 0, 16 * MIB as usize, 0x3d);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let mut c = structured(&h, "disk").await;
    let mut burst = Vec::new();
    for cookie in 0..64u64 {
        burst.extend(encode_request(
            false,
            0,
            CMD_READ,
            cookie,
            cookie * 256 * 1024,
            256 * 1024,
            &[],
        ));
    }
    burst.extend(encode_request(false, 0, CMD_DISC, 99, 0, 0, &[]));
    c.stream.write_all(&burst).await.unwrap();
    let mut cookies = Vec::new();
    for _ in 0..64 {
        let reply = c.chunk().await;
        assert_eq!(reply.kind, REPLY_TYPE_OFFSET_DATA);
        assert_eq!(reply.data.len(), 8 + 256 * 1024);
        assert!(reply.data[8..].iter().all(|b| *b == 0x3d));
        cookies.push(reply.cookie);
    }
    cookies.sort();
    assert_eq!(cookies, (0..64).collect::<Vec<_>>());
    assert!(c.closed().await);
    h.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_reply() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", 64 * MIB);
    fill(&image, 0, 64 * MIB as usize, 0x11);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    for _ in 0..4 {
        let mut c = structured(&h, "disk").await;
        let mut burst = Vec::new();
        for cookie in 0..2 {
            burst.extend(encode_request(
                false,
                0,
                CMD_READ,
                cookie,
                cookie * 32 * MIB,
                32 * MIB,
                &[],
            ));
        }
        c.stream.write_all(&burst).await.unwrap();
        let mut some = [0; 4096];
        c.stream.read_exact(&mut some).await.unwrap();
        drop(c);
    }
    h.wait_idle().await;
    assert!(!h.exports.query()[0].shutting_down);
    let mut c = structured(&h, "disk").await;
    check_read(&mut c, 1, 0, 0x11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_enforced() {
    let h = Harness::start_with(2, 10).await;
    let image = h.image("disk.raw", MIB);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let first = structured(&h, "disk").await;
    let _second = Raw::connect(&h.socket).await;
    // The third waits in the backlog: no greeting yet.
    let mut third = UnixStream::connect(&h.socket).await.unwrap();
    let mut greeting = [0; 18];
    let early =
        tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut greeting)).await;
    assert!(early.is_err(), "a third client was served");
    drop(first);
    tokio::time::timeout(Duration::from_secs(2), third.read_exact(&mut greeting))
        .await
        .expect("greeting once a slot is free")
        .unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    // One connection allowed: clients are told not to use several.
    let single = Harness::start_with(1, 10).await;
    let image = single.image("single.raw", MIB);
    single.export_file(&ExportSpec::new("disk"), &image).await;
    let mut c = Raw::connect(&single.socket).await;
    let (_, flags) = c.go("disk").await;
    assert_eq!(flags & FLAG_CAN_MULTI_CONN, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_time_limit() {
    let h = Harness::start_with(0, 1).await;
    let image = h.image("disk.raw", MIB);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let started = Instant::now();
    let mut idle = Raw::connect(&h.socket).await;
    assert!(idle.closed().await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // A client that finishes in time is not affected later.
    let mut c = structured(&h, "disk").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    check_read(&mut c, 1, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_byte_budget_wait_their_turn() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", 128 * MIB);
    fill(&image, 0, 128 * MIB as usize, 0x42);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let mut c = structured(&h, "disk").await;
    // Three 32 MiB reads exceed the in-flight byte budget; behind them,
    // more small requests than the receive buffer holds.
    let mut burst = Vec::new();
    for cookie in 0..3u64 {
        burst.extend(encode_request(
            false,
            0,
            CMD_READ,
            cookie,
            cookie * 32 * MIB,
            32 * MIB,
            &[],
        ));
    }
    const FLUSHES: u64 = 6000;
    for cookie in 3..3 + FLUSHES {
        burst.extend(encode_request(false, 0, CMD_FLUSH, cookie, 0, 0, &[]));
    }
    let (read_half, mut write_half) = c.stream.into_split();
    let sender = tokio::spawn(async move {
        write_half.write_all(&burst).await.unwrap();
        write_half
    });
    c.stream = read_half.reunite(sender.await.unwrap()).unwrap();
    let mut seen = 0;
    let mut data = 0;
    while seen < 3 + FLUSHES {
        let reply = c.chunk().await;
        if reply.kind == REPLY_TYPE_OFFSET_DATA {
            assert!(reply.data[8..].iter().all(|b| *b == 0x42));
            data += reply.data.len() - 8;
        } else {
            // Successes without data come as simple replies, as QEMU's.
            assert_eq!(
                (reply.kind, &reply.data[..]),
                (SIMPLE_REPLY, &[0; 4][..]),
                "{reply:?}"
            );
        }
        seen += 1;
    }
    assert_eq!(data as u64, 96 * MIB);
}
