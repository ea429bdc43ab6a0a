//! The NBD server over TLS through the real binary, with QEMU's and
//! libnbd's GnuTLS clients: X.509 (qemu-io, qemu-img, nbdinfo, nbdcopy)
//! on a Unix socket and TCP, PSK (nbdinfo, qemu-img); refusals (wrong
//! CA, expired certificate, unauthorized name, wrong key or user, plain
//! text: `NBD_REP_ERR_TLS_REQD` and never the export list, data sent
//! after `NBD_OPT_STARTTLS` before the TLS handshake); `tls-authz` with
//! `authz-simple` and an `authz-listfile` changed while the server runs;
//! credentials deleted while the server holds them; a session moved to an
//! export's iothread (nbdsh, nbdcopy); storaged as the client of qemu-nbd
//! and nbdkit (x509, PSK), and refusing servers it cannot trust.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tls::{psk_file, Ca};
use common::{ok, pseudo_random, tool, TestDaemon};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const REP_ACK: u32 = 1;
const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;
const DISK_LEN: usize = 4 << 20;

/// The DN GnuTLS gives a test client certificate for `cn`.
fn dn(cn: &str) -> String {
    format!("CN={cn},O={},C=GB", common::tls::ORGANIZATION)
}

/// A daemon serving `disk.raw` (pseudo-random) as export `disk` over TLS
/// on `nbd.sock`, with `objects` (each `--object`) and `server` options
/// appended to `--nbd-server`.
fn serve(dir: tempfile::TempDir, objects: &[String], server: &str) -> TestDaemon {
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, pseudo_random(12, DISK_LEN)).unwrap();
    let objects = objects.to_vec();
    let server = server.to_owned();
    TestDaemon::start_in(dir, move |path| {
        let mut args = Vec::new();
        for object in objects {
            args.extend(["--object".to_owned(), object]);
        }
        args.extend([
            "--blockdev".to_owned(),
            format!(
                "driver=file,node-name=f,filename={}",
                path.join("disk.raw").display()
            ),
            "--nbd-server".to_owned(),
            format!(
                "addr.type=unix,addr.path={},{server}",
                path.join("nbd.sock").display()
            ),
            "--export".to_owned(),
            "type=nbd,id=e,node-name=f,name=disk,writable=on".to_owned(),
        ]);
        args
    })
}

fn x509_server(dir: &Path, ca: &Ca) -> String {
    ca.server_dir(&dir.join("server"));
    format!(
        "tls-creds-x509,id=tls0,endpoint=server,dir={}",
        dir.join("server").display()
    )
}

/// An nbdinfo URI for the export over TLS with `query` added.
fn uri(daemon: &TestDaemon, query: &str) -> String {
    format!(
        "nbds+unix:///disk?socket={}&{query}",
        daemon.path("nbd.sock").display()
    )
}

/// Whether nbdinfo gets the export's size through `uri`.
fn nbdinfo_size(uri: &str) -> Result<String, String> {
    let out = Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn qemu_client_object(dir: &Path) -> String {
    format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        dir.display()
    )
}

#[test]
fn x509_qemu_io_and_libnbd_read_and_write_what_the_disk_holds() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let server = x509_server(dir.path(), &ca);
    let client = dir.path().join("client");
    ca.client_dir(&client, "client", 30);
    let daemon = serve(dir, &[server], "tls-creds=tls0");
    let socket = daemon.path("nbd.sock");
    let image = format!(
        "driver=nbd,server.type=unix,server.path={},export=disk,tls-creds=tls0,tls-hostname=localhost",
        socket.display()
    );
    let object = qemu_client_object(&client);
    tool(
        "qemu-io",
        &[
            "--object",
            &object,
            "--image-opts",
            &image,
            "-c",
            "write -P 0xa5 1M 1M",
            "-c",
            "read -P 0xa5 1M 1M",
            "-c",
            "write -P 0x5a 4k 4k",
            "-c",
            "read -P 0x5a 4k 4k",
        ],
    );
    let info = tool(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &image],
    );
    assert!(info.contains("virtual size: 4 MiB"), "{info}");
    let certs = format!("tls-certificates={}", client.display());
    assert_eq!(
        nbdinfo_size(&uri(&daemon, &certs)),
        Ok(DISK_LEN.to_string())
    );
    // A whole copy through libnbd matches the file.
    let copy = daemon.path("copy.raw");
    tool("nbdcopy", &[&uri(&daemon, &certs), copy.to_str().unwrap()]);
    let expected = std::fs::read(daemon.path("disk.raw")).unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), expected);
    assert_eq!(&expected[1 << 20..2 << 20], &[0xa5; 1 << 20][..]);
}

#[test]
fn x509_over_tcp_checks_the_address_in_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    ca.server_dir(&dir.path().join("server"));
    let client = dir.path().join("client");
    ca.client_dir(&client, "client", 30);
    let server_dir = dir.path().join("server");
    std::fs::write(dir.path().join("disk.raw"), pseudo_random(3, DISK_LEN)).unwrap();
    // TCP on a port found free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _daemon = TestDaemon::start_in(dir, |path| {
        vec![
            "--object".into(),
            format!(
                "tls-creds-x509,id=tls0,endpoint=server,dir={}",
                server_dir.display()
            ),
            "--blockdev".into(),
            format!(
                "driver=file,node-name=f,filename={}",
                path.join("disk.raw").display()
            ),
            "--nbd-server".into(),
            format!("addr.type=inet,addr.host=127.0.0.1,addr.port={port},tls-creds=tls0"),
            "--export".into(),
            "type=nbd,id=e,node-name=f,name=disk".into(),
        ]
    });
    // QEMU checks the certificate against the host it connects to.
    let image = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk,tls-creds=tls0"
    );
    let object = qemu_client_object(&client);
    tool(
        "qemu-io",
        &[
            "--object",
            &object,
            "--image-opts",
            &image,
            "-r",
            "-c",
            "read 0 1M",
        ],
    );
    let certs = format!("tls-certificates={}", client.display());
    assert_eq!(
        nbdinfo_size(&format!("nbds://127.0.0.1:{port}/disk?{certs}")),
        Ok(DISK_LEN.to_string())
    );
}

#[test]
fn x509_refuses_a_wrong_ca_an_expired_certificate_and_an_unauthorized_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let server = x509_server(dir.path(), &ca);
    let root = dir.path().to_owned();
    let good = root.join("good");
    ca.client_dir(&good, "alice", 30);
    let expired = root.join("expired");
    ca.client_dir(&expired, "alice", -1);
    let stranger = root.join("stranger");
    Ca::new("Other CA").client_dir(&stranger, "alice", 30);
    let bob = root.join("bob");
    ca.client_dir(&bob, "bob", 30);
    // Commas in a keyval value are doubled.
    let authz = format!(
        "authz-simple,id=authz0,identity={}",
        dn("alice").replace(',', ",,")
    );
    let daemon = serve(dir, &[server, authz], "tls-creds=tls0,tls-authz=authz0");
    let with = |dir: &PathBuf| {
        nbdinfo_size(&uri(
            &daemon,
            &format!("tls-certificates={}", dir.display()),
        ))
    };
    assert_eq!(with(&good), Ok(DISK_LEN.to_string()));
    for refused in [&expired, &stranger, &bob] {
        assert!(with(refused).is_err(), "{} connected", refused.display());
    }
    let log = daemon.stderr();
    assert!(
        log.contains(&format!("NBD TLS client {} not authorized", dn("bob"))),
        "{log}"
    );
}

#[test]
fn psk_users_connect_with_their_key_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("server/keys.psk");
    psk_file(&keys, &["alice", "bob"]);
    let server = format!(
        "tls-creds-psk,id=tls0,endpoint=server,dir={}",
        dir.path().join("server").display()
    );
    let wrong = dir.path().join("wrong/keys.psk");
    psk_file(&wrong, &["alice"]);
    let client_dir = dir.path().join("server");
    let authz = "authz-simple,id=authz0,identity=alice".to_owned();
    let daemon = serve(dir, &[server, authz], "tls-creds=tls0,tls-authz=authz0");
    let socket = daemon.path("nbd.sock");
    let with = |user: &str, file: &Path| {
        nbdinfo_size(&format!(
            "nbds+unix://{user}@/disk?socket={}&tls-psk-file={}",
            socket.display(),
            file.display()
        ))
    };
    assert_eq!(with("alice", &keys), Ok(DISK_LEN.to_string()));
    assert!(with("alice", &wrong).is_err(), "a wrong key connected");
    assert!(with("carol", &keys).is_err(), "an unknown user connected");
    assert!(
        with("bob", &keys).is_err(),
        "an unauthorized user connected"
    );
    let image = format!(
        "driver=nbd,server.type=unix,server.path={},export=disk,tls-creds=tls0",
        socket.display()
    );
    let object = format!(
        "tls-creds-psk,id=tls0,endpoint=client,username=alice,dir={}",
        client_dir.display()
    );
    tool(
        "qemu-io",
        &[
            "--object",
            &object,
            "--image-opts",
            &image,
            "-c",
            "write -P 7 0 64k",
            "-c",
            "read -P 7 0 64k",
        ],
    );
}

/// `qom-set` of the server's `authz-simple` identity takes effect for the
/// next connection: the user it names gets in, the one it named before
/// no longer does.
#[tokio::test]
async fn an_authz_identity_set_at_run_time_decides_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("server/keys.psk");
    psk_file(&keys, &["alice", "bob"]);
    let server = format!(
        "tls-creds-psk,id=tls0,endpoint=server,dir={}",
        dir.path().join("server").display()
    );
    let authz = "authz-simple,id=authz0,identity=alice".to_owned();
    let daemon = serve(dir, &[server, authz], "tls-creds=tls0,tls-authz=authz0");
    let socket = daemon.path("nbd.sock");
    let with = |user: &str| {
        nbdinfo_size(&format!(
            "nbds+unix://{user}@/disk?socket={}&tls-psk-file={}",
            socket.display(),
            keys.display()
        ))
    };
    assert!(with("alice").is_ok());
    assert!(with("bob").is_err(), "bob connected before he was allowed");
    let mut client = daemon.connect().await;
    ok(
        &mut client,
        "qom-set",
        json!({"path": "/objects/authz0", "property": "identity", "value": "bob"}),
    )
    .await;
    assert!(with("bob").is_ok(), "bob refused once allowed");
    assert!(with("alice").is_err(), "alice still connected");
}

/// Sends an option and reads its replies' types until a final one.
async fn option(s: &mut UnixStream, option: u32, data: &[u8]) -> Vec<u32> {
    let mut message = IHAVEOPT.to_be_bytes().to_vec();
    message.extend_from_slice(&option.to_be_bytes());
    message.extend_from_slice(&(data.len() as u32).to_be_bytes());
    message.extend_from_slice(data);
    s.write_all(&message).await.unwrap();
    let mut kinds = Vec::new();
    loop {
        let mut head = [0; 20];
        s.read_exact(&mut head).await.expect("option reply");
        let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut rest = vec![0; len as usize];
        s.read_exact(&mut rest).await.unwrap();
        kinds.push(kind);
        if kind == REP_ACK || kind & (1 << 31) != 0 {
            return kinds;
        }
    }
}

async fn greeted(socket: &Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).await.unwrap();
    let mut greeting = [0; 18];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn plain_text_clients_learn_nothing_and_injected_data_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let server = x509_server(dir.path(), &ca);
    let daemon = serve(dir, &[server], "tls-creds=tls0");
    let socket = daemon.path("nbd.sock");
    let mut s = greeted(&socket).await;
    assert_eq!(option(&mut s, OPT_LIST, &[]).await, [REP_ERR_TLS_REQD]);
    let mut info = 4u32.to_be_bytes().to_vec();
    info.extend_from_slice(b"disk");
    info.extend_from_slice(&0u16.to_be_bytes());
    assert_eq!(option(&mut s, OPT_INFO, &info).await, [REP_ERR_TLS_REQD]);
    // NBD_OPT_STARTTLS with a plain-text option right behind it: the
    // server acks, then takes the option for a TLS hello and drops us.
    let mut injected = IHAVEOPT.to_be_bytes().to_vec();
    injected.extend_from_slice(&OPT_STARTTLS.to_be_bytes());
    injected.extend_from_slice(&0u32.to_be_bytes());
    injected.extend_from_slice(&IHAVEOPT.to_be_bytes());
    injected.extend_from_slice(&OPT_LIST.to_be_bytes());
    injected.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&injected).await.unwrap();
    let mut ack = [0; 20];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(u32::from_be_bytes(ack[12..16].try_into().unwrap()), REP_ACK);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(
        !rest.windows(4).any(|w| w == b"disk"),
        "the export list leaked: {rest:?}"
    );
    // libnbd without TLS is refused too.
    let plain = format!("nbd+unix:///disk?socket={}", socket.display());
    assert!(nbdinfo_size(&plain).is_err());
}

#[test]
fn authz_listfile_changes_apply_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let server = x509_server(dir.path(), &ca);
    let client = dir.path().join("client");
    ca.client_dir(&client, "alice", 30);
    let acl = dir.path().join("acl.json");
    let write_acl = |policy: &str| {
        let rules = json!({"policy": "deny", "rules": [{"match": "CN=alice,*", "policy": policy, "format": "glob"}]});
        let tmp = acl.with_extension("tmp");
        std::fs::write(&tmp, rules.to_string()).unwrap();
        std::fs::rename(&tmp, &acl).unwrap();
    };
    write_acl("deny");
    let authz = format!(
        "authz-listfile,id=authz0,filename={},refresh=on",
        acl.display()
    );
    let daemon = serve(dir, &[server, authz], "tls-creds=tls0,tls-authz=authz0");
    let certs = format!("tls-certificates={}", client.display());
    assert!(nbdinfo_size(&uri(&daemon, &certs)).is_err());
    write_acl("allow");
    assert_eq!(
        nbdinfo_size(&uri(&daemon, &certs)),
        Ok(DISK_LEN.to_string())
    );
}

#[tokio::test]
async fn deleted_credentials_stay_with_the_server_and_a_deleted_authz_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    ca.server_dir(&dir.path().join("server"));
    let client = dir.path().join("client");
    ca.client_dir(&client, "alice", 30);
    let server_dir = dir.path().join("server");
    let daemon = serve(dir, &[], "");
    let mut qmp = daemon.connect().await;
    ok(&mut qmp, "nbd-server-stop", json!({})).await;
    ok(
        &mut qmp,
        "object-add",
        json!({"qom-type": "tls-creds-x509", "id": "tls1", "endpoint": "server", "dir": server_dir}),
    )
    .await;
    ok(
        &mut qmp,
        "object-add",
        json!({"qom-type": "authz-simple", "id": "authz1", "identity": dn("alice")}),
    )
    .await;
    let socket = daemon.path("tls.sock");
    ok(
        &mut qmp,
        "nbd-server-start",
        json!({"addr": {"type": "unix", "data": {"path": socket}}, "tls-creds": "tls1",
               "tls-authz": "authz1"}),
    )
    .await;
    ok(
        &mut qmp,
        "block-export-add",
        json!({"type": "nbd", "id": "e2", "node-name": "f", "name": "disk"}),
    )
    .await;
    ok(&mut qmp, "object-del", json!({"id": "tls1"})).await;
    let certs = format!("tls-certificates={}", client.display());
    let uri = format!("nbds+unix:///disk?socket={}&{certs}", socket.display());
    assert_eq!(nbdinfo_size(&uri), Ok(DISK_LEN.to_string()));
    // The authorization object is looked up at each connection (as in
    // QEMU): deleted, it refuses everyone; added again, it decides again.
    ok(&mut qmp, "object-del", json!({"id": "authz1"})).await;
    assert!(nbdinfo_size(&uri).is_err(), "connected without its authz");
    ok(
        &mut qmp,
        "object-add",
        json!({"qom-type": "authz-simple", "id": "authz1", "identity": dn("alice")}),
    )
    .await;
    assert_eq!(nbdinfo_size(&uri), Ok(DISK_LEN.to_string()));
}

/// A server (`program` with `args`) run until dropped.
struct Peer(std::process::Child);

impl Peer {
    /// Starts `program` and waits until `socket` exists.
    fn start(program: &str, args: &[&str], socket: &Path) -> Peer {
        let child = Command::new(program)
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(program);
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Peer(child)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// storaged as the client of `server` (its NBD socket) with the TLS
/// credentials `object` (id `tlsc`), re-exported in plain text: qemu-io
/// reads through it what the peer serves (`0x5a` in the first MiB).
fn read_through_storaged(dir: &Path, object: &str, socket: &Path) {
    let plain = dir.join("plain.sock");
    let node = format!(
        "driver=nbd,node-name=n,server.type=unix,server.path={},tls-creds=tlsc,tls-hostname=localhost",
        socket.display()
    );
    let daemon = TestDaemon::start(&[
        "--object",
        object,
        "--blockdev",
        &node,
        "--nbd-server",
        &format!("addr.type=unix,addr.path={}", plain.display()),
        "--export",
        "type=nbd,id=e,node-name=n,name=n",
    ]);
    let image = format!("nbd+unix:///n?socket={}", plain.display());
    tool(
        "qemu-io",
        &["-r", "-f", "raw", &image, "-c", "read -P 0x5a 0 1M"],
    );
    drop(daemon);
}

#[test]
fn storaged_connects_over_tls_to_qemu_nbd_and_nbdkit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let disk = root.join("peer.raw");
    let mut content = vec![0x5a; 1 << 20];
    content.resize(DISK_LEN, 0);
    std::fs::write(&disk, content).unwrap();
    let disk = disk.to_str().unwrap();
    let ca = Ca::new("Test CA");
    ca.server_dir(&root.join("server"));
    ca.client_dir(&root.join("client"), "storaged", 30);
    let x509 = format!(
        "tls-creds-x509,id=tlsc,endpoint=client,dir={}",
        root.join("client").display()
    );
    let keys = root.join("psk/keys.psk");
    psk_file(&keys, &["alice"]);
    let psk = format!(
        "tls-creds-psk,id=tlsc,endpoint=client,username=alice,dir={}",
        root.join("psk").display()
    );

    let socket = root.join("qemu-nbd.sock");
    let object = format!(
        "tls-creds-x509,id=tls0,endpoint=server,dir={}",
        root.join("server").display()
    );
    let sock = socket.to_str().unwrap();
    let peer = Peer::start(
        "qemu-nbd",
        &[
            "-k",
            sock,
            "--object",
            &object,
            "--tls-creds",
            "tls0",
            "-f",
            "raw",
            "-t",
            disk,
        ],
        &socket,
    );
    read_through_storaged(root, &x509, &socket);
    drop(peer);

    let socket = root.join("qemu-nbd-psk.sock");
    let object = format!(
        "tls-creds-psk,id=tls0,endpoint=server,dir={}",
        root.join("psk").display()
    );
    let sock = socket.to_str().unwrap();
    let peer = Peer::start(
        "qemu-nbd",
        &[
            "-k",
            sock,
            "--object",
            &object,
            "--tls-creds",
            "tls0",
            "-f",
            "raw",
            "-t",
            disk,
        ],
        &socket,
    );
    read_through_storaged(root, &psk, &socket);
    drop(peer);

    let socket = root.join("nbdkit.sock");
    let certs = format!("--tls-certificates={}", root.join("server").display());
    let sock = socket.to_str().unwrap();
    let peer = Peer::start(
        "nbdkit",
        &["-f", "-U", sock, "--tls=require", &certs, "file", disk],
        &socket,
    );
    read_through_storaged(root, &x509, &socket);
    drop(peer);

    let socket = root.join("nbdkit-psk.sock");
    let psk_arg = format!("--tls-psk={}", keys.display());
    let sock = socket.to_str().unwrap();
    let peer = Peer::start(
        "nbdkit",
        &["-f", "-U", sock, "--tls=require", &psk_arg, "file", disk],
        &socket,
    );
    read_through_storaged(root, &psk, &socket);
    drop(peer);
}

#[test]
fn a_tls_session_moves_to_the_exports_iothread_and_nbdsh_reads_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    ca.server_dir(&dir.path().join("server"));
    let client = dir.path().join("client");
    ca.client_dir(&client, "client", 30);
    let server_dir = dir.path().join("server");
    std::fs::write(dir.path().join("disk.raw"), pseudo_random(5, DISK_LEN)).unwrap();
    let daemon = TestDaemon::start_in(dir, |path| {
        vec![
            "--object".into(),
            "iothread,id=io0".into(),
            "--object".into(),
            format!(
                "tls-creds-x509,id=tls0,endpoint=server,dir={}",
                server_dir.display()
            ),
            "--blockdev".into(),
            format!(
                "driver=file,node-name=f,filename={}",
                path.join("disk.raw").display()
            ),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={},tls-creds=tls0",
                path.join("nbd.sock").display()
            ),
            "--export".into(),
            "type=nbd,id=e,node-name=f,name=disk,writable=on,iothread=io0".into(),
        ]
    });
    let uri = uri(&daemon, &format!("tls-certificates={}", client.display()));
    // Writes and reads back, a whole copy, through a session that moved.
    // (libnbd reads certificate files named in a URI only when allowed.)
    let script = format!(
        "h.set_uri_allow_local_file(True)\n\
         h.connect_uri('{uri}')\n\
         h.pwrite(b'\\x42' * 65536, 131072)\n\
         assert h.pread(65536, 131072) == b'\\x42' * 65536\n\
         h.flush()"
    );
    // nbdsh is `python3 -m nbd`; Debian's python3 has the module.
    tool("/usr/bin/python3", &["-m", "nbd", "-c", &script]);
    let copy = daemon.path("copy.raw");
    tool("nbdcopy", &[&uri, copy.to_str().unwrap()]);
    let expected = std::fs::read(daemon.path("disk.raw")).unwrap();
    assert_eq!(&expected[131072..196608], &[0x42; 65536][..]);
    assert_eq!(std::fs::read(&copy).unwrap(), expected);
}

#[tokio::test]
async fn storaged_as_a_client_refuses_a_server_it_cannot_trust() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Test CA");
    let server = x509_server(dir.path(), &ca);
    let stranger = dir.path().join("stranger");
    Ca::new("Other CA").client_dir(&stranger, "client", 30);
    let client = dir.path().join("client");
    ca.client_dir(&client, "client", 30);
    let daemon = serve(dir, &[server], "tls-creds=tls0");
    let socket = daemon.path("nbd.sock");
    let mut qmp = daemon.connect().await;
    let creds = |id: &str, dir: &Path| json!({"qom-type": "tls-creds-x509", "id": id, "endpoint": "client", "dir": dir});
    ok(&mut qmp, "object-add", creds("good", &client)).await;
    ok(&mut qmp, "object-add", creds("bad", &stranger)).await;
    let node = |name: &str, creds: &str, host: &str| {
        json!({"driver": "nbd", "node-name": name, "export": "disk", "tls-creds": creds,
               "tls-hostname": host, "server": {"type": "unix", "path": socket}})
    };
    // Another CA's server certificate, or another name than the
    // certificate's: refused. The right CA and name: the node opens.
    let (_, desc) = common::error(&mut qmp, "blockdev-add", node("n1", "bad", "localhost")).await;
    assert!(desc.contains("certificate"), "{desc}");
    let (_, desc) =
        common::error(&mut qmp, "blockdev-add", node("n2", "good", "example.com")).await;
    assert!(desc.contains("certificate"), "{desc}");
    ok(&mut qmp, "blockdev-add", node("n3", "good", "localhost")).await;
    let (_, desc) = common::error(
        &mut qmp,
        "blockdev-add",
        json!({"driver": "nbd", "node-name": "n4", "tls-creds": "nope",
               "server": {"type": "unix", "path": socket}}),
    )
    .await;
    assert_eq!(desc, "No TLS credentials with id 'nope'");
}

#[test]
fn anonymous_tls_works_with_qemu_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let daemon = serve(
        dir,
        &["tls-creds-anon,id=tls0,endpoint=server".to_owned()],
        "tls-creds=tls0",
    );
    let image = format!(
        "driver=nbd,server.type=unix,server.path={},export=disk,tls-creds=tls0",
        daemon.path("nbd.sock").display()
    );
    let disk = std::fs::read(daemon.path("disk.raw")).unwrap();
    let pattern = format!("read -P {} 0 1", disk[0]);
    let object = "tls-creds-anon,id=tls0,endpoint=client";
    tool(
        "qemu-io",
        &[
            "-r",
            "--object",
            object,
            "--image-opts",
            &image,
            "-c",
            &pattern,
        ],
    );
    // storaged as the client of qemu-nbd with anonymous credentials.
    let peer_disk = root.join("peer.raw");
    let mut content = vec![0x5a; 1 << 20];
    content.resize(DISK_LEN, 0);
    std::fs::write(&peer_disk, content).unwrap();
    let socket = root.join("qemu-nbd-anon.sock");
    let sock = socket.to_str().unwrap();
    let peer = Peer::start(
        "qemu-nbd",
        &[
            "-k",
            sock,
            "--object",
            "tls-creds-anon,id=tls0,endpoint=server",
            "--tls-creds",
            "tls0",
            "-f",
            "raw",
            "-t",
            peer_disk.to_str().unwrap(),
        ],
        &socket,
    );
    read_through_storaged(&root, "tls-creds-anon,id=tlsc,endpoint=client", &socket);
    drop(peer);
}
