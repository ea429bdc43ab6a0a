//! Randomised abuse of the server: hundreds of sessions of mutated
//! handshakes and requests (random options, lengths that lie, unknown
//! commands and flags, truncated payloads, garbage). The server must
//! neither crash nor hang nor leak a connection, and a well-behaved client
//! must be served correctly afterwards.

mod common;

use std::time::Duration;

use common::raw::{encode_request, meta_query, Raw};
use common::{fill, ExportSpec, Harness};
use exports::nbd::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const MIB: u64 = 1 << 20;
const SESSIONS: u64 = 400;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn option(code: u32, data: &[u8], claimed_len: u32) -> Vec<u8> {
    let mut out = IHAVEOPT.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&claimed_len.to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        data.extend_from_slice(&info.to_be_bytes());
    }
    data
}

/// Bytes of one abusive session after the greeting.
fn session(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let flags = rng.pick(&[3u32, 3, 3, 1, 0, 7, u32::MAX]);
    out.extend_from_slice(&flags.to_be_bytes());
    let options = rng.below(6);
    for _ in 0..options {
        let code = rng.pick(&[
            OPT_LIST,
            OPT_INFO,
            OPT_STRUCTURED_REPLY,
            OPT_EXTENDED_HEADERS,
            OPT_LIST_META_CONTEXT,
            OPT_SET_META_CONTEXT,
            OPT_STARTTLS,
            99,
            0,
            u32::MAX,
        ]);
        let mut data = match code {
            OPT_INFO => go_data(
                rng.pick(&["ro", "rw", "missing", ""]),
                &[INFO_NAME, INFO_BLOCK_SIZE, 77],
            ),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => meta_query(
                rng.pick(&["ro", "rw", "nope"]),
                &[rng.pick(&[
                    "base:",
                    "qemu:",
                    "base:allocation",
                    "qemu:allocation-depth",
                    "x:y",
                    ":",
                    "",
                ])],
            ),
            _ => {
                let n = rng.below(16) as usize;
                rng.bytes(n)
            }
        };
        // Sometimes cut the data short or let the length lie.
        if rng.below(4) == 0 && !data.is_empty() {
            let cut = rng.below(data.len() as u64) as usize;
            data.truncate(cut);
        }
        let claimed = match rng.below(8) {
            0 => data.len() as u32 + rng.below(64) as u32,
            1 => rng.next() as u32,
            _ => data.len() as u32,
        };
        out.extend(option(code, &data, claimed));
    }
    if rng.below(3) == 0 {
        let n = rng.below(200) as usize;
        out.extend(rng.bytes(n));
        return out;
    }
    let export = rng.pick(&["ro", "rw", "missing"]);
    out.extend(option(
        OPT_GO,
        &go_data(export, &[]),
        go_data(export, &[]).len() as u32,
    ));
    let extended = rng.below(2) == 0;
    for cookie in 0..rng.below(12) {
        let command = rng.pick(&[
            CMD_READ,
            CMD_WRITE,
            CMD_FLUSH,
            CMD_TRIM,
            CMD_CACHE,
            CMD_WRITE_ZEROES,
            CMD_BLOCK_STATUS,
            9,
            200,
        ]);
        let flags = rng.below(64) as u16;
        let any = rng.next();
        let offset = rng.pick(&[0, 4096, 4 * MIB - 512, 4 * MIB, u64::MAX - 10, any]);
        let any = rng.next();
        let length = rng.pick(&[0, 1, 512, 65536, 40 * MIB, u32::MAX as u64, any]);
        let payload_len = if command == CMD_WRITE || flags & CMD_FLAG_PAYLOAD_LEN != 0 {
            (length as usize).min(70_000)
        } else {
            0
        };
        let sent = payload_len.min(rng.below(70_000) as usize + 1);
        let payload = rng.bytes(sent);
        out.extend(encode_request(
            extended || rng.below(10) == 0,
            flags,
            command,
            cookie,
            offset,
            length,
            &payload,
        ));
    }
    if rng.below(2) == 0 {
        out.extend(encode_request(extended, 0, CMD_DISC, 0, 0, 0, &[]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sessions_do_no_harm() {
    let h = Harness::start_with(0, 2).await;
    let ro = h.image("ro.raw", 4 * MIB);
    fill(&ro, 0, 4 * MIB as usize, 0x5a);
    h.export_file(
        &ExportSpec {
            writable: false,
            allocation_depth: true,
            ..ExportSpec::new("ro")
        },
        &ro,
    )
    .await;
    let rw = h.image("rw.raw", 4 * MIB);
    h.export_file(&ExportSpec::new("rw"), &rw).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..SESSIONS {
        let bytes = session(&mut rng);
        let mut s = UnixStream::connect(&h.socket).await.unwrap();
        let mut greeting = [0; 18];
        s.read_exact(&mut greeting).await.unwrap();
        // The server may close early; a failed write is fine.
        let _ = s.write_all(&bytes).await;
        let mut sink = vec![0; 1 << 16];
        let drain = async {
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(5), drain).await;
    }
    // Sessions left open still time out of the handshake or end with the
    // socket; none may stay.
    for _ in 0..400 {
        if h.connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.connections(), 0, "connections leaked");
    assert_eq!(common::read(&ro, 0, 4096), vec![0x5a; 4096]);
    let mut good = Raw::connect(&h.socket).await;
    assert_eq!(
        good.option(OPT_STRUCTURED_REPLY, &[]).await[0].kind,
        REP_ACK
    );
    good.go("ro").await;
    good.request(0, CMD_READ, 1, 4096, 4096, &[]).await;
    let reply = good.chunk().await;
    assert!(reply.data[8..].iter().all(|b| *b == 0x5a));
    // Both exports can still be removed safely: no client holds them.
    drop(good);
    h.wait_idle().await;
    h.exports
        .del("ro", schema::export::BlockExportRemoveMode::Safe)
        .unwrap();
    h.exports
        .del("rw", schema::export::BlockExportRemoveMode::Safe)
        .unwrap();
}
