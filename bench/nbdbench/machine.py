"""What a run was made on: CPU, memory, kernel, the scratch filesystem, tool versions,
storaged's commit and the load average (other work on the machine skews every figure)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TOOLS = (
    ("qemu-storage-daemon", ["qemu-storage-daemon", "--version"]),
    ("qemu-nbd", ["qemu-nbd", "--version"]),
    ("nbdkit", ["nbdkit", "--version"]),
    ("nbdcopy", ["nbdcopy", "--version"]),
    ("fio", ["fio", "--version"]),
)


def describe(scratch: Path, repository: Path) -> list[tuple[str, str]]:
    rows = [
        ("CPU", f"{cpu_model()}, {os.cpu_count()} online (nproc)"),
        ("memory", _meminfo_total()),
        ("kernel", f"{os.uname().sysname} {os.uname().release}"),
        ("images on", f"{scratch} ({_first_line(['stat', '-f', '-c', '%T', str(scratch)])})"),
        ("storaged", _git_commit(repository)),
    ]
    rows += [(name, _first_line(argv)) for name, argv in TOOLS]
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _meminfo_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // (1024 * 1024)} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _git_commit(repository: Path) -> str:
    commit = _first_line(["git", "-C", str(repository), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(repository), "status", "--porcelain", "--", "."])
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""
