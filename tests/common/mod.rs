//! Shared helpers of the integration tests: start the real `storaged`
//! binary in a temporary directory with a QMP monitor, wait until it is
//! ready (its pid file exists), talk to it, and kill it when the test ends.
//!
//! Every integration test file includes this module; not every file uses
//! every helper. `guest` boots a small Linux guest under QEMU for tests
//! that need a real guest kernel.
#![allow(dead_code)]

pub mod guest;
pub mod jobs;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use qmp::client::Client;
use serde_json::Value;
use tempfile::TempDir;

/// How long a daemon may take to become ready or to exit.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often readiness and exit are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The binary under test.
pub fn storaged() -> Command {
    Command::new(env!("CARGO_BIN_EXE_storaged"))
}

/// Runs `storaged` with `args` to its end (for options that make it exit
/// at once) and returns its output; kills it after [`PATIENCE`].
pub fn run(args: &[&str]) -> Output {
    let mut child = storaged()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storaged");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("storaged {args:?} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    child.wait_with_output().expect("output")
}

/// A running daemon with a QMP monitor on `qmp.sock` in its own temporary
/// directory; killed (SIGKILL) when dropped if still running.
pub struct TestDaemon {
    pub dir: TempDir,
    pub qmp_socket: PathBuf,
    pub pidfile: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
}

impl TestDaemon {
    /// Starts `storaged` with a monitor and a pid file plus `extra` args,
    /// and waits until it is ready.
    pub fn start(extra: &[&str]) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, |_| extra.iter().map(|arg| arg.to_string()).collect())
    }

    /// As [`TestDaemon::start`], with arguments that may name files in the
    /// daemon's directory (created before the daemon starts).
    pub fn start_in(dir: TempDir, extra: impl FnOnce(&Path) -> Vec<String>) -> TestDaemon {
        Self::spawn(storaged(), dir, extra)
    }

    /// As [`TestDaemon::start_in`], running `program` (storaged, or
    /// qemu-storage-daemon for comparisons: they take the same options).
    pub fn spawn(
        mut program: Command,
        dir: TempDir,
        extra: impl FnOnce(&Path) -> Vec<String>,
    ) -> TestDaemon {
        let qmp_socket = dir.path().join("qmp.sock");
        let pidfile = dir.path().join("storaged.pid");
        let stderr_path = dir.path().join("stderr.log");
        let mut args = vec![
            "--chardev".to_owned(),
            format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                qmp_socket.display()
            ),
            "--monitor".to_owned(),
            "chardev=qmp0".to_owned(),
            "--pidfile".to_owned(),
            pidfile.display().to_string(),
        ];
        args.extend(extra(dir.path()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = program
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the daemon");
        let mut daemon = TestDaemon {
            dir,
            qmp_socket,
            pidfile,
            stderr_path,
            child: Some(child),
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.pidfile.exists() {
            if let Some(status) = self.child_mut().try_wait().expect("wait") {
                panic!("storaged exited early ({status}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "storaged not ready: {}",
                self.stderr()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("daemon still owned")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon still owned").id()
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A path in the daemon's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A negotiated QMP client.
    pub async fn connect(&self) -> Client {
        let mut client = self.connect_raw().await;
        client.negotiate().await.expect("negotiation");
        client
    }

    /// A client that has only read the greeting.
    pub async fn connect_raw(&self) -> Client {
        Client::connect_unix(&self.qmp_socket)
            .await
            .expect("connect to the monitor")
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill has no memory-safety preconditions.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal})");
    }

    /// Waits for the daemon to exit by itself and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "storaged did not exit: {}",
                self.stderr()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether the daemon is still running.
    pub fn is_running(&mut self) -> bool {
        self.child_mut().try_wait().expect("wait").is_none()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process (say, one `systemd-socket-activate` became) killed if
/// the test ends, by failing, before it exited.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `command` and expects a successful reply.
pub async fn ok(client: &mut Client, command: &str, arguments: Value) -> Value {
    match client
        .execute(command, arguments.clone())
        .await
        .expect("monitor answers")
    {
        Ok(value) => value,
        Err(error) => panic!("{command} {arguments} failed: {error:?}"),
    }
}

/// Runs `command` and expects an error reply; returns (class, desc).
pub async fn error(client: &mut Client, command: &str, arguments: Value) -> (String, String) {
    match client
        .execute(command, arguments.clone())
        .await
        .expect("monitor answers")
    {
        Ok(value) => panic!("{command} {arguments} succeeded: {value}"),
        Err(error) => (error.class, error.desc),
    }
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let file = std::fs::File::create(path).expect("create image");
    file.set_len(size).expect("size image");
}

/// A safe `block-export-del` of export `id`. A client that just left may
/// not have been seen leaving yet (its socket's close, or for FUSE the
/// kernel's own last request), and the export is in use until it has, as
/// QSD's: retried until it is not.
pub async fn delete_export(client: &mut Client, id: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let result = client
            .execute("block-export-del", serde_json::json!({"id": id}))
            .await
            .expect("monitor");
        match result {
            Ok(_) => return,
            Err(e) if e.desc == format!("export '{id}' still in use") => {
                assert!(Instant::now() < deadline, "{id} stays in use");
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(e) => panic!("block-export-del {id}: {e:?}"),
        }
    }
}

/// A reply as `{"return": ...}` or `{"error": {"class", "desc"}}`, for
/// sessions compared with qemu-storage-daemon's.
pub async fn reply(client: &mut Client, command: &str, arguments: Value) -> Value {
    match client
        .execute(command, arguments)
        .await
        .expect("monitor answers")
    {
        Ok(value) => serde_json::json!({ "return": value }),
        Err(e) => serde_json::json!({"error": {"class": e.class, "desc": e.desc}}),
    }
}

/// The replies of a daemon started by `program` to `session` (requests as
/// `{"execute", "arguments"}`; `@DIR@` stands for the daemon's
/// directory), events left aside, lists of rows with a `label` in label
/// order, and the directory written as `DIR`: for comparing a session's
/// replies between qemu-storage-daemon and storaged.
pub async fn transcript(program: Command, session: &[Value]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = TestDaemon::spawn(program, dir, |_| Vec::new());
    let dir = daemon.dir.path().display().to_string();
    let mut client = daemon.connect().await;
    let mut replies = Vec::new();
    for request in session {
        let request: Value =
            serde_json::from_str(&request.to_string().replace("@DIR@", &dir)).expect("JSON");
        let answer = labelled_reply(&mut client, &request).await;
        let text = answer.to_string().replace(&dir, "DIR");
        replies.push(serde_json::from_str(&text).expect("JSON"));
    }
    replies
}

/// The reply to `request` (`{"execute", "arguments"}`), a list of rows
/// with a `label` put in label order (QSD lists some in hash order).
pub async fn labelled_reply(client: &mut Client, request: &Value) -> Value {
    let mut answer = reply(
        client,
        request["execute"].as_str().expect("command"),
        request["arguments"].clone(),
    )
    .await;
    if let Some(Value::Array(rows)) = answer.get_mut("return") {
        rows.sort_by(|a, b| a["label"].as_str().cmp(&b["label"].as_str()));
    }
    answer
}

/// Whether a file system is mounted at `path` (as `/proc/self/mountinfo`
/// lists mountpoints).
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_str().expect("UTF-8 path");
    mounts
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

/// Runs a program (a QEMU tool, `dd`, `fallocate`, ...) and returns its
/// standard output; fails the test if it fails or a `qemu-io` check
/// ("Pattern verification failed") does.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed") && !stdout.contains("Pattern"),
        "{program} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Creates an empty qcow2 image of `size` (`qemu-img create`).
pub fn create_qcow2(image: &str, size: &str) {
    tool("qemu-img", &["create", "-q", "-f", "qcow2", image, size]);
}

/// Deterministic bytes that differ at every 8-byte word (xorshift64).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The MD5 sum of `file` as `md5sum` prints it.
pub fn md5sum(file: &Path) -> String {
    let out = tool("md5sum", &[file.to_str().expect("UTF-8 path")]);
    out.split_whitespace().next().expect("a sum").to_owned()
}
