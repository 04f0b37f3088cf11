"""The output folder's guard and the build's locks.

Every folder that ``mimic-ils build`` or ``import-release`` writes ends with ``mimic_ils_manifest.json``: a marker
naming the tool and every file of the folder with its size and sha256. Replacing an existing ``--out`` is allowed only
when it is such a folder and holds nothing else: a file the manifest does not list (a user's file dropped in) or a
listed file whose content changed refuses the build before any work, and again just before the swap. The old folder
is then removed file by file from its manifest, so nothing the build did not write is ever deleted.

Locks (``fcntl.flock``, released by the kernel when the process dies): the work folder's ``build.lock`` (exclusive
for a whole-cohort build, shared by the shards of one build, each shard also holding its own), and
``.<out name>.lock`` beside ``--out`` (exclusive, for whoever will merge). A second build refuses at once, naming the
holder's pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mimic_ils.files import FileRecord, atomic_write_bytes, sha256_file
from mimic_ils.schema import MimicIlsError

logger = logging.getLogger(__name__)

MANIFEST = "mimic_ils_manifest.json"
MANIFEST_TOOL = "mimic_ils"
MANIFEST_FORMAT = 1
PARTIAL_MARKER = ".mimic_ils_partial"


class OutputRefused(MimicIlsError):
    """``--out`` holds something the build did not write; it is left untouched."""


def write_manifest(folder: Path, known: Mapping[str, FileRecord] | None = None) -> None:
    """List every file of ``folder`` (relative path → size and sha256) in its manifest; written last.

    ``known``: records of files the caller placed from checksummed sources (a merge's images and masks, by relative
    path); such a file's recorded sha256 is listed without hashing it again when its size agrees with the record,
    every other file is hashed."""
    known = known or {}
    files = {}
    for directory, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if relative in (MANIFEST, PARTIAL_MARKER) or not path.is_file():
                continue
            record = known.get(relative)
            if record is None or record.size != path.stat().st_size:
                record = FileRecord.of_file(path)
            files[relative] = record.to_json()
    payload = {"tool": MANIFEST_TOOL, "format": MANIFEST_FORMAT, "files": files}
    atomic_write_bytes(folder / MANIFEST, json.dumps(payload, indent=1, sort_keys=True).encode() + b"\n")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("tool") != MANIFEST_TOOL or data.get("format") != MANIFEST_FORMAT
            or not isinstance(data.get("files"), dict)):
        return None
    return data


def check_out_folder(out: Path, trusted: set[tuple[int, int]] | None = None) -> set[tuple[int, int]]:
    """Refuse ``out`` unless it is absent, empty, or an unaltered folder that our own build wrote.

    A listed file that is a hard link of the work folder's copy (removing its name here loses no data) is accepted
    whatever its content; the ``(st_dev, st_ino)`` of those are returned, and ``trusted`` ones are accepted again
    (the work folder may have replaced its copy since, leaving this one the only name)."""
    accepted: set[tuple[int, int]] = set()
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputRefused(f"--out {out} exists and is not a MIMIC-ILS folder; choose a new or empty folder")
    if not out.exists() or not any(out.iterdir()):
        return accepted
    manifest = read_manifest(out)
    if manifest is None:
        raise OutputRefused(
            f"--out {out} exists and is not a MIMIC-ILS folder (no {MANIFEST} written by mimic-ils); it is left "
            "untouched: choose a new or empty folder"
        )
    problem = _foreign_file(out, manifest, trusted or set(), accepted)
    if problem:
        raise OutputRefused(
            f"--out {out} is a MIMIC-ILS folder but {problem}; it is left untouched: move that file away or choose "
            "another --out"
        )
    return accepted


def _foreign_file(out: Path, manifest: dict[str, Any], trusted: set, accepted: set) -> str | None:
    """The first file of ``out`` that the manifest does not account for (or whose content changed), as a phrase."""
    listed = manifest["files"]
    manifest_mtime = (out / MANIFEST).stat().st_mtime_ns
    for directory, dirnames, filenames in os.walk(out):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if (Path(directory) / d).is_symlink()):
            path = Path(directory) / name
            relative = path.relative_to(out).as_posix()
            if relative == MANIFEST:
                continue
            record = listed.get(relative)
            if record is None or path.is_symlink() or not path.is_file():
                return f"holds {relative}, which the build did not write"
            stat = path.stat()
            if stat.st_nlink > 1 or (stat.st_dev, stat.st_ino) in trusted:
                accepted.add((stat.st_dev, stat.st_ino))
                continue  # a hard link of the work folder's file: removing this name loses no data
            # an untouched file is older than the manifest (hard links keep the work folder's time): hash the others
            if stat.st_size != record.get("size") or (
                    stat.st_mtime_ns > manifest_mtime and sha256_file(path) != record.get("sha256")):
                return f"its file {relative} was changed since the build wrote it"
    return None


def new_partial(out: Path) -> Path:
    """The empty folder ``.<out>.partial`` the output is built in (a leftover of ours is removed, else refused)."""
    partial = out.parent / f".{out.name}.partial"
    if partial.exists() or partial.is_symlink():
        if not (partial.is_dir() and not partial.is_symlink() and (partial / PARTIAL_MARKER).is_file()):
            raise OutputRefused(f"{partial} exists and was not made by mimic-ils; move it away and rerun")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / PARTIAL_MARKER).write_bytes(b"")
    return partial


def finish_output(partial: Path, out: Path, trusted: set[tuple[int, int]] | None = None,
                  known: Mapping[str, FileRecord] | None = None) -> None:
    """Write the manifest of ``partial`` (``known``: see :func:`write_manifest`) and swap it in for ``out`` (the old
    folder, checked again, goes only once the new one is complete, and only the files its manifest lists)."""
    (partial / PARTIAL_MARKER).unlink(missing_ok=True)
    write_manifest(partial, known)
    check_out_folder(out, trusted)
    if not out.exists():
        partial.rename(out)
        return
    old = out.parent / f".{out.name}.old"
    if old.exists():
        _remove_own(old)
    if old.exists():
        raise OutputRefused(f"{old} holds files mimic-ils did not write; move it away and rerun")
    out.rename(old)
    partial.rename(out)
    _remove_own(old)


def _remove_own(folder: Path) -> None:
    """Delete the files ``folder``'s manifest lists, then its empty folders; anything else stays (with a warning)."""
    manifest = read_manifest(folder)
    for relative in sorted((manifest or {}).get("files", {})):
        path = folder / relative
        if path.is_file() and not path.is_symlink():
            path.unlink()
    if manifest is not None:
        (folder / MANIFEST).unlink(missing_ok=True)
    for directory, _, _ in sorted(os.walk(folder, topdown=False), key=lambda item: -len(item[0])):
        with contextlib.suppress(OSError):
            Path(directory).rmdir()
    if folder.exists():
        logger.warning("%s holds files mimic-ils did not write; left in place", folder)


# --- locks ---

def out_lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def hold_lock(path: Path, what: str, *, shared: bool = False) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created) for the block; a MimicIlsError naming the holder's pid if it is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(path)
            raise MimicIlsError(
                f"{what} is in use by another mimic-ils build (pid {holder}; lock {path}); wait for it to finish, "
                "then rerun"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
