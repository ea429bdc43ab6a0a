//! `object-add` and `object-del` over QMP for every object type, with
//! QEMU's checks and messages, and `--object` on the command line;
//! TLS credentials with bad files are refused with QSD's messages.

mod common;

use common::{error, ok, TestDaemon};
use serde_json::{json, Value};

fn generic(desc: &str) -> (String, String) {
    ("GenericError".to_owned(), desc.to_owned())
}

#[tokio::test]
async fn every_object_type_can_be_added_and_deleted() {
    let daemon = TestDaemon::start(&[]);
    let creds = daemon.path("creds");
    common::tls::Ca::new("Test CA").server_dir(&creds);
    std::fs::write(creds.join("keys.psk"), "alice:0123456789abcdef\n").expect("keys");
    let secret_file = daemon.path("secret.txt");
    std::fs::write(&secret_file, "hunter2").expect("secret");
    let authz_file = daemon.path("authz.json");
    std::fs::write(
        &authz_file,
        r#"{"policy": "deny", "rules": [{"match": "alice", "policy": "allow"}]}"#,
    )
    .expect("authz");
    let objects: Vec<Value> = vec![
        json!({"qom-type": "secret", "id": "s0", "data": "abc"}),
        json!({"qom-type": "secret", "id": "s1", "file": secret_file}),
        json!({"qom-type": "secret", "id": "s2", "data": "aGVsbG8=", "format": "base64"}),
        json!({"qom-type": "iothread", "id": "io0", "poll-max-ns": 1000, "aio-max-batch": 4}),
        json!({"qom-type": "throttle-group", "id": "tg0", "limits": {"iops-total": 100}}),
        json!({"qom-type": "throttle-group", "id": "tg1", "x-bps-read": 1000, "x-bps-read-max": 1500}),
        json!({"qom-type": "tls-creds-anon", "id": "ta", "endpoint": "server"}),
        json!({"qom-type": "tls-creds-psk", "id": "tp", "dir": creds, "endpoint": "server"}),
        json!({"qom-type": "tls-creds-psk", "id": "tpc", "dir": creds, "username": "alice"}),
        json!({"qom-type": "tls-creds-x509", "id": "tx", "dir": creds, "endpoint": "server"}),
        json!({"qom-type": "authz-simple", "id": "az0", "identity": "alice"}),
        json!({"qom-type": "authz-list", "id": "az1", "policy": "deny",
               "rules": [{"match": "a*", "policy": "allow", "format": "glob"}]}),
        json!({"qom-type": "authz-listfile", "id": "az2", "filename": authz_file}),
    ];
    let mut client = daemon.connect().await;
    for object in &objects {
        ok(&mut client, "object-add", object.clone()).await;
    }
    for object in &objects {
        let id = object["id"].clone();
        ok(&mut client, "object-del", json!({ "id": id })).await;
        assert_eq!(
            error(&mut client, "object-del", json!({ "id": id })).await,
            generic(&format!("object '{}' not found", id.as_str().expect("id")))
        );
    }
}

#[tokio::test]
async fn object_add_errors_read_as_qemu() {
    let daemon = TestDaemon::start(&["--object", "secret,id=s0,data=x"]);
    let mut client = daemon.connect().await;
    let cases = [
        (
            json!({"qom-type": "secret", "id": "s0", "data": "abc"}),
            "attempt to add duplicate property 's0' to object (type 'container')",
        ),
        (
            json!({"qom-type": "secret", "id": "s1"}),
            "Either 'file' or 'data' must be provided",
        ),
        (
            json!({"qom-type": "secret", "id": "s1", "data": "x", "file": "/etc/hostname"}),
            "'file' and 'data' are mutually exclusive",
        ),
        (
            json!({"qom-type": "secret", "id": "s1", "data": "!!", "format": "base64"}),
            "Base64 data contains invalid characters",
        ),
        (
            json!({"qom-type": "secret", "id": "s1", "data": "x", "keyid": "nope"}),
            "No secret with id 'nope'",
        ),
        (
            json!({"qom-type": "secret", "id": "s1", "data": "x", "format": "bogus"}),
            "Parameter 'format' does not accept value 'bogus'",
        ),
        (
            json!({"qom-type": "secret", "id": "9a", "data": "x"}),
            "Parameter 'id' expects an identifier",
        ),
        (
            json!({"qom-type": "bogus", "id": "x"}),
            "Parameter 'qom-type' does not accept value 'bogus'",
        ),
        (json!({"id": "x"}), "Parameter 'qom-type' is missing"),
        (
            json!({"qom-type": "main-loop", "id": "m", "thread-pool-max": 4}),
            "Object type 'main-loop' is not supported by storaged: its event loops are \
             tokio's, tuned by iothread objects",
        ),
        (
            json!({"qom-type": "thread-context", "id": "t", "cpu-affinity": [0]}),
            "Object type 'thread-context' is not supported by storaged: nothing in it \
             creates threads on an object's behalf",
        ),
        (json!({"qom-type": "secret"}), "Parameter 'id' is missing"),
        (
            json!({"qom-type": "iothread", "id": "io", "poll-max-ns": -1}),
            "poll-max-ns value must be in range [0, 9223372036854775807]",
        ),
        (
            json!({"qom-type": "iothread", "id": "io", "poll-max-ns": "x"}),
            "Invalid parameter type for 'poll-max-ns', expected: integer",
        ),
        (
            json!({"qom-type": "iothread", "id": "io", "foo": 1}),
            "Parameter 'foo' is unexpected",
        ),
        (
            json!({"qom-type": "throttle-group", "id": "tg", "limits": {"iops-total": 100, "iops-read": 5}}),
            "bps/iops/max total values and read/write values cannot be used at the same time",
        ),
        (
            json!({"qom-type": "throttle-group", "id": "tg", "limits": {"bogus": 1}}),
            "Parameter 'limits.bogus' is unexpected",
        ),
        (
            json!({"qom-type": "tls-creds-x509", "id": "tx"}),
            "Missing 'dir' property value",
        ),
        (
            json!({"qom-type": "tls-creds-x509", "id": "tx", "dir": "/nonexistent", "endpoint": "server"}),
            "Unable to access credentials /nonexistent/ca-cert.pem: No such file or directory",
        ),
        (
            json!({"qom-type": "authz-simple", "id": "az"}),
            "Parameter 'identity' is missing",
        ),
        (
            json!({"qom-type": "authz-list", "id": "az", "policy": "bogus"}),
            "Parameter 'policy' does not accept value 'bogus'",
        ),
    ];
    for (arguments, desc) in cases {
        assert_eq!(
            error(&mut client, "object-add", arguments.clone()).await,
            generic(desc),
            "{arguments}"
        );
    }
    assert_eq!(
        error(&mut client, "object-del", json!({})).await,
        generic("Parameter 'id' is missing")
    );
    assert_eq!(
        error(&mut client, "object-del", json!({"id": 1})).await,
        generic("Invalid parameter type for 'id', expected: string")
    );
    // The command-line secret is there: deleting it works once.
    ok(&mut client, "object-del", json!({"id": "s0"})).await;
}

/// TLS credentials, authorization objects and the NBD server that uses
/// them: the same requests
/// to storaged and to qemu-storage-daemon get the same replies (GnuTLS's
/// and OpenSSL's reasons differ after QEMU's own words: those are
/// compared up to the reason).
#[tokio::test]
async fn tls_credentials_and_nbd_server_start_as_qsd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = common::tls::Ca::new("Test CA");
    let good = dir.path().join("good");
    ca.server_dir(&good);
    let only_ca = dir.path().join("only-ca");
    std::fs::create_dir(&only_ca).unwrap();
    std::fs::copy(good.join("ca-cert.pem"), only_ca.join("ca-cert.pem")).unwrap();
    let mismatch = dir.path().join("mismatch");
    ca.server_dir(&mismatch);
    std::fs::copy(good.join("server-key.pem"), mismatch.join("server-key.pem")).unwrap();
    let wrong_ca = dir.path().join("wrong-ca");
    ca.server_dir(&wrong_ca);
    common::tls::Ca::new("Other CA").server_dir(&dir.path().join("other"));
    std::fs::copy(
        dir.path().join("other/ca-cert.pem"),
        wrong_ca.join("ca-cert.pem"),
    )
    .unwrap();
    let client = dir.path().join("client");
    ca.client_dir(&client, "c", 30);
    let psk = dir.path().join("psk");
    common::tls::psk_file(&psk.join("keys.psk"), &["alice"]);
    let socket = dir.path().join("nbd.sock");
    let x509 = |id: &str, path: &std::path::Path, endpoint: &str| json!({"qom-type": "tls-creds-x509", "id": id, "dir": path, "endpoint": endpoint});
    let start = |creds: &str| json!({"addr": {"type": "unix", "data": {"path": socket}}, "tls-creds": creds});
    let steps: Vec<(&str, Value)> = vec![
        ("object-add", x509("t1", &only_ca, "server")),
        ("object-add", x509("t2", &mismatch, "server")),
        ("object-add", x509("t3", &wrong_ca, "server")),
        ("object-add", x509("tc", &client, "client")),
        ("object-add", x509("ts", &good, "server")),
        ("nbd-server-start", start("nope")),
        ("nbd-server-start", start("tc")),
        ("nbd-server-start", start("ts")),
        ("object-del", json!({"id": "ts"})),
        ("nbd-server-stop", json!({})),
        ("object-del", json!({"id": "tc"})),
        (
            "object-add",
            json!({"qom-type": "tls-creds-psk", "id": "p1", "dir": psk, "endpoint": "server"}),
        ),
        (
            "object-add",
            json!({"qom-type": "tls-creds-psk", "id": "p2", "dir": psk, "username": "bob"}),
        ),
        (
            "object-add",
            json!({"qom-type": "tls-creds-psk", "id": "p3", "dir": psk, "username": "alice"}),
        ),
        (
            "object-add",
            json!({"qom-type": "authz-simple", "id": "a1", "identity": "CN=c"}),
        ),
        (
            "object-add",
            json!({"qom-type": "authz-list", "id": "a2", "policy": "allow",
                   "rules": [{"match": "CN=*", "policy": "deny", "format": "glob"}]}),
        ),
        (
            "object-add",
            json!({"qom-type": "authz-list", "id": "a3", "rules": [{"match": "x"}]}),
        ),
        (
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": socket}},
                   "tls-creds": "p1", "tls-authz": "a1"}),
        ),
        ("object-del", json!({"id": "a1"})),
        ("object-del", json!({"id": "p1"})),
        ("nbd-server-stop", json!({})),
        ("object-del", json!({"id": "a2"})),
    ];
    let mut replies = Vec::new();
    for program in [
        common::storaged(),
        std::process::Command::new("qemu-storage-daemon"),
    ] {
        let daemon = TestDaemon::spawn(program, tempfile::tempdir().unwrap(), |_| Vec::new());
        let mut qmp = daemon.connect().await;
        let mut these = Vec::new();
        for (command, arguments) in &steps {
            let reply = common::reply(&mut qmp, command, arguments.clone()).await;
            // QEMU's words, without the TLS library's reason after them.
            let text = reply.to_string();
            let text = match text.find(" against").or(text.find(": The certificate")) {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            these.push(text);
        }
        replies.push(these);
    }
    assert_eq!(replies[0], replies[1]);
}

/// An encrypted server key takes its password from the secret that
/// `passwordid` names; storaged and QSD accept the right one and refuse
/// a wrong or missing one alike (up to the TLS library's reason).
#[tokio::test]
async fn encrypted_keys_take_their_password_from_a_secret_as_in_qsd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("creds");
    common::tls::Ca::new("Test CA").server_dir(&creds);
    common::tls::encrypt_key(&creds.join("server-key.pem"), b"hunter2");
    let x509 = |id: &str, secret: &str| {
        json!({"qom-type": "tls-creds-x509", "id": id, "dir": creds, "endpoint": "server",
               "passwordid": secret})
    };
    let steps = [
        json!({"qom-type": "secret", "id": "good", "data": "hunter2"}),
        json!({"qom-type": "secret", "id": "bad", "data": "letmein"}),
        x509("t1", "good"),
        x509("t2", "bad"),
        x509("t3", "nope"),
    ];
    let mut replies = Vec::new();
    for program in [
        common::storaged(),
        std::process::Command::new("qemu-storage-daemon"),
    ] {
        let daemon = TestDaemon::spawn(program, tempfile::tempdir().unwrap(), |_| Vec::new());
        let mut qmp = daemon.connect().await;
        let mut these = Vec::new();
        for arguments in &steps {
            let reply = common::reply(&mut qmp, "object-add", arguments.clone()).await;
            // QEMU's words, up to the TLS library's reason.
            let text = reply.to_string();
            let text = match text.find("server-key.pem': ") {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            these.push(text);
        }
        replies.push(these);
    }
    assert_eq!(replies[0], replies[1]);
    assert_eq!(replies[0][2], json!({"return": {}}).to_string());
}
