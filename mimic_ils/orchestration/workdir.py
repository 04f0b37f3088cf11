"""The work folder: its layout and its checksummed cached artifacts (written through ``mimic_ils.files``).

Layout of a work folder (shared by every shard and process of one build; study ids never overlap across shards)::

    work/
      config.json                 the build config fingerprint; a different config refuses to reuse the folder
      reports/<study_id>.json     checked artifact: structured report, or the report stage's Failure
      vision/...                  the vision runner's per-image artifact folders
      studies/<study_id>.json     checked artifact: the study's StudyResult (fates, pair rows, file records)
      images/<dicom_id>.png       8-bit greyscale PNG of the image in the original frame
      masks/<digest>.png          one PNG (0/255) per unique mask, named by the digest of its pixels
      shards/<i>-of-<n>.done      written when a shard has processed all its studies
      digests/<xx>/<key>.json     sha256 of an input file (DICOM) under its size, mtime_ns and inode
      vision_keys/<dicom_id>.json the DICOM sha256 the image's cached cues were made from
      build.lock, locks/          flock files (see ``output.py``)

A checked artifact is ``MILS1 <sha256 hex of payload>\\n`` followed by the payload. Reading one that is truncated or
altered returns None (and it is recomputed): killing a process at any moment never leaves a file that is trusted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mimic_ils import files
from mimic_ils.files import FileRecord, sha256_bytes, sha256_file

logger = logging.getLogger(__name__)

_MAGIC = b"MILS1 "


def write_checked(path: str | os.PathLike, payload: bytes) -> None:
    """Atomically write a checked artifact (magic, sha256 of the payload, payload)."""
    files.atomic_write_bytes(path, _MAGIC + sha256_bytes(payload).encode() + b"\n" + payload)


def read_checked(path: str | os.PathLike) -> bytes | None:
    """The payload of a checked artifact; None when missing, and None (with a warning) when corrupted."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    header, _, payload = data.partition(b"\n")
    if not header.startswith(_MAGIC) or header[len(_MAGIC):].decode("ascii", "replace") != sha256_bytes(payload):
        logger.warning("cached artifact %s is corrupted; recomputing it", path)
        return None
    return payload


def write_checked_json(path: str | os.PathLike, obj: Any) -> None:
    write_checked(path, canonical_json(obj))


def read_checked_json(path: str | os.PathLike) -> Any | None:
    payload = read_checked(path)
    return None if payload is None else json.loads(payload)


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace variation: equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def mask_digest(mask: np.ndarray) -> str:
    """Content digest of an ``HxW bool`` mask (shape and pixels): equal masks share one PNG."""
    mask = np.asarray(mask, dtype=bool)
    header = np.asarray(mask.shape, dtype=np.int64).tobytes()
    return sha256_bytes(header + np.packbits(mask).tobytes())[:24]


class WorkDir:
    """Paths and checked reads/writes of one work folder (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def report_path(self, study_id: str) -> Path:
        return self.root / "reports" / f"{study_id}.json"

    def study_path(self, study_id: str) -> Path:
        return self.root / "studies" / f"{study_id}.json"

    def image_path(self, dicom_id: str) -> Path:
        return self.root / "images" / f"{dicom_id}.png"

    def mask_path(self, digest: str) -> Path:
        return self.root / "masks" / f"{digest}.png"

    @property
    def vision_dir(self) -> Path:
        return self.root / "vision"

    def shard_done_path(self, index: int, count: int) -> Path:
        return self.root / "shards" / f"{index}-of-{count}.done"

    def bind_config(self, fingerprint: dict) -> None:
        """Record the config of this work folder; refuse a folder made with another config (cached results differ)."""
        from mimic_ils.schema import MimicIlsError

        path = self.root / "config.json"
        existing = read_checked_json(path)
        if existing is not None and existing != fingerprint:
            raise MimicIlsError(
                f"work folder {self.root} was made with another build config; pass a new --work folder or delete it"
            )
        if existing is None:
            write_checked_json(path, fingerprint)

    def write_file_checked(self, path: Path, data: bytes) -> FileRecord:
        """Write a PNG (image or mask) unless an identical one is there; return its record."""
        return files.write_file_once(path, data)


def file_digest(work: WorkDir, path: str | os.PathLike) -> str:
    """sha256 of the file ``path`` (a missing file: ``"missing"``), computed once per version of the file: the digest
    is kept in the work folder under the file's size, mtime_ns and inode, and recomputed when any of them changes."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "missing"
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    name = sha256_bytes(str(path.absolute()).encode())
    record_path = work.root / "digests" / name[:2] / f"{name}.json"
    record = read_checked_json(record_path)
    if isinstance(record, dict) and record.get("stamp") == stamp:
        return record["sha256"]
    digest = sha256_file(path)
    write_checked_json(record_path, {"path": str(path), "stamp": stamp, "sha256": digest})
    return digest
