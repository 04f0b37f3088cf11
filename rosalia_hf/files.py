"""Writing files, once for both packages: the atomic write and the PNG encoder (``mimic_ils.files`` re-exports them
beside its checksum records; ``rosalia predict`` writes its overlays and masks through them).

* :func:`atomic_write_bytes`: temporary file in the target's folder, then rename; a killed process never leaves a
  partial file under the final name, and a link planted at the final name is replaced, never followed. The file
  gets the mode a plain ``open(path, "w")`` would give it (0666 less the umask): ``mkstemp``'s 0600 would leave a
  dataset on a shared cluster unreadable to the other users.
* :func:`png_bytes`: deterministic PNG bytes (no metadata chunks, zlib level 6) of an ``HxW`` or ``HxWx3`` uint8
  array, or a bool mask stored 0/255.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path

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


def png_bytes(array: np.ndarray) -> bytes:
    """Deterministic PNG bytes of an ``HxW`` or ``HxWx3`` uint8 array (a bool mask is stored 0/255)."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


__all__ = ["atomic_write_bytes", "current_umask", "png_bytes"]
