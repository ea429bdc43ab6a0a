//! Crash consistency: the qcow2 driver runs over a simulated disk whose
//! writes are volatile until a flush; after a random number of writes and
//! flushes the disk "crashes", in the middle of whatever the driver was
//! doing, keeping a random subset of the unflushed writes (4 KiB pieces,
//! in any order). Every time, `qemu-img check` must find no
//! corruption (leaked clusters are allowed), every byte untouched since
//! the last completed flush must read as it was then, and the driver must
//! open the image again and keep working.

mod bytes_io;
mod qcow2_support;

use bytes_io::BytesIo;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use block::qcow2::{BlockChild, Qcow2};
use block::{
    BlockDriver, BlockError, BlockResult, ErrorKind, Extent, IoBuf, WriteFlags, ZeroFlags,
};
use qcow2_support::{arg, create_qcow2, options, raw_contents, Rng};

/// Granularity at which a crash keeps or loses parts of a write.
const CRASH_PIECE: usize = 4096;
/// Granularity of the "touched since the last flush" map.
const SECTOR: usize = 512;

/// A write not yet made durable.
enum Volatile {
    Data(u64, Vec<u8>),
    Resize(u64),
}

struct DiskState {
    durable: Vec<u8>,
    current: Vec<u8>,
    volatile: Vec<Volatile>,
    /// Writes and flushes left before the crash.
    countdown: u64,
    /// What the disk held when it crashed.
    crashed: Option<Vec<u8>>,
    rng: Rng,
}

/// An in-memory disk with a volatile write cache that crashes after a
/// given number of writes and flushes: from then on it fails every write
/// and flush, and keeps what a crash left.
struct CrashDisk(Mutex<DiskState>);

fn crashed() -> BlockError {
    BlockError::new(ErrorKind::Io, "the disk crashed")
}

fn apply(image: &mut Vec<u8>, write: &Volatile) {
    match write {
        Volatile::Data(offset, data) => {
            let end = *offset as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(data);
        }
        Volatile::Resize(len) => image.resize(*len as usize, 0),
    }
}

impl CrashDisk {
    fn new(contents: Vec<u8>, countdown: u64, seed: u64) -> Self {
        CrashDisk(Mutex::new(DiskState {
            durable: contents.clone(),
            current: contents,
            volatile: Vec::new(),
            countdown,
            crashed: None,
            rng: Rng::from_seed(seed),
        }))
    }

    /// Counts one write or flush; crashes when the count runs out.
    fn tick(state: &mut DiskState) -> BlockResult<()> {
        if state.crashed.is_some() {
            return Err(crashed());
        }
        if state.countdown == 0 {
            state.crashed = Some(Self::crash_image(state));
            return Err(crashed());
        }
        state.countdown -= 1;
        Ok(())
    }

    fn record(&self, write: Volatile) -> BlockResult<()> {
        let mut state = self.0.lock().unwrap();
        Self::tick(&mut state)?;
        apply(&mut state.current, &write);
        state.volatile.push(write);
        Ok(())
    }

    /// The image after the crash (crashing now if it has not yet).
    fn crashed_image(&self) -> Vec<u8> {
        let mut state = self.0.lock().unwrap();
        if state.crashed.is_none() {
            state.crashed = Some(Self::crash_image(&mut state));
        }
        state.crashed.clone().unwrap_or_default()
    }

    /// What a crash leaves: the durable state plus a random subset of the
    /// volatile pieces, applied in random order.
    fn crash_image(state: &mut DiskState) -> Vec<u8> {
        let mut image = state.durable.clone();
        let mut pieces: Vec<Volatile> = Vec::new();
        for write in &state.volatile {
            match write {
                Volatile::Data(offset, data) => {
                    for (i, chunk) in data.chunks(CRASH_PIECE).enumerate() {
                        let at = offset + (i * CRASH_PIECE) as u64;
                        pieces.push(Volatile::Data(at, chunk.to_vec()));
                    }
                }
                Volatile::Resize(len) => pieces.push(Volatile::Resize(*len)),
            }
        }
        let rng = &mut state.rng;
        while !pieces.is_empty() {
            let piece = pieces.swap_remove(rng.below(pieces.len() as u64) as usize);
            if rng.below(2) == 0 {
                apply(&mut image, &piece);
            }
        }
        image
    }
}

#[async_trait]
impl BlockChild for CrashDisk {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().current.len() as u64
    }
    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        let state = self.0.lock().unwrap();
        let start = (offset as usize).min(state.current.len());
        let end = (offset as usize + buf.len()).min(state.current.len());
        buf.copy_from_slice(0, &state.current[start..end]);
        buf.slice(end - start..buf.len()).fill_zeroes();
        Ok(())
    }
    async fn write(&self, offset: u64, buf: &IoBuf, _flags: WriteFlags) -> BlockResult<()> {
        self.record(Volatile::Data(offset, buf.to_vec()))
    }
    async fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> BlockResult<()> {
        self.record(Volatile::Data(offset, vec![0; len as usize]))
    }
    async fn discard(&self, _offset: u64, _len: u64) -> BlockResult<()> {
        Ok(())
    }
    async fn flush(&self) -> BlockResult<()> {
        let mut state = self.0.lock().unwrap();
        Self::tick(&mut state)?;
        let volatile = std::mem::take(&mut state.volatile);
        for write in &volatile {
            apply(&mut state.durable, write);
        }
        Ok(())
    }
    async fn block_status(&self, _offset: u64, len: u64) -> BlockResult<Extent> {
        Ok(Extent {
            length: len,
            data: true,
            zero: false,
            depth: 1,
        })
    }
    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        self.record(Volatile::Resize(new_size))
    }
}

/// The guest contents as of the last completed flush, and which sectors
/// were touched since.
struct Expectation {
    current: Vec<u8>,
    flushed: Vec<u8>,
    touched: Vec<bool>,
}

impl Expectation {
    fn touch(&mut self, offset: u64, len: u64) {
        let first = offset as usize / SECTOR;
        let last = (offset + len).div_ceil(SECTOR as u64) as usize;
        self.touched[first..last].fill(true);
    }

    fn flushed(&mut self) {
        self.flushed.clone_from(&self.current);
        self.touched.fill(false);
    }
}

/// One guest operation.
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64, bool),
    Discard(u64, u64),
}

impl Op {
    /// A random operation inside `[start, end)`.
    fn random(rng: &mut Rng, start: u64, end: u64, max_len: u64) -> Op {
        let offset = start + rng.below(end - start);
        let len = (rng.below(max_len) + 1).min(end - offset);
        match rng.below(8) {
            0..=5 => {
                let mut data = vec![0u8; len as usize];
                rng.fill(&mut data);
                Op::Write(offset, data)
            }
            6 => Op::Zero(offset, len, rng.below(2) == 0),
            _ => Op::Discard(offset, len),
        }
    }

    /// Records the operation in the expectation before it is issued.
    fn expect(&self, expect: &mut Expectation, cs: u64, size: u64) {
        match self {
            Op::Write(offset, data) => {
                expect.touch(*offset, data.len() as u64);
                expect.current[*offset as usize..*offset as usize + data.len()]
                    .copy_from_slice(data);
            }
            Op::Zero(offset, len, _) => {
                expect.touch(*offset, *len);
                expect.current[*offset as usize..(*offset + *len) as usize].fill(0);
            }
            Op::Discard(offset, len) => {
                // Whole clusters now read as zeroes (version 3, no backing).
                let start = offset.div_ceil(cs) * cs;
                let end = if offset + len == size {
                    size
                } else {
                    (offset + len) / cs * cs
                };
                if start < end {
                    expect.touch(start, end - start);
                    expect.current[start as usize..end as usize].fill(0);
                }
            }
        }
    }

    async fn run(self, qcow2: &Qcow2) -> BlockResult<()> {
        match self {
            Op::Write(offset, data) => qcow2.write_from(offset, &data, WriteFlags::default()).await,
            Op::Zero(offset, len, may_unmap) => {
                let flags = ZeroFlags {
                    may_unmap,
                    ..Default::default()
                };
                qcow2.write_zeroes(offset, len, flags).await
            }
            Op::Discard(offset, len) => qcow2.discard(offset, len).await,
        }
    }
}

/// Runs random operations, `parallel` at a time in disjoint parts of the
/// image, with flushes in between, over a disk that crashes after a random
/// number of writes and flushes; returns the image the crash left and
/// what must have survived.
async fn run_until_crash(
    initial: Vec<u8>,
    rng: &mut Rng,
    steps: u64,
    parallel: u64,
) -> (Vec<u8>, Expectation, u64) {
    let countdown = rng.below(steps * parallel * 3) + 1;
    let disk = Arc::new(CrashDisk::new(initial, u64::MAX, rng.next()));
    let qcow2 = Arc::new(
        Qcow2::open(disk.clone(), None, options(true))
            .await
            .expect("open"),
    );
    let size = qcow2.size();
    let cs = qcow2
        .driver_info()
        .and_then(|i| i.cluster_size)
        .expect("cluster size");
    let mut expect = Expectation {
        current: read_whole(&qcow2).await,
        flushed: Vec::new(),
        touched: vec![false; (size as usize).div_ceil(SECTOR)],
    };
    expect.flushed();
    disk.0.lock().unwrap().countdown = countdown;
    let region = (size / parallel).div_ceil(cs) * cs;
    let max_len = (3 * cs).max(128 << 10);
    'steps: for _ in 0..steps {
        if rng.below(5) == 0 {
            match qcow2.flush().await {
                Ok(()) => expect.flushed(),
                Err(_) => break,
            }
            continue;
        }
        let mut tasks = Vec::new();
        for part in 0..parallel {
            let start = part * region;
            let end = (start + region).min(size);
            if start >= end {
                continue;
            }
            let op = Op::random(rng, start, end, max_len);
            op.expect(&mut expect, cs, size);
            let qcow2 = qcow2.clone();
            tasks.push(tokio::spawn(async move { op.run(&qcow2).await }));
        }
        // A flush racing the requests: it proves nothing about them (they
        // are in flight), but its writeback must stay consistent.
        if parallel > 1 && rng.below(3) == 0 {
            let qcow2 = qcow2.clone();
            tasks.push(tokio::spawn(async move { qcow2.flush().await }));
        }
        for task in tasks {
            if task.await.unwrap().is_err() {
                break 'steps;
            }
        }
    }
    drop(qcow2);
    (disk.crashed_image(), expect, countdown)
}

async fn read_whole(qcow2: &Qcow2) -> Vec<u8> {
    let mut data = vec![0u8; qcow2.size() as usize];
    qcow2.read_into(0, &mut data).await.unwrap();
    data
}

/// `qemu-img check` may report leaks but nothing else.
fn assert_no_corruption(image: &Path, context: &str) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "--output=json", arg(image)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{context}: qemu-img check: {e}: {text}"));
    for key in ["corruptions", "check-errors"] {
        let n = report.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        if n != 0 {
            let human = std::process::Command::new("qemu-img")
                .args(["check", arg(image)])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&human.stderr);
            let first: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("Leaked"))
                .take(20)
                .collect();
            panic!("{context}: {key}: {report}\n{}", first.join("\n"));
        }
    }
}

async fn crash_many_times(
    create_options: &str,
    size: &str,
    runs: usize,
    steps: u64,
    parallel: u64,
    rng: &mut Rng,
) {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.qcow2");
    create_qcow2(&template, &["-o", create_options], size);
    let initial = std::fs::read(&template).unwrap();
    let image = dir.path().join("crashed.qcow2");
    for run in 0..runs {
        let (crashed, expect, crash_at) =
            run_until_crash(initial.clone(), rng, steps, parallel).await;
        let context =
            format!("{create_options}: run {run}, crash after {crash_at} writes and flushes");
        std::fs::write(&image, &crashed).unwrap();
        assert_no_corruption(&image, &context);
        let guest = raw_contents(&image, dir.path());
        for (sector, touched) in expect.touched.iter().enumerate() {
            let range = sector * SECTOR..((sector + 1) * SECTOR).min(guest.len());
            if !touched && guest[range.clone()] != expect.flushed[range.clone()] {
                panic!("{context}: flushed data lost at byte {}", range.start);
            }
        }
        // The driver opens the crashed image (repairing it if dirty),
        // writes, and leaves it consistent.
        let file = qcow2_support::file_child(&image, true);
        let qcow2 = Qcow2::open(file, None, options(true))
            .await
            .unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
        qcow2
            .write_from(0, &[0x5a; 4096], WriteFlags::default())
            .await
            .unwrap();
        qcow2.close().await.unwrap();
        drop(qcow2);
        assert_no_corruption(&image, &format!("{context}, after reopening"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_never_corrupt_and_never_lose_flushed_data() {
    let mut rng = Rng::for_test("crashes_never_corrupt_and_never_lose_flushed_data");
    crash_many_times("cluster_size=65536", "16M", 40, 120, 1, &mut rng).await;
    crash_many_times("cluster_size=512", "4M", 40, 200, 1, &mut rng).await;
    // 64-bit refcounts in 512-byte clusters: the refcount table outgrows
    // its first cluster (2 MiB of host clusters) during the run.
    crash_many_times(
        "cluster_size=512,refcount_bits=64",
        "4M",
        30,
        200,
        1,
        &mut rng,
    )
    .await;
    crash_many_times(
        "cluster_size=4096,lazy_refcounts=on,refcount_bits=8",
        "8M",
        40,
        120,
        1,
        &mut rng,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_during_concurrent_requests_never_corrupt() {
    let mut rng = Rng::for_test("crashes_during_concurrent_requests_never_corrupt");
    crash_many_times("cluster_size=65536", "32M", 30, 60, 8, &mut rng).await;
    crash_many_times("cluster_size=512", "8M", 30, 80, 8, &mut rng).await;
}

/// A child whose writes wait while its gate is closed.
struct GatedChild {
    inner: Arc<dyn BlockChild>,
    open: tokio::sync::watch::Sender<bool>,
}

#[async_trait]
impl BlockChild for GatedChild {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.inner.read(offset, buf).await
    }
    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open).await.expect("gate kept");
        self.inner.write(offset, buf, flags).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.inner.write_zeroes(offset, len, flags).await
    }
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.discard(offset, len).await
    }
    async fn flush(&self) -> BlockResult<()> {
        self.inner.flush().await
    }
    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        self.inner.block_status(offset, len).await
    }
    async fn resize(&self, new_size: u64) -> BlockResult<()> {
        self.inner.resize(new_size).await
    }
}

/// A flush whose future is dropped while its metadata writes wait (a
/// client gone with its flush in flight) leaves that metadata dirty: the
/// next flush writes it, and the image is whole and clean.
#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_flush_loses_no_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    create_qcow2(&image, &[], "16M");
    let (open, _) = tokio::sync::watch::channel(true);
    let gated = Arc::new(GatedChild {
        inner: qcow2_support::file_child(&image, true),
        open,
    });
    let qcow2 = Qcow2::open(gated.clone(), None, options(true))
        .await
        .unwrap();
    let mut expected = vec![0u8; 16 << 20];
    for (i, offset) in [0usize, 3 << 20, 9 << 20].into_iter().enumerate() {
        let data = vec![0x40 + i as u8; 70_000];
        expected[offset..offset + data.len()].copy_from_slice(&data);
        qcow2
            .write(offset as u64, &IoBuf::copy_of(&data), WriteFlags::default())
            .await
            .unwrap();
    }
    gated.open.send_replace(false);
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(50), qcow2.flush()).await;
    assert!(abandoned.is_err(), "the flush waited for its writes");
    gated.open.send_replace(true);
    qcow2.flush().await.unwrap();
    qcow2_support::close_and_compare(
        qcow2,
        &image,
        dir.path(),
        &expected,
        "after an abandoned flush",
    )
    .await;
}
