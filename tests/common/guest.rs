//! A small Linux guest under QEMU, for tests that need a real guest kernel
//! on the other side of a device: its virtio-blk driver against a
//! vhost-user-blk export (later VDUSE and the kernel NBD client).
//!
//! The kernel is Debian 12's 6.12, unpacked by `.ci/test-deps.sh` into
//! [`KERNEL_DIR`] and booted uncompressed through PVH under TCG. The
//! initramfs (busybox-static, the modules the guest needs, and
//! `guest_init.sh` as `/init`) is built here, cached in the target directory
//! under a hash of its inputs, and shared by every test and test process;
//! each guest appends its own small archive holding its script. The guest
//! runs the script with the host's root read-only at `/host` and a scratch
//! folder shared read-write at `/scratch`, prints the script's exit status
//! on the serial console and powers off.
//!
//! This module owns QEMU's command line, the initramfs and the guest's
//! init; it knows nothing about storaged: a test adds its devices with
//! [`GuestConfig::qemu_args`] or [`GuestConfig::vhost_user_blk`].

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The guest kernel's tree (the unpacked Debian package, its `vmlinux`,
/// `version` and `lib/modules/<version>`), written by `.ci/test-deps.sh`;
/// removing this link and running the script again fetches the newest 6.12.
pub const KERNEL_DIR: &str = "/var/cache/storaged-guest/kernel";

/// How long a guest may take from boot to power-off unless the test says
/// otherwise: generous, for TCG on a loaded two-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Modules every guest loads: the virtio-blk driver and the 9p file
/// system over virtio for the two shared folders (virtio-pci is built in).
const BASE_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "9pnet_virtio", "9p"];

/// The busybox the initramfs is made of (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// The guest's `/init`.
const INIT: &str = include_str!("guest_init.sh");

/// The line `/init` prints before the script runs.
const START_LINE: &str = "storaged-guest: script start";

/// The line `/init` prints after the script, before the status.
const STATUS_PREFIX: &str = "storaged-guest: exit status ";

/// QEMU's accelerator unless `STORAGED_GUEST_ACCEL` names another (`kvm`
/// where KVM runs stock kernels). One TCG thread: QEMU 10.0's
/// multi-threaded TCG once aborted a two-vCPU guest of this suite on an
/// assertion of its own (`iotlb_to_section`); one thread costs that guest
/// little here.
const DEFAULT_ACCEL: &str = "tcg,thread=single";

/// How often a running guest is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a guest is made of: its script, its resources and devices.
pub struct GuestConfig {
    script: String,
    memory_mib: u32,
    cpus: u32,
    modules: Vec<String>,
    qemu_args: Vec<String>,
    vhost_user_disks: usize,
    scratch: Option<PathBuf>,
    timeout: Duration,
}

impl GuestConfig {
    /// A guest that runs `script` with busybox `sh -e` (the first failing
    /// command ends it with its status); 512 MiB, one vCPU.
    pub fn new(script: &str) -> GuestConfig {
        GuestConfig {
            script: script.to_owned(),
            memory_mib: 512,
            cpus: 1,
            modules: BASE_MODULES.iter().map(|name| name.to_string()).collect(),
            qemu_args: Vec::new(),
            vhost_user_disks: 0,
            scratch: None,
            timeout: TIMEOUT,
        }
    }

    /// Guest memory, shared with vhost-user back ends (a memfd).
    pub fn memory_mib(mut self, mib: u32) -> GuestConfig {
        self.memory_mib = mib;
        self
    }

    /// The number of vCPUs (each one a host thread under TCG).
    pub fn cpus(mut self, cpus: u32) -> GuestConfig {
        self.cpus = cpus;
        self
    }

    /// Kernel modules to load besides the base ones (`vduse`, `nbd`, ...),
    /// with their dependencies, before the script runs.
    pub fn modules(mut self, names: &[&str]) -> GuestConfig {
        self.modules
            .extend(names.iter().map(|name| name.to_string()));
        self
    }

    /// Arguments appended to QEMU's command line (devices, chardevs).
    pub fn qemu_args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> GuestConfig {
        self.qemu_args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// A vhost-user-blk disk whose back end listens on `socket`, with
    /// `queues` virtqueues; the guest sees the disks in the order added
    /// (`/dev/vda`, `/dev/vdb`, ...).
    pub fn vhost_user_blk(mut self, socket: &Path, queues: u32) -> GuestConfig {
        let id = format!("vhost-user-blk{}", self.vhost_user_disks);
        self.vhost_user_disks += 1;
        self.qemu_args([
            "-chardev".to_owned(),
            format!("socket,id={id},path={}", qemu_path(socket)),
            "-device".to_owned(),
            format!("vhost-user-blk-pci,chardev={id},num-queues={queues}"),
        ])
    }

    /// Shares this host folder at `/scratch` instead of a new empty one.
    pub fn scratch(mut self, dir: &Path) -> GuestConfig {
        self.scratch = Some(dir.to_owned());
        self
    }

    /// How long the guest may run before it is killed and the test fails.
    pub fn timeout(mut self, timeout: Duration) -> GuestConfig {
        self.timeout = timeout;
        self
    }

    /// Starts QEMU; the guest runs while the test goes on.
    pub fn boot(self) -> Guest {
        let kernel = Kernel::find();
        let dir = tempfile::tempdir().expect("guest dir");
        let scratch = match self.scratch {
            Some(path) => path,
            None => {
                let path = dir.path().join("scratch");
                std::fs::create_dir(&path).expect("scratch dir");
                path
            }
        };
        let initrd = dir.path().join("initrd");
        write_initrd(
            &initrd,
            &initramfs(&kernel, &self.modules),
            &self.script,
            &scratch,
        );

        let console = dir.path().join("console.log");
        let qmp_socket = dir.path().join("qmp.sock");
        let qemu_log = dir.path().join("qemu.log");
        let accel = std::env::var("STORAGED_GUEST_ACCEL").unwrap_or(DEFAULT_ACCEL.to_owned());
        let memory = format!("{}M", self.memory_mib);
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot", "-accel", &accel, "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string(), "-m", &memory])
            // All guest memory in a shared memfd, for vhost-user back ends.
            .args(["-machine", "q35,memory-backend=mem", "-object"])
            .arg(format!(
                "memory-backend-memfd,id=mem,size={memory},share=on"
            ))
            .arg("-kernel")
            .arg(kernel.dir.join("vmlinux"))
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", KERNEL_COMMAND_LINE, "-chardev"])
            .arg(format!("file,id=console,path={}", qemu_path(&console)))
            .args(["-serial", "chardev:console", "-qmp"])
            .arg(format!(
                "unix:{},server=on,wait=off",
                qemu_path(&qmp_socket)
            ))
            .args(["-virtfs", HOST_ROOT_SHARE, "-virtfs"])
            .arg(format!(
                "local,path={},mount_tag=scratch,security_model=none",
                qemu_path(&scratch)
            ))
            .args(&self.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qemu_log).expect("QEMU's log"));
        let child = qemu
            .spawn()
            .expect("run qemu-system-x86_64 (.ci/test-deps.sh installs it)");
        Guest {
            child: Some(child),
            deadline: Instant::now() + self.timeout,
            timeout: self.timeout,
            scratch,
            console,
            qmp_socket,
            qemu_log,
            _dir: dir,
        }
    }

    /// Boots the guest and waits for its script to end.
    pub fn run(self) -> GuestOutput {
        self.boot().wait()
    }
}

/// The guest's initrd at `path`: the shared `initramfs` and, appended, an
/// archive with the guest's own files: `/guest/script`, and
/// `/guest/scratch-path`, the scratch folder's host path.
fn write_initrd(path: &Path, initramfs: &Path, script: &str, scratch: &Path) {
    std::fs::copy(initramfs, path).expect("copy the initramfs");
    let mut own = Cpio::default();
    own.dir("guest");
    own.file("guest/script", 0o644, script.as_bytes());
    let scratch = scratch.to_str().expect("UTF-8 scratch path");
    own.file("guest/scratch-path", 0o644, scratch.as_bytes());
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open the initrd");
    file.write_all(&own.finish())
        .expect("append the guest's files");
}

/// `path` as a value in a QEMU option (a comma doubled).
fn qemu_path(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").replace(',', ",,")
}

/// The host's root file system as the guest's 9p share `hostroot`,
/// read-only; it spans several host file systems, whose inode numbers QEMU
/// keeps apart (`multidevs=remap`).
const HOST_ROOT_SHARE: &str =
    "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap";

/// The guest kernel's command line: the serial console, no reboot on a
/// panic (QEMU exits), and less boot work under TCG.
const KERNEL_COMMAND_LINE: &str =
    "console=ttyS0 panic=-1 quiet mitigations=off tsc=reliable no_timer_check";

/// A running guest; QEMU is killed if it is dropped before [`Guest::wait`].
pub struct Guest {
    child: Option<Child>,
    deadline: Instant,
    timeout: Duration,
    scratch: PathBuf,
    console: PathBuf,
    qmp_socket: PathBuf,
    qemu_log: PathBuf,
    _dir: TempDir,
}

impl Guest {
    /// The host folder the guest sees at `/scratch` (and, in `chroot
    /// /host`, at this same path).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// QEMU's QMP socket (not negotiated).
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .replace("\r\n", "\n")
    }

    /// Waits until the guest creates `name` in the scratch folder and
    /// returns its host path; fails the test if the guest ends first or the
    /// timeout passes. A guest that writes the file's contents should create
    /// it under another name and rename it.
    pub fn wait_for_file(&mut self, name: &str) -> PathBuf {
        let path = self.scratch.join(name);
        while !path.exists() {
            if let Some(status) = self.child_mut().try_wait().expect("wait for QEMU") {
                self.child = None;
                self.fail(&format!(
                    "QEMU exited ({status}) before the guest created {name}"
                ));
            }
            self.check_deadline(&format!("waiting for the guest to create {name}"));
            std::thread::sleep(POLL_INTERVAL);
        }
        path
    }

    /// Waits for the guest to power off and returns its script's exit
    /// status and the console; fails the test if the script did not finish
    /// (the guest did not boot, or crashed) or the timeout passes.
    pub fn wait(mut self) -> GuestOutput {
        let qemu_status = loop {
            if let Some(status) = self.child_mut().try_wait().expect("wait for QEMU") {
                self.child = None;
                break status;
            }
            self.check_deadline("waiting for the guest to power off");
            std::thread::sleep(POLL_INTERVAL);
        };
        let console = self.console();
        let status = console
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(STATUS_PREFIX))
            .and_then(|status| status.trim().parse().ok());
        match status {
            Some(status) => GuestOutput { status, console },
            None => self.fail(&format!(
                "the guest's script did not finish (QEMU exited: {qemu_status})"
            )),
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("QEMU still running")
    }

    /// Kills QEMU and fails the test once the deadline has passed.
    fn check_deadline(&mut self, doing: &str) {
        if Instant::now() < self.deadline {
            return;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.fail(&format!("timed out after {:?} {doing}", self.timeout));
    }

    fn fail(&self, what: &str) -> ! {
        let qemu_log = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
        panic!(
            "guest: {what}\n--- QEMU's stderr ---\n{qemu_log}--- console ---\n{}",
            self.console()
        );
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a guest left behind once it powered off.
#[derive(Debug)]
pub struct GuestOutput {
    /// The script's exit status.
    pub status: i32,
    /// Everything on the serial console (kernel messages included).
    pub console: String,
}

impl GuestOutput {
    /// What the script wrote (its standard output and error), without the
    /// kernel's boot messages; kernel messages printed while it ran may be
    /// mixed in.
    pub fn output(&self) -> &str {
        let start = self.console.find(START_LINE).expect("the script started");
        let output = &self.console[start + START_LINE.len()..];
        let output = output.strip_prefix('\n').unwrap_or(output);
        let end = output.rfind(STATUS_PREFIX).expect("the script ended");
        &output[..end]
    }
}

/// The guest kernel unpacked in [`KERNEL_DIR`].
struct Kernel {
    dir: PathBuf,
    version: String,
}

impl Kernel {
    /// The kernel `.ci/test-deps.sh` unpacked; fails the test if there is
    /// none (guest tests never skip).
    fn find() -> Kernel {
        let dir = PathBuf::from(KERNEL_DIR);
        let version = std::fs::read_to_string(dir.join("version")).unwrap_or_else(|e| {
            panic!("no guest kernel in {KERNEL_DIR} ({e}): run .ci/test-deps.sh")
        });
        Kernel {
            dir,
            version: version.trim().to_owned(),
        }
    }

    fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.version)
    }

    /// The module files (relative to [`Kernel::modules_dir`]) to load for
    /// `names`, each after its dependencies, from `modules.dep`; built-in
    /// modules need none.
    fn load_order(&self, names: &[String]) -> Vec<String> {
        let read = |file: &str| {
            std::fs::read_to_string(self.modules_dir().join(file))
                .unwrap_or_else(|e| panic!("{file} of the guest kernel: {e}"))
        };
        let mut dependencies: HashMap<String, Vec<String>> = HashMap::new();
        let mut files_by_name: HashMap<String, String> = HashMap::new();
        for line in read("modules.dep").lines() {
            let (file, deps) = line.split_once(':').expect("modules.dep line");
            files_by_name.insert(module_name(file), file.to_owned());
            dependencies.insert(
                file.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            );
        }
        let built_in: HashSet<String> = read("modules.builtin").lines().map(module_name).collect();

        fn visit(file: &str, dependencies: &HashMap<String, Vec<String>>, order: &mut Vec<String>) {
            if order.iter().any(|loaded| loaded == file) {
                return;
            }
            for dependency in &dependencies[file] {
                visit(dependency, dependencies, order);
            }
            order.push(file.to_owned());
        }
        let mut order = Vec::new();
        for name in names {
            let name = name.replace('-', "_");
            match files_by_name.get(&name) {
                Some(file) => visit(file, &dependencies, &mut order),
                None if built_in.contains(&name) => {}
                None => panic!("the guest kernel {} has no module {name}", self.version),
            }
        }
        order
    }
}

/// A module's name from its file (`kernel/fs/9p/9p.ko.xz` is `9p`), with
/// `_` for `-` as modprobe compares them.
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let name = base.split(".ko").next().unwrap_or(base);
    name.replace('-', "_")
}

/// The initramfs's folders: busybox's, the mount points `/init` uses, the
/// modules'.
const ROOT_DIRS: &[&str] = &[
    "bin",
    "dev",
    "proc",
    "sys",
    "host",
    "scratch",
    "tmp",
    "lib",
    "lib/modules",
];

/// The initramfs for `modules` of `kernel`: built once for each set of
/// inputs (this file, the init, the kernel, the modules, busybox) into the
/// target directory, renamed into place when complete so that concurrent
/// test processes never read a partial one.
fn initramfs(kernel: &Kernel, modules: &[String]) -> PathBuf {
    let load_order = kernel.load_order(modules);
    let busybox = std::fs::metadata(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX} ({e}): run .ci/test-deps.sh (busybox-static)"));
    let mut hasher = DefaultHasher::new();
    include_str!("guest.rs").hash(&mut hasher);
    INIT.hash(&mut hasher);
    kernel.version.hash(&mut hasher);
    load_order.hash(&mut hasher);
    busybox.len().hash(&mut hasher);
    busybox.modified().expect("busybox mtime").hash(&mut hasher);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
    let path = cache.join(format!("initramfs-{:016x}.cpio", hasher.finish()));
    if path.exists() {
        return path;
    }

    let mut cpio = Cpio::default();
    for dir in ROOT_DIRS {
        cpio.dir(dir);
    }
    // The kernel opens it as init's standard streams, before devtmpfs.
    cpio.char_device("dev/console", 5, 1);
    let busybox = std::fs::read(BUSYBOX).expect("read busybox");
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    let mut list = String::new();
    for file in &load_order {
        let in_guest = format!("lib/modules/{}.ko", module_name(file));
        let module = decompressed(&kernel.modules_dir().join(file));
        cpio.file(&in_guest, 0o644, &module);
        list.push_str(&format!("/{in_guest}\n"));
    }
    cpio.file("modules", 0o644, list.as_bytes());

    std::fs::create_dir_all(&cache).expect("initramfs cache dir");
    let mut staging = tempfile::NamedTempFile::new_in(&cache).expect("initramfs temp file");
    staging
        .write_all(&cpio.finish())
        .expect("write the initramfs");
    staging
        .persist(&path)
        .expect("rename the initramfs into place");
    path
}

/// A module file's contents, decompressed (busybox's insmod takes plain
/// ELF); Debian compresses its modules with xz.
fn decompressed(file: &Path) -> Vec<u8> {
    if file.extension().is_some_and(|ext| ext == "ko") {
        return std::fs::read(file).expect("read module");
    }
    assert!(
        file.extension().is_some_and(|ext| ext == "xz"),
        "{}: only plain and xz-compressed modules are handled",
        file.display()
    );
    let out = Command::new("xz")
        .arg("-dc")
        .arg(file)
        .output()
        .expect("run xz");
    assert!(out.status.success(), "xz -dc {}: {:?}", file.display(), out);
    out.stdout
}

/// A cpio archive in the "newc" format the kernel unpacks into its root
/// file system; every entry is padded to 4 bytes, so archives can be
/// concatenated.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    entries: u32,
}

impl Cpio {
    fn dir(&mut self, path: &str) {
        self.entry(path, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, path: &str, permissions: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | permissions, (0, 0), data);
    }

    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, 0o020_600, (major, minor), &[]);
    }

    /// The archive with its trailer.
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }

    /// One entry: a header of 13 eight-digit hexadecimal fields (inode,
    /// mode, uid, gid, links, mtime, size, device major and minor, special
    /// file major and minor, name length, checksum), the name, the data.
    fn entry(&mut self, name: &str, mode: u32, (major, minor): (u32, u32), data: &[u8]) {
        self.entries += 1;
        let size = u32::try_from(data.len()).expect("cpio entry under 4 GiB");
        let name_size = u32::try_from(name.len() + 1).expect("short name");
        let fields = [
            self.entries,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            major,
            minor,
            name_size,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }
}
