"""Writing files: the one atomic write, the one PNG encoding and the one checksum record of the project.

* :func:`atomic_write_bytes` and :func:`current_umask`: from :mod:`rosalia_hf.files` (shared with the model half):
  temporary file in the target's folder, then rename, with the mode a plain ``open(path, "w")`` would give.
* :func:`encode_png`: deterministic PNG bytes of an ``HxW uint8`` (or bool, stored 0/255) array: every image and mask
  of a dataset folder. Written here rather than by Pillow, which can set neither the row filter nor zlib's strategy:
  the "Up" filter on every row and zlib's run-length strategy encode a 2500×2048 X-ray 14× faster than Pillow's
  adaptive filters with ``Z_FILTERED`` (0.05 s against 0.73 s) in as few bytes (docs/benchmarks.md), and that
  encode was most of the build's CPU time per image. Any PNG decoder reads the files.
* :class:`FileRecord`: ``{"sha256": <hex>, "size": <bytes>}``, the format of every checksum we write (the output
  folder's manifest, the study artifacts, the vision artifacts' manifests).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rosalia_hf.files import atomic_write_bytes, current_umask, png_bytes

__all__ = ["atomic_write_bytes", "current_umask", "png_bytes", "encode_png", "FileRecord", "write_file_once",
           "link_file_once",
           "sha256_bytes", "sha256_file"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2


def encode_png(array: np.ndarray) -> bytes:
    """Deterministic PNG bytes of an ``HxW uint8`` (or bool, stored 0/255) array: 8-bit greyscale, no metadata
    chunks, filter "Up" on every row (the first row's "Up" predictor is zero), one IDAT of zlib level 6 with the
    run-length strategy. The same pixels give the same bytes (with the same zlib)."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"encode_png takes an HxW grey image or mask, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    array = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = array.shape
    if height == 0 or width == 0:
        raise ValueError(f"encode_png takes a non-empty image, got shape {array.shape}")
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = _FILTER_UP
    rows[0, 1:] = array[0]
    np.subtract(array[1:], array[:-1], out=rows[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG's filters do
    compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = compressor.compress(rows.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, deflate, filtered rows, no interlace
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@dataclass(frozen=True)
class FileRecord:
    """The checksum of one file: its sha256 (hex) and its size in bytes."""

    sha256: str
    size: int

    @classmethod
    def of_bytes(cls, data: bytes) -> FileRecord:
        return cls(sha256_bytes(data), len(data))

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> FileRecord:
        return cls(sha256_file(path), Path(path).stat().st_size)

    def matches(self, path: str | os.PathLike, *, full: bool = True) -> bool:
        """Whether ``path`` is this file: size only (cheap, for resuming) or size and sha256 (``full``)."""
        try:
            if Path(path).stat().st_size != self.size:
                return False
        except (FileNotFoundError, NotADirectoryError):
            return False
        return not full or sha256_file(path) == self.sha256

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def from_json(cls, data: Any) -> FileRecord | None:
        """The record of ``{"sha256", "size"}``; None for anything else (an artifact of another format)."""
        if not isinstance(data, dict) or not isinstance(data.get("sha256"), str):
            return None
        size = data.get("size")
        return cls(data["sha256"], size) if isinstance(size, int) and not isinstance(size, bool) else None


def write_file_once(path: str | os.PathLike, data: bytes) -> FileRecord:
    """Write ``data`` to ``path`` unless an identical file is there already; its record."""
    record = FileRecord.of_bytes(data)
    if not record.matches(path, full=True):
        atomic_write_bytes(path, data)
    return record


def link_file_once(source: str | os.PathLike, path: str | os.PathLike) -> FileRecord:
    """Make ``path`` a hard link of ``source`` (atomically: a temporary link, then rename) unless an identical file is
    there already; a copy where the file system cannot link. Returns the record of its bytes."""
    source, path = Path(source), Path(path)
    record = FileRecord.of_file(source)
    if record.matches(path, full=True):
        return record
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        atomic_write_bytes(path, source.read_bytes())
    return record
