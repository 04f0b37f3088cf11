"""Writing files: the one atomic write, the one PNG encoding and the one checksum record of the project.

* :func:`atomic_write_bytes`: temporary file in the target's folder, then rename; a killed process never leaves a
  partial file under the final name. The file gets the mode a plain ``open(path, "w")`` would give it (0666 less
  the umask): ``mkstemp``'s 0600 would leave a dataset on a shared cluster unreadable to the other users.
* :func:`encode_png`: deterministic PNG bytes of an ``HxW uint8`` (or bool, stored 0/255) array.
* :class:`FileRecord`: ``{"sha256": <hex>, "size": <bytes>}``, the format of every checksum we write (the output
  folder's manifest, the study artifacts, the vision artifacts' manifests).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    No fsync: a killed process never leaves a partial file under the final name, and what a power loss could
    leave (an empty or short renamed file) fails its checksum and is recomputed. fsync cost ~7 ms per file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o666 & ~current_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (reading it means setting it; the lock keeps threads from seeing the 0 in between)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


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
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


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
