#!/usr/bin/env python3
"""Side-by-side block job benchmark: storaged's jobs against qemu-storage-daemon's.

Each workload runs one job on 1 GiB qcow2 images on tmpfs, one daemon at a time, started
fresh with fresh images: a mirror of a fully written image to a new qcow2 (to ready, then
job-complete), a full backup of it, a stream of a two-deep chain (the base's 1 GiB copied
up into the top), a commit of an overlay holding 512 MiB into its base. Each runs without
a client and with one: fio writing 4 KiB blocks at random over NBD to the job's source at
a fixed rate throughout. Each cell is the job's throughput (bytes of the image per second,
from the command to the job's end) and the server's own CPU (user + system time of the
daemon from /proc/PID/stat over the job) per GiB, the best of --rounds runs (3; the
daemons alternate, so a burst of other work on the machine hits both); the ratio column
is storaged over QSD.
Prints a markdown table and, with --update-doc, writes it into docs/benchmarks.md between
its markers.

    bench/jobs.py               # full run (about 6 minutes)
    bench/jobs.py --quick       # smaller images: a smoke run, not for comparison
    bench/jobs.py --only mirror # the workloads whose name contains "mirror"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
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
DOC_BEGIN = "<!-- bench/jobs.py results: begin -->"
DOC_END = "<!-- bench/jobs.py results: end -->"
SERVERS = ["storaged", "qemu-storage-daemon"]
WRITER_RATE = "20m"
JOB_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Cell:
    mib_per_s: float
    cpu_s_per_gib: float


class Qmp:
    """A minimal QMP client: commands, and waiting for events."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buffer = b""
        self.events: list[dict] = []
        self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("monitor closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments) -> dict:
        self.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode()
                          + b"\n")
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise RuntimeError(f"{command}: {message['error']['desc']}")
            else:
                return message["return"]

    def wait_event(self, name: str, deadline: float) -> dict:
        self.sock.settimeout(1.0)
        try:
            while True:
                for index, event in enumerate(self.events):
                    if event["event"] == name:
                        return self.events.pop(index)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no {name}")
                try:
                    self.events.append(self._read())
                except socket.timeout:
                    pass
        finally:
            self.sock.settimeout(None)


class Daemon:
    """One daemon with the job's nodes, a monitor and an NBD export of `export`."""

    def __init__(self, program: str, scratch: Path, nodes: list[str], export: str):
        self.qmp_path = scratch / "qmp.sock"
        self.nbd_path = scratch / "nbd.sock"
        argv = [program]
        for node in nodes:
            argv += ["--blockdev", node]
        argv += ["--chardev", f"socket,id=m,path={self.qmp_path},server=on,wait=off",
                 "--monitor", "chardev=m",
                 "--nbd-server", f"addr.type=unix,addr.path={self.nbd_path}",
                 "--export", f"nbd,id=e,node-name={export},name=disk,writable=on"]
        self.log = (scratch / "daemon.log").open("w")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.qmp_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{program} did not start")
            time.sleep(0.02)
        self.qmp = Qmp(self.qmp_path)

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def qcow2(path: Path, size: str, backing: Path | None = None) -> None:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run(argv + [str(path), size], check=True)


def write(path: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True,
                   stdout=subprocess.DEVNULL)


def node(name: str, path: Path, extra: str = "") -> str:
    return f"qcow2,node-name={name}{extra},file.driver=file,file.filename={path}"


@dataclass(frozen=True)
class Workload:
    name: str

    def prepare(self, d: Path, size: str, half: str) -> tuple[list[str], str]:
        """Creates the images; returns the nodes and the node the writer writes to."""
        if self.name in ("mirror", "backup"):
            qcow2(d / "src.qcow2", size)
            write(d / "src.qcow2", f"write -P 0x5a 0 {size}")
            qcow2(d / "dst.qcow2", size)
            return [node("src", d / "src.qcow2"), node("dst", d / "dst.qcow2")], "src"
        if self.name == "stream":
            qcow2(d / "base.qcow2", size)
            write(d / "base.qcow2", f"write -P 0x11 0 {size}")
            qcow2(d / "top.qcow2", size, d / "base.qcow2")
            return [node("base", d / "base.qcow2"),
                    node("top", d / "top.qcow2", ",backing=base")], "top"
        qcow2(d / "base.qcow2", size)
        qcow2(d / "over.qcow2", size, d / "base.qcow2")
        write(d / "over.qcow2", f"write -P 0x22 0 {half}")
        qcow2(d / "active.qcow2", size, d / "over.qcow2")
        return [node("base", d / "base.qcow2"), node("over", d / "over.qcow2", ",backing=base"),
                node("active", d / "active.qcow2", ",backing=over")], "active"

    def run(self, qmp: Qmp) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        if self.name == "mirror":
            qmp.execute("blockdev-mirror", **{"job-id": "j", "device": "src", "target": "dst",
                                             "sync": "full"})
            qmp.wait_event("BLOCK_JOB_READY", deadline)
            qmp.execute("job-complete", id="j")
        elif self.name == "backup":
            qmp.execute("blockdev-backup", **{"job-id": "j", "device": "src", "target": "dst",
                                             "sync": "full"})
        elif self.name == "stream":
            qmp.execute("block-stream", **{"job-id": "j", "device": "top"})
        else:
            qmp.execute("block-commit", **{"job-id": "j", "device": "active",
                                          "top-node": "over", "base-node": "base"})
        done = qmp.wait_event("BLOCK_JOB_COMPLETED", deadline)
        if "error" in done["data"]:
            raise RuntimeError(done["data"]["error"])


WORKLOADS = [Workload(name) for name in ("mirror", "backup", "stream", "commit")]


def start_writer(daemon: Daemon, runtime_s: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["fio", "--name=writer", "--ioengine=nbd", f"--uri=nbd+unix:///disk?socket={daemon.nbd_path}",
         "--thread", "--rw=randwrite", "--bs=4k", "--iodepth=4", f"--rate={WRITER_RATE}",
         "--time_based",
         f"--runtime={runtime_s}", "--size=64m"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_writer(writer: subprocess.Popen) -> None:
    # With --thread fio's job is a thread of this process (without it, a
    # child in a session of its own that outlives the parent).
    try:
        os.killpg(writer.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    writer.wait()


def measure(program: str, workload: Workload, scratch: Path, size: str, half: str,
            with_writer: bool) -> Cell:
    d = scratch / f"{workload.name}-{Path(program).name}"
    d.mkdir()
    try:
        nodes, export = workload.prepare(d, size, half)
        daemon = Daemon(program, d, nodes, export)
        writer = start_writer(daemon, 600) if with_writer else None
        try:
            if writer:
                time.sleep(0.5)
            before = daemon.cpu_s()
            started = time.monotonic()
            workload.run(daemon.qmp)
            elapsed = time.monotonic() - started
            cpu = daemon.cpu_s() - before
        finally:
            if writer:
                stop_writer(writer)
            daemon.stop()
        copied = float(1 << 30) if workload.name != "commit" else float(1 << 29)
        if size != "1G":
            copied /= 16
        return Cell(copied / (1 << 20) / elapsed, cpu / (copied / (1 << 30)))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def render(results: dict[tuple[str, str, bool], Cell | str]) -> list[str]:
    lines = ["| job | client writing | storaged MiB/s | QSD MiB/s | ratio | "
             "storaged CPU s/GiB | QSD CPU s/GiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for w in WORKLOADS:
        for writer in (False, True):
            ours = results.get((w.name, "storaged", writer))
            theirs = results.get((w.name, "qemu-storage-daemon", writer))

            def rate(c):
                return f"{c.mib_per_s:,.0f}" if isinstance(c, Cell) else "n/a"

            def cpu(c):
                return f"{c.cpu_s_per_gib:.2f}" if isinstance(c, Cell) else "n/a"

            ratio = (f"{ours.mib_per_s / theirs.mib_per_s:.2f}x"
                     if isinstance(ours, Cell) and isinstance(theirs, Cell) else "n/a")
            lines.append(f"| {w.name} | {'yes' if writer else 'no'} | {rate(ours)} | "
                         f"{rate(theirs)} | {ratio} | {cpu(ours)} | {cpu(theirs)} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB images: a smoke run")
    parser.add_argument("--update-doc", action="store_true",
                        help="write the table into docs/benchmarks.md")
    parser.add_argument("--only", default="", help="run only the jobs whose name contains this")
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell; the best counts")
    parser.add_argument("--storaged", type=Path,
                        help="use this binary (default: build the release binary)")
    args = parser.parse_args()
    size, half = ("64M", "32M") if args.quick else ("1G", "512M")
    storaged = args.storaged
    if storaged is None:
        subprocess.run(["cargo", "build", "--release", "-p", "storaged"], cwd=REPOSITORY,
                       check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPOSITORY / "target"))
        storaged = target / "release" / "storaged"
    programs = {"storaged": str(storaged),
                "qemu-storage-daemon": shutil.which("qemu-storage-daemon") or ""}
    scratch = Path(tempfile.mkdtemp(prefix="storaged-jobs-bench-", dir="/dev/shm"))
    header = [f"- {key}: {value}" for key, value in machine.describe(scratch, REPOSITORY)]
    results: dict[tuple[str, str, bool], Cell | str] = {}
    try:
        for workload in [w for w in WORKLOADS if args.only in w.name]:
            for with_writer in (False, True):
                for _ in range(args.rounds):
                    for name in SERVERS:
                        try:
                            cell: Cell | str = measure(programs[name], workload, scratch,
                                                       size, half, with_writer)
                        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                            cell = str(e)
                        print(f"{workload.name:8} writer={with_writer!s:5} {name:20} {cell}",
                              file=sys.stderr)
                        key = (workload.name, name, with_writer)
                        best = results.get(key)
                        if not isinstance(best, Cell) or (
                                isinstance(cell, Cell) and cell.mib_per_s > best.mib_per_s):
                            results[key] = cell
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = "\n".join(header + [""] + render(results)) + "\n"
    print(text)
    if args.update_doc:
        doc = DOC.read_text()
        begin, end = doc.index(DOC_BEGIN), doc.index(DOC_END)
        DOC.write_text(doc[: begin + len(DOC_BEGIN)] + "\n" + text + doc[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
