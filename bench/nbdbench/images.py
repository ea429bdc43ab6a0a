"""The images the servers are given, prepared on tmpfs so the disk is never what is measured.

Each kind of image has a master made once per run; every server start gets a fresh copy
of it (or, for the empty qcow2, a freshly created image), so every server sees the same
bytes in the same state.  Data is random (raw, fully allocated qcow2) so reads are real
reads and nothing can be skipped as zero, or hexadecimal text (compressed qcow2), which
compresses to a little over half its size, like real guest data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MIB = 1024 * 1024
GIB = 1024 * MIB
# Size of each chunk written while generating data: large enough to be fast, small
# enough not to hold a whole image in memory.
GENERATE_CHUNK = 4 * MIB


@dataclass(frozen=True)
class ImageKind:
    """One kind of image; `fmt` is the format node the servers put on the file."""

    name: str
    fmt: str
    description: str


RAW_RANDOM = ImageKind("raw", "raw", "raw image, fully allocated, random data")
QCOW2_EMPTY = ImageKind("qcow2-empty", "qcow2", "qcow2 image just created, nothing allocated")
QCOW2_FULL = ImageKind("qcow2-full", "qcow2", "qcow2 image, every cluster allocated, random data")
QCOW2_COMPRESSED = ImageKind(
    "qcow2-compressed", "qcow2", "qcow2 image, every cluster compressed (zlib), text data"
)


class ImageStore:
    """Makes the masters lazily in `directory` and hands out fresh copies of them."""

    def __init__(self, directory: Path, size: int, empty_qcow2_size: int):
        self.directory = directory
        self.size = size
        self.empty_qcow2_size = empty_qcow2_size
        self._masters: dict[str, Path] = {}

    def virtual_size(self, kind: ImageKind) -> int:
        return self.empty_qcow2_size if kind is QCOW2_EMPTY else self.size

    def random_data(self) -> Path:
        """A raw file of random bytes: the raw image's master and nbdcopy's write source."""
        path = self.directory / "random.raw"
        if not path.exists():
            _generate(path, self.size, os.urandom)
        return path

    def fresh_image(self, kind: ImageKind) -> Path:
        """A new image of `kind` for one server start, replacing the previous one."""
        path = self.directory / f"image.{kind.fmt}"
        path.unlink(missing_ok=True)
        if kind is QCOW2_EMPTY:
            _qemu_img("create", "-q", "-f", "qcow2", str(path), str(self.empty_qcow2_size))
        else:
            shutil.copyfile(self._master(kind), path)
        return path

    def discard_image(self, kind: ImageKind) -> None:
        (self.directory / f"image.{kind.fmt}").unlink(missing_ok=True)

    def _master(self, kind: ImageKind) -> Path:
        if kind.name not in self._masters:
            self._masters[kind.name] = self._make_master(kind)
        return self._masters[kind.name]

    def _make_master(self, kind: ImageKind) -> Path:
        if kind is RAW_RANDOM:
            return self.random_data()
        master = self.directory / f"master-{kind.name}.qcow2"
        if kind is QCOW2_FULL:
            _qemu_img("convert", "-f", "raw", "-O", "qcow2", str(self.random_data()), str(master))
        elif kind is QCOW2_COMPRESSED:
            text = self.directory / "text.raw"
            _generate(text, self.size, lambda n: os.urandom(n // 2).hex().encode())
            _qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(text), str(master))
            text.unlink()
        else:
            raise ValueError(f"no master for image kind {kind.name}")
        return master


def _generate(path: Path, size: int, chunk_of: Callable[[int], bytes]) -> None:
    with open(path, "wb") as out:
        remaining = size
        while remaining > 0:
            n = min(GENERATE_CHUNK, remaining)
            out.write(chunk_of(n))
            remaining -= n


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, stdout=subprocess.DEVNULL)
