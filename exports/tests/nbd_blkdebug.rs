//! The `blkdebug` filter under an NBD export, driven by real clients
//! (libnbd's Python bindings, `qemu-io`).
//!
//! As in qemu-storage-daemon, `read_aio` and `write_aio` are raised by a
//! format above the filter (`raw`, `qcow2`, which raises `l2_load` too),
//! flushes raise `flush_to_disk` on the flushed node's child, and a
//! `blkdebug` node exported bare sees only what the block layer raises on
//! it (`none`, `pwritev`, ...). An
//! injected error reaches the client as the NBD error the spec names for
//! its errno and changes nothing in the file. The limit options make the
//! node layer pad and split: a recording filter under the `blkdebug`
//! node sees only aligned pieces within the maxima.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use block::{BlockDriver, BlockResult, IoBuf, NodeChild, WriteFlags, ZeroFlags};
use common::{fill, nbdsh, read, run_ok, ExportSpec, Harness};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// Adds a node from its `blockdev-add` options.
async fn add(h: &Harness, options: Value) {
    let options = schema::from_json(options).expect("blockdev options");
    h.graph.blockdev_add(&options).await.expect("node opens");
}

/// A file of `size` bytes of `byte`, as node `node`.
async fn file_node(h: &Harness, node: &str, size: u64, byte: u8) -> std::path::PathBuf {
    let image = h.image(&format!("{node}.raw"), size);
    fill(&image, 0, size as usize, byte);
    h.node(node, &image).await;
    image
}

/// Runs `ops` (a Python list of `(function, args...)` over the libnbd
/// handle `h`) against `uri` in order; the errno each got, 0 for success.
/// The client sends requests as they are, without asking for the block
/// sizes (which would oblige it to keep to them).
async fn errnos(uri: &str, ops: &str) -> Vec<i32> {
    let script = format!(
        r#"
import nbd, sys
h = nbd.NBD()
h.set_request_block_size(False)
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
def run(f, *args):
    try:
        f(*args)
        return 0
    except nbd.Error as e:
        print(f"{{f.__name__}}: {{e}}")
        return e.errnum
print(" ".join(str(run(*op)) for op in {ops}))
"#
    );
    let out = nbdsh(uri, &script).await;
    eprintln!("{out}");
    out.lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().expect("errno"))
        .collect()
}

/// Exports `raw` over `blkdebug` (named `name`) over file node `file`.
async fn export_raw_over_blkdebug(h: &Harness, name: &str, file: &str, blkdebug: Value) {
    let mut blkdebug = blkdebug;
    blkdebug["driver"] = json!("blkdebug");
    blkdebug["node-name"] = json!(format!("{name}-dbg"));
    blkdebug["image"] = json!(file);
    add(
        h,
        json!({"driver": "raw", "node-name": name, "file": blkdebug}),
    )
    .await;
    h.export(&ExportSpec::new(name), name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errnos_reach_the_client_as_nbd_errors_and_change_nothing() {
    let h = Harness::start().await;
    // EIO, ENOSPC, EINVAL, EPERM are NBD_EIO, NBD_ENOSPC, NBD_EINVAL,
    // NBD_EPERM on the wire, which libnbd turns back into the errno.
    for errno in [libc::EIO, libc::ENOSPC, libc::EINVAL, libc::EPERM] {
        for event in ["read_aio", "write_aio"] {
            let name = format!("{event}-{errno}");
            let file = format!("{name}-file");
            let image = file_node(&h, &file, MIB, 0x5a).await;
            let rule = json!({"inject-error": [{"event": event, "errno": errno}]});
            export_raw_over_blkdebug(&h, &name, &file, rule).await;
            let got = errnos(
                &h.uri(&name),
                r#"[(h.pread, 4096, 0), (h.pwrite, b"\xaa" * 4096, 8192), (h.zero, 4096, 0)]"#,
            )
            .await;
            // A read arms a read_aio rule at once; a write_aio rule is
            // armed by the first write. Armed, a rule fails every kind of
            // request.
            let expected = if event == "read_aio" {
                [errno, errno, errno]
            } else {
                [0, errno, errno]
            };
            assert_eq!(got, expected, "{name}");
            assert!(
                read(&image, 0, MIB as usize).iter().all(|&b| b == 0x5a),
                "{name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_blkdebug_node_sees_only_the_events_raised_on_it() {
    let h = Harness::start().await;
    let ops = r#"[(h.pread, 4096, 0), (h.pwrite, b"\xaa" * 4096, 0), (h.pread, 4096, 0)]"#;
    // Nothing above raises read_aio: the rule never arms (as in QSD).
    // `pwritev` comes with every write, `none` when the node opens.
    for (event, expected) in [
        ("read_aio", [0, 0, 0]),
        ("pwritev", [0, 28, 28]),
        ("none", [28, 28, 28]),
    ] {
        let file = format!("{event}-file");
        let image = file_node(&h, &file, MIB, 0x5a).await;
        add(
            &h,
            json!({"driver": "blkdebug", "node-name": event, "image": file,
                   "inject-error": [{"event": event, "errno": 28}]}),
        )
        .await;
        h.export(&ExportSpec::new(event), event);
        assert_eq!(errnos(&h.uri(event), ops).await, expected, "{event}");
        let byte = if event == "read_aio" { 0xaa } else { 0x5a };
        assert_eq!(read(&image, 0, 4096), vec![byte; 4096], "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_fails_one_request_and_sector_only_the_requests_covering_it() {
    let h = Harness::start().await;
    let image = file_node(&h, "once-file", MIB, 0x5a).await;
    let rule = json!({"inject-error": [{"event": "read_aio", "errno": 5, "once": true}]});
    export_raw_over_blkdebug(&h, "once", "once-file", rule).await;
    let got = errnos(
        &h.uri("once"),
        r#"[(h.pread, 512, 0), (h.pread, 512, 0), (h.pwrite, b"\x11" * 512, 0), (h.pread, 512, 0)]"#,
    )
    .await;
    assert_eq!(got, [5, 0, 0, 0]);
    assert_eq!(read(&image, 0, 512), vec![0x11; 512]);

    // Sector 16 is byte 8192; the rule is armed from the start.
    let image = file_node(&h, "sector-file", MIB, 0x5a).await;
    add(
        &h,
        json!({"driver": "blkdebug", "node-name": "sector", "image": "sector-file",
               "inject-error": [{"event": "none", "errno": 22, "sector": 16}]}),
    )
    .await;
    h.export(&ExportSpec::new("sector"), "sector");
    let got = errnos(
        &h.uri("sector"),
        r#"[(h.pread, 8192, 0), (h.pread, 512, 8192), (h.pread, 8192, 4096),
            (h.pread, 512, 8704), (h.pwrite, b"\x22" * 1024, 7680), (h.pwrite, b"\x33" * 512, 8704),
            (h.flush,)]"#,
    )
    .await;
    assert_eq!(got, [0, 22, 22, 0, 22, 0, 0]);
    assert_eq!(read(&image, 7680, 1024), vec![0x5a; 1024]);
    assert_eq!(read(&image, 8704, 512), vec![0x33; 512]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_state_changes_which_rules_apply_and_flushes_raise_flush_to_disk() {
    let h = Harness::start().await;
    // The rules file and the options add up, the file's rules first.
    let config = h.dir.path().join("rules.conf");
    std::fs::write(
        &config,
        "# writes in state 2 fail\n[inject-error]\nevent = \"write_aio\"\nstate = \"2\"\nerrno = \"28\"\n",
    )
    .unwrap();
    let image = file_node(&h, "state-file", MIB, 0x5a).await;
    let options = json!({
        "config": config,
        // state 1 --write--> 2 --write--> 3: only the second write fails,
        // the rule then stays armed until an event arms others.
        "set-state": [
            {"event": "write_aio", "state": 1, "new_state": 2},
            {"event": "write_aio", "state": 2, "new_state": 3}
        ],
        "inject-error": [{"event": "write_aio", "state": 3, "errno": 1, "iotype": "read"}]
    });
    export_raw_over_blkdebug(&h, "state", "state-file", options).await;
    let got = errnos(
        &h.uri("state"),
        r#"[(h.pwrite, b"\x01" * 512, 0), (h.pwrite, b"\x02" * 512, 512), (h.pread, 512, 0),
            (h.pwrite, b"\x03" * 512, 1024), (h.pread, 512, 0), (h.pwrite, b"\x04" * 512, 1536)]"#,
    )
    .await;
    // Third write, in state 3: the read-only rule arms instead, so that
    // write passes and reads fail with EPERM.
    assert_eq!(got, [0, 28, 28, 0, 1, 0]);
    assert_eq!(read(&image, 0, 512), vec![0x01; 512]);
    assert_eq!(read(&image, 512, 512), vec![0x5a; 512]);
    assert_eq!(read(&image, 1024, 512), vec![0x03; 512]);

    file_node(&h, "flush-file", MIB, 0x5a).await;
    let rule = json!({"inject-error": [{"event": "flush_to_disk", "iotype": "flush", "errno": 5}]});
    export_raw_over_blkdebug(&h, "flush", "flush-file", rule).await;
    let got = errnos(
        &h.uri("flush"),
        r#"[(h.pwrite, b"\x01" * 512, 0), (h.flush,), (h.pread, 512, 0), (h.flush,)]"#,
    )
    .await;
    assert_eq!(got, [0, 5, 0, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_raises_its_data_table_and_flush_events() {
    let h = Harness::start().await;
    // Each rule on its own copy of an image whose first 64 KiB are data.
    let cases = [
        (
            "l2_load",
            5,
            r#"[(h.pread, 4096, 0), (h.pread, 4096, 0)]"#,
            [5, 0],
        ),
        (
            "read_aio",
            5,
            r#"[(h.pread, 4096, 0), (h.pread, 4096, 0)]"#,
            [5, 0],
        ),
        (
            "write_aio",
            28,
            r#"[(h.pwrite, b"\xee" * 4096, 0), (h.pread, 4096, 0)]"#,
            [28, 0],
        ),
        (
            "flush_to_disk",
            5,
            r#"[(h.pwrite, b"\x77" * 4096, 0), (h.flush,)]"#,
            [0, 5],
        ),
    ];
    for (event, errno, ops, expected) in cases {
        let image = h.dir.path().join(format!("{event}.qcow2"));
        let path = image.to_str().unwrap();
        run_ok("qemu-img", &["create", "-q", "-f", "qcow2", path, "4M"]).await;
        run_ok(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x77 0 64k", path],
        )
        .await;
        let file = format!("{event}-file");
        h.node(&file, &image).await;
        let mut rule = json!({"event": event, "errno": errno, "once": true});
        if event == "flush_to_disk" {
            rule = json!({"event": event, "errno": errno, "iotype": "flush"});
        }
        add(
            &h,
            json!({"driver": "qcow2", "node-name": event,
                   "file": {"driver": "blkdebug", "node-name": format!("{event}-dbg"),
                            "image": file, "inject-error": [rule]}}),
        )
        .await;
        h.export(&ExportSpec::new(event), event);
        assert_eq!(errnos(&h.uri(event), ops).await, expected, "{event}");
        // What the failed write was to change is as it was.
        run_ok(
            "qemu-io",
            &["-f", "qcow2", "-U", "-r", "-c", "read -P 0x77 0 64k", path],
        )
        .await;
    }
}

/// Records the requests its child receives, then passes them on.
struct Recorder {
    child: Arc<NodeChild>,
    seen: Arc<Mutex<Vec<(char, u64, u64)>>>,
}

impl Recorder {
    fn note(&self, kind: char, offset: u64, len: u64) {
        self.seen.lock().unwrap().push((kind, offset, len));
    }
}

#[async_trait]
impl BlockDriver for Recorder {
    fn format_name(&self) -> &'static str {
        "recorder"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.child)
    }

    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.note('r', offset, buf.len() as u64);
        self.child.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.note('w', offset, buf.len() as u64);
        self.child.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.note('z', offset, len);
        self.child.write_zeroes(offset, len, flags).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.note('d', offset, len);
        self.child.discard(offset, len).await
    }
}

/// A file node `file` with bytes `i % 251`, a recorder over it, and
/// `blkdebug` (with `options`) over the recorder, exported as `dbg`.
async fn recorded_blkdebug(
    h: &Harness,
    options: Value,
) -> (
    std::path::PathBuf,
    Vec<u8>,
    Arc<Mutex<Vec<(char, u64, u64)>>>,
) {
    let model: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let image = h.image("disk.raw", MIB);
    std::fs::write(&image, &model).unwrap();
    h.node("file", &image).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    h.graph
        .add_filter(Some("rec"), "file", move |child| {
            Ok(Box::new(Recorder {
                child,
                seen: record,
            }))
        })
        .await
        .unwrap();
    let mut options = options;
    options["driver"] = json!("blkdebug");
    options["node-name"] = json!("dbg");
    options["image"] = json!("rec");
    add(h, options).await;
    h.export(&ExportSpec::new("dbg"), "dbg");
    (image, model, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_requests_reach_the_child_aligned_and_split() {
    let h = Harness::start().await;
    let (image, mut model, seen) =
        recorded_blkdebug(&h, json!({"align": 4096, "max-transfer": 65536})).await;
    let uri = h.uri("dbg");
    // qemu-io writes and reads odd sizes at odd offsets ...
    let writes = [
        (1000u64, 70000u64, 0x11u8),
        (131071, 3, 0x22),
        (200000, 4097, 0x33),
    ];
    let mut args = Vec::new();
    for (offset, len, byte) in writes {
        args.push(format!("write -P {byte:#x} {offset} {len}"));
        model[offset as usize..(offset + len) as usize].fill(byte);
    }
    for (offset, len, byte) in writes {
        args.push(format!("read -P {byte:#x} {offset} {len}"));
    }
    let mut qemu_io = vec!["-f", "raw"];
    for arg in &args {
        qemu_io.extend(["-c", arg.as_str()]);
    }
    qemu_io.push(&uri);
    run_ok("qemu-io", &qemu_io).await;
    // ... and so does libnbd, without asking for the block sizes, so that
    // the server receives them as they are.
    let out = nbdsh(
        &uri,
        r#"
import nbd, sys
h = nbd.NBD()
h.set_request_block_size(False)
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
h.pwrite(b"\x44" * 77777, 300001)
h.pwrite(b"\x55" * 10, 4090)
print(h.pread(100003, 290000).hex())
"#,
    )
    .await;
    model[300001..300001 + 77777].fill(0x44);
    model[4090..4100].fill(0x55);
    assert_eq!(out.trim(), hex(&model[290000..390003]));
    assert_eq!(read(&image, 0, MIB as usize), model);

    let seen = seen.lock().unwrap();
    for &(kind, offset, len) in seen.iter() {
        assert!(
            offset % 4096 == 0 && len % 4096 == 0 && len > 0 && len <= 65536,
            "{kind} {offset}+{len}"
        );
    }
    // libnbd's first write covers [299008, 380928): its partial blocks
    // are read, then written back with it in a piece of the maximum and
    // the rest.
    for request in [
        ('r', 299008, 4096),
        ('r', 376832, 4096),
        ('w', 299008, 65536),
        ('w', 364544, 16384),
    ] {
        assert!(seen.contains(&request), "{request:?} not in {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroes_and_discards_follow_the_zero_and_discard_limits() {
    let h = Harness::start().await;
    let options = json!({"align": 4096, "opt-write-zero": 16384, "max-write-zero": 65536,
                         "opt-discard": 16384, "max-discard": 65536, "discard": "unmap"});
    let (image, mut model, seen) = recorded_blkdebug(&h, options).await;
    let got = errnos(
        &h.uri("dbg"),
        "[(h.zero, 200000, 1000), (h.trim, 200000, 300000)]",
    )
    .await;
    assert_eq!(got, [0, 0]);
    model[1000..201000].fill(0);
    assert_eq!(read(&image, 0, MIB as usize), model);

    let seen = seen.lock().unwrap();
    let mut kinds = Vec::new();
    for &(kind, offset, len) in seen.iter() {
        assert!(
            offset % 4096 == 0 && len % 4096 == 0 && len > 0 && len <= 65536,
            "{kind} {offset}+{len}"
        );
        // Zeroing below the optimum falls back to writing; discard pieces
        // of the optimum or more start and end on its boundaries.
        match kind {
            'z' => assert!(offset % 16384 == 0 && len % 16384 == 0, "{offset}+{len}"),
            'd' if len >= 16384 => assert!(offset % 16384 == 0 && len % 16384 == 0),
            _ => {}
        }
        kinds.push(kind);
    }
    for kind in ['r', 'w', 'z', 'd'] {
        assert!(kinds.contains(&kind), "no {kind} in {seen:?}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
