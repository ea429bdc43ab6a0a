#!/usr/bin/env python3
"""Side-by-side NBD benchmark: storaged against qemu-storage-daemon, qemu-nbd and nbdkit.

Runs the same workloads against every server in one run, over a Unix socket and over
TCP loopback, with images on tmpfs; each server is started fresh for each image and
transport, waited for until it serves, measured, and stopped, one server at a time.
Prints a markdown table (one column per server, plus storaged's ratio to the best of
the others), writes it to bench/results.md, and with --update-doc into
docs/benchmarks.md.  A server that fails to build, start or serve shows "n/a".

    bench/run.py              # full run (about 12 minutes)
    bench/run.py --quick      # smoke run (about 3 minutes): not for comparison
    bench/run.py --list       # the workloads and servers
    bench/run.py --transports unix-tls,tcp-tls --servers storaged,qemu-nbd,nbdkit \
        --workloads seq-read,seq-write,randread-qd32,randwrite-qd32   # TLS rows
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nbdbench import machine, report
from nbdbench.images import GIB, MIB, ImageKind, ImageStore
from nbdbench.report import Results
from nbdbench.servers import (
    DEFAULT_TRANSPORTS,
    PEERS,
    TRANSPORTS,
    RunningServer,
    Server,
    ServerUnavailable,
    make_endpoint,
    storaged,
    storaged_one_command,
    storaged_proxy,
)
from nbdbench.workloads import WORKLOADS, MeasureError, Settings, Workload

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPOSITORY / "bench" / "results.md"
DOC = REPOSITORY / "docs" / "benchmarks.md"
DOC_BEGIN = "<!-- bench/run.py results: begin -->"
DOC_END = "<!-- bench/run.py results: end -->"
DEFAULT_SCRATCH_PARENT = Path("/dev/shm")
DEFAULT_IMAGE_SIZE = "1G"
# Large enough that a few tens of thousands of random 4 KiB writes nearly all land in
# a cluster not yet allocated; only the clusters written take memory on tmpfs.
DEFAULT_EMPTY_QCOW2_SIZE = "16G"
FULL_RUN = Settings(duration_s=10.0, ramp_s=2.0, allocating_writes=32768)
QUICK_RUN = Settings(duration_s=2.0, ramp_s=0.5, allocating_writes=8192)
SIZE_SUFFIXES = {"": 1, "K": 1024, "M": MIB, "G": GIB}


def main() -> int:
    args = parse_arguments()
    servers = selected_servers(args)
    workloads = selected_workloads(args.workloads)
    if args.list:
        print_list(servers)
        return 0
    settings = Settings(
        duration_s=args.duration if args.duration is not None else defaults(args).duration_s,
        ramp_s=args.ramp if args.ramp is not None else defaults(args).ramp_s,
        allocating_writes=args.allocating_writes or defaults(args).allocating_writes,
    )
    storaged_problem = prepare_storaged(args) if any_storaged(servers) else None

    scratch = Path(tempfile.mkdtemp(prefix="storaged-bench-", dir=args.scratch))
    try:
        warn_unless_tmpfs(scratch)
        images = ImageStore(scratch, args.size, args.empty_qcow2_size)
        results = Results()
        load_before = machine.load_average()
        for round_index in range(args.rounds):
            for transport in args.transports:
                # The servers run one workload back to back, so that the figures of a
                # row are taken within a minute of each other: this machine has slow
                # and fast phases lasting about as long.
                for workload in workloads:
                    kind = workload.image
                    for server in rotated(servers, round_index):
                        if kind.fmt not in server.formats:
                            continue
                        progress(f"round {round_index + 1}/{args.rounds}: {server.name}, "
                                 f"{workload.name}, {kind.description}, {transport}")
                        if server.key.startswith("storaged") and storaged_problem:
                            fail_group(results, [workload], transport, server,
                                       storaged_problem)
                            continue
                        measure_group(results, images, scratch, server, kind, [workload],
                                      transport, settings)
        conditions = describe_conditions(args, settings, load_before, machine.load_average())
        text = report.render(results, workloads, args.transports, servers,
                             machine.describe(scratch, REPOSITORY), conditions)
    finally:
        if args.keep:
            progress(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    print(text)
    args.output.write_text(text)
    progress(f"written to {args.output}")
    if args.update_doc:
        update_doc(text)
        progress(f"updated {DOC}")
    return 0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the same NBD workloads against storaged, qemu-storage-daemon, "
        "qemu-nbd and nbdkit and print one table.")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_RUN.duration_s:g} s per figure after a "
                        f"{QUICK_RUN.ramp_s:g} s ramp, {QUICK_RUN.allocating_writes} "
                        "allocating writes")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help=f"measured time per figure (default {FULL_RUN.duration_s:g})")
    parser.add_argument("--ramp", type=float, metavar="SECONDS",
                        help=f"unmeasured warm-up before each figure (default {FULL_RUN.ramp_s:g})")
    parser.add_argument("--allocating-writes", type=int, metavar="N",
                        help="writes to the empty qcow2 image "
                        f"(default {FULL_RUN.allocating_writes})")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="repeat everything N times, rotating the server order; "
                        "cells show the median (default 1)")
    parser.add_argument("--size", type=parse_size, default=parse_size(DEFAULT_IMAGE_SIZE),
                        help=f"image size (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--empty-qcow2-size", type=parse_size,
                        default=parse_size(DEFAULT_EMPTY_QCOW2_SIZE),
                        help=f"virtual size of the empty qcow2 image (default "
                        f"{DEFAULT_EMPTY_QCOW2_SIZE})")
    parser.add_argument("--servers", type=comma_list, metavar="LIST",
                        default=["storaged", *[peer.key for peer in PEERS]],
                        help="which servers, of storaged,qsd,qemu-nbd,nbdkit (default all), "
                             "and storaged-nbd (storaged with qemu-nbd's command line)")
    parser.add_argument("--transports", type=comma_list, metavar="LIST",
                        default=list(DEFAULT_TRANSPORTS),
                        help="unix,tcp (default both), and unix-tls,tcp-tls: the same "
                        "over TLS with X.509 certificates made with openssl")
    parser.add_argument("--workloads", type=comma_list, metavar="LIST", default=["raw", "qcow2"],
                        help="workload names (see --list) or suites raw,qcow2 (default both)")
    parser.add_argument("--storaged", type=Path, metavar="BINARY",
                        help="use this storaged binary instead of building one")
    parser.add_argument("--no-build", action="store_true",
                        help="do not run cargo build --release; use the binary already there")
    parser.add_argument("--scratch", type=Path, default=DEFAULT_SCRATCH_PARENT, metavar="DIR",
                        help="tmpfs directory for the images (default /dev/shm)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the images and server logs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="FILE",
                        help="markdown file for the report (default bench/results.md)")
    parser.add_argument("--update-doc", action="store_true",
                        help="also put the report into docs/benchmarks.md")
    parser.add_argument("--list", action="store_true", help="list workloads and servers")
    args = parser.parse_args()
    unknown = [t for t in args.transports if t not in TRANSPORTS]
    if unknown:
        parser.error(f"unknown transport(s): {', '.join(unknown)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for name in ("duration", "ramp"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative")
    if args.update_doc and args.quick:
        parser.error("--update-doc takes a full run: quick figures are not for the documentation")
    if args.size % MIB:
        parser.error("--size must be a whole number of MiB")
    return args


def defaults(args: argparse.Namespace) -> Settings:
    return QUICK_RUN if args.quick else FULL_RUN


def parse_size(text: str) -> int:
    number, suffix = text.upper().rstrip("B"), ""
    if number and number[-1] in SIZE_SUFFIXES:
        number, suffix = number[:-1], number[-1]
    try:
        value = int(number) * SIZE_SUFFIXES[suffix]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a size: {text}") from error
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    return value


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def selected_servers(args: argparse.Namespace) -> list[Server]:
    binary = storaged_binary(args)
    known = {"storaged": storaged(binary), "storaged-nbd": storaged_one_command(binary),
             "storaged-proxy": storaged_proxy(binary), **{p.key: p for p in PEERS}}
    unknown = [key for key in args.servers if key not in known]
    if unknown:
        sys.exit(f"unknown server(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[key] for key in args.servers]


def selected_workloads(names: list[str]) -> list[Workload]:
    chosen = [w for w in WORKLOADS if w.name in names or w.suite in names]
    known = {w.name for w in WORKLOADS} | {w.suite for w in WORKLOADS}
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"unknown workload(s): {', '.join(unknown)}; see --list")
    return chosen


def print_list(servers: list[Server]) -> None:
    print("workloads (suite, name, figure):")
    for w in WORKLOADS:
        print(f"  {w.suite:6} {w.name:22} {w.title}, {w.unit}")
    print("servers (key: image formats):")
    for s in servers:
        print(f"  {s.key:9} {s.name}: {', '.join(sorted(s.formats))}")


def any_storaged(servers: list[Server]) -> bool:
    return any(s.key.startswith("storaged") for s in servers)


def storaged_binary(args: argparse.Namespace) -> Path:
    if args.storaged:
        return args.storaged.resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    return (REPOSITORY / target / "release" / "storaged").resolve()


def prepare_storaged(args: argparse.Namespace) -> str | None:
    """Build storaged unless told not to; the reason it cannot run, or None."""
    binary = storaged_binary(args)
    if not args.storaged and not args.no_build:
        progress("building storaged: cargo build --release -p storaged")
        built = subprocess.run(["cargo", "build", "--release", "-p", "storaged"], cwd=REPOSITORY)
        if built.returncode != 0:
            return f"cargo build --release failed (status {built.returncode})"
    if not os.access(binary, os.X_OK):
        return f"no executable at {binary}"
    return None


def warn_unless_tmpfs(directory: Path) -> None:
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(directory)], capture_output=True,
                          text=True).stdout.strip()
    if kind != "tmpfs":
        progress(f"warning: {directory} is on {kind or 'an unknown filesystem'}, not tmpfs: "
                 "the storage under the image is part of what is measured")


def rotated(servers: list[Server], round_index: int) -> list[Server]:
    shift = round_index % len(servers)
    return servers[shift:] + servers[:shift]


def measure_group(results: Results, images: ImageStore, scratch: Path, server: Server,
                  kind: ImageKind, group: list[Workload], transport: str,
                  settings: Settings) -> None:
    """Start `server` on a fresh image of `kind`, run `group` against it, stop it."""
    image = images.fresh_image(kind)
    endpoint = make_endpoint(transport, scratch)
    log = scratch / f"{server.key}-{kind.name}-{transport}.log"
    try:
        with RunningServer(server, image, kind.fmt, endpoint, log) as running:
            expected = images.virtual_size(kind)
            if running.export_size != expected:
                raise ServerUnavailable(f"export size {running.export_size}, expected {expected}")
            results.multi_conn[(server.key, kind.fmt)] = running.multi_conn
            for workload in group:
                try:
                    figure = workload.measure(running.uri, settings, images,
                                              running.cpu_seconds)
                except MeasureError as error:
                    results.fail(workload.name, transport, server.key, str(error))
                    progress(f"  {workload.name:22} n/a: {error}")
                    continue
                results.record(workload.name, transport, server.key, figure)
                progress(f"  {workload.name:22} {figure.value:12,.0f} {workload.unit}"
                         f"  (client: {figure.client_cpus:.2f} CPUs; server: "
                         f"{figure.server_cpu:,.1f} {workload.server_cpu_unit})")
    except ServerUnavailable as error:
        progress(f"  n/a: {error}")
        fail_group(results, group, transport, server, str(error))
    finally:
        images.discard_image(kind)


def fail_group(results: Results, group: list[Workload], transport: str, server: Server,
               reason: str) -> None:
    for workload in group:
        results.fail(workload.name, transport, server.key, reason)


def describe_conditions(args: argparse.Namespace, settings: Settings, load_before: str,
                        load_after: str) -> list[str]:
    lines = []
    if args.quick:
        lines.append("**quick mode: smoke figures, not for comparison**")
    lines += [
        f"each figure: {settings.duration_s:g} s measured after a {settings.ramp_s:g} s ramp; "
        f"{args.rounds} round(s), the median shown",
        f"raw and qcow2 images of {args.size // MIB} MiB on tmpfs; the empty qcow2 image is "
        f"{args.empty_qcow2_size // GIB} GiB and gets {settings.allocating_writes} writes",
        "every server: the page cache (no O_DIRECT), writable, export name `disk`, "
        "its default I/O model (aio=threads for qemu-storage-daemon and qemu-nbd, "
        "nbdkit's thread pool); started fresh for each image and transport, one at a time",
        f"load average before: {load_before}; after: {load_after}",
    ]
    return lines


def update_doc(text: str) -> None:
    document = DOC.read_text()
    begin, end = document.find(DOC_BEGIN), document.find(DOC_END)
    if begin < 0 or end < begin:
        sys.exit(f"{DOC} lacks the markers {DOC_BEGIN} and {DOC_END}")
    DOC.write_text(document[: begin + len(DOC_BEGIN)] + "\n\n" + text + "\n" + document[end:])


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
