#!/usr/bin/env python3
"""QEMU's own QMP client (PyPI ``qemu.qmp``) drives a running storaged.

Usage: test_qmp_qemu_client.py QMP_SOCKET IMAGE

Runs the async client (``QMPClient``, which negotiates the ``oob``
capability when offered and matches replies by id) and the synchronous
``legacy.QEMUMonitorProtocol`` that QEMU's iotests use, checks every reply,
and prints ``ok`` on success. Any failed check raises, so the exit status
is non-zero and the traceback says what differed. The daemon is left
running; the caller stops it.
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


async def async_client(socket_path, image):
    qmp = QMPClient("storaged-python-test")
    await qmp.connect(socket_path)
    version = await qmp.execute("query-version")
    expect(version["qemu"] == {"major": 10, "minor": 0, "micro": 2}, version)
    expect(version["package"].startswith("storaged "), version)

    names = {c["name"] for c in await qmp.execute("query-commands")}
    for name in ("blockdev-add", "blockdev-del", "query-named-block-nodes", "quit"):
        expect(name in names, f"{name} missing from {sorted(names)}")

    await qmp.execute("blockdev-add", {"driver": "file", "node-name": "py-file",
                                       "filename": image})
    await qmp.execute("blockdev-add", {"driver": "raw", "node-name": "py-raw",
                                       "file": "py-file"})
    nodes = await qmp.execute("query-named-block-nodes")
    by_name = {n["node-name"]: n for n in nodes}
    expect(by_name["py-raw"]["drv"] == "raw", nodes)
    expect(by_name["py-file"]["image"]["virtual-size"] == 1 << 20, nodes)

    try:
        await qmp.execute("blockdev-del", {"node-name": "py-file"})
        raise AssertionError("deleting a node in use succeeded")
    except ExecuteError as err:
        expect(err.error_class == "GenericError", err.error_class)
        expect(str(err) == "Block device py-file is in use", str(err))

    try:
        await qmp.execute("no-such-command")
        raise AssertionError("an unknown command succeeded")
    except ExecuteError as err:
        expect(err.error_class == "CommandNotFound", err.error_class)

    await qmp.execute("block_resize", {"node-name": "py-file", "size": 2 << 20})
    await qmp.execute("object-add", {"qom-type": "secret", "id": "py-secret",
                                     "data": "x"})
    await qmp.execute("object-del", {"id": "py-secret"})
    await qmp.execute("blockdev-del", {"node-name": "py-raw"})
    await qmp.execute("blockdev-del", {"node-name": "py-file"})
    await qmp.disconnect()


def legacy_client(socket_path):
    qmp = QEMUMonitorProtocol(socket_path)
    greeting = qmp.connect(negotiate=True)
    expect(greeting["QMP"]["version"]["qemu"]["major"] == 10, greeting)
    reply = qmp.cmd_raw("query-named-block-nodes")
    expect(reply == {"return": []}, reply)
    reply = qmp.cmd_raw("blockdev-add", {"driver": "bogus", "node-name": "x"})
    expect(reply["error"] == {
        "class": "GenericError",
        "desc": "Parameter 'driver' does not accept value 'bogus'",
    }, reply)
    qmp.close()


def main():
    socket_path, image = sys.argv[1], sys.argv[2]
    asyncio.run(async_client(socket_path, image))
    legacy_client(socket_path)
    print("ok")


if __name__ == "__main__":
    main()
