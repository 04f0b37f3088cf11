"""Assemble the study artifacts of every shard into the output folder (atomically: built aside, then swapped in)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mimic_ils.files import atomic_write_bytes
from mimic_ils.orchestration.card import render_card
from mimic_ils.orchestration.ledger import ledger_rows, summarize_ledger
from mimic_ils.orchestration.output import check_out_folder, finish_output, new_partial
from mimic_ils.orchestration.pipeline import load_study_result
from mimic_ils.orchestration.workdir import WorkDir
from mimic_ils.orchestration.writer import LEDGER_SCHEMA, place_file, split_relative, write_parquet, write_split
from mimic_ils.pairs import choose_global_negatives
from mimic_ils.schema import SPLITS, MimicIlsError, Study


class MissingResults(MimicIlsError):
    """Some studies of the build have no valid result in the work folder (unfinished shard, corrupted file)."""


def collect_results(work: WorkDir, studies: Sequence[Study]) -> list[dict[str, Any]]:
    """Every study's cached result, sorted by study id; a clear error when some shard has not finished."""
    results, missing = [], []
    for study in sorted(studies, key=lambda item: item.study_id):
        result = load_study_result(work, study.study_id, full_check=True)
        (missing.append(study.study_id) if result is None else results.append(result))
    if missing:
        raise MissingResults(
            f"{len(missing)} of {len(studies)} studies have no valid result in {work.root} (first: {missing[0]}); "
            "run (or rerun) the build for the missing shards before --merge"
        )
    return results


def merge(work: WorkDir, studies: Sequence[Study], out: str | Path, info: dict[str, Any],
          negative_global_share: dict[str, float] | None = None,
          trusted: set[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Write the dataset folder ``out`` from the work folder; returns the counts per split.

    ``trusted``: the output files :func:`check_out_folder` accepted at the start of the build.
    ``negative_global_share`` (default: Table 9's) is the share of each type's negatives made global per split
    (:func:`mimic_ils.pairs.choose_global_negatives`).
    """
    if negative_global_share is None:
        from mimic_ils.grounding.config import TABLE9_GLOBAL_NEGATIVE_SHARE as negative_global_share
    out = Path(out)
    trusted = (trusted or set()) | check_out_folder(out, trusted)
    results = collect_results(work, studies)
    partial = new_partial(out)
    files, counts = {}, {}
    for split in SPLITS:
        rows = choose_global_negatives(_split_rows(results, split), negative_global_share)
        if not rows:
            continue
        _place_split_files(work, partial / split, rows)
        files[split] = write_split(partial / split, rows)
        counts[split] = _counts(rows, [result for result in results if result["split"] == split])
    if not files:
        raise MimicIlsError(f"no instruction-answer pair in any of the {len(results)} studies; nothing to write")
    ledger = ledger_rows(results)
    write_parquet(ledger, LEDGER_SCHEMA, partial / "ledger.parquet")
    info = {**info, "counts": counts, "ledger": summarize_ledger(ledger)}
    atomic_write_bytes(partial / "build_info.json", json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")
    atomic_write_bytes(partial / "README.md", render_card(files, counts, info, partial).encode("utf-8"))
    finish_output(partial, out, trusted)
    return info


def _split_rows(results: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    return [{**row, "split": split} for result in results if result["split"] == split for row in result["pairs"]]


def _place_split_files(work: WorkDir, folder: Path, rows: Sequence[dict[str, Any]]) -> None:
    names = {row["image_file_name"] for row in rows} | {row["mask_file_name"] for row in rows if row["mask_file_name"]}
    for name in sorted(names):
        place_file(work.root / name, folder / split_relative(name))


def _counts(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {
        "pairs": len(rows),
        "positive": sum(row["polarity"] == "positive" for row in rows),
        "negative": sum(row["polarity"] == "negative" for row in rows),
        "images": len({row["dicom_id"] for row in rows}),
        "masks": len({row["mask_file_name"] for row in rows if row["mask_file_name"]}),
        "studies": sum(result["fate"] == "used" for result in results),
    }


__all__ = ["MissingResults", "check_out_folder", "collect_results", "merge"]
