#!/usr/bin/env python3
"""QEMU's Python QMP server side drives storaged's client-mode monitor.

The harness listens (qemu.qmp's QEMUMonitorProtocol with server=True, as
QEMU's test tools do); storaged connects to it (--chardev socket without
server=on, reconnect-ms=100), is greeted and answers. When the harness
closes the connection, storaged connects again and a second session
quits it. Prints "ok" and storaged's exit status.
Usage: client_mode_monitor.py STORAGED DIR
"""
import os
import subprocess
import sys

from qemu.qmp.legacy import QEMUMonitorProtocol

storaged, directory = sys.argv[1], sys.argv[2]
path = os.path.join(directory, "client.sock")

server = QEMUMonitorProtocol(path, server=True)
daemon = subprocess.Popen(
    [storaged, "--chardev", f"socket,id=mon,path={path},reconnect-ms=100",
     "--monitor", "chardev=mon", "--blockdev", "null-co,node-name=n0"],
    stderr=subprocess.PIPE)
try:
    greeting = server.accept(timeout=20)
    assert "QMP" in greeting or greeting == {}, greeting
    version = server.cmd("query-version")
    assert version["package"].startswith("storaged"), version
    nodes = server.cmd("query-named-block-nodes", flat=True)
    assert [n["node-name"] for n in nodes] == ["n0"], nodes
    try:
        server.close()
    except EOFError:
        pass  # storaged hung up first, as the harness's close asked

    # The daemon connects again to whoever listens now.
    server = QEMUMonitorProtocol(path, server=True)
    server.accept(timeout=20)
    assert server.cmd("query-version")["package"].startswith("storaged")
    server.cmd("quit")
    status = daemon.wait(timeout=20)
    try:
        server.close()
    except EOFError:
        pass
finally:
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait()
print("ok", status)
