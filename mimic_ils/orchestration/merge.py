"""Assemble the study artifacts of every shard into the output folder (atomically: built aside, then swapped in)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mimic_ils.orchestration.folder import DatasetFolder
from mimic_ils.orchestration.ledger import ledger_rows
from mimic_ils.orchestration.output import check_out_folder
from mimic_ils.orchestration.study import load_study_result
from mimic_ils.orchestration.workdir import WorkDir
from mimic_ils.pairs import choose_global_negatives
from mimic_ils.progress import progress
from mimic_ils.rows import PairRow, StudyResult
from mimic_ils.schema import SPLITS, MimicIlsError, Study


class MissingResults(MimicIlsError):
    """Some studies of the build have no valid result in the work folder (unfinished shard, corrupted file)."""


def collect_results(work: WorkDir, studies: Sequence[Study], *, show_progress: bool = False) -> list[StudyResult]:
    """Every study's cached result, sorted by study id; a clear error when some shard has not finished."""
    results, missing = [], []
    with progress("merge", len(studies), "studies checked", enabled=show_progress) as bar:
        for study in sorted(studies, key=lambda item: item.study_id):
            result = load_study_result(work, study.study_id, full_check=True)
            (missing.append(study.study_id) if result is None else results.append(result))
            bar.update()
    if missing:
        raise MissingResults(
            f"{len(missing)} of {len(studies)} studies have no valid result in {work.root} (first: {missing[0]}); "
            "run (or rerun) the build for the missing shards before --merge"
        )
    return results


def merge(work: WorkDir, studies: Sequence[Study], out: str | Path, info: dict[str, Any],
          negative_global_share: dict[str, float] | None = None,
          trusted: set[tuple[int, int]] | None = None, *, show_progress: bool = False) -> dict[str, Any]:
    """Write the dataset folder ``out`` from the work folder; returns the build info (with the counts per split).

    ``trusted``: the output files :func:`check_out_folder` accepted at the start of the build.
    ``negative_global_share`` (default: Table 9's) is the share of each type's negatives made global per split
    (:func:`mimic_ils.pairs.choose_global_negatives`). ``show_progress``: progress of the studies checked and the
    files placed (:mod:`mimic_ils.progress`).
    """
    if negative_global_share is None:
        from mimic_ils.pairs import TABLE9_GLOBAL_NEGATIVE_SHARE as negative_global_share
    out = Path(out)
    trusted = (trusted or set()) | check_out_folder(out, trusted)
    results = collect_results(work, studies, show_progress=show_progress)
    folder = DatasetFolder.begin(out, trusted, show_progress=show_progress, name="merge")
    for split in SPLITS:
        rows = global_negatives(_split_rows(results, split), negative_global_share)
        if rows:
            folder.add_split(split, rows, files={name: work.root / name for row in rows for name in row.file_names})
    if not folder.counts:
        raise MimicIlsError(f"no instruction-answer pair in any of the {len(results)} studies; nothing to write")
    folder.add_ledger(ledger_rows(results))
    return folder.finish(info)


def global_negatives(rows: Sequence[PairRow], shares: Mapping[str, float]) -> list[PairRow]:
    """``rows`` of one split with some basic negatives made global (:func:`mimic_ils.pairs.choose_global_negatives`,
    which works on the rows' mappings)."""
    return [PairRow.from_json(row) for row in choose_global_negatives([row.to_json() for row in rows], shares)]


def _split_rows(results: Sequence[StudyResult], split: str) -> list[PairRow]:
    return [row for result in results if result.split == split for row in result.pairs]


__all__ = ["MissingResults", "check_out_folder", "collect_results", "merge"]
