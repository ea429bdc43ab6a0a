//! Crash consistency of the qcow2 driver through the real daemon. Many
//! times over: a fresh qcow2 image (clusters from 512 B to 2 MiB, version
//! 2 or 3, refcounts of 16 to 64 bits, sometimes over a raw or qcow2
//! backing file, sometimes with `discard=unmap` or tiny caches) is served
//! by `storaged` over NBD; a random workload of writes, write-zeroes,
//! trims, flushes and reads runs with many requests in flight; and the
//! daemon is killed with SIGKILL at a random moment (after some requests,
//! right after a flush is acknowledged, or after some time). Then
//! `qemu-img check` must find no corruption (leaked clusters are allowed)
//! and every sector must hold what the last acknowledged flush or FUA
//! request made durable, or what a request issued after it wrote. Some
//! images go through several crashes, reopened each time.
//!
//! Every sector the test writes carries a self-describing pattern (the id
//! of the write and the sector it was meant for), so a wrong sector tells
//! where its content came from.
//!
//! `CRASH_TEST_SEED` replays a run, `CRASH_TEST_ITERATIONS` sets its
//! length; each iteration prints the seed that replays it alone.

mod common;

#[allow(dead_code)]
#[path = "../exports/tests/common/raw.rs"]
mod raw;

use std::collections::HashMap;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestDaemon;
use exports::nbd::proto::{
    CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
    FLAG_SEND_FLUSH, FLAG_SEND_FUA, FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES, SIMPLE_REPLY_MAGIC,
};
use raw::{encode_request, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// The unit in which the test writes and checks data.
const SECTOR: u64 = 512;
/// Iterations when `CRASH_TEST_ITERATIONS` is not set.
const DEFAULT_ITERATIONS: u64 = 24;
/// The longest request of the random workload (cluster-aligned requests
/// may reach one cluster beyond it).
const MAX_REQUEST_SECTORS: u64 = 2048;
/// Requests after which a round is cut by a kill whatever its plan said.
const MAX_REQUESTS_PER_ROUND: u64 = 20_000;
/// A round (workload up to the kill) that takes longer is a hang.
const ROUND_TIME_LIMIT: Duration = Duration::from_secs(60);
/// The longest delay before a timed kill.
const MAX_KILL_DELAY_MS: u64 = 250;
/// Marks the start of every sector the test writes ("CRASHPAT").
const PATTERN_MAGIC: u64 = 0x4352_4153_4850_4154;
/// The write id of the backing file's data.
const BACKING_ID: u64 = u64::MAX;
/// Wrong sectors described in a failure report.
const MAX_REPORTED_SECTORS: usize = 8;
/// The name of the NBD export.
const EXPORT: &str = "disk";
/// The splitmix64 increment.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_corrupts_and_never_loses_flushed_data() {
    let seed = env_number("CRASH_TEST_SEED").unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        mix(now.map_or(0, |time| time.as_nanos() as u64))
    });
    let iterations = env_number("CRASH_TEST_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    eprintln!("qcow2 crash test: CRASH_TEST_SEED={seed} CRASH_TEST_ITERATIONS={iterations}");
    let started = Instant::now();
    let mut iteration_seed = seed;
    for iteration in 0..iterations {
        eprintln!(
            "iteration {iteration}: CRASH_TEST_SEED={iteration_seed} CRASH_TEST_ITERATIONS=1 \
             replays it alone"
        );
        run_iteration(iteration_seed).await;
        iteration_seed = mix(iteration_seed.wrapping_add(GOLDEN_GAMMA));
    }
    eprintln!("{iterations} iterations in {:.1?}", started.elapsed());
}

/// A decimal (or `0x` hexadecimal) number from the environment.
fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// One image through one or more crashes.
async fn run_iteration(seed: u64) {
    let mut rng = Rng(seed);
    let scenario = Scenario::random(&mut rng);
    eprintln!("  {scenario:?}");
    let dir = tempfile::tempdir().expect("temporary directory");
    let image = dir.path().join("disk.qcow2");
    let backing = create_images(&scenario, dir.path(), &image, &mut rng);
    let mut model = Model::new(backing, scenario.discard_unmap);
    for round in 0..scenario.rounds {
        let plan = RoundPlan::random(&mut rng, &scenario);
        model.start_round();
        let mut daemon = start_daemon(&scenario, &image);
        let stats = tokio::time::timeout(
            ROUND_TIME_LIMIT,
            run_round(&daemon, &mut model, &plan, &scenario, &mut rng),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round} made no progress: {}", daemon.stderr()));
        let status = daemon.wait_exit();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "storaged ended by itself ({status}) in round {round}: {}",
            daemon.stderr()
        );
        let check = assert_no_corruption(&image);
        eprintln!("  round {round}: {plan:?}: {stats:?}, {check}");
        let contents = raw_contents(&image, dir.path(), scenario.size);
        model.base = model
            .verify(&contents)
            .unwrap_or_else(|report| panic!("round {round} after {stats:?}: {report}"));
    }
}

/// splitmix64: small, seedable, good enough to drive a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix(self.0)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.next().checked_rem(bound).unwrap_or(0)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn percent(&mut self, chance: u64) -> bool {
        self.below(100) < chance
    }

    /// One of `choices`, each as likely as its weight.
    fn weighted<T: Copy>(&mut self, choices: &[(u64, T)]) -> T {
        let mut roll = self.below(choices.iter().map(|choice| choice.0).sum());
        for &(weight, choice) in choices {
            if roll < weight {
                return choice;
            }
            roll -= weight;
        }
        choices[choices.len() - 1].1
    }
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a sector holds: zeroes, or the pattern write `id` made for
/// `sector` (not always the sector it is found in, see
/// [`Model::after_crash`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Content {
    Zero,
    Pattern { id: u64, sector: u64 },
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Content::Zero => write!(f, "zeroes"),
            Content::Pattern {
                id: BACKING_ID,
                sector,
            } => write!(f, "backing data of sector {sector}"),
            Content::Pattern { id, sector } => write!(f, "write #{id} for sector {sector}"),
        }
    }
}

/// Fills one sector with `content`.
fn fill(content: Content, sector: &mut [u8]) {
    match content {
        Content::Zero => sector.fill(0),
        Content::Pattern { id, sector: origin } => {
            sector[..8].copy_from_slice(&PATTERN_MAGIC.to_le_bytes());
            sector[8..16].copy_from_slice(&id.to_le_bytes());
            sector[16..24].copy_from_slice(&origin.to_le_bytes());
            let mut noise = Rng(mix(id) ^ origin.wrapping_mul(GOLDEN_GAMMA));
            for word in sector[24..].chunks_exact_mut(8) {
                word.copy_from_slice(&noise.next().to_le_bytes());
            }
        }
    }
}

/// What one sector of data is, if it is zeroes or an intact pattern.
fn decode(sector: &[u8]) -> Option<Content> {
    if sector.iter().all(|&byte| byte == 0) {
        return Some(Content::Zero);
    }
    let word = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().expect("8 bytes"));
    if word(0) != PATTERN_MAGIC {
        return None;
    }
    let content = Content::Pattern {
        id: word(8),
        sector: word(16),
    };
    let mut expected = [0; SECTOR as usize];
    fill(content, &mut expected);
    (expected[..] == *sector).then_some(content)
}

/// The image and daemon settings of one iteration.
#[derive(Debug)]
struct Scenario {
    cluster_size: u64,
    version3: bool,
    refcount_bits: u32,
    size: u64,
    backing: Option<Backing>,
    /// `discard=unmap` on the qcow2 node: trims and write-zeroes free
    /// clusters.
    discard_unmap: bool,
    /// `discard=unmap` on the file node too: freed clusters are punched
    /// out of the file.
    file_discard_unmap: bool,
    small_caches: bool,
    rounds: u32,
}

#[derive(Debug)]
struct Backing {
    qcow2: bool,
    compressed: bool,
    size: u64,
}

impl Scenario {
    fn random(rng: &mut Rng) -> Scenario {
        let cluster_size = 1 << rng.weighted(&[(8, 9), (20, 12), (10, 14), (50, 16), (12, 21)]);
        let version3 = rng.percent(85);
        let refcount_bits = if version3 {
            rng.weighted(&[(80, 16), (10, 32), (10, 64)])
        } else {
            16
        };
        let mut size = rng.between(4, 24) << 20;
        if rng.percent(20) {
            size += rng.below(cluster_size / SECTOR) * SECTOR;
        }
        let backing = rng.percent(50).then(|| {
            let qcow2 = rng.percent(50);
            Backing {
                qcow2,
                compressed: qcow2 && rng.percent(40),
                size: if rng.percent(70) {
                    size
                } else {
                    rng.between(size / SECTOR / 2, size / SECTOR) * SECTOR
                },
            }
        });
        let discard_unmap = rng.percent(50);
        Scenario {
            cluster_size,
            version3,
            refcount_bits,
            size,
            backing,
            discard_unmap,
            file_discard_unmap: discard_unmap && rng.percent(70),
            small_caches: rng.percent(30),
            rounds: rng.weighted(&[(60, 1), (25, 2), (15, 3)]),
        }
    }

    fn sectors(&self) -> u64 {
        self.size / SECTOR
    }

    fn cluster_sectors(&self) -> u64 {
        self.cluster_size / SECTOR
    }
}

/// Creates the backing file (if any) and the qcow2 image; returns what
/// each sector of the image reads as at first.
fn create_images(scenario: &Scenario, dir: &Path, image: &Path, rng: &mut Rng) -> Vec<Content> {
    let mut initial = vec![Content::Zero; scenario.sectors() as usize];
    let mut create = vec![
        "create".to_owned(),
        "-q".to_owned(),
        "-f".to_owned(),
        "qcow2".to_owned(),
        "-o".to_owned(),
        format!(
            "cluster_size={},compat={},refcount_bits={}",
            scenario.cluster_size,
            if scenario.version3 { "1.1" } else { "0.10" },
            scenario.refcount_bits
        ),
    ];
    if let Some(backing) = &scenario.backing {
        let raw_path = dir.join("backing.raw");
        let mut bytes = vec![0; backing.size as usize];
        for (chunk, run) in bytes.chunks_mut(64 << 10).enumerate() {
            if rng.percent(60) {
                let first = chunk as u64 * (64 << 10) / SECTOR;
                for (index, sector) in run.chunks_mut(SECTOR as usize).enumerate() {
                    let content = Content::Pattern {
                        id: BACKING_ID,
                        sector: first + index as u64,
                    };
                    fill(content, sector);
                    initial[(first as usize) + index] = content;
                }
            }
        }
        std::fs::write(&raw_path, &bytes).expect("write the backing file");
        let (path, format) = if backing.qcow2 {
            let path = dir.join("backing.qcow2");
            let mut convert = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
            if backing.compressed {
                convert.push("-c");
            }
            qemu_img(&[&convert[..], &[path_str(&raw_path), path_str(&path)]].concat());
            (path, "qcow2")
        } else {
            (raw_path, "raw")
        };
        create.extend([
            "-b".to_owned(),
            path_str(&path).to_owned(),
            "-F".to_owned(),
            format.to_owned(),
        ]);
    }
    create.extend([path_str(image).to_owned(), scenario.size.to_string()]);
    qemu_img(&create.iter().map(String::as_str).collect::<Vec<_>>());
    initial
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs `qemu-img` and expects success.
fn qemu_img(args: &[&str]) -> Output {
    let output = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        output.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `qemu-img check` exits with 0 (clean) or 3 (leaked clusters only);
/// 2 means corruption and 1 that the check could not finish. Returns
/// which of the good outcomes it was.
fn assert_no_corruption(image: &Path) -> &'static str {
    let output = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", path_str(image)])
        .output()
        .expect("run qemu-img check");
    match output.status.code() {
        Some(0) => "image clean",
        Some(3) => "leaked clusters",
        _ => panic!(
            "qemu-img check ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The guest-visible contents of `image` (with its backing chain).
fn raw_contents(image: &Path, dir: &Path, size: u64) -> Vec<u8> {
    let raw = dir.join("contents.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "qcow2",
        "-O",
        "raw",
        path_str(image),
        path_str(&raw),
    ]);
    let contents = std::fs::read(&raw).expect("read the converted image");
    assert_eq!(contents.len() as u64, size, "size of the converted image");
    contents
}

/// Starts `storaged` exporting the qcow2 image over NBD.
fn start_daemon(scenario: &Scenario, image: &Path) -> TestDaemon {
    let unmap = |on: bool| if on { ",discard=unmap" } else { "" };
    let (file_discard, discard) = (
        unmap(scenario.file_discard_unmap),
        unmap(scenario.discard_unmap),
    );
    let caches = if scenario.small_caches {
        format!(
            ",l2-cache-size={},refcount-cache-size={}",
            2 * scenario.cluster_size,
            4 * scenario.cluster_size
        )
    } else {
        String::new()
    };
    let image = path_str(image).to_owned();
    let dir = tempfile::tempdir().expect("temporary directory");
    TestDaemon::start_in(dir, |dir| {
        vec![
            "--blockdev".into(),
            format!("driver=file,node-name=file,filename={image}{file_discard}"),
            "--blockdev".into(),
            format!("driver=qcow2,node-name=disk,file=file{discard}{caches}"),
            "--nbd-server".into(),
            format!(
                "addr.type=unix,addr.path={}",
                dir.join("nbd.sock").display()
            ),
            "--export".into(),
            format!("type=nbd,id=e0,node-name=disk,name={EXPORT},writable=on"),
        ]
    })
}

/// When a round's kill comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// Right after sending this many requests.
    RequestsSent(u64),
    /// Right after this many flushes were acknowledged.
    FlushesAcknowledged(u64),
    /// After this much time, whatever is going on.
    Timer(Duration),
}

/// How one round between a start and a kill runs.
#[derive(Debug)]
struct RoundPlan {
    /// Requests in flight at most.
    depth: usize,
    kill: Kill,
    /// Half the requests fall in this small range of sectors, so that
    /// requests meet in the same clusters.
    hot_first: u64,
    hot_sectors: u64,
}

impl RoundPlan {
    fn random(rng: &mut Rng, scenario: &Scenario) -> RoundPlan {
        let kill = match rng.below(100) {
            0..=49 => {
                let (low, high) =
                    rng.weighted(&[(15, (0, 10)), (45, (10, 300)), (40, (300, 3000))]);
                Kill::RequestsSent(rng.between(low, high))
            }
            50..=74 => Kill::FlushesAcknowledged(rng.between(1, 12)),
            _ => Kill::Timer(Duration::from_millis(rng.between(1, MAX_KILL_DELAY_MS))),
        };
        let hot_sectors = (4 * scenario.cluster_sectors())
            .max(64)
            .min(scenario.sectors());
        RoundPlan {
            depth: rng.weighted(&[(10, 1), (30, 4), (30, 16), (30, 32)]),
            kill,
            hot_first: rng.below(scenario.sectors() - hot_sectors + 1),
            hot_sectors,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write { id: u64 },
    Zero { may_unmap: bool },
    Trim,
    Flush,
}

impl Kind {
    fn changes_data(self) -> bool {
        !matches!(self, Kind::Read | Kind::Flush)
    }

    /// May free clusters, which the driver may then reuse.
    fn may_free(self) -> bool {
        matches!(self, Kind::Trim | Kind::Zero { may_unmap: true })
    }
}

/// One request of the workload.
#[derive(Debug)]
struct Request {
    kind: Kind,
    fua: bool,
    first: u64,
    sectors: u64,
}

impl Request {
    fn random(rng: &mut Rng, plan: &RoundPlan, scenario: &Scenario, model: &mut Model) -> Request {
        let kind = match rng.below(100) {
            0..=44 => {
                model.next_id += 1;
                Kind::Write { id: model.next_id }
            }
            45..=59 => Kind::Read,
            60..=71 => Kind::Zero {
                may_unmap: rng.percent(50),
            },
            72..=83 => Kind::Trim,
            _ => Kind::Flush,
        };
        let total = scenario.sectors();
        let mut sectors = match rng.below(100) {
            0..=69 => rng.between(1, 16),
            70..=94 => rng.between(17, 256),
            _ => rng.between(257, MAX_REQUEST_SECTORS),
        };
        let mut first = if rng.percent(50) {
            plan.hot_first + rng.below(plan.hot_sectors)
        } else {
            rng.below(total)
        };
        if rng.percent(30) {
            let cluster = scenario.cluster_sectors();
            first -= first % cluster;
            sectors = sectors.div_ceil(cluster) * cluster;
        }
        let sectors = sectors.min(total);
        Request {
            kind,
            fua: kind.changes_data() && rng.percent(15),
            first: first.min(total - sectors),
            sectors,
        }
    }

    /// The NBD request, with its payload.
    fn encode(&self, cookie: u64) -> Vec<u8> {
        let (command, mut flags) = match self.kind {
            Kind::Read => (CMD_READ, 0),
            Kind::Write { .. } => (CMD_WRITE, 0),
            Kind::Zero { may_unmap } => (
                CMD_WRITE_ZEROES,
                if may_unmap { 0 } else { CMD_FLAG_NO_HOLE },
            ),
            Kind::Trim => (CMD_TRIM, 0),
            Kind::Flush => (CMD_FLUSH, 0),
        };
        if self.fua {
            flags |= CMD_FLAG_FUA;
        }
        let mut payload = Vec::new();
        if let Kind::Write { id } = self.kind {
            payload = vec![0; (self.sectors * SECTOR) as usize];
            for (index, sector) in payload.chunks_exact_mut(SECTOR as usize).enumerate() {
                let origin = self.first + index as u64;
                fill(Content::Pattern { id, sector: origin }, sector);
            }
        }
        let (offset, length) = match self.kind {
            Kind::Flush => (0, 0),
            _ => (self.first * SECTOR, self.sectors * SECTOR),
        };
        encode_request(false, flags, command, cookie, offset, length, &payload)
    }
}

/// A request sent in this round, and when (on the round's event clock)
/// it was sent and acknowledged.
#[derive(Debug)]
struct Op {
    kind: Kind,
    fua: bool,
    first: u64,
    sectors: u64,
    sent_at: u64,
    acked_at: Option<u64>,
}

impl Op {
    /// Made durable: acknowledged with FUA, or acknowledged before a
    /// flush was sent that was acknowledged (sent at `flush_sent_at`).
    fn durable(&self, flush_sent_at: u64) -> bool {
        self.acked_at
            .is_some_and(|acked_at| self.fua || acked_at < flush_sent_at)
    }

    fn overlaps(&self, request: &Request) -> bool {
        self.first < request.first + request.sectors && request.first < self.first + self.sectors
    }
}

/// What the image may hold: its contents at the start of the round, and
/// for each sector the requests that changed it since, in order. The
/// workload never has two requests on one sector in flight, so that
/// order is the order in which they took effect.
struct Model {
    /// Each sector at the start of the round.
    base: Vec<Content>,
    /// Each sector in the backing file (zeroes past its end).
    backing: Vec<Content>,
    discard_unmap: bool,
    /// Requests of this round that changed each sector (indexes in `ops`).
    history: Vec<Vec<usize>>,
    ops: Vec<Op>,
    /// Counts sends and acknowledgements.
    clock: u64,
    /// When the latest acknowledged flush was sent.
    flush_sent_at: u64,
    /// The last write id given out.
    next_id: u64,
}

impl Model {
    fn new(backing: Vec<Content>, discard_unmap: bool) -> Model {
        Model {
            base: backing.clone(),
            backing,
            discard_unmap,
            history: Vec::new(),
            ops: Vec::new(),
            clock: 0,
            flush_sent_at: 0,
            next_id: 0,
        }
    }

    fn start_round(&mut self) {
        self.history = vec![Vec::new(); self.base.len()];
        self.ops.clear();
        self.clock = 0;
        self.flush_sent_at = 0;
    }

    /// Records `request` as sent; returns its index (also its cookie).
    fn send(&mut self, request: &Request) -> usize {
        self.clock += 1;
        let index = self.ops.len();
        if request.kind.changes_data() {
            for sector in request.first..request.first + request.sectors {
                self.history[sector as usize].push(index);
            }
        }
        self.ops.push(Op {
            kind: request.kind,
            fua: request.fua,
            first: request.first,
            sectors: request.sectors,
            sent_at: self.clock,
            acked_at: None,
        });
        index
    }

    fn acknowledge(&mut self, index: usize) {
        self.clock += 1;
        let op = &mut self.ops[index];
        op.acked_at = Some(self.clock);
        if op.kind == Kind::Flush {
            self.flush_sent_at = self.flush_sent_at.max(op.sent_at);
        }
    }

    /// What `op` may have left in `sector`. A trim leaves the sector as it
    /// was, or zeroes, or (version 2 images) the backing file's data.
    fn left_by(&self, op: &Op, sector: usize) -> Vec<Content> {
        match op.kind {
            Kind::Write { id } => vec![Content::Pattern {
                id,
                sector: sector as u64,
            }],
            Kind::Trim => vec![Content::Zero, self.backing[sector]],
            _ => vec![Content::Zero],
        }
    }

    /// What `sector` may hold once the first `count` requests of its
    /// history took effect.
    fn settled(&self, sector: usize, count: usize) -> Vec<Content> {
        let mut accepted = Vec::new();
        for &index in self.history[sector][..count].iter().rev() {
            let op = &self.ops[index];
            accepted.extend(self.left_by(op, sector));
            if op.kind != Kind::Trim {
                return accepted;
            }
        }
        accepted.push(self.base[sector]);
        accepted
    }

    /// What `sector` may hold after the crash: what its last durable
    /// request left, or what any later request left. Also whether any
    /// content the workload wrote anywhere is acceptable: a cluster freed
    /// after the last flush may be reused for another write while the
    /// on-disk L2 table still points to it (QEMU behaves the same), and
    /// NBD leaves trimmed data unspecified anyway.
    fn after_crash(&self, sector: usize) -> (Vec<Content>, bool) {
        let history = &self.history[sector];
        let durable = history
            .iter()
            .rposition(|&index| self.ops[index].durable(self.flush_sent_at))
            .map_or(0, |position| position + 1);
        let mut accepted = self.settled(sector, durable);
        let mut anything_known = false;
        for &index in &history[durable..] {
            let op = &self.ops[index];
            accepted.extend(self.left_by(op, sector));
            anything_known |= self.discard_unmap && op.kind.may_free();
        }
        (accepted, anything_known)
    }

    /// Zeroes or an intact pattern of a write of this iteration.
    fn is_known(&self, content: Content) -> bool {
        match content {
            Content::Zero => true,
            Content::Pattern { id, .. } => id == BACKING_ID || id <= self.next_id,
        }
    }

    /// Checks a read of `data` at `first` against what the sectors hold
    /// now (no request on them is in flight).
    fn check_read(&self, op: &Op, data: &[u8]) -> Result<(), String> {
        for (index, bytes) in data.chunks_exact(SECTOR as usize).enumerate() {
            let sector = op.first as usize + index;
            let accepted = self.settled(sector, self.history[sector].len());
            let found = decode(bytes);
            if !found.is_some_and(|content| accepted.contains(&content)) {
                return Err(format!(
                    "read of sector {sector} returned {} instead of one of {accepted:?}\n{}",
                    describe(found, bytes),
                    self.describe_history(sector)
                ));
            }
        }
        Ok(())
    }

    /// Checks the image contents after the crash; returns them as the
    /// base of the next round.
    fn verify(&self, contents: &[u8]) -> Result<Vec<Content>, String> {
        let mut observed = Vec::with_capacity(self.base.len());
        let mut wrong = Vec::new();
        for (sector, bytes) in contents.chunks_exact(SECTOR as usize).enumerate() {
            let found = decode(bytes);
            let (accepted, anything_known) = self.after_crash(sector);
            let fine = found.is_some_and(|content| {
                accepted.contains(&content) || (anything_known && self.is_known(content))
            });
            if !fine {
                wrong.push((sector, found, accepted));
            }
            observed.push(found.unwrap_or(Content::Zero));
        }
        if wrong.is_empty() {
            return Ok(observed);
        }
        let mut report = format!(
            "{} sectors lost what was flushed (latest acknowledged flush sent at {}):\n",
            wrong.len(),
            self.flush_sent_at
        );
        for (sector, found, accepted) in wrong.iter().take(MAX_REPORTED_SECTORS) {
            let bytes = &contents[sector * SECTOR as usize..][..SECTOR as usize];
            report += &format!(
                "sector {sector} (offset {}) holds {} instead of one of {accepted:?}\n{}",
                *sector as u64 * SECTOR,
                describe(*found, bytes),
                self.describe_history(*sector)
            );
        }
        Err(report)
    }

    fn describe_history(&self, sector: usize) -> String {
        let mut text = format!("  at the round's start: {:?}\n", self.base[sector]);
        for &index in &self.history[sector] {
            let op = &self.ops[index];
            text += &format!(
                "  request {index}: {:?}{} sectors {}+{}, sent at {}, {}\n",
                op.kind,
                if op.fua { " FUA" } else { "" },
                op.first,
                op.sectors,
                op.sent_at,
                op.acked_at
                    .map_or("never acknowledged".to_owned(), |at| format!(
                        "acknowledged at {at}"
                    ))
            );
        }
        text
    }
}

fn describe(found: Option<Content>, bytes: &[u8]) -> String {
    match found {
        Some(content) => format!("{content:?}"),
        None => format!("unknown bytes {:02x?}...", &bytes[..32]),
    }
}

/// What happened in a round.
#[derive(Debug, Default)]
struct RoundStats {
    sent: u64,
    acknowledged: u64,
    flushes_acknowledged: u64,
    in_flight_at_end: usize,
}

/// One reply, read by [`read_replies`].
struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
}

/// Reads simple replies until the connection ends (the daemon died) or
/// breaks; reads' payload lengths come from `read_lengths` by cookie.
async fn read_replies(
    mut reader: OwnedReadHalf,
    read_lengths: Arc<Mutex<HashMap<u64, usize>>>,
    replies: mpsc::UnboundedSender<Result<Reply, String>>,
) {
    loop {
        let mut head = [0; 16];
        if reader.read_exact(&mut head).await.is_err() {
            return;
        }
        let field = |range: std::ops::Range<usize>| {
            head[range]
                .iter()
                .fold(0u64, |value, &byte| value << 8 | u64::from(byte))
        };
        if field(0..4) != u64::from(SIMPLE_REPLY_MAGIC) {
            let _ = replies.send(Err(format!("bad reply header {head:02x?}")));
            return;
        }
        let (error, cookie) = (field(4..8) as u32, field(8..16));
        let length = read_lengths
            .lock()
            .expect("read lengths")
            .remove(&cookie)
            .unwrap_or(0);
        let mut data = vec![0; if error == 0 { length } else { 0 }];
        if reader.read_exact(&mut data).await.is_err() {
            return;
        }
        if replies
            .send(Ok(Reply {
                cookie,
                error,
                data,
            }))
            .is_err()
        {
            return;
        }
    }
}

fn sigkill(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill has no memory-safety preconditions; the child is not
    // reaped before the kill, so the pid is still the daemon's.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// An NBD connection in transmission: requests go out on `writer`,
/// replies come from a task reading the other half.
struct Connection {
    writer: OwnedWriteHalf,
    replies: mpsc::UnboundedReceiver<Result<Reply, String>>,
    /// Payload lengths of the reads in flight, by cookie.
    read_lengths: Arc<Mutex<HashMap<u64, usize>>>,
}

impl Connection {
    /// Connects to the daemon's export and checks what it offers.
    async fn open(daemon: &TestDaemon, scenario: &Scenario) -> Connection {
        let mut client = Raw::connect(&daemon.path("nbd.sock")).await;
        let (size, flags) = client.go(EXPORT).await;
        assert_eq!(size, scenario.size, "export size");
        for flag in [
            FLAG_SEND_FLUSH,
            FLAG_SEND_FUA,
            FLAG_SEND_TRIM,
            FLAG_SEND_WRITE_ZEROES,
        ] {
            assert_ne!(
                flags & flag,
                0,
                "transmission flags {flags:#x} lack {flag:#x}"
            );
        }
        let (reader, writer) = client.stream.into_split();
        let read_lengths = Arc::new(Mutex::new(HashMap::new()));
        let (reply_sender, replies) = mpsc::unbounded_channel();
        tokio::spawn(read_replies(
            reader,
            Arc::clone(&read_lengths),
            reply_sender,
        ));
        Connection {
            writer,
            replies,
            read_lengths,
        }
    }

    /// Sends `request` as `index`; false if the daemon is gone.
    async fn send(&mut self, index: usize, request: &Request) -> bool {
        if request.kind == Kind::Read {
            let length = (request.sectors * SECTOR) as usize;
            self.read_lengths
                .lock()
                .expect("read lengths")
                .insert(index as u64, length);
        }
        let message = request.encode(index as u64);
        self.writer.write_all(&message).await.is_ok()
    }
}

/// Runs the workload on `daemon` until it is killed as `plan` says.
async fn run_round(
    daemon: &TestDaemon,
    model: &mut Model,
    plan: &RoundPlan,
    scenario: &Scenario,
    rng: &mut Rng,
) -> RoundStats {
    let pid = daemon.pid();
    let mut connection = Connection::open(daemon, scenario).await;
    let timed_kill = match plan.kill {
        Kill::Timer(delay) => Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            sigkill(pid);
        })),
        _ => None,
    };
    let mut stats = RoundStats::default();
    let mut in_flight: Vec<usize> = Vec::new();
    let mut waiting: Option<Request> = None;
    let mut killed = plan.kill == Kill::RequestsSent(0);
    if killed {
        sigkill(pid);
    }
    let mut stopped = killed;
    loop {
        while !stopped && in_flight.len() < plan.depth {
            let request = waiting
                .take()
                .unwrap_or_else(|| Request::random(rng, plan, scenario, model));
            // Never two requests on one sector at once: their order, and
            // so what the sector holds, would be unknown.
            let busy = request.kind != Kind::Flush
                && in_flight.iter().any(|&index| {
                    model.ops[index].kind != Kind::Flush && model.ops[index].overlaps(&request)
                });
            if busy {
                waiting = Some(request);
                break;
            }
            let index = model.send(&request);
            in_flight.push(index);
            stats.sent += 1;
            if !connection.send(index, &request).await {
                stopped = true;
            } else if plan.kill == Kill::RequestsSent(stats.sent)
                || stats.sent >= MAX_REQUESTS_PER_ROUND
            {
                sigkill(pid);
                (stopped, killed) = (true, true);
            }
        }
        // Replies that arrive after the kill were sent before it: they
        // count as acknowledged.
        let Some(reply) = connection.replies.recv().await else {
            break;
        };
        let kind = take_reply(model, &mut in_flight, reply);
        stats.acknowledged += 1;
        if kind == Kind::Flush {
            stats.flushes_acknowledged += 1;
            if plan.kill == Kill::FlushesAcknowledged(stats.flushes_acknowledged) {
                sigkill(pid);
                (stopped, killed) = (true, true);
            }
        }
    }
    match timed_kill {
        Some(timed_kill) => timed_kill.await.expect("timed kill"),
        None => assert!(
            killed,
            "the connection ended before the kill: {}",
            daemon.stderr()
        ),
    }
    stats.in_flight_at_end = in_flight.len();
    stats
}

/// Checks a reply (success; for a read, the data) and records the
/// request as acknowledged; returns its kind.
fn take_reply(model: &mut Model, in_flight: &mut Vec<usize>, reply: Result<Reply, String>) -> Kind {
    let reply = reply.unwrap_or_else(|message| panic!("{message}"));
    let index = usize::try_from(reply.cookie).expect("cookie fits");
    let position = in_flight
        .iter()
        .position(|&sent| sent == index)
        .unwrap_or_else(|| panic!("reply to unknown cookie {}", reply.cookie));
    in_flight.swap_remove(position);
    let op = &model.ops[index];
    assert_eq!(reply.error, 0, "request {index} {op:?} failed");
    if op.kind == Kind::Read {
        model
            .check_read(op, &reply.data)
            .unwrap_or_else(|report| panic!("{report}"));
    }
    let kind = op.kind;
    model.acknowledge(index);
    kind
}
