"""The one writer of an output folder, for ``mimic-ils build`` (the merge) and ``mimic-ils import-release``.

A folder is built aside (``.<out>.partial``) and swapped in at the end, so ``--out`` is never half-written::

    folder = DatasetFolder.begin(out, trusted)       # the empty partial folder
    folder.write_png("train", "masks/<digest>.png", mask)          # optional: a file made while importing
    folder.add_split("train", rows, files={name: source_path})     # places files, writes both configs' metadata
    folder.add_ledger(ledger_rows)
    info = folder.finish({"code_version": ...})       # build_info.json, README card, manifest, swap

or, streaming (the merge: never all rows in memory), rows in ``(study_id, dicom_id, id)`` order per split::

    folder.place("train", "images/<id>.png", source_path, record)  # record: the source's FileRecord (the manifest
    folder.add_rows("train", rows_of_one_study)                    # lists its sha256 without hashing it again)
    folder.add_ledger_rows(ledger_rows_of_one_study)
    info = folder.finish({...})                       # closes the streams first

File names are the work-folder ones of :class:`mimic_ils.rows.PairRow` (``images/<id>.<ext>``, ``masks/<digest>.png``);
the folder places them under each split (``writer.split_relative``). The counts of each split (card, build_info.json)
are :func:`mimic_ils.rows.split_counts` of its rows (accumulated by :class:`mimic_ils.rows.SplitCounter`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mimic_ils.files import FileRecord, atomic_write_bytes, encode_png
from mimic_ils.orchestration.card import render_card
from mimic_ils.orchestration.ledger import LedgerSummary
from mimic_ils.orchestration.output import finish_output, new_partial
from mimic_ils.orchestration.writer import (
    BUILD_INFO,
    CARD,
    LEDGER,
    LEDGER_SCHEMA,
    ParquetStream,
    SplitStream,
    pair_sort_key,
    place_file,
    split_relative,
)
from mimic_ils.progress import progress
from mimic_ils.rows import LedgerRow, PairRow
from mimic_ils.schema import SPLITS, MimicIlsError

__all__ = ["BUILD_INFO", "CARD", "LEDGER", "DatasetFolder"]


class DatasetFolder:
    """An output folder being written: ``begin`` → ``add_split``… (or ``place``/``add_rows``…) → ``add_ledger``
    (or ``add_ledger_rows``…) → ``finish``."""

    def __init__(self, out: Path, partial: Path, trusted: set[tuple[int, int]], *, show_progress: bool = False,
                 name: str = "write") -> None:
        self.out = out
        self.partial = partial
        self.trusted = trusted
        self.show_progress = show_progress
        self.name = name
        self.image_suffixes: dict[str, list[str]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.known: dict[str, FileRecord] = {}  # output path → record of its checksummed source (the manifest's)
        self._splits: dict[str, SplitStream] = {}
        self._ledger: ParquetStream | None = None
        self._ledger_summary = LedgerSummary()

    @classmethod
    def begin(cls, out: str | Path, trusted: set[tuple[int, int]] | None = None, *, show_progress: bool = False,
              name: str = "write") -> DatasetFolder:
        """Start writing ``out`` in an empty partial folder beside it. ``trusted``: the files
        :func:`~mimic_ils.orchestration.output.check_out_folder` accepted when the caller checked ``out``.
        ``show_progress``: progress of the files placed, as ``<name> <split>``."""
        out = Path(out)
        return cls(out, new_partial(out), set(trusted or ()), show_progress=show_progress, name=name)

    def write_png(self, split: str, name: str, pixels: np.ndarray) -> None:
        """Store the PNG of ``pixels`` as the work-folder-named file ``name`` of ``split``, unless it is there."""
        destination = self.partial / split / split_relative(name)
        if not destination.exists():
            atomic_write_bytes(destination, encode_png(pixels))

    def place(self, split: str, name: str, source: Path, record: FileRecord | None = None) -> None:
        """Place the work-folder-named file ``name`` of ``split`` from ``source`` (hard-linked when possible), unless
        it is there. ``record``: the source's checked record, which the manifest then lists without hashing."""
        relative = f"{split}/{split_relative(name)}"
        place_file(source, self.partial / relative)
        if record is not None:
            self.known.setdefault(relative, record)

    def add_rows(self, split: str, rows: Sequence[PairRow]) -> None:
        """Stream rows of ``split`` (work-folder file names) into both configs' metadata; every call's rows follow
        the previous ones' in ``(study_id, dicom_id, id)`` order."""
        if split in self.counts:
            raise MimicIlsError(f"split {split} is already written")
        stream = self._splits.get(split)
        if stream is None:
            stream = self._splits[split] = SplitStream(self.partial / split)
        for row in rows:
            stream.add(row)

    def add_split(self, split: str, rows: Sequence[PairRow], files: Mapping[str, Path] | None = None) -> None:
        """Place ``files`` (work-folder name → source file; hard-linked when possible) under ``split`` and write its
        ``pairs`` and ``images`` metadata from ``rows`` (any order)."""
        if not rows:
            raise MimicIlsError(f"split {split} has no pair to write")
        files = files or {}
        with progress(f"{self.name} {split}", len(files), "files", enabled=self.show_progress) as bar:
            for name, source in sorted(files.items()):
                self.place(split, name, source)
                bar.update()
        self.add_rows(split, sorted(rows, key=pair_sort_key))
        self._close_split(split)

    def _close_split(self, split: str) -> None:
        stream = self._splits.pop(split)
        self.image_suffixes[split] = stream.close()
        self.counts[split] = {**stream.counts.counts(), "conversations": stream.conversations,
                              "question_types": dict(sorted(stream.question_types.items()))}

    def add_ledger_rows(self, rows: Iterable[LedgerRow]) -> None:
        """Stream rows into ``ledger.parquet`` (in the callers' order); a first call with no row makes it empty."""
        if self._ledger is None:
            self._ledger = ParquetStream(self.partial / LEDGER, LEDGER_SCHEMA)
        for row in rows:
            self._ledger.add(row)
            self._ledger_summary.add((row,))

    def add_ledger(self, rows: Sequence[LedgerRow]) -> None:
        """Write ``ledger.parquet`` (rows in the caller's order)."""
        self.add_ledger_rows(rows)
        self._ledger.close()

    def finish(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Write build_info.json (``info`` with the counts and the ledger summary) and the card, then the manifest,
        and swap the folder in for ``out``; returns the build info."""
        for split in [split for split in SPLITS if split in self._splits]:
            self._close_split(split)
        if not self.counts or self._ledger is None:
            raise MimicIlsError("an output folder needs at least one split and a ledger before it is finished")
        self._ledger.close()
        info = {**info, "counts": self.counts, "ledger": self._ledger_summary.result()}
        atomic_write_bytes(self.partial / BUILD_INFO, json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")
        card = render_card(self.image_suffixes, self.counts, info, self.partial)
        atomic_write_bytes(self.partial / CARD, card.encode("utf-8"))
        finish_output(self.partial, self.out, self.trusted, self.known)
        return info
