"""The one writer of an output folder, for ``mimic-ils build`` (the merge) and ``mimic-ils import-release``.

A folder is built aside (``.<out>.partial``) and swapped in at the end, so ``--out`` is never half-written::

    folder = DatasetFolder.begin(out, trusted)       # the empty partial folder
    folder.write_png("train", "masks/<digest>.png", mask)          # optional: a file made while importing
    folder.add_split("train", rows, files={name: source_path})     # places files, writes both configs' metadata
    folder.add_ledger(ledger_rows)
    info = folder.finish({"code_version": ...})       # build_info.json, README card, manifest, swap

File names are the work-folder ones of :class:`mimic_ils.rows.PairRow` (``images/<id>.<ext>``, ``masks/<digest>.png``);
the folder places them under each split (``writer.split_relative``). The counts of each split (card, build_info.json)
are :func:`mimic_ils.rows.split_counts` of its rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mimic_ils.files import atomic_write_bytes, encode_png
from mimic_ils.orchestration.card import render_card
from mimic_ils.orchestration.ledger import summarize_ledger
from mimic_ils.orchestration.output import finish_output, new_partial
from mimic_ils.orchestration.writer import (
    BUILD_INFO,
    CARD,
    LEDGER,
    LEDGER_SCHEMA,
    place_file,
    split_relative,
    write_parquet,
    write_split,
)
from mimic_ils.progress import progress
from mimic_ils.rows import COUNTED_COLUMNS, LedgerRow, PairRow, column_values, split_counts
from mimic_ils.schema import MimicIlsError

__all__ = ["BUILD_INFO", "CARD", "LEDGER", "DatasetFolder"]


class DatasetFolder:
    """An output folder being written: ``begin`` → ``add_split``… → ``add_ledger`` → ``finish``."""

    def __init__(self, out: Path, partial: Path, trusted: set[tuple[int, int]], *, show_progress: bool = False,
                 name: str = "write") -> None:
        self.out = out
        self.partial = partial
        self.trusted = trusted
        self.show_progress = show_progress
        self.name = name
        self.image_suffixes: dict[str, list[str]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.ledger: list[LedgerRow] | None = None

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

    def add_split(self, split: str, rows: Sequence[PairRow], files: Mapping[str, Path] | None = None) -> None:
        """Place ``files`` (work-folder name → source file; hard-linked when possible) under ``split`` and write its
        ``pairs`` and ``images`` metadata from ``rows``."""
        if not rows:
            raise MimicIlsError(f"split {split} has no pair to write")
        folder = self.partial / split
        files = files or {}
        with progress(f"{self.name} {split}", len(files), "files", enabled=self.show_progress) as bar:
            for name, source in sorted(files.items()):
                place_file(source, folder / split_relative(name))
                bar.update()
        self.image_suffixes[split] = write_split(folder, rows)
        self.counts[split] = split_counts(column_values(rows, COUNTED_COLUMNS))

    def add_ledger(self, rows: Sequence[LedgerRow]) -> None:
        """Write ``ledger.parquet`` (rows in the caller's order)."""
        self.ledger = list(rows)
        write_parquet(self.ledger, LEDGER_SCHEMA, self.partial / LEDGER)

    def finish(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Write build_info.json (``info`` with the counts and the ledger summary) and the card, then the manifest,
        and swap the folder in for ``out``; returns the build info."""
        if not self.counts or self.ledger is None:
            raise MimicIlsError("an output folder needs at least one split and a ledger before it is finished")
        info = {**info, "counts": self.counts, "ledger": summarize_ledger(self.ledger)}
        atomic_write_bytes(self.partial / BUILD_INFO, json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")
        card = render_card(self.image_suffixes, self.counts, info, self.partial)
        atomic_write_bytes(self.partial / CARD, card.encode("utf-8"))
        finish_output(self.partial, self.out, self.trusted)
        return info
