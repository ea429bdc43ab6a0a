//! A QMP session with the real daemon: the greeting, capability
//! negotiation, `query-version`, `query-commands`, ids.

mod common;

use std::process::Command;

use common::{error, ok, TestDaemon};
use qmp::client::Client;
use serde_json::json;
use tempfile::tempdir;

/// Commands this daemon must offer (others add more).
const REQUIRED_COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-commands",
    "query-version",
    "quit",
    "blockdev-add",
    "blockdev-del",
    "block_resize",
    "query-named-block-nodes",
    "x-debug-query-block-graph",
    "object-add",
    "object-del",
];

#[tokio::test]
async fn greeting_names_qemu_10_and_storaged() {
    let daemon = TestDaemon::start(&[]);
    let client = daemon.connect_raw().await;
    let greeting = client.greeting();
    assert_eq!(
        greeting["QMP"]["version"]["qemu"],
        json!({"major": 10, "minor": 0, "micro": 2})
    );
    assert_eq!(
        greeting["QMP"]["version"]["package"],
        format!("storaged {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(greeting["QMP"]["capabilities"], json!(["oob"]));
}

#[tokio::test]
async fn commands_need_negotiation_first() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect_raw().await;
    assert_eq!(
        error(&mut client, "query-version", json!({})).await,
        (
            "CommandNotFound".to_owned(),
            "Expecting capabilities negotiation with 'qmp_capabilities'".to_owned()
        )
    );
    ok(&mut client, "qmp_capabilities", json!({})).await;
    assert_eq!(
        error(&mut client, "qmp_capabilities", json!({})).await,
        (
            "CommandNotFound".to_owned(),
            "Capabilities negotiation is already complete, command ignored".to_owned()
        )
    );
    ok(&mut client, "query-version", json!({})).await;
}

#[tokio::test]
async fn query_version_mirrors_qsd_shape() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    assert_eq!(
        ok(&mut client, "query-version", json!({})).await,
        json!({
            "qemu": {"major": 10, "minor": 0, "micro": 2},
            "package": format!("storaged {}", env!("CARGO_PKG_VERSION")),
        })
    );
    assert_eq!(
        error(&mut client, "query-version", json!({"x": 1})).await,
        (
            "GenericError".to_owned(),
            "Parameter 'x' is unexpected".to_owned()
        )
    );
}

/// The names `query-commands` lists.
async fn listed_commands(client: &mut Client) -> Vec<String> {
    let listed = ok(client, "query-commands", json!({})).await;
    listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| entry["name"].as_str().expect("a name").to_owned())
        .collect()
}

#[tokio::test]
async fn query_commands_lists_exactly_the_implemented_commands() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    let names = listed_commands(&mut client).await;
    for required in REQUIRED_COMMANDS {
        assert!(
            names.iter().any(|name| name == required),
            "{required} missing"
        );
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "duplicates in {names:?}");
    // Every listed command is implemented: called with an argument no
    // command takes, it reads its arguments and refuses them (it is not
    // `CommandNotFound`).
    for name in names.iter().filter(|name| *name != "qmp_capabilities") {
        let (class, desc) = error(&mut client, name, json!({"no-such-argument": 1})).await;
        assert_eq!(class, "GenericError", "{name}: {desc}");
    }
    // And it is a QSD command: storaged invents none, but for
    // `query-iothreads`, which QEMU's system emulator has and QSD 10.0
    // lacks, though QSD has iothreads.
    let qsd = TestDaemon::spawn(
        Command::new("qemu-storage-daemon"),
        tempdir().expect("temp dir"),
        |_| Vec::new(),
    );
    let mut qsd_client = qsd.connect().await;
    let qsd_names = listed_commands(&mut qsd_client).await;
    let extensions = ["query-iothreads"];
    for name in &names {
        assert!(
            qsd_names.contains(name) || extensions.contains(&name.as_str()),
            "{name} is not a QSD 10.0 command"
        );
    }
    for name in extensions {
        assert!(!qsd_names.iter().any(|n| n == name), "QSD now has {name}");
    }
}

#[tokio::test]
async fn ids_of_any_json_type_are_echoed() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    for id in [
        json!(7),
        json!("text"),
        json!({"a": [1, null]}),
        json!(false),
    ] {
        let request = json!({"execute": "query-version", "id": id});
        client
            .send_raw(format!("{request}\n").as_bytes())
            .await
            .expect("send");
        let reply = client.receive().await.expect("reply");
        assert_eq!(reply["id"], id);
        assert!(reply["return"]["qemu"].is_object());
    }
}

#[tokio::test]
async fn unknown_commands_are_command_not_found() {
    let daemon = TestDaemon::start(&[]);
    let mut client = daemon.connect().await;
    assert_eq!(
        error(&mut client, "nbd-server-bogus", json!({})).await,
        (
            "CommandNotFound".to_owned(),
            "The command nbd-server-bogus has not been found".to_owned()
        )
    );
}
