#!/usr/bin/env python3
"""An NBD client that writes and verifies continuously, for tests that
change the graph under it (a mirror that pivots, a filter inserted).

Usage: nbd_pattern_writer.py NBD_SOCKET EXPORT BLOCK_SIZE STOP_FILE MODEL_FILE [PAUSE_FILE]

Keeps a model of the disk in memory, read first; then creates
STOP_FILE.started and, until STOP_FILE exists it writes a
fresh pattern to a pseudo-random block (with FUA every 8th write), then
reads another block and checks it equals the model; every request must
succeed. Then it reads the whole disk and checks it, writes the model to
MODEL_FILE (a raw image to compare with), and prints the number of writes.
Any failed request or mismatch raises, so the exit status is non-zero.

With PAUSE_FILE: whenever that file appears, the writer flushes, writes
its model to PAUSE_FILE.model, creates PAUSE_FILE.acked, and waits until
PAUSE_FILE is gone: the test then knows the disk's exact contents at a
moment it chooses (a backup's point in time).
"""

import os
import random
import sys
import time

import nbd


def main():
    socket, export, block, stop_file, model_file = sys.argv[1:6]
    pause_file = sys.argv[6] if len(sys.argv) > 6 else None
    block = int(block)
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(socket)
    size = h.get_size()
    blocks = size // block
    model = bytearray()
    for offset in range(0, size, 1 << 20):
        model += h.pread(min(1 << 20, size - offset), offset)
    # Tells the test the writes begin.
    open(stop_file + ".started", "w").close()
    rng = random.Random(1234)
    writes = 0
    while not os.path.exists(stop_file):
        if pause_file and os.path.exists(pause_file):
            h.flush()
            with open(pause_file + ".model", "wb") as f:
                f.write(model)
            open(pause_file + ".acked", "w").close()
            while os.path.exists(pause_file):
                time.sleep(0.01)
            os.remove(pause_file + ".acked")
        index = rng.randrange(blocks)
        data = bytes([writes % 251 + 1]) * 16 + rng.randbytes(block - 16)
        flags = nbd.CMD_FLAG_FUA if writes % 8 == 0 else 0
        h.pwrite(data, index * block, flags)
        model[index * block:(index + 1) * block] = data
        writes += 1
        check = rng.randrange(blocks)
        got = h.pread(block, check * block)
        if got != model[check * block:(check + 1) * block]:
            raise AssertionError(f"block {check} differs after {writes} writes")
    h.flush()
    for offset in range(0, size, 1 << 20):
        length = min(1 << 20, size - offset)
        if h.pread(length, offset) != model[offset:offset + length]:
            raise AssertionError(f"final read at {offset} differs")
    h.shutdown()
    with open(model_file, "wb") as f:
        f.write(model)
    print(writes)


main()
