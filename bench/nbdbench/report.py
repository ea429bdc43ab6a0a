"""The figures of a run and their markdown report.

One table per suite (raw image: all servers; qcow2: storaged and qemu-storage-daemon),
one row per workload and transport, one column per server, and storaged's ratio to the
best of the others; then the same rows for the CPU the client used (where a client is
near its limit with storaged, that column shows the client's ceiling, not storaged's);
then the server's own CPU per request or per GiB, with storaged's ratio to the most
frugal of the others (lower is better).
With several rounds a cell shows the median.  A server that could not be measured shows
"n/a", and the reason is listed under the tables.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .servers import Endpoint, Server
from .workloads import Figure, Workload

SUITE_TITLES = {
    "raw": "Raw image, every server",
    "qcow2": "qcow2 images, storaged against qemu-storage-daemon",
}
NOT_AVAILABLE = "n/a"
# A failure that empties more cells than this is summarised by a count.
LISTED_CELLS = 3


@dataclass
class Cell:
    figures: list[Figure] = field(default_factory=list)
    error: str | None = None


class Results:
    def __init__(self) -> None:
        self._cells: dict[tuple[str, str, str], Cell] = {}
        # (server key, image format) -> whether the export advertised multi-conn
        self.multi_conn: dict[tuple[str, str], bool] = {}

    def record(self, workload: str, transport: str, server: str, figure: Figure) -> None:
        self._cell(workload, transport, server).figures.append(figure)

    def fail(self, workload: str, transport: str, server: str, reason: str) -> None:
        self._cell(workload, transport, server).error = reason

    def figure(self, workload: str, transport: str, server: str) -> float | None:
        return self._median(workload, transport, server, lambda f: f.value)

    def client_cpus(self, workload: str, transport: str, server: str) -> float | None:
        return self._median(workload, transport, server, lambda f: f.client_cpus)

    def server_cpu(self, workload: str, transport: str, server: str) -> float | None:
        return self._median(workload, transport, server, lambda f: f.server_cpu)

    def _median(self, workload: str, transport: str, server: str,
                part: Callable[[Figure], float]) -> float | None:
        cell = self._cells.get((workload, transport, server))
        return statistics.median(map(part, cell.figures)) if cell and cell.figures else None

    def failures(self) -> dict[tuple[str, str], list[str]]:
        """(server, reason) -> the "workload/transport" cells it left empty."""
        found: dict[tuple[str, str], list[str]] = {}
        for (workload, transport, server), cell in self._cells.items():
            if cell.error and not cell.figures:
                found.setdefault((server, cell.error), []).append(f"{workload}/{transport}")
        return found

    def _cell(self, workload: str, transport: str, server: str) -> Cell:
        return self._cells.setdefault((workload, transport, server), Cell())


def ratio(storaged: float | None, others: list[float | None],
          best: Callable[[list[float]], float] = max) -> str:
    measured = [value for value in others if value is not None]
    if storaged is None or not measured or best(measured) == 0:
        return NOT_AVAILABLE
    return f"{storaged / best(measured):.2f}x"


def render(results: Results, workloads: list[Workload], transports: list[str],
           servers: list[Server], machine: list[tuple[str, str]], conditions: list[str]) -> str:
    parts = ["### Machine", "", "| | |", "| --- | --- |"]
    parts += [f"| {name} | {value} |" for name, value in machine]
    parts += ["", *[f"- {line}" for line in conditions], ""]
    for suite, title in SUITE_TITLES.items():
        suite_workloads = [w for w in workloads if w.suite == suite]
        suite_servers = [s for s in servers if suite in s.formats]
        if suite_workloads and suite_servers:
            parts += [f"### {title}", ""]
            parts += _table(results, suite_workloads, transports, suite_servers)
            parts += ["", f"Client CPU during the figures above (CPUs busy; 1.00 is one CPU "
                      f"all the time):", ""]
            parts += _client_table(results, suite_workloads, transports, suite_servers)
            parts += ["", "Server CPU per unit of work (user + system time of the server "
                      "process; lower is better):", ""]
            parts += _table(results, suite_workloads, transports, suite_servers, SERVER_CPU)
            parts.append("")
    parts += _servers_section(results, servers, {w.suite for w in workloads})
    parts += _failures_section(results, servers)
    return "\n".join(parts).rstrip() + "\n"


@dataclass(frozen=True)
class Column:
    """How a table of figures reads its cells: which figure, its unit, how it is shown,
    and which of the others storaged is compared with (the highest, or the lowest)."""
    figure: Callable[[Results, str, str, str], float | None]
    unit: Callable[[Workload], str]
    show: Callable[[float], str]
    ratio_header: str
    best: Callable[[list[float]], float]


THROUGHPUT = Column(Results.figure, lambda w: w.unit, lambda v: f"{v:,.0f}",
                    "storaged / best other", max)
SERVER_CPU = Column(Results.server_cpu, lambda w: w.server_cpu_unit, lambda v: f"{v:,.1f}",
                    "storaged / lowest other", min)


def _table(results: Results, workloads: list[Workload], transports: list[str],
           servers: list[Server], column: Column = THROUGHPUT) -> list[str]:
    with_ratio = any(s.key == "storaged" for s in servers) and len(servers) > 1
    header = ["workload", "unit", "transport", *[s.name for s in servers]]
    if with_ratio:
        header.append(column.ratio_header)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for workload in workloads:
        for transport in transports:
            figures = {s.key: column.figure(results, workload.name, transport, s.key)
                       for s in servers}
            row = [workload.title, column.unit(workload), transport]
            row += [NOT_AVAILABLE if figures[s.key] is None else column.show(figures[s.key])
                    for s in servers]
            if with_ratio:
                # storaged's other command lines are the same engine, not peers.
                others = [figure for key, figure in figures.items()
                          if not key.startswith("storaged")]
                row.append(ratio(figures["storaged"], others, column.best))
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _client_table(results: Results, workloads: list[Workload], transports: list[str],
                  servers: list[Server]) -> list[str]:
    header = ["workload", "transport", *[s.name for s in servers]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for workload in workloads:
        for transport in transports:
            row = [workload.title, transport]
            for server in servers:
                cpus = results.client_cpus(workload.name, transport, server.key)
                row.append(NOT_AVAILABLE if cpus is None else f"{cpus:.2f}")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _servers_section(results: Results, servers: list[Server], suites: set[str]) -> list[str]:
    lines = ["### Servers", "", "Command lines (Unix socket; TCP listens on 127.0.0.1 instead):", ""]
    placeholder = Endpoint("unix", path=Path("SOCKET"))
    backend_socket = Endpoint("unix", path=Path("BACKEND_SOCKET"))

    def shown(server: Server, image: Path, fmt: str, endpoint: Endpoint) -> str:
        program, *arguments = server.command(image, fmt, endpoint)
        return " ".join([Path(program).name, *arguments])

    for server in servers:
        for fmt in sorted(server.formats & suites):
            image = Path(f"IMAGE.{fmt}")
            advertised = results.multi_conn.get((server.key, fmt))
            multi_conn = {True: "yes", False: "no", None: "not seen"}[advertised]
            lines.append(f"- {server.name}, {fmt} (multi-conn advertised: {multi_conn}):")
            if server.backend is None:
                lines.append(f"  `{shown(server, image, fmt, placeholder)}`")
                continue
            lines += [f"  `{shown(server, backend_socket.path, fmt, placeholder)}`, over",
                      f"  `{shown(server.backend, image, fmt, backend_socket)}`"]
    return lines + [""]


def _failures_section(results: Results, servers: list[Server]) -> list[str]:
    failures = results.failures()
    if not failures:
        return []
    names = {s.key: s.name for s in servers}
    lines = ["### Not measured", ""]
    for (server, reason), cells in sorted(failures.items()):
        where = ", ".join(sorted(cells)) if len(cells) <= LISTED_CELLS else f"{len(cells)} figures"
        lines.append(f"- {names.get(server, server)} ({where}): {reason}")
    return lines + [""]
