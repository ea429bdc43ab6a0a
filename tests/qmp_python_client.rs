//! QEMU's own Python QMP client (`qemu.qmp` from PyPI) drives storaged:
//! tests/python/test_qmp_qemu_client.py checks every reply itself. A
//! missing `python3` or `qemu.qmp` fails this test with a message saying
//! how to install them (`.ci/run` does).

mod common;

use std::process::Command;

use common::{sparse_file, TestDaemon};

#[test]
fn qemu_qmp_python_client_drives_storaged() {
    let probe = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .output()
        .unwrap_or_else(|error| {
            panic!("python3 is needed for this test ({error}); run .ci/test-deps.sh")
        });
    assert!(
        probe.status.success(),
        "python3 lacks the qemu.qmp package ({}); run .ci/test-deps.sh or `python3 -m pip install qemu.qmp`",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let daemon = TestDaemon::start(&[]);
    let image = daemon.path("disk.img");
    sparse_file(&image, 1 << 20);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/test_qmp_qemu_client.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(&daemon.qmp_socket)
        .arg(&image)
        .output()
        .expect("run the Python test");
    assert!(
        output.status.success(),
        "the qemu.qmp test failed:\n{}\n{}\ndaemon stderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        daemon.stderr()
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
    assert_eq!(std::fs::metadata(&image).expect("image").len(), 2 << 20);
}

/// storaged's client-mode monitor (`--chardev socket` without
/// `server=on`) connects to a `qemu.qmp` server, as QEMU's test tools run
/// their daemons, and connects again after the harness closes
/// (tests/python/client_mode_monitor.py).
#[test]
fn a_client_mode_monitor_connects_to_qemu_qmp_and_again_after_it_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/client_mode_monitor.py"
    );
    let storaged = env!("CARGO_BIN_EXE_storaged");
    let output = Command::new("python3")
        .args([script, storaged])
        .arg(dir.path())
        .output()
        .expect("run the Python test");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok 0\n");
}
