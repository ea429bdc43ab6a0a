//! Edge cases driven through libnbd (Python bindings): every handshake
//! option, metadata context queries, refused requests and their errnos,
//! `FAST_ZERO`, `CACHE`, and multi-connection writes made durable by one
//! flush.

mod common;

use common::{fill, nbdsh, read, ExportSpec, Harness};

const MIB: u64 = 1 << 20;

async fn harness_with_two_exports() -> Harness {
    let h = Harness::start().await;
    let rw = h.image("rw.raw", 4 * MIB);
    fill(&rw, MIB, 4096, 0x42);
    h.export_file(
        &ExportSpec {
            description: Some("read-write".into()),
            allocation_depth: true,
            ..ExportSpec::new("rw")
        },
        &rw,
    )
    .await;
    let ro = h.image("ro.raw", 2 * MIB);
    fill(&ro, 0, 512, 0x24);
    h.export_file(
        &ExportSpec {
            writable: false,
            ..ExportSpec::new("ro")
        },
        &ro,
    )
    .await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_options() {
    let h = harness_with_two_exports().await;
    let out = nbdsh(
        &h.uri("rw"),
        r#"
import nbd, sys
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
names = []
h.opt_list(lambda name, desc: names.append((name, desc)))
assert names == [("rw", "read-write"), ("ro", "")], names
# NBD_OPT_INFO on another export, then on a missing one.
h.set_export_name("ro")
h.opt_info()
assert h.get_size() == 2 * 1024 * 1024
assert h.is_read_only()
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * 1024 * 1024
h.set_export_name("missing")
try:
    h.opt_info()
    raise SystemExit("opt_info of a missing export succeeded")
except nbd.Error as e:
    pass
h.set_export_name("rw")
h.set_full_info(True)
h.opt_info()
assert not h.is_read_only()
assert h.get_canonical_export_name() == "rw"
assert h.get_export_description() == "read-write"
assert h.can_fast_zero() and h.can_df() and h.can_cache() and h.can_multi_conn()
assert h.get_structured_replies_negotiated()
h.opt_go()
assert h.pread(4096, 1024 * 1024) == b"\x42" * 4096
h.shutdown()

# NBD_OPT_ABORT ends the session politely.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
h.opt_abort()
assert h.aio_is_closed()

# Without structured replies: simple replies, no DF, no block status.
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_uri(sys.argv[1])
assert not h.get_structured_replies_negotiated()
assert not h.can_df()
assert h.pread(512, 1024 * 1024) == b"\x42" * 512
h.shutdown()

# Plain newstyle: NBD_OPT_EXPORT_NAME with the 124 zero bytes, and
# fixed newstyle without them.
for flags in [0, nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE]:
    h = nbd.NBD()
    h.set_handshake_flags(flags)
    h.connect_uri(sys.argv[1])
    assert h.get_size() == 4 * 1024 * 1024
    assert h.pread(512, 1024 * 1024) == b"\x42" * 512
    h.shutdown()
print("ok")
"#,
    )
    .await;
    assert_eq!(out.trim(), "ok");
    h.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_context_queries() {
    let h = harness_with_two_exports().await;
    let out = nbdsh(
        &h.uri("rw"),
        r#"
import nbd, sys
def listed(h, *queries):
    h.clear_meta_contexts()
    for q in queries:
        h.add_meta_context(q)
    found = []
    h.opt_list_meta_context(lambda name: found.append(name))
    return sorted(found)
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
assert listed(h) == ["base:allocation", "qemu:allocation-depth"], listed(h)
assert listed(h, "qemu:") == ["qemu:allocation-depth"]
assert listed(h, "base:") == ["base:allocation"]
assert listed(h, "qemu:dirty-bitmap:") == []
assert listed(h, "x-unknown:thing", "nocolon") == []
h.set_export_name("ro")
assert listed(h) == ["base:allocation"]
assert listed(h, "qemu:allocation-depth") == []
h.set_export_name("rw")
h.clear_meta_contexts()
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:allocation-depth")
h.opt_go()
assert h.can_meta_context("base:allocation")
assert h.can_meta_context("qemu:allocation-depth")
seen = {}
def extent(ctx, offset, entries, err):
    seen[ctx] = list(entries)
h.block_status(2 * 1024 * 1024, 0, extent)
assert seen["base:allocation"][:4] == [1024 * 1024, 3, 4096, 0], seen
# A raw file is all its own layer: depth 1 everywhere.
assert seen["qemu:allocation-depth"] == [2 * 1024 * 1024, 1], seen
seen.clear()
h.block_status(1024 * 1024, 0, extent, nbd.CMD_FLAG_REQ_ONE)
assert seen["base:allocation"] == [1024 * 1024, 3], seen
h.shutdown()
print("ok")
"#,
    )
    .await;
    assert_eq!(out.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_touch_nothing() {
    let h = harness_with_two_exports().await;
    let out = nbdsh(
        &h.uri("ro"),
        r#"
import errno, nbd, sys
def fails(expected, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == expected, (f.__name__, e.errnum, e)
        return
    raise SystemExit(f.__name__ + " succeeded")
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
fails(errno.EPERM, h.pwrite, b"x" * 512, 0)
fails(errno.EPERM, h.trim, 512, 0)
fails(errno.EPERM, h.zero, 512, 0)
fails(errno.EINVAL, h.pread, 512, size)
fails(errno.EINVAL, h.pread, 1024, size - 512)
fails(errno.EINVAL, h.block_status, 512, 0, lambda *a: 0)
assert h.pread(512, 0) == b"\x24" * 512
h.shutdown()

h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1].replace("/ro?", "/rw?"))
size = h.get_size()
fails(errno.ENOSPC, h.pwrite, b"y" * 1024, size - 512)
fails(errno.ENOSPC, h.zero, 1024, size - 512)
fails(errno.EINVAL, h.trim, 1024, size - 512)
fails(errno.EINVAL, h.cache, 1024, size - 512)
assert h.pread(512, size - 512) == b"\0" * 512
h.shutdown()
print("ok")
"#,
    )
    .await;
    assert_eq!(out.trim(), "ok");
    let rw = h.dir.path().join("rw.raw");
    assert_eq!(read(&rw, 4 * MIB - 512, 512), vec![0; 512]);
    assert_eq!(std::fs::metadata(&rw).unwrap().len(), 4 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroes_cache_and_trim() {
    let h = Harness::start().await;
    let image = h.image("disk.raw", 4 * MIB);
    fill(&image, 0, 4 * MIB as usize, 0x99);
    h.export_file(&ExportSpec::new("disk"), &image).await;
    let out = nbdsh(
        &h.uri("disk"),
        r#"
import errno, nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.can_fast_zero() and h.can_zero() and h.can_trim() and h.can_cache()
h.zero(1024 * 1024, 0, nbd.CMD_FLAG_FAST_ZERO)
h.zero(65536, 2 * 1024 * 1024, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
h.zero(65536, 3 * 1024 * 1024, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
h.trim(65536, 3 * 1024 * 1024 + 65536, nbd.CMD_FLAG_FUA)
h.cache(4 * 1024 * 1024, 0)
assert h.pread(4096, 0) == b"\0" * 4096
assert h.pread(4096, 2 * 1024 * 1024) == b"\0" * 4096
assert h.pread(4096, 3 * 1024 * 1024) == b"\0" * 4096
assert h.pread(4096, 1024 * 1024) == b"\x99" * 4096
h.shutdown()
print("ok")
"#,
    )
    .await;
    assert_eq!(out.trim(), "ok");
    assert_eq!(read(&image, 0, 4096), vec![0; 4096]);
    assert_eq!(read(&image, 2 * MIB, 65536), vec![0; 65536]);
    assert_eq!(read(&image, 3 * MIB, 65536), vec![0; 65536]);
    assert_eq!(read(&image, MIB, 4096), vec![0x99; 4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_conn_writes_then_one_flush() {
    let h = Harness::start().await;
    let image = h.image("multi.raw", 8 * MIB);
    h.export_file(&ExportSpec::new("multi"), &image).await;
    let out = nbdsh(
        &h.uri("multi"),
        r#"
import nbd, sys
handles = []
for i in range(4):
    h = nbd.NBD()
    h.connect_uri(sys.argv[1])
    assert h.can_multi_conn()
    handles.append(h)
cookies = []
for i, h in enumerate(handles):
    for j in range(16):
        buf = nbd.Buffer.from_bytearray(bytearray([i * 16 + j + 1]) * 65536)
        cookies.append((h, h.aio_pwrite(buf, (i * 16 + j) * 65536)))
for h, c in cookies:
    while not h.aio_command_completed(c):
        h.poll(-1)
handles[0].flush()
for i, h in enumerate(handles):
    other = handles[(i + 1) % 4]
    for j in range(16):
        assert other.pread(65536, (i * 16 + j) * 65536) == bytes([i * 16 + j + 1]) * 65536
for h in handles:
    h.shutdown()
print("ok")
"#,
    )
    .await;
    assert_eq!(out.trim(), "ok");
    for k in 0..64u64 {
        assert_eq!(read(&image, k * 65536, 65536), vec![k as u8 + 1; 65536]);
    }
    h.wait_idle().await;
}

/// An error reply names what failed and why, never a server file: a write
/// that runs out of space on a tiny tmpfs reaches the client as ENOSPC
/// with the errno's text only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages_do_not_name_server_files() {
    let h = Harness::start().await;
    let small = h.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(
        mounted.success(),
        "mounting a small tmpfs (the tests run as root)"
    );
    let image = small.join("secret-name.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    h.node("full", &image).await;
    h.export(&ExportSpec::new("full"), "full");
    let script = r#"
import nbd, sys
h = nbd.NBD()
h.set_debug_callback(lambda context, message: print("debug:", message))
h.set_debug(True)
h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x" * (1 << 20), 0)
    print("no error")
except nbd.Error as e:
    print(e.errnum, e.string)
"#;
    let out = common::nbdsh(&h.uri("full"), script).await;
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&small)
        .status();
    assert!(out.contains(&libc::ENOSPC.to_string()), "{out}");
    assert!(
        out.contains("write failed: No space left on device"),
        "{out}"
    );
    assert!(!out.contains("secret-name"), "{out}");
}
