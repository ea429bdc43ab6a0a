"""The servers under test: their command lines, and starting, waiting for and stopping one.

Every server gets the same conditions: the same image file, opened through the page
cache (no O_DIRECT), writable, exported under the same name, with multiple connections
allowed where the server supports them, and each server's default I/O model otherwise.
storaged takes qemu-storage-daemon's command line, so both are built by one function.

A server that cannot be started, or does not serve within START_TIMEOUT_S, raises
ServerUnavailable with the reason; the caller reports "n/a" for it and goes on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .tls import ensure_pki

EXPORT_NAME = "disk"
TCP_HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
# One readiness probe must not hang on a server that accepts but never answers.
PROBE_TIMEOUT_S = 5.0
# qemu-nbd serves one client at a time unless told otherwise (--shared); nbdcopy opens
# up to four connections when the export advertises multi-conn.
QEMU_NBD_MAX_CLIENTS = 8


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens: a Unix socket path or a TCP port on loopback; with `pki`
    (tls.ensure_pki's directory), over TLS with X.509 certificates."""

    transport: str
    path: Path | None = None
    port: int | None = None
    pki: Path | None = None

    def uri(self) -> str:
        if self.pki is None:
            if self.transport == "unix":
                return f"nbd+unix:///{EXPORT_NAME}?socket={self.path}"
            return f"nbd://{TCP_HOST}:{self.port}/{EXPORT_NAME}"
        # No certificate check either way (see tls.py), the same for every server.
        if self.transport == "unix":
            return f"nbds+unix:///{EXPORT_NAME}?socket={self.path}&tls-verify-peer=false"
        return f"nbds://{TCP_HOST}:{self.port}/{EXPORT_NAME}?tls-verify-peer=false"

    def qemu_tls_object(self) -> str:
        """QEMU's (and storaged's) server credentials for this endpoint."""
        return (f"tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,"
                f"dir={self.server_creds()}")

    def server_creds(self) -> Path:
        assert self.pki is not None, "a TLS endpoint"
        return self.pki / "server"


# The "-tls" transports are the same sockets with TLS (not run unless asked for).
TRANSPORTS = ("unix", "tcp", "unix-tls", "tcp-tls")
DEFAULT_TRANSPORTS = ("unix", "tcp")


def make_endpoint(transport: str, directory: Path) -> Endpoint:
    base, tls = transport.removesuffix("-tls"), transport.endswith("-tls")
    pki = ensure_pki(directory) if tls else None
    if base == "unix":
        path = directory / "nbd.sock"
        path.unlink(missing_ok=True)
        return Endpoint("unix", path=path, pki=pki)
    if base == "tcp":
        return Endpoint("tcp", port=_free_tcp_port(), pki=pki)
    raise ValueError(f"unknown transport {transport}")


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((TCP_HOST, 0))
        return probe.getsockname()[1]


# (image file, image format, endpoint) -> argv
CommandLine = Callable[[Path, str, Endpoint], list[str]]


@dataclass(frozen=True)
class Server:
    key: str
    name: str
    formats: frozenset[str]
    command: CommandLine
    # A server this one serves from (a proxy's): started first on a Unix socket, with
    # the image; `command` then gets that socket's path in place of the image.
    backend: "Server | None" = None


def qsd_syntax(program: str) -> CommandLine:
    """qemu-storage-daemon's command line; storaged takes the same one."""

    def command(image: Path, fmt: str, endpoint: Endpoint) -> list[str]:
        blockdevs = [f"driver=file,node-name=file0,filename={image},cache.direct=off"]
        node = "file0"
        if fmt != "raw":
            blockdevs.append(f"driver={fmt},node-name=fmt0,file=file0")
            node = "fmt0"
        argv = [program]
        for blockdev in blockdevs:
            argv += ["--blockdev", blockdev]
        return argv + nbd_server_and_export(endpoint, node)

    return command


def nbd_server_and_export(endpoint: Endpoint, node: str) -> list[str]:
    """QSD's options that serve `node` writable at `endpoint`."""
    if endpoint.transport == "unix":
        addr = f"addr.type=unix,addr.path={endpoint.path}"
    else:
        addr = f"addr.type=inet,addr.host={TCP_HOST},addr.port={endpoint.port}"
    tls = []
    if endpoint.pki is not None:
        tls = ["--object", endpoint.qemu_tls_object()]
        addr += ",tls-creds=tls0"
    return tls + [
        "--nbd-server",
        addr,
        "--export",
        f"type=nbd,id=export0,node-name={node},name={EXPORT_NAME},writable=on",
    ]


def qemu_nbd_syntax(*program: str) -> CommandLine:
    """qemu-nbd's command line; storaged takes it as `storaged nbd`."""

    def command(image: Path, fmt: str, endpoint: Endpoint) -> list[str]:
        return [*program, *qemu_nbd_options(image, fmt, endpoint)]

    return command


def qemu_nbd_options(image: Path, fmt: str, endpoint: Endpoint) -> list[str]:
    if endpoint.transport == "unix":
        listen = [f"--socket={endpoint.path}"]
    else:
        listen = [f"--bind={TCP_HOST}", f"--port={endpoint.port}"]
    if endpoint.pki is not None:
        listen += ["--object", endpoint.qemu_tls_object(), "--tls-creds=tls0"]
    return [
        f"--format={fmt}",
        f"--export-name={EXPORT_NAME}",
        f"--shared={QEMU_NBD_MAX_CLIENTS}",
        "--persistent",
        "--cache=writeback",
        "--aio=threads",
        *listen,
        str(image),
    ]


def nbdkit_command(image: Path, fmt: str, endpoint: Endpoint) -> list[str]:
    if fmt != "raw":
        raise ValueError("nbdkit's file plugin serves raw images only")
    if endpoint.transport == "unix":
        listen = [f"--unix={endpoint.path}"]
    else:
        listen = [f"--ipaddr={TCP_HOST}", f"--port={endpoint.port}"]
    if endpoint.pki is not None:
        listen += ["--tls=require", f"--tls-certificates={endpoint.server_creds()}"]
    return ["nbdkit", "--foreground", *listen, f"--exportname={EXPORT_NAME}", "file", str(image)]


RAW_ONLY = frozenset({"raw"})
RAW_AND_QCOW2 = frozenset({"raw", "qcow2"})


def storaged(binary: Path) -> Server:
    return Server("storaged", "storaged", RAW_AND_QCOW2, qsd_syntax(str(binary)))


def storaged_proxy(binary: Path) -> Server:
    """storaged exporting an `nbd` node of another storaged: an NBD proxy. Its CPU per
    request is the proxy's own (the backend's is not counted)."""

    def command(backend_socket: Path, fmt: str, endpoint: Endpoint) -> list[str]:
        remote = (f"driver=nbd,node-name=remote,server.type=unix,server.path={backend_socket},"
                  f"export={EXPORT_NAME}")
        return [str(binary), "--blockdev", remote, *nbd_server_and_export(endpoint, "remote")]

    return Server("storaged-proxy", "storaged proxy", RAW_AND_QCOW2, command,
                  backend=storaged(binary))


def storaged_one_command(binary: Path) -> Server:
    """storaged with qemu-nbd's command line: the same engine, not a peer."""
    return Server("storaged-nbd", "storaged nbd", RAW_AND_QCOW2,
                  qemu_nbd_syntax(str(binary), "nbd"))


PEERS = (
    Server("qsd", "qemu-storage-daemon", RAW_AND_QCOW2, qsd_syntax("qemu-storage-daemon")),
    Server("qemu-nbd", "qemu-nbd", RAW_ONLY, qemu_nbd_syntax("qemu-nbd")),
    Server("nbdkit", "nbdkit", RAW_ONLY, nbdkit_command),
)


class ServerUnavailable(Exception):
    """The server could not be started or did not serve; the message says why."""


class RunningServer:
    """A server started for one batch of workloads; use as a context manager."""

    def __init__(self, server: Server, image: Path, fmt: str, endpoint: Endpoint, log: Path):
        self.server = server
        self.backend: RunningServer | None = None
        if server.backend is not None:
            socket_path = log.with_suffix(".backend.sock")
            socket_path.unlink(missing_ok=True)
            self.backend = RunningServer(server.backend, image, fmt,
                                         Endpoint("unix", path=socket_path),
                                         log.with_suffix(".backend.log"))
            image = socket_path
        self.argv = server.command(image, fmt, endpoint)
        self.uri = endpoint.uri()
        self.log = log
        self.process: subprocess.Popen | None = None
        self.multi_conn = False
        self.export_size = 0

    def __enter__(self) -> "RunningServer":
        if self.backend is not None:
            self.backend.__enter__()
        try:
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
        except OSError as error:
            raise ServerUnavailable(f"cannot start {self.argv[0]}: {error.strerror}") from error
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        self.multi_conn = _nbdinfo("--can", "multi-conn", self.uri).returncode == 0
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """The server's CPU time so far (user + system, all threads)."""
        assert self.process is not None, "server started"
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.backend is not None:
            self.backend.stop()

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            status = self.process.poll()
            if status is not None:
                raise ServerUnavailable(f"exited (status {status}) before serving: {self._log_tail()}")
            probe = _nbdinfo("--size", self.uri)
            if probe.returncode == 0:
                self.export_size = int(probe.stdout)
                return
            last_error = _last_line(probe.stderr)
            time.sleep(POLL_INTERVAL_S)
        raise ServerUnavailable(f"not serving after {START_TIMEOUT_S:.0f} s: {last_error}")

    def _log_tail(self) -> str:
        try:
            return _last_line(self.log.read_text(errors="replace")) or "no output"
        except OSError:
            return "no log"


def _nbdinfo(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["nbdinfo", *args], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 1, "", "nbdinfo timed out")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def process_cpu_s(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces: fields count from after its ")".
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
