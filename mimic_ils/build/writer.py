"""Deterministic output: Parquet metadata files per split and config, image and mask PNGs placed per split.

The output folder is an ``imagefolder``-style dataset with metadata files (see ``card.py`` for the YAML)::

    out/
      README.md                         dataset card; YAML ``configs:`` selects the files of each config and split
      <split>/pairs-00000.parquet       pairs rows; ``image_file_name`` / ``mask_file_name`` relative to <split>/
      <split>/images-00000.parquet      one row per image with its list of pairs
      <split>/images/<dicom_id>.png     one 8-bit PNG per image (original frame), shared by all its pairs
      <split>/masks/<digest>.png        one PNG (0/255) per unique mask
      ledger.parquet                    every study, image and dropped finding with its fate and reason
      build_info.json                   config, provenance, counts, code version

Bytes never depend on the shard or process count: rows are sorted by stable keys, files are cut at fixed row
counts, Parquet has fixed row-group sizes and no timestamps, PNGs are encoded with fixed settings.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PAIRS_PER_FILE = 200_000
IMAGES_PER_FILE = 40_000
ROW_GROUP_SIZE = 1_000

_TEXT = [
    ("instruction", pa.string()), ("answer", pa.string()), ("target", pa.string()), ("lesion", pa.string()),
    ("question_type", pa.string()), ("polarity", pa.string()), ("locations", pa.list_(pa.string())),
    ("certainty", pa.string()),
]
PAIRS_SCHEMA = pa.schema(
    [("id", pa.string()), ("image_file_name", pa.string()), ("mask_file_name", pa.string()), *_TEXT,
     ("study_id", pa.string()), ("dicom_id", pa.string()), ("split", pa.string())]
)
PAIR_STRUCT = pa.struct([("id", pa.string()), ("mask_file_name", pa.string()), *_TEXT])
IMAGES_SCHEMA = pa.schema(
    [("dicom_id", pa.string()), ("image_file_name", pa.string()), ("study_id", pa.string()),
     ("split", pa.string()), ("pairs", pa.list_(PAIR_STRUCT))]
)
LEDGER_SCHEMA = pa.schema(
    [("kind", pa.string()), ("study_id", pa.string()), ("dicom_id", pa.string()), ("split", pa.string()),
     ("fate", pa.string()), ("reason", pa.string())]
)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Parquet with fixed settings (zstd, fixed row groups, statistics, no pandas metadata, no timestamps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table, path, row_group_size=ROW_GROUP_SIZE, compression="zstd", compression_level=3, use_dictionary=True,
        write_statistics=True, version="2.6", data_page_version="1.0",
    )


def write_sharded(
    rows: Sequence[dict[str, Any]], schema: pa.Schema, folder: Path, stem: str, per_file: int
) -> list[str]:
    """Write ``rows`` as ``<stem>-00000.parquet``... (``per_file`` rows each); returns the file names."""
    names = []
    for number, start in enumerate(range(0, max(len(rows), 1), per_file)):
        name = f"{stem}-{number:05d}.parquet"
        write_parquet(pa.Table.from_pylist(list(rows[start:start + per_file]), schema=schema), folder / name)
        names.append(name)
    return names


def pair_sort_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["study_id"], row["dicom_id"], row["id"]


def image_rows(pair_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group sorted pair rows into one row per image (same order), pairs without the image-level columns."""
    out: list[dict[str, Any]] = []
    for row in pair_rows:
        if not out or out[-1]["dicom_id"] != row["dicom_id"]:
            out.append({"dicom_id": row["dicom_id"], "image_file_name": row["image_file_name"],
                        "study_id": row["study_id"], "split": row["split"], "pairs": []})
        out[-1]["pairs"].append({name: row[name] for name in PAIR_STRUCT.names})
    return out


def place_file(source: Path, destination: Path) -> None:
    """Hard-link (same bytes, no copy) when the file system allows it, else copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def write_split(folder: Path, pair_rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Write the two configs' metadata files of one split; returns ``{"pairs": [...], "images": [...]}`` names."""
    rows = sorted(pair_rows, key=pair_sort_key)
    return {
        "pairs": write_sharded(rows, PAIRS_SCHEMA, folder, "pairs", PAIRS_PER_FILE),
        "images": write_sharded(image_rows(rows), IMAGES_SCHEMA, folder, "images", IMAGES_PER_FILE),
    }
