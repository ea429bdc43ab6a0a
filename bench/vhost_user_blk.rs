//! Side-by-side vhost-user-blk benchmark: storaged's export against
//! qemu-storage-daemon's, each serving the same raw image (1 GiB on
//! tmpfs, through the page cache) to a Linux guest under QEMU (the test
//! harness's guest, `tests/common/guest.rs`), one daemon at a time.
//!
//! In the guest, fio runs on `/dev/vda` with `direct=1` and libaio at
//! depth 16: sequential 1 MiB reads and writes, random 4 KiB reads and
//! writes. Each cell is the throughput (MiB/s for sequential rows, IOPS
//! for random ones) and the daemon's own CPU (user + system time from
//! `/proc/PID/stat` between the job's start and end) per operation, in
//! µs, and the interrupts the guest took from the disk per operation
//! (`/proc/interrupts` in the guest). Under TCG the guest is emulated: large blocks measure the back
//! end, small-block IOPS mostly measure the emulated guest.
//!
//!     cargo bench --bench vhost_user_blk                  # full run (about 2 minutes)
//!     cargo bench --bench vhost_user_blk -- --quick       # smoke run
//!     cargo bench --bench vhost_user_blk -- --update-doc  # also into docs/benchmarks.md

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::guest::GuestConfig;
use common::TestDaemon;
use serde_json::Value;

const IMAGE_SIZE: usize = 1 << 30;
const DOC_BEGIN: &str = "<!-- bench/vhost_user_blk.rs results: begin -->";
const DOC_END: &str = "<!-- bench/vhost_user_blk.rs results: end -->";

struct Workload {
    name: &'static str,
    rw: &'static str,
    block_size: &'static str,
}

impl Workload {
    fn sequential(&self) -> bool {
        !self.rw.starts_with("rand")
    }

    fn unit(&self) -> &'static str {
        if self.sequential() {
            "MiB/s"
        } else {
            "IOPS"
        }
    }
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "seq-read-1M-qd16",
        rw: "read",
        block_size: "1M",
    },
    Workload {
        name: "seq-write-1M-qd16",
        rw: "write",
        block_size: "1M",
    },
    Workload {
        name: "rand-read-4k-qd16",
        rw: "randread",
        block_size: "4k",
    },
    Workload {
        name: "rand-write-4k-qd16",
        rw: "randwrite",
        block_size: "4k",
    },
];

/// One measured cell.
#[derive(Clone, Copy)]
struct Cell {
    value: f64,
    server_us_per_op: f64,
    /// Interrupts the guest took from the disk per operation.
    interrupts_per_op: f64,
    /// CPUs QEMU kept busy (the emulated guest and its devices): 1.00 is
    /// one CPU all the time.
    qemu_cpus: f64,
}

/// The newest QEMU process (the guest just booted).
fn qemu_pid() -> u32 {
    first_line("pgrep", &["-n", "qemu-system-x86"])
        .parse()
        .expect("a running QEMU")
}

/// The disk's interrupt count from `/proc/interrupts` lines: its
/// request queue is `virtioN-req.0` (the 9p shares' are `-requests`).
fn disk_interrupts(lines: &str) -> f64 {
    lines
        .lines()
        .find(|line| line.contains("-req."))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|count| count.parse().ok())
        .unwrap_or(0.0)
}

/// The daemon's user + system CPU time so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// The guest runs every workload in turn, marking its start and end in
/// the scratch folder, with fio's report next to the markers.
fn guest_script(scratch: &Path, runtime_s: u32) -> String {
    let mut script = String::new();
    for w in WORKLOADS {
        script += &format!(
            "grep -h req /proc/interrupts > /scratch/irq-before-{name}\n\
             touch /scratch/start-{name}\n\
             chroot /host fio --name={name} --filename=/dev/vda --direct=1 --ioengine=libaio \
             --iodepth=16 --rw={rw} --bs={bs} --time_based --runtime={runtime_s} \
             --randrepeat=0 --eta=never --output-format=json --output={dir}/{name}.json\n\
             touch /scratch/end-{name}\n\
             grep -h req /proc/interrupts > /scratch/irq-after-{name}\n",
            name = w.name,
            rw = w.rw,
            bs = w.block_size,
            dir = scratch.display(),
        );
    }
    script
}

/// A configuration measured: its column title, its program and what it
/// adds to the command line (before the export) and to the export.
struct Server {
    title: &'static str,
    program: fn() -> Command,
    objects: &'static [&'static str],
    export_options: &'static str,
}

const SERVERS: &[Server] = &[
    Server {
        title: "storaged",
        program: common::storaged,
        objects: &[],
        export_options: "",
    },
    Server {
        title: "storaged, iothread polling 10 µs",
        program: common::storaged,
        objects: &["--object", "iothread,id=io0,poll-max-ns=10000"],
        export_options: ",iothread=io0",
    },
    Server {
        title: "QSD",
        program: qemu_storage_daemon,
        objects: &[],
        export_options: "",
    },
];

fn qemu_storage_daemon() -> Command {
    Command::new("qemu-storage-daemon")
}

/// Runs every workload against `server`'s export of `image`.
fn measure(server: &Server, image: &Path, runtime_s: u32) -> Vec<Cell> {
    let image = image.to_owned();
    let daemon = TestDaemon::spawn(
        (server.program)(),
        tempfile::tempdir().expect("dir"),
        |dir| {
            let mut args: Vec<String> = server.objects.iter().map(|a| a.to_string()).collect();
            args.extend([
                "--blockdev".into(),
                format!("driver=file,node-name=disk,filename={}", image.display()),
                "--export".into(),
                format!(
                    "type=vhost-user-blk,id=vu0,node-name=disk,writable=on,num-queues=1,\
                 addr.type=unix,addr.path={}{}",
                    dir.join("vhost.sock").display(),
                    server.export_options
                ),
            ]);
            args
        },
    );
    let scratch = tempfile::tempdir().expect("scratch");
    let mut guest = GuestConfig::new(&guest_script(scratch.path(), runtime_s))
        .scratch(scratch.path())
        .vhost_user_blk(&daemon.path("vhost.sock"), 1)
        .timeout(Duration::from_secs(120 + 8 * u64::from(runtime_s)))
        .boot();
    let qemu = qemu_pid();
    let mut cpu = Vec::new();
    for w in WORKLOADS {
        guest.wait_for_file(&format!("start-{}", w.name));
        let (server, emulator, started) = (
            cpu_seconds(daemon.pid()),
            cpu_seconds(qemu),
            std::time::Instant::now(),
        );
        guest.wait_for_file(&format!("end-{}", w.name));
        cpu.push((
            cpu_seconds(daemon.pid()) - server,
            (cpu_seconds(qemu) - emulator) / started.elapsed().as_secs_f64(),
        ));
    }
    let output = guest.wait();
    assert_eq!(output.status, 0, "{}", output.console);
    WORKLOADS
        .iter()
        .zip(cpu)
        .map(|(w, (server_s, qemu_cpus))| {
            let report = std::fs::read_to_string(scratch.path().join(format!("{}.json", w.name)))
                .expect("fio report");
            let report: Value = serde_json::from_str(&report).expect("fio JSON");
            let side = &report["jobs"][0][if w.rw.ends_with("read") {
                "read"
            } else {
                "write"
            }];
            let ops = side["total_ios"].as_f64().expect("total_ios").max(1.0);
            let interrupts = |when: &str| {
                let file = scratch.path().join(format!("irq-{when}-{}", w.name));
                disk_interrupts(&std::fs::read_to_string(file).unwrap_or_default())
            };
            let value = if w.sequential() {
                side["bw_bytes"].as_f64().expect("bw_bytes") / f64::from(1 << 20)
            } else {
                side["iops"].as_f64().expect("iops")
            };
            Cell {
                value,
                server_us_per_op: server_s * 1e6 / ops,
                interrupts_per_op: (interrupts("after") - interrupts("before")) / ops,
                qemu_cpus,
            }
        })
        .collect()
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let update_doc = args.iter().any(|a| a == "--update-doc");
    let runtime_s = if quick { 2 } else { 10 };

    let scratch = tempfile::Builder::new()
        .prefix("storaged-vhost-bench-")
        .tempdir_in("/dev/shm")
        .expect("tmpfs scratch");
    let image = scratch.path().join("disk.raw");
    std::fs::write(&image, vec![0x5a; IMAGE_SIZE]).expect("image");

    let cells: Vec<Vec<Cell>> = SERVERS
        .iter()
        .map(|server| measure(server, &image, runtime_s))
        .collect();
    let qsd = cells.len() - 1;

    let mut text = String::new();
    text += &format!(
        "- machine: {} CPUs, kernel {}; guest: QEMU {} (TCG), 1 vCPU, Linux 6.12, \
         `vhost-user-blk-pci` with one queue\n",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        first_line("uname", &["-r"]),
        first_line("qemu-system-x86_64", &["--version"]),
    );
    text += &format!(
        "- storaged commit {}; {}\n",
        first_line("git", &["rev-parse", "--short", "HEAD"]),
        first_line("qemu-storage-daemon", &["--version"]),
    );
    text += &format!(
        "- fio in the guest: `direct=1`, libaio, depth 16, {runtime_s} s per row; \
         1 GiB raw image on tmpfs, page cache on the host\n"
    );
    let titles: Vec<&str> = SERVERS.iter().map(|s| s.title).collect();
    let table = |title: &str, cell: &dyn Fn(&Cell) -> String, ratios: bool| {
        let mut head = format!("\n{title}\n\n| workload | {} |", titles.join(" | "));
        let mut rule = "|---|".to_string() + &"---:|".repeat(titles.len());
        if ratios {
            for t in &titles[..qsd] {
                head += &format!(" {t} / QSD |");
                rule += "---:|";
            }
        }
        let mut out = format!("{head}\n{rule}\n");
        for (row, w) in WORKLOADS.iter().enumerate() {
            out += &format!("| {} ({}) |", w.name, w.unit());
            for server in &cells {
                out += &format!(" {} |", cell(&server[row]));
            }
            if ratios {
                for server in &cells[..qsd] {
                    out += &format!(" {:.2}x |", server[row].value / cells[qsd][row].value);
                }
            }
            out += "\n";
        }
        out
    };
    text += &table("Throughput:", &|c| format!("{:.0}", c.value), true);
    text += &table(
        "Server CPU per operation (µs; lower is better):",
        &|c| format!("{:.1}", c.server_us_per_op),
        false,
    );
    text += &table(
        "Interrupts the guest took from the disk per operation:",
        &|c| format!("{:.2}", c.interrupts_per_op),
        false,
    );
    text += &table(
        "CPUs QEMU kept busy (the emulated guest and its devices; 1.00 is one CPU):",
        &|c| format!("{:.2}", c.qemu_cpus),
        false,
    );
    print!("{text}");
    if update_doc {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
        let doc = std::fs::read_to_string(&path).expect("docs/benchmarks.md");
        let begin = doc.find(DOC_BEGIN).expect("begin marker") + DOC_BEGIN.len();
        let end = doc.find(DOC_END).expect("end marker");
        let updated = format!("{}\n{text}{}", &doc[..begin], &doc[end..]);
        std::fs::write(&path, updated).expect("write docs/benchmarks.md");
    }
}
