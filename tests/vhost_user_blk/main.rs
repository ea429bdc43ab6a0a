//! The vhost-user-blk export driven by a test frontend (`frontend.rs`):
//! negotiation and configuration, every request type against the image
//! file, malformed chains, resize notices, reconnection and shutdown.

#[path = "../common/mod.rs"]
mod common;
mod frontend;
mod guest;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{ok, TestDaemon};
use frontend::*;
use serde_json::json;

/// Image size: 64 MiB.
const IMAGE_SIZE: u64 = 64 << 20;

/// A daemon exporting a raw image `disk.img` at `vhost.sock`.
fn daemon(export_options: &str) -> (TestDaemon, PathBuf, PathBuf) {
    daemon_with(&[], export_options)
}

/// As [`daemon`], with more options before the export.
fn daemon_with(extra: &[&str], export_options: &str) -> (TestDaemon, PathBuf, PathBuf) {
    let options = export_options.to_string();
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    let daemon = TestDaemon::start_in(tempfile::tempdir().expect("dir"), move |dir| {
        let image = dir.join("disk.img");
        common::sparse_file(&image, IMAGE_SIZE);
        args.extend([
            "--blockdev".into(),
            format!("driver=file,node-name=file0,filename={}", image.display()),
            "--export".into(),
            format!(
                "type=vhost-user-blk,id=vu0,node-name=file0,addr.type=unix,addr.path={}{options}",
                dir.join("vhost.sock").display()
            ),
        ]);
        args
    });
    let image = daemon.path("disk.img");
    let socket = daemon.path("vhost.sock");
    (daemon, image, socket)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn file_bytes(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(image).expect("image");
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, offset).expect("read image");
    bytes
}

#[test]
fn features_and_configuration_describe_the_node() {
    let (_daemon, _image, socket) = daemon(",writable=on,num-queues=2,logical-block-size=4096");
    let mut vu = TestFrontend::connect(
        &socket,
        Setup {
            queues: 2,
            ..Setup::default()
        },
    );
    let features = vu.offered_features();
    for (bit, name) in [
        (F_FLUSH, "FLUSH"),
        (F_DISCARD, "DISCARD"),
        (F_WRITE_ZEROES, "WRITE_ZEROES"),
        (F_MQ, "MQ"),
        (F_EVENT_IDX, "EVENT_IDX"),
        (F_VERSION_1, "VERSION_1"),
    ] {
        assert_ne!(features & bit, 0, "{name} offered");
    }
    assert_eq!(features & F_RO, 0, "a writable export is not read-only");
    assert_eq!(vu.queue_num(), 2);
    assert_eq!(vu.capacity(), IMAGE_SIZE / 512);
    let config = vu.config(0, 60);
    let u32_at = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(12), 1022, "seg_max");
    assert_eq!(u32_at(20), 4096, "blk_size");
    assert_eq!(
        u16::from_le_bytes([config[34], config[35]]),
        2,
        "num_queues"
    );
    assert_eq!(u32_at(36), 32768, "max_discard_sectors");
    assert_eq!(u32_at(44), 8, "discard_sector_alignment");
    assert_eq!(config[32], 1, "the write cache is on: the guest flushes");

    let (_ro_daemon, _, ro_socket) = daemon("");
    let ro = TestFrontend::connect(&ro_socket, Setup::default());
    let features = ro.offered_features();
    assert_ne!(features & F_RO, 0, "a read-only export says so");
    assert_eq!(features & F_DISCARD, 0);
}

#[test]
fn every_request_type_reaches_the_image() {
    let (_daemon, image, socket) = daemon(",writable=on");
    let mut vu = TestFrontend::connect(&socket, Setup::default());

    // A write whose data spans three descriptors.
    let data = pattern(12288, 7);
    let (status, used, _) = vu.request(
        0,
        VIRTIO_BLK_T_OUT,
        16,
        &[&data[..512], &data[512..4096], &data[4096..]],
        0,
    );
    assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(file_bytes(&image, 16 * 512, data.len()), data);

    let (status, used, read) = vu.request(0, VIRTIO_BLK_T_IN, 16, &[], data.len());
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(used as usize, data.len() + 1, "data and status written");
    assert_eq!(read, data);

    // The same read through an indirect table, into two buffers.
    let header = vu.header(VIRTIO_BLK_T_IN, 16);
    let first = vu.alloc(4096, 0);
    let second = vu.alloc(8192, 0);
    let status_at = vu.alloc(1, 0xff);
    vu.submit_indirect(
        0,
        &[
            Desc::readable(header, 16),
            Desc::writable(first, 4096),
            Desc::writable(second, 8192),
            Desc::writable(status_at, 1),
        ],
    );
    vu.wait_used(0);
    assert_eq!(vu.read(status_at, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!([vu.read(first, 4096), vu.read(second, 8192)].concat(), data);

    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_FLUSH, 0, &[], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK);

    let (status, used, id) = vu.request(0, VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(used, 21);
    assert_eq!(&id[..15], b"vhost_user_blk\0", "QSD's serial");

    // Write-zeroes with unmap, then discard: both read back as zeroes.
    let segment = |sector: u64, sectors: u32, flags: u32| {
        let mut s = Vec::new();
        s.extend_from_slice(&sector.to_le_bytes());
        s.extend_from_slice(&sectors.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    };
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[&segment(16, 8, 1)], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(file_bytes(&image, 16 * 512, 4096), vec![0; 4096]);
    assert_eq!(file_bytes(&image, 24 * 512, 8192), data[4096..]);
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_DISCARD, 0, &[&segment(24, 16, 0)], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_DISCARD, 0, &[&segment(24, 16, 1)], 0);
    assert_eq!(status, VIRTIO_BLK_S_UNSUPP, "discard with the unmap flag");
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[&segment(0, 8, 2)], 0);
    assert_eq!(status, VIRTIO_BLK_S_UNSUPP, "an unknown flag");
    let (status, _, _) = vu.request(
        0,
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &[&segment(IMAGE_SIZE / 512 - 4, 8, 0)],
        0,
    );
    assert_eq!(status, VIRTIO_BLK_S_IOERR, "zeroes past the end");

    let (status, used, _) = vu.request(0, 99, 0, &[], 0);
    assert_eq!((status, used), (VIRTIO_BLK_S_UNSUPP, 1));
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_IN, IMAGE_SIZE / 512 - 1, &[], 1024);
    assert_eq!(status, VIRTIO_BLK_S_IOERR, "a read past the end");
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_IN, 0, &[], 100);
    assert_eq!(status, VIRTIO_BLK_S_IOERR, "a read of part of a sector");
}

#[test]
fn a_read_only_export_refuses_writes() {
    let (_daemon, image, socket) = daemon("");
    let mut vu = TestFrontend::connect(&socket, Setup::default());
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_OUT, 0, &[&[0xaa; 512]], 0);
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    assert_eq!(file_bytes(&image, 0, 512), vec![0; 512]);
}

#[test]
fn malformed_chains_get_an_error_and_the_device_goes_on() {
    let (mut daemon, _image, socket) = daemon(",writable=on");
    let mut vu = TestFrontend::connect(&socket, Setup::default());

    // Data outside guest memory: IOERR in a valid status byte.
    let header = vu.header(VIRTIO_BLK_T_IN, 0);
    let status = vu.alloc(1, 0xff);
    vu.submit(
        0,
        &[
            Desc::readable(header, 16),
            Desc::writable(1 << 40, 4096),
            Desc::writable(status, 1),
        ],
    );
    vu.wait_used(0);
    assert_eq!(vu.read(status, 1), [VIRTIO_BLK_S_IOERR]);

    // A length that runs far past the end of guest memory.
    let buffer = vu.alloc(512, 0);
    let status = vu.alloc(1, 0xff);
    vu.submit(
        0,
        &[
            Desc::readable(header, 16),
            Desc::writable(buffer, 0x8000_0000),
            Desc::writable(status, 1),
        ],
    );
    vu.wait_used(0);
    assert_eq!(vu.read(status, 1), [VIRTIO_BLK_S_IOERR]);

    // A chain longer than 4 GiB in all, which virtio forbids: it ends
    // before its status descriptor, so nothing is written.
    let status = vu.alloc(1, 0xff);
    vu.submit(
        0,
        &[
            Desc::readable(header, 16),
            Desc::writable(buffer, 0xffff_fff0),
            Desc::writable(status, 1),
        ],
    );
    let (_, used) = vu.wait_used(0);
    assert_eq!((used, vu.read(status, 1)), (0, vec![0xff]));

    // A device-readable descriptor after a device-writable one.
    let status = vu.alloc(1, 0xff);
    let data = vu.alloc(512, 0);
    vu.submit(
        0,
        &[
            Desc::writable(data, 512),
            Desc::readable(header, 16),
            Desc::writable(status, 1),
        ],
    );
    vu.wait_used(0);
    assert_eq!(vu.read(status, 1), [VIRTIO_BLK_S_IOERR]);

    // A header too short to hold a request.
    let status = vu.alloc(1, 0xff);
    vu.submit(0, &[Desc::readable(header, 8), Desc::writable(status, 1)]);
    vu.wait_used(0);
    assert_eq!(vu.read(status, 1), [VIRTIO_BLK_S_IOERR]);

    // No room for a status byte: returned with nothing written.
    vu.submit(0, &[Desc::readable(header, 16)]);
    let (_, used) = vu.wait_used(0);
    assert_eq!(used, 0);

    // Two descriptors that point at each other: the chain ends at the
    // queue size and, having no status byte, comes back with nothing.
    let looping = vu.header(VIRTIO_BLK_T_FLUSH, 0);
    let slot = vu.next_slot(0);
    let link = |next| Desc {
        addr: looping,
        len: 16,
        flags: 1,
        next,
    };
    let head = vu.submit_raw(0, &[link(slot + 1), link(slot)]);
    let (used_head, used) = vu.wait_used(0);
    assert_eq!((used_head, used), (head, 0));

    // The device still serves well-formed requests, and the daemon lives.
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_OUT, 0, &[&[0x5a; 512]], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    let (status, _, read) = vu.request(0, VIRTIO_BLK_T_IN, 0, &[], 512);
    assert_eq!((status, read), (VIRTIO_BLK_S_OK, vec![0x5a; 512]));
    assert!(daemon.is_running());
}

#[tokio::test]
async fn a_resize_reaches_the_frontend() {
    let (daemon, _image, socket) = daemon(",writable=on");
    let mut vu = TestFrontend::connect(
        &socket,
        Setup {
            backend_channel: true,
            ..Setup::default()
        },
    );
    assert_eq!(vu.capacity(), IMAGE_SIZE / 512);
    let mut qmp = daemon.connect().await;
    ok(
        &mut qmp,
        "block_resize",
        json!({"node-name": "file0", "size": 2 * IMAGE_SIZE}),
    )
    .await;
    let channel = vu.backend_channel.as_mut().expect("channel");
    channel
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut message = [0u8; 12];
    std::io::Read::read_exact(channel, &mut message).expect("a config change message");
    assert_eq!(u32::from_le_bytes(message[0..4].try_into().unwrap()), 2);
    assert_eq!(vu.capacity(), 2 * IMAGE_SIZE / 512);
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_OUT, IMAGE_SIZE / 512, &[&[1; 512]], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK, "the new space is usable");
}

#[tokio::test]
async fn frontends_come_and_go_and_deletion_waits_for_them() {
    let (daemon, image, socket) = daemon(",writable=on,num-queues=2");
    let mut qmp = daemon.connect().await;
    let mut vu = TestFrontend::connect(
        &socket,
        Setup {
            queues: 2,
            ..Setup::default()
        },
    );
    let (status, _, _) = vu.request(1, VIRTIO_BLK_T_OUT, 8, &[&[0x11; 512]], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK, "the second queue serves too");
    let (code, message) = common::error(&mut qmp, "block-export-del", json!({"id": "vu0"})).await;
    assert_eq!(code, "GenericError");
    assert!(message.contains("in use"), "{message}");
    vu.disconnect();

    // A VM restart: a new frontend on the same socket sees the old data.
    let mut vu = TestFrontend::connect(
        &socket,
        Setup {
            queues: 2,
            ..Setup::default()
        },
    );
    let (status, _, read) = vu.request(0, VIRTIO_BLK_T_IN, 8, &[], 512);
    assert_eq!((status, read), (VIRTIO_BLK_S_OK, vec![0x11; 512]));
    assert_eq!(file_bytes(&image, 8 * 512, 512), vec![0x11; 512]);

    ok(
        &mut qmp,
        "block-export-del",
        json!({"id": "vu0", "mode": "hard"}),
    )
    .await;
    let event = qmp
        .next_event(std::time::Duration::from_secs(20))
        .await
        .expect("monitor")
        .expect("BLOCK_EXPORT_DELETED");
    assert_eq!(event["event"], "BLOCK_EXPORT_DELETED", "{event}");
    assert_eq!(event["data"], json!({"id": "vu0"}));
    assert!(!socket.exists(), "the socket is removed");
    let exports = ok(&mut qmp, "query-block-exports", json!({})).await;
    assert_eq!(exports, json!([]));
}

#[tokio::test]
async fn quit_with_a_connected_frontend_exits_cleanly() {
    let (mut daemon, _image, socket) = daemon(",writable=on");
    let mut vu = TestFrontend::connect(&socket, Setup::default());
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_OUT, 0, &[&[7; 4096]], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    let mut qmp = daemon.connect().await;
    ok(&mut qmp, "quit", json!({})).await;
    let status = daemon.wait_exit();
    assert!(status.success(), "{status}: {}", daemon.stderr());
}

/// What a frontend learns from a device, for comparisons.
#[derive(Debug, PartialEq)]
struct DeviceView {
    features: u64,
    config: Vec<u8>,
    get_id: (u8, u32, Vec<u8>),
    read_used: u32,
    unknown: (u8, u32),
}

fn look_at(socket: &Path) -> DeviceView {
    let mut vu = TestFrontend::connect(
        socket,
        Setup {
            queues: 2,
            ..Setup::default()
        },
    );
    DeviceView {
        features: vu.offered_features(),
        config: vu.config(0, 64),
        get_id: vu.request(0, VIRTIO_BLK_T_GET_ID, 0, &[], 20),
        read_used: vu.request(0, VIRTIO_BLK_T_IN, 0, &[], 512).1,
        unknown: {
            let (status, used, _) = vu.request(0, 99, 0, &[], 0);
            (status, used)
        },
    }
}

#[test]
fn the_device_is_qsds_except_where_it_improves_on_it() {
    let export = ",writable=on,num-queues=2";
    let qsd = TestDaemon::spawn(
        std::process::Command::new("qemu-storage-daemon"),
        tempfile::tempdir().expect("dir"),
        |dir| {
            let image = dir.join("disk.img");
            common::sparse_file(&image, IMAGE_SIZE);
            vec![
                "--blockdev".into(),
                format!("driver=file,node-name=file0,filename={}", image.display()),
                "--export".into(),
                format!(
                    "type=vhost-user-blk,id=vu0,node-name=file0,addr.type=unix,addr.path={}{export}",
                    dir.join("vhost.sock").display()
                ),
            ]
        },
    );
    let (_ours, _, socket) = daemon(export);
    let mut theirs = look_at(&qsd.path("vhost.sock"));
    let ours = look_at(&socket);
    // libvhost-user offers NOTIFY_ON_EMPTY (legacy) and LOG_ALL (dirty
    // logging for migration, which storaged does not do).
    theirs.features &= !((1 << 24) | (1 << 26));
    // QSD tells the guest that there is no write cache while its node
    // caches writes (the guest then never flushes); storaged says there
    // is one. It also honors the unmap flag of write-zeroes and says so.
    assert_eq!((theirs.config[32], ours.config[32]), (0, 1));
    assert_eq!((theirs.config[56], ours.config[56]), (0, 1));
    theirs.config[32] = 1;
    theirs.config[56] = 1;
    // A guest may send storaged 1022 segments per request (QSD: 126, so a
    // 1 MiB request of scattered pages becomes three).
    assert_eq!(theirs.config[12..16], 126u32.to_le_bytes());
    assert_eq!(ours.config[12..16], 1022u32.to_le_bytes());
    theirs.config[12..16].copy_from_slice(&1022u32.to_le_bytes());
    assert_eq!(theirs, ours);
}

#[test]
fn an_iothread_serves_the_queues_and_sigterm_ends_the_session() {
    let (mut daemon, image, socket) = daemon_with(
        &["--object", "iothread,id=io0"],
        ",writable=on,num-queues=2,iothread=io0",
    );
    let mut vu = TestFrontend::connect(
        &socket,
        Setup {
            queues: 2,
            ..Setup::default()
        },
    );
    let data = pattern(65536, 3);
    for queue in 0..2 {
        let sector = 1024 * queue as u64;
        let (status, _, _) = vu.request(queue, VIRTIO_BLK_T_OUT, sector, &[&data], 0);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert_eq!(file_bytes(&image, sector * 512, data.len()), data);
    }
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit();
    assert!(status.success(), "{status}: {}", daemon.stderr());
    assert!(!socket.exists(), "the socket is removed");
}

#[tokio::test]
async fn quit_ends_a_request_that_never_finishes() {
    // A node that reads 512 bytes a second: the first 1 MiB read passes
    // (throttling accounts for it afterwards), the second takes half an
    // hour. The frontend then takes the queue back, which waits for it.
    let dir = tempfile::tempdir().expect("dir");
    let mut daemon = TestDaemon::start_in(dir, |dir| {
        vec![
            "--object".into(),
            "throttle-group,id=tg,limits.bps-read=512".into(),
            "--blockdev".into(),
            "driver=null-co,node-name=null0,size=67108864".into(),
            "--blockdev".into(),
            "driver=throttle,node-name=slow,throttle-group=tg,file=null0".into(),
            "--export".into(),
            format!(
                "type=vhost-user-blk,id=vu0,node-name=slow,addr.type=unix,addr.path={}",
                dir.join("vhost.sock").display()
            ),
        ]
    });
    let mut vu = TestFrontend::connect(&daemon.path("vhost.sock"), Setup::default());
    let header = vu.header(VIRTIO_BLK_T_IN, 0);
    for _ in 0..2 {
        let buffer = vu.alloc(1 << 20, 0);
        let status = vu.alloc(1, 0xff);
        vu.submit(
            0,
            &[
                Desc::readable(header, 16),
                Desc::writable(buffer, 1 << 20),
                Desc::writable(status, 1),
            ],
        );
    }
    vu.wait_used(0);
    let stopping = std::thread::spawn(move || vu.stop_queue(0));
    let mut qmp = daemon.connect().await;
    ok(&mut qmp, "quit", json!({})).await;
    let exit = daemon.wait_exit();
    assert!(exit.success(), "{exit}: {}", daemon.stderr());
    let _ = stopping.join();
}

/// A socket passed by systemd socket activation, named on the command line
/// (`addr.type=fd,addr.str=NAME`): the real `systemd-socket-activate`
/// starts the daemon when the frontend connects, and the export serves
/// that first frontend.
#[test]
fn a_socket_activated_export_serves_its_first_frontend() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("dir");
    let image = dir.path().join("disk.img");
    common::sparse_file(&image, IMAGE_SIZE);
    let socket = dir.path().join("vhost.sock");
    let activate = std::process::Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("--fdname=vhost")
        .arg(env!("CARGO_BIN_EXE_storaged"))
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg("type=vhost-user-blk,id=vu0,node-name=file0,writable=on,addr.type=fd,addr.str=vhost")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate");
    let mut activate = common::KillOnDrop(activate);
    let mut log = std::io::BufReader::new(activate.0.stderr.take().expect("stderr"));
    let mut line = String::new();
    log.read_line(&mut line).expect("its first line");
    assert!(line.starts_with("Listening on "), "{line}");

    let mut vu = TestFrontend::connect(&socket, Setup::default());
    let data = pattern(4096, 3);
    let (status, _, _) = vu.request(0, VIRTIO_BLK_T_OUT, 8, &[&data], 0);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(file_bytes(&image, 8 * 512, data.len()), data);
    vu.disconnect();
}
