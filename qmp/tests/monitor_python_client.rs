//! QEMU's own Python client (`qemu.qmp`, which negotiates `oob` when
//! offered and matches replies by id) drives a storaged monitor: connect,
//! negotiate, run commands, get an error, receive an event.

mod common;

use common::Setup;

const SCRIPT: &str = r#"
import asyncio, json, sys
from qemu.qmp import QMPClient, ExecuteError

async def main(path):
    qmp = QMPClient('storaged-test')
    await qmp.connect(path)
    out = {"greeting": json.loads(bytes(qmp.greeting._raw))}
    out["echo"] = await qmp.execute('echo', {'a': [1, 'b']})
    try:
        await qmp.execute('fail')
    except ExecuteError as err:
        out["error"] = [err.error_class, str(err)]
    with qmp.listener() as listener:
        await qmp.execute('emit', {'name': 'JOB_STATUS_CHANGE', 'data': {'id': 'j', 'status': 'running'}})
        event = await asyncio.wait_for(listener.get(), 10)
        out["event"] = json.loads(bytes(event))
    out["commands"] = [c['name'] for c in await qmp.execute('query-commands')]
    await qmp.disconnect()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"#;

#[tokio::test]
async fn qemu_qmp_python_client_works() {
    let setup = Setup::new().await;
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&setup.socket)
        .output()
        .await
        .expect("python3 with qemu.qmp (see .ci/run)");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON from script");
    assert_eq!(
        out["greeting"]["QMP"]["capabilities"],
        serde_json::json!(["oob"])
    );
    assert_eq!(out["greeting"]["QMP"]["version"]["qemu"]["major"], 10);
    assert_eq!(out["echo"], serde_json::json!({"a": [1, "b"]}));
    assert_eq!(
        out["error"],
        serde_json::json!(["GenericError", "failed as asked"])
    );
    assert_eq!(out["event"]["event"], "JOB_STATUS_CHANGE");
    assert_eq!(
        out["event"]["data"],
        serde_json::json!({"id": "j", "status": "running"})
    );
    assert!(out["event"]["timestamp"]["seconds"].is_u64());
    assert_eq!(out["commands"][0], "echo");
}
