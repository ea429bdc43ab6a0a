"""The workloads, and how each turns into one figure (MiB/s or IOPS).

Sequential ones use nbdcopy with its defaults (when the export advertises multi-conn,
up to 4 connections but no more than one per core; 64 requests of 256 KiB in flight on
each): the whole image is copied again and again; copies that start during the ramp are
not counted, then copies are counted until the duration is reached (at least one).  Random ones use fio's nbd
engine (one connection, 4 KiB requests), time based with fio's own ramp, except the
write to an empty qcow2 image, which does a fixed number of writes so that nearly every
write allocates a cluster whatever the speed of the server.

Each figure comes with the CPU its client used meanwhile, in CPUs (1.0: one CPU busy the
whole time): a client near its limit is the bottleneck, and no server can look faster
through it.  And with the server's own CPU (user + system time of the process, from
/proc/PID/stat) per unit of work, which the client cannot cap: per request for fio rows
(over the whole fio run, ramp included, divided by the requests of the whole run at the
measured rate), per GiB moved for nbdcopy rows (over the counted copies).
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from .images import (
    MIB,
    QCOW2_COMPRESSED,
    QCOW2_EMPTY,
    QCOW2_FULL,
    RAW_RANDOM,
    ImageKind,
    ImageStore,
)

RANDOM_BLOCK_SIZE = "4k"
DEEP_QUEUE = 32
# A tool that runs this much longer than asked is stuck (a server that stopped answering).
TOOL_GRACE_S = 120.0


@dataclass(frozen=True)
class Settings:
    duration_s: float
    ramp_s: float
    allocating_writes: int


class MeasureError(Exception):
    """The tool failed against this server; the message says why."""


@dataclass(frozen=True)
class Figure:
    value: float
    # CPUs the client kept busy while it was measured.
    client_cpus: float
    # The server's CPU per unit of work: µs per request (IOPS rows), ms per GiB (MiB/s rows).
    server_cpu: float


# The server's CPU time so far, in seconds.
ServerClock = Callable[[], float]

# (export URI, settings, image store, server clock) -> figure
Measure = Callable[[str, Settings, ImageStore, ServerClock], Figure]

GIB = 1024 * MIB


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    unit: str
    image: ImageKind
    measure: Measure

    @property
    def suite(self) -> str:
        return self.image.fmt

    @property
    def server_cpu_unit(self) -> str:
        return "µs/request" if self.unit == "IOPS" else "ms/GiB"


def nbdcopy_mib_per_s(source: str, destination: str, nbytes: int, settings: Settings,
                      server_cpu_s: ServerClock, *extra: str) -> Figure:
    argv = ["nbdcopy", *extra, source, destination]
    timeout = settings.ramp_s + settings.duration_s + TOOL_GRACE_S
    started = time.monotonic()
    measured_bytes = 0
    measured_s = 0.0
    measured_cpu_s = 0.0
    measured_server_s = 0.0
    while measured_bytes == 0 or measured_s < settings.duration_s:
        cpu_before = _children_cpu_s()
        server_before = server_cpu_s()
        copy_started = time.monotonic()
        _run(argv, timeout)
        copy_s = time.monotonic() - copy_started
        if copy_started - started >= settings.ramp_s:
            measured_bytes += nbytes
            measured_s += copy_s
            measured_cpu_s += _children_cpu_s() - cpu_before
            measured_server_s += server_cpu_s() - server_before
    return Figure(measured_bytes / MIB / measured_s, measured_cpu_s / measured_s,
                  measured_server_s * 1000 / (measured_bytes / GIB))


def _children_cpu_s() -> float:
    """CPU time of the tools run so far (they are waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fio_iops(uri: str, rw: str, iodepth: int, settings: Settings, server_cpu_s: ServerClock,
             number_ios: int | None = None) -> Figure:
    """IOPS of one fio job; time based unless `number_ios` fixes the amount of work."""
    argv = [
        "fio",
        "--name=bench",
        "--ioengine=nbd",
        f"--uri={uri}",
        f"--rw={rw}",
        f"--bs={RANDOM_BLOCK_SIZE}",
        f"--iodepth={iodepth}",
        "--output-format=json",
    ]
    if number_ios is None:
        argv += [
            "--time_based",
            f"--runtime={_ms(settings.duration_s)}",
            f"--ramp_time={_ms(settings.ramp_s)}",
        ]
    else:
        argv += [f"--number_ios={number_ios}"]
    server_before = server_cpu_s()
    output = _run(argv, settings.ramp_s + settings.duration_s + TOOL_GRACE_S)
    server_s = server_cpu_s() - server_before
    # The nbd engine prints "fio: connected to NBD server" before the JSON document.
    try:
        report = json.loads(output[output.index("{"):])
        job = report["jobs"][0]
        if job["error"]:
            raise MeasureError(f"fio job error {job['error']}")
        iops = float(job["write" if "write" in rw else "read"]["iops"])
        requests = number_ios or iops * (settings.ramp_s + settings.duration_s)
        # fio reports the job's CPU use in percent of one CPU.
        return Figure(iops, (float(job["usr_cpu"]) + float(job["sys_cpu"])) / 100,
                      server_s * 1e6 / max(requests, 1))
    except (ValueError, KeyError, IndexError) as error:
        raise MeasureError(f"unreadable fio output: {error}") from error


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _run(argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise MeasureError(f"{argv[0]} still running after {timeout:.0f} s") from error
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise MeasureError(f"{argv[0]} failed: {lines[-1] if lines else done.returncode}")
    return done.stdout


def _sequential_read(uri: str, settings: Settings, images: ImageStore,
                     server_cpu_s: ServerClock) -> Figure:
    return nbdcopy_mib_per_s(uri, "null:", images.size, settings, server_cpu_s)


def _sequential_write(uri: str, settings: Settings, images: ImageStore,
                      server_cpu_s: ServerClock) -> Figure:
    source = str(images.random_data())
    return nbdcopy_mib_per_s(source, uri, images.size, settings, server_cpu_s, "--flush")


def _random(rw: str, iodepth: int) -> Measure:
    return lambda uri, settings, images, clock: fio_iops(uri, rw, iodepth, settings, clock)


def _allocating_write(uri: str, settings: Settings, images: ImageStore,
                      server_cpu_s: ServerClock) -> Figure:
    return fio_iops(uri, "randwrite", DEEP_QUEUE, settings, server_cpu_s,
                    settings.allocating_writes)


WORKLOADS = (
    Workload("seq-read", "sequential read (nbdcopy to null:)", "MiB/s", RAW_RANDOM,
             _sequential_read),
    Workload("seq-write", "sequential write (nbdcopy from a file)", "MiB/s", RAW_RANDOM,
             _sequential_write),
    Workload("randread-qd32", "4 KiB random read, depth 32 (fio)", "IOPS", RAW_RANDOM,
             _random("randread", DEEP_QUEUE)),
    Workload("randwrite-qd32", "4 KiB random write, depth 32 (fio)", "IOPS", RAW_RANDOM,
             _random("randwrite", DEEP_QUEUE)),
    Workload("randread-qd1", "4 KiB random read, depth 1 (fio)", "IOPS", RAW_RANDOM,
             _random("randread", 1)),
    Workload("qcow2-alloc-write", "4 KiB random write to an empty qcow2, depth 32 (fio)",
             "IOPS", QCOW2_EMPTY, _allocating_write),
    Workload("qcow2-randread", "4 KiB random read of an allocated qcow2, depth 32 (fio)",
             "IOPS", QCOW2_FULL, _random("randread", DEEP_QUEUE)),
    Workload("qcow2-compressed-read", "sequential read of a compressed qcow2 (nbdcopy)",
             "MiB/s", QCOW2_COMPRESSED, _sequential_read),
)
