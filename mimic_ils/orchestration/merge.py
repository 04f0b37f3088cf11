"""Assemble the study artifacts of every shard into the output folder (atomically: built aside, then swapped in).

The merge streams: memory stays bounded whatever the cohort (one study's rows, a row group per Parquet file, and
small per-study tallies), in two passes over the study artifacts in study-id order (the pairs' sort key starts with
the study id, so the rows arrive sorted):

1. ``scan_results`` checks every artifact and the PNGs it names (sizes; the sha256 of a PNG modified after its
   artifact was written; ``full_check``: of every PNG), counts what will be written, and feeds each split's
   :class:`~mimic_ils.pairs.GlobalNegativeChooser` (32 bytes per candidate negative, never a row);
2. ``merge`` reads them again, makes the chosen negatives global, places the PNGs (their recorded sha256 goes into
   the manifest, nothing is hashed twice) and streams the rows into the Parquet files and the ledger.

:func:`merge_in_memory` is the former merge (every result in memory, every PNG hashed): the reference the streaming
one is tested and benchmarked against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mimic_ils.orchestration.folder import DatasetFolder
from mimic_ils.orchestration.ledger import ledger_rows, study_ledger_rows
from mimic_ils.orchestration.output import check_out_folder
from mimic_ils.orchestration.study import load_study_result, read_study_result
from mimic_ils.orchestration.workdir import WorkDir
from mimic_ils.orchestration.writer import pair_sort_key
from mimic_ils.pairs import GlobalNegativeChooser, choose_global_negatives
from mimic_ils.progress import progress
from mimic_ils.rows import PairRow, StudyResult
from mimic_ils.schema import SPLITS, MimicIlsError, Study


class MissingResults(MimicIlsError):
    """Some studies of the build have no valid result in the work folder (unfinished shard, corrupted file)."""


@dataclass
class MergePlan:
    """What pass 1 learnt: each split's global-negative choice, and counts for the checks and the progress."""

    choosers: dict[str, GlobalNegativeChooser]
    pairs: Counter
    files: int


def scan_results(work: WorkDir, studies: Sequence[Study], shares: Mapping[str, float], *, full_check: bool = False,
                 show_progress: bool = False) -> MergePlan:
    """Pass 1 over ``studies`` (in the given order): check every study's result (a clear error when some shard has
    not finished or a file is corrupted: the artifact is deleted so that a rerun recomputes it) and decide each
    split's global negatives."""
    choosers = {split: GlobalNegativeChooser(shares) for split in SPLITS}
    pairs: Counter = Counter()
    files, missing = 0, []
    with progress("merge", len(studies), "studies checked", enabled=show_progress) as bar:
        for study in studies:
            result = load_study_result(work, study.study_id, full_check=full_check, changed_check=True)
            if result is None:
                missing.append(study.study_id)
            elif result.split in choosers and result.pairs:
                choosers[result.split].observe([row.to_json() for row in result.pairs])
                pairs[result.split] += len(result.pairs)
                files += len({name for row in result.pairs for name in row.file_names})
            bar.update()
    if missing:
        raise MissingResults(
            f"{len(missing)} of {len(studies)} studies have no valid result in {work.root} (first: {missing[0]}); "
            "run (or rerun) the build for the missing shards before --merge"
        )
    for chooser in choosers.values():
        chooser.decide()
    return MergePlan(choosers, pairs, files)


def merge(work: WorkDir, studies: Sequence[Study], out: str | Path, info: dict[str, Any],
          negative_global_share: dict[str, float] | None = None,
          trusted: set[tuple[int, int]] | None = None, *, show_progress: bool = False,
          full_check: bool = False) -> dict[str, Any]:
    """Write the dataset folder ``out`` from the work folder; returns the build info (with the counts per split).

    ``trusted``: the output files :func:`check_out_folder` accepted at the start of the build.
    ``negative_global_share`` (default: Table 9's) is the share of each type's negatives made global per split
    (:func:`mimic_ils.pairs.choose_global_negatives`). ``show_progress``: progress of both passes and of the files
    placed (:mod:`mimic_ils.progress`). ``full_check``: hash every PNG against its record before writing (by
    default only sizes are checked, and the sha256 of PNGs modified after their study artifact).
    """
    shares = _shares(negative_global_share)
    out = Path(out)
    trusted = (trusted or set()) | check_out_folder(out, trusted)
    ordered = sorted(studies, key=lambda item: item.study_id)
    plan = scan_results(work, ordered, shares, full_check=full_check, show_progress=show_progress)
    if not plan.pairs:
        raise MimicIlsError(f"no instruction-answer pair in any of the {len(ordered)} studies; nothing to write")
    folder = DatasetFolder.begin(out, trusted, show_progress=show_progress, name="merge")
    with (progress("merge write", len(ordered), "studies written", enabled=show_progress) as studies_bar,
          progress("merge files", plan.files, "files placed", enabled=show_progress, position=1) as files_bar):
        for study in ordered:
            result = read_study_result(work, study.study_id)
            if result is None:
                raise MissingResults(f"the result of study {study.study_id} in {work.root} changed during the "
                                     "merge; rerun the build")
            chooser = plan.choosers.get(result.split)
            if chooser is not None and result.pairs:
                rows = [PairRow.from_json(row) for row in chooser.apply([row.to_json() for row in result.pairs])]
                files_bar.update(_place_files(work, folder, result, rows))
                folder.add_rows(result.split, sorted(rows, key=pair_sort_key))
            folder.add_ledger_rows(study_ledger_rows(result))
            studies_bar.update()
    return folder.finish(info)


def _place_files(work: WorkDir, folder: DatasetFolder, result: StudyResult, rows: Sequence[PairRow]) -> int:
    """Place the PNGs ``rows`` name, checking each one's size against the study's record (pass 1 checked them);
    returns how many."""
    names = sorted({name for row in rows for name in row.file_names})
    for name in names:
        record, source = result.files.get(name), work.root / name
        if record is not None and not record.matches(source, full=False):
            work.study_path(result.study_id).unlink(missing_ok=True)
            raise MissingResults(f"study {result.study_id}: {name} changed during the merge; rerun the build")
        folder.place(result.split, name, source, record)
    return len(names)


def _shares(negative_global_share: Mapping[str, float] | None) -> Mapping[str, float]:
    if negative_global_share is None:
        from mimic_ils.pairs import TABLE9_GLOBAL_NEGATIVE_SHARE

        return TABLE9_GLOBAL_NEGATIVE_SHARE
    return negative_global_share


# --- the former, in-memory merge: the reference of the tests and the benchmark ---

def collect_results(work: WorkDir, studies: Sequence[Study], *, show_progress: bool = False) -> list[StudyResult]:
    """Every study's cached result (every PNG hashed), sorted by study id; a clear error when some shard has not
    finished."""
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


def merge_in_memory(work: WorkDir, studies: Sequence[Study], out: str | Path, info: dict[str, Any],
                    negative_global_share: dict[str, float] | None = None,
                    trusted: set[tuple[int, int]] | None = None, *, show_progress: bool = False) -> dict[str, Any]:
    """:func:`merge` as it was: every result in memory, every PNG hashed, the manifest hashing every file; the same
    output bytes (the streaming merge's reference)."""
    shares = _shares(negative_global_share)
    out = Path(out)
    trusted = (trusted or set()) | check_out_folder(out, trusted)
    results = collect_results(work, studies, show_progress=show_progress)
    folder = DatasetFolder.begin(out, trusted, show_progress=show_progress, name="merge")
    for split in SPLITS:
        rows = global_negatives(_split_rows(results, split), shares)
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


__all__ = ["MergePlan", "MissingResults", "check_out_folder", "collect_results", "merge", "merge_in_memory",
           "scan_results"]
