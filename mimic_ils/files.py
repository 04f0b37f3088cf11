"""Writing files: the one atomic write, the one PNG encoding and the one checksum record of the project.

* :func:`atomic_write_bytes` and :func:`current_umask`: from :mod:`rosalia_hf.files` (shared with the model half):
  temporary file in the target's folder, then rename, with the mode a plain ``open(path, "w")`` would give.
* :func:`encode_png`: deterministic PNG bytes of an ``HxW uint8`` (or bool, stored 0/255) array.
* :class:`FileRecord`: ``{"sha256": <hex>, "size": <bytes>}``, the format of every checksum we write (the output
  folder's manifest, the study artifacts, the vision artifacts' manifests).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rosalia_hf.files import atomic_write_bytes, current_umask, png_bytes

__all__ = ["atomic_write_bytes", "current_umask", "png_bytes", "encode_png", "FileRecord", "write_file_once",
           "sha256_bytes", "sha256_file"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_png(array: np.ndarray) -> bytes:
    """Deterministic PNG bytes of an ``HxW uint8`` (or bool, stored 0/255) array; no metadata chunks."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"encode_png takes an HxW grey image or mask, got shape {array.shape}")
    return png_bytes(array)


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
