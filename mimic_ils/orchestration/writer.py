"""Deterministic output: Parquet metadata files per split and config, image and mask PNGs placed per split.

The output folder is an ``imagefolder``-style dataset with metadata files (see ``card.py`` for the YAML)::

    out/
      README.md                               dataset card; YAML ``configs:`` picks each config's files per split
      <split>/metadata.parquet                ``pairs`` rows; file names relative to <split>/
      <split>/images/metadata.parquet         ``images`` rows (one per image, its pairs as a list); relative to images/
      <split>/images/<dicom_id>.png           one 8-bit PNG per image (original frame), shared by all its pairs
      <split>/images/masks/<digest>.png       one PNG (0/255) per unique mask
      ledger.parquet                          every study, image and dropped finding with its fate and reason
      build_info.json                         config, provenance, counts, code version

``imagefolder`` resolves ``*_file_name`` relative to the metadata file and refuses ``..``, and recognises metadata
files by the name ``metadata.parquet`` (which also makes ``datasets`` pick ``imagefolder`` over ``parquet`` however
few images a split has); hence one metadata file per config and split, the ``images`` one beside the images.

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

ROW_GROUP_SIZE = 1_000
METADATA = "metadata.parquet"

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


def write_parquet(rows: Sequence[dict[str, Any]], schema: pa.Schema, path: Path) -> None:
    """Parquet with fixed settings: zstd, row groups of ROW_GROUP_SIZE rows written one by one (bounded memory),
    statistics, no pandas metadata, no timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(
        path, schema, compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True,
        version="2.6", data_page_version="1.0",
    ) as writer:
        for start in range(0, len(rows), ROW_GROUP_SIZE):
            writer.write_table(pa.Table.from_pylist(list(rows[start:start + ROW_GROUP_SIZE]), schema=schema))
        if not rows:
            writer.write_table(schema.empty_table())


def split_relative(name: str) -> str:
    """Where a work-folder file (``images/<id>.png``, ``masks/<digest>.png``) lives under the split folder."""
    return f"images/{name}" if name.startswith("masks/") else name


def pair_sort_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["study_id"], row["dicom_id"], row["id"]


def image_rows(pair_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group sorted pairs-config rows into one row per image (same order), file names relative to ``images/``."""
    out: list[dict[str, Any]] = []
    for row in pair_rows:
        if not out or out[-1]["dicom_id"] != row["dicom_id"]:
            out.append({"dicom_id": row["dicom_id"], "image_file_name": _under_images(row["image_file_name"]),
                        "study_id": row["study_id"], "split": row["split"], "pairs": []})
        pair = {name: row[name] for name in PAIR_STRUCT.names}
        pair["mask_file_name"] = pair["mask_file_name"] and _under_images(pair["mask_file_name"])
        out[-1]["pairs"].append(pair)
    return out


def _under_images(name: str) -> str:
    return name[len("images/"):]


def place_file(source: Path, destination: Path) -> None:
    """Hard-link (same bytes, no copy) when the file system allows it, else copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def write_split(folder: Path, pair_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Write both configs' metadata of one split (rows carry work-folder file names); returns the image suffixes."""
    rows = sorted(
        ({**row, "image_file_name": split_relative(row["image_file_name"]),
          "mask_file_name": row["mask_file_name"] and split_relative(row["mask_file_name"])} for row in pair_rows),
        key=pair_sort_key,
    )
    write_parquet(rows, PAIRS_SCHEMA, folder / METADATA)
    write_parquet(image_rows(rows), IMAGES_SCHEMA, folder / "images" / METADATA)
    return sorted({Path(row["image_file_name"]).suffix for row in rows})


def read_metadata(out: str | Path, config: str = "pairs", split: str | None = None) -> list[tuple[Path, list[dict]]]:
    """``(folder, rows)`` per split of a built folder, file names relative to ``folder``; no image decoding."""
    out = Path(out)
    pattern = f"{split or '*'}/{METADATA}" if config == "pairs" else f"{split or '*'}/images/{METADATA}"
    return [(path.parent, pq.read_table(path).to_pylist()) for path in sorted(out.glob(pattern))]
