#!/usr/bin/env python3
"""Side-by-side FUSE benchmark: storaged's FUSE export against qemu-storage-daemon's.

Both daemons export the same fully allocated qcow2 image (on tmpfs, opened through the
page cache) over FUSE, writable, one daemon at a time, started fresh for each workload.
fio runs on the mounted file with --direct=1: sequential 1 MiB and random 4 KiB reads and
writes, with psync at depth 1 and libaio at depth 32.  Each cell is the throughput (MiB/s
for sequential rows, IOPS for random ones) and the server's own CPU (user + system time
of the daemon from /proc/PID/stat over the fio run) per operation, in µs; the ratio
column is storaged over QSD.  Prints a markdown table and, with --update-doc, writes it
into docs/benchmarks.md between its markers.

    bench/fuse.py               # full run (about 4 minutes)
    bench/fuse.py --quick       # smoke run: not for comparison
    bench/fuse.py --only write  # the workloads whose name contains "write"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nbdbench import machine
from nbdbench.servers import process_cpu_s

REPOSITORY = Path(__file__).resolve().parent.parent
DOC = REPOSITORY / "docs" / "benchmarks.md"
DOC_BEGIN = "<!-- bench/fuse.py results: begin -->"
DOC_END = "<!-- bench/fuse.py results: end -->"
IMAGE_SIZE = "1G"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Workload:
    name: str
    rw: str
    block_size: str
    engine: str
    depth: int

    @property
    def sequential(self) -> bool:
        return self.rw in ("read", "write")

    @property
    def unit(self) -> str:
        return "MiB/s" if self.sequential else "IOPS"


WORKLOADS = [
    Workload(f"{kind} {bs} {engine} QD{depth}", rw, bs, engine, depth)
    for (kind, rw, bs) in [
        ("seq read", "read", "1M"),
        ("seq write", "write", "1M"),
        ("rand read", "randread", "4k"),
        ("rand write", "randwrite", "4k"),
    ]
    for (engine, depth) in [("psync", 1), ("libaio", 32)]
]

SERVERS = ["storaged", "qemu-storage-daemon"]


@dataclass(frozen=True)
class Cell:
    value: float
    server_us_per_op: float


class Mounted:
    """One daemon serving `image` over FUSE at `mountpoint`."""

    def __init__(self, program: str, image: Path, mountpoint: Path, log: Path):
        self.mountpoint = mountpoint
        mountpoint.touch()
        argv = [
            program,
            "--blockdev",
            f"driver=qcow2,node-name=disk,file.driver=file,file.filename={image}",
            "--export",
            f"type=fuse,id=f,node-name=disk,mountpoint={mountpoint},writable=on",
        ]
        self.log = log.open("w")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _mounted(mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{program} did not mount: see {log}")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if _mounted(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
        self.log.close()


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split(" ")[4] == str(path) for line in mounts)


def run_fio(path: Path, workload: Workload, duration_s: float, ramp_s: float,
            server: Mounted) -> Cell:
    argv = [
        "fio", "--name=fuse", f"--filename={path}", f"--rw={workload.rw}",
        f"--bs={workload.block_size}", f"--ioengine={workload.engine}",
        f"--iodepth={workload.depth}", "--direct=1", "--time_based",
        f"--runtime={duration_s}", f"--ramp_time={ramp_s}", "--size=1G",
        "--randrepeat=0", "--output-format=json",
    ]
    before = server.cpu_s()
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + ramp_s + 120)
    elapsed = time.monotonic() - started
    server_s = server.cpu_s() - before
    if out.returncode != 0:
        raise RuntimeError(f"fio failed: {out.stderr.strip()[-300:]}")
    job = json.loads(out.stdout)["jobs"][0]
    side = job["read"] if workload.rw.endswith("read") else job["write"]
    iops = side["iops"]
    # The server's CPU covers the whole run (ramp included): per operation at
    # the measured rate over the whole run.
    operations = max(iops * elapsed, 1.0)
    value = side["bw_bytes"] / (1 << 20) if workload.sequential else iops
    return Cell(value, server_s * 1e6 / operations)


def render(results: dict[tuple[str, str], Cell | str]) -> list[str]:
    lines = [
        "| workload | unit | storaged | QSD | ratio | storaged µs/op | QSD µs/op |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for w in WORKLOADS:
        ours = results.get((w.name, "storaged"))
        theirs = results.get((w.name, "qemu-storage-daemon"))

        def value(c):
            return f"{c.value:,.0f}" if isinstance(c, Cell) else "n/a"

        def cpu(c):
            return f"{c.server_us_per_op:,.1f}" if isinstance(c, Cell) else "n/a"

        ratio = (f"{ours.value / theirs.value:.2f}x"
                 if isinstance(ours, Cell) and isinstance(theirs, Cell) and theirs.value
                 else "n/a")
        lines.append(f"| {w.name} | {w.unit} | {value(ours)} | {value(theirs)} | {ratio} "
                     f"| {cpu(ours)} | {cpu(theirs)} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--update-doc", action="store_true",
                        help="write the table into docs/benchmarks.md")
    parser.add_argument("--only", default="",
                        help="run only the workloads whose name contains this")
    parser.add_argument("--storaged", type=Path,
                        help="use this binary (default: build the release binary)")
    args = parser.parse_args()
    duration_s, ramp_s = (2.0, 0.5) if args.quick else (10.0, 2.0)
    storaged = args.storaged
    if storaged is None:
        subprocess.run(["cargo", "build", "--release", "-p", "storaged"], cwd=REPOSITORY,
                       check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPOSITORY / "target"))
        storaged = target / "release" / "storaged"
    programs = {"storaged": str(storaged),
                "qemu-storage-daemon": shutil.which("qemu-storage-daemon") or ""}
    scratch = Path(tempfile.mkdtemp(prefix="storaged-fuse-bench-", dir="/dev/shm"))
    results: dict[tuple[str, str], Cell | str] = {}
    header = [f"- {key}: {value}" for key, value in machine.describe(scratch, REPOSITORY)]
    try:
        image = scratch / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        "preallocation=metadata", str(image), IMAGE_SIZE], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {IMAGE_SIZE}",
                        str(image)], check=True, stdout=subprocess.DEVNULL)
        for workload in [w for w in WORKLOADS if args.only in w.name]:
            for name in SERVERS:
                mountpoint = scratch / f"mnt-{name}"
                try:
                    server = Mounted(programs[name], image, mountpoint,
                                     scratch / f"{name}.log")
                except (RuntimeError, OSError) as e:
                    results[(workload.name, name)] = str(e)
                    continue
                try:
                    results[(workload.name, name)] = run_fio(
                        mountpoint, workload, duration_s, ramp_s, server)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    results[(workload.name, name)] = str(e)
                finally:
                    server.stop()
                print(f"{workload.name:28} {name:20} {results[(workload.name, name)]}",
                      file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = render(results)
    text = "\n".join(header + [""] + table) + "\n"
    print(text)
    if args.update_doc:
        doc = DOC.read_text()
        begin, end = doc.index(DOC_BEGIN), doc.index(DOC_END)
        DOC.write_text(doc[: begin + len(DOC_BEGIN)] + "\n" + text + doc[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
