//! `qom-get` and `qom-set` of secrets' and TLS credentials' properties
//! against qemu-storage-daemon: QEMU 10 lets every one of them be set once
//! the object is complete (the value is checked and read back; what the
//! object loaded stays), and refuses values of the wrong type, `null`,
//! unknown properties and `type` with its messages. Every reply of the
//! same session must equal QSD's.

mod common;

use std::process::Command;

use common::{storaged, transcript};
use serde_json::{json, Value};

/// Every property of `id` read, set to `value`, and read again; then a
/// `null` and a value of the wrong type.
fn round_trips(id: &str, properties: &[(&str, Value, Value)]) -> Vec<Value> {
    let path = format!("/objects/{id}");
    let get = |property: &str| json!({"execute": "qom-get", "arguments": {"path": path, "property": property}});
    let set = |property: &str, value: &Value| json!({"execute": "qom-set", "arguments": {"path": path, "property": property, "value": value}});
    let mut session = Vec::new();
    for (property, value, wrong) in properties {
        session.extend([
            get(property),
            set(property, &Value::Null),
            set(property, wrong),
            set(property, value),
            get(property),
        ]);
    }
    session.extend([
        get("type"),
        set("type", &json!("x")),
        get("bogus"),
        set("bogus", &json!(1)),
        get("loaded"),
        set("loaded", &json!(true)),
        json!({"execute": "qom-list", "arguments": {"path": path}}),
    ]);
    session
}

#[tokio::test]
async fn secret_and_tls_properties_are_set_and_read_as_qemu_storage_daemon() {
    let creds = tempfile::tempdir().expect("temp dir");
    common::tls::Ca::new("Test CA").server_dir(creds.path());
    common::tls::psk_file(&creds.path().join("keys.psk"), &["qemu", "alice"]);
    let dir = creds.path().display().to_string();
    let add = |arguments: Value| json!({"execute": "object-add", "arguments": arguments});
    let mut session = vec![
        add(json!({"qom-type": "secret", "id": "sec0", "data": "hello"})),
        add(json!({"qom-type": "secret", "id": "sec1", "file": format!("{dir}/keys.psk")})),
        add(
            json!({"qom-type": "tls-creds-x509", "id": "x0", "dir": dir, "endpoint": "server", "verify-peer": false}),
        ),
        add(json!({"qom-type": "tls-creds-psk", "id": "p0", "dir": dir, "username": "alice"})),
        add(
            json!({"qom-type": "tls-creds-psk", "id": "p1", "dir": dir, "endpoint": "server", "username": "alice"}),
        ),
        add(json!({"qom-type": "tls-creds-anon", "id": "a0", "endpoint": "server"})),
    ];
    let string = |value: &str| json!(value);
    let secret = [
        ("data", string("new"), json!(5)),
        ("file", string("/nonexistent"), json!(true)),
        ("keyid", string("sec1"), json!([])),
        ("iv", string("AAAA"), json!({})),
        ("format", string("base64"), string("bogus")),
    ];
    let tls = [
        ("dir", string("/tmp"), json!(1)),
        ("endpoint", string("client"), string("both")),
        ("verify-peer", json!(true), string("yes")),
        ("priority", string("NORMAL"), json!(false)),
    ];
    session.extend(round_trips("sec0", &secret));
    session.extend(round_trips("sec1", &secret[..2]));
    session.extend(round_trips(
        "x0",
        &[
            &tls[..],
            &[
                ("sanity-check", json!(false), json!(0)),
                ("passwordid", string("sec0"), json!(0)),
            ],
        ]
        .concat(),
    ));
    session.extend(round_trips(
        "p0",
        &[&tls[..], &[("username", string("qemu"), json!(0))]].concat(),
    ));
    session.extend(round_trips("a0", &tls));
    // A secret whose properties changed is deleted as any other.
    session.push(json!({"execute": "object-del", "arguments": {"id": "sec0"}}));
    let qsd = transcript(Command::new("qemu-storage-daemon"), &session).await;
    let ours = transcript(storaged(), &session).await;
    for ((request, theirs), mine) in session.iter().zip(&qsd).zip(&ours) {
        assert_eq!(mine, theirs, "{request}");
    }
    // The session sets something: not every reply is an error.
    assert!(
        ours.iter()
            .filter(|reply| reply.get("return").is_some())
            .count()
            > 40
    );
}
