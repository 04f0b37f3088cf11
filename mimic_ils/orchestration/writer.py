"""Deterministic output: Parquet metadata files per split and config, image and mask PNGs placed per split.

The output folder is an ``imagefolder``-style dataset with metadata files (see ``card.py`` for the YAML)::

    out/
      README.md                               dataset card; YAML ``configs:`` picks each config's files per split
      <split>/metadata.parquet                ``pairs`` rows; file names relative to <split>/
      <split>/images/metadata.parquet         ``images`` rows (one per image, its pairs as a list); relative to images/
      <split>/images/conversations.parquet    ``conversations`` rows (2-4 pairs of one image as turns); relative to
                                              images/ (the card's config names it with ``metadata_filenames``)
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
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mimic_ils.files import current_umask
from mimic_ils.rows import (
    FILE,
    PAIRS,
    STRING,
    STRINGS,
    Column,
    ConversationRow,
    ImageRow,
    LedgerRow,
    PairRow,
    SplitCounter,
    columns,
    image_pair_columns,
)
from mimic_ils.schema import SPLITS, MimicIlsError, canonical_split, split_names

ROW_GROUP_SIZE = 1_000
# The layout of a built folder (the card describes it from these names)
METADATA = "metadata.parquet"  # a config's metadata file: <split>/ (pairs), <split>/images/ (images)
CONVERSATIONS = "conversations.parquet"  # the conversations config's metadata file, in <split>/images/
IMAGES = "images"  # under <split>/: the images and the images config's metadata
MASKS = f"{IMAGES}/masks"  # under <split>/: one PNG per unique mask
CARD = "README.md"
LEDGER = "ledger.parquet"
BUILD_INFO = "build_info.json"
_ARROW_TYPES = {STRING: pa.string(), STRINGS: pa.list_(pa.string()), FILE: pa.string()}


def arrow_schema(row_class: type) -> pa.Schema:
    """The Arrow schema of a typed row class's Parquet file (:func:`mimic_ils.rows.columns`)."""
    return pa.schema([(column.name, _arrow_type(column)) for column in columns(row_class)])


def _arrow_type(column: Column) -> pa.DataType:
    return pa.list_(PAIR_STRUCT) if column.kind == PAIRS else _ARROW_TYPES[column.kind]


PAIR_STRUCT = pa.struct([(column.name, _ARROW_TYPES[column.kind]) for column in image_pair_columns()])
PAIRS_SCHEMA = arrow_schema(PairRow)
IMAGES_SCHEMA = arrow_schema(ImageRow)
CONVERSATIONS_SCHEMA = arrow_schema(ConversationRow)
LEDGER_SCHEMA = arrow_schema(LedgerRow)


def write_parquet(rows: Sequence[PairRow | ImageRow | ConversationRow | LedgerRow], schema: pa.Schema,
                  path: Path) -> None:
    """Parquet of typed rows with fixed settings (:class:`ParquetStream`)."""
    with ParquetStream(path, schema) as stream:
        for row in rows:
            stream.add(row)


class ParquetStream:
    """A Parquet file written as typed rows arrive, with fixed settings: zstd, row groups of ROW_GROUP_SIZE rows
    written one by one (at most one group held), statistics, no pandas metadata, no timestamps. A file given no row
    holds the schema's empty table."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.rows = 0
        self._buffer: list[dict] = []
        self._writer = pq.ParquetWriter(
            path, schema, compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True,
            version="2.6", data_page_version="1.0",
        )

    def add(self, row: PairRow | ImageRow | ConversationRow | LedgerRow) -> None:
        self._buffer.append(row.to_json())
        self.rows += 1
        if len(self._buffer) == ROW_GROUP_SIZE:
            self._flush()

    def _flush(self) -> None:
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._buffer = []

    def close(self) -> None:
        if self._writer is None:
            return
        if self._buffer:
            self._flush()
        if not self.rows:
            self._writer.write_table(self.schema.empty_table())
        self._writer.close()
        self._writer = None

    def __enter__(self) -> ParquetStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def split_relative(name: str) -> str:
    """Where a work-folder file (``images/<id>.png``, ``masks/<digest>.png``) lives under the split folder."""
    return f"{IMAGES}/{name}" if name.startswith("masks/") else name


def pair_sort_key(row: PairRow) -> tuple[str, str, str]:
    return row.study_id, row.dicom_id, row.id


def image_rows(pair_rows: Sequence[PairRow]) -> list[ImageRow]:
    """Group sorted pairs-config rows into one row per image (same order), file names relative to ``images/``."""
    groups: list[list[PairRow]] = []
    for row in pair_rows:
        if not groups or groups[-1][0].dicom_id != row.dicom_id:
            groups.append([])
        groups[-1].append(replace(row, image_file_name=_under_images(row.image_file_name),
                                  mask_file_name=row.mask_file_name and _under_images(row.mask_file_name)))
    return [ImageRow(pairs[0].dicom_id, pairs[0].image_file_name, pairs[0].study_id, pairs[0].split, tuple(pairs))
            for pairs in groups]


def _under_images(name: str) -> str:
    return name[len(IMAGES) + 1:]


def place_file(source: Path, destination: Path) -> None:
    """Hard-link (same bytes, no copy) when the file system allows it and the source has the mode a new file gets
    (0666 less the umask; a link shares its mode, and the output must be as readable as the umask says), else copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        return
    if stat.S_IMODE(source.stat().st_mode) == 0o666 & ~current_umask():
        try:
            os.link(source, destination)
            return
        except OSError:
            pass
    shutil.copyfile(source, destination)


def write_split(folder: Path, pair_rows: Sequence[PairRow]) -> list[str]:
    """Write the three configs' metadata of one split (rows carry work-folder file names); returns the image
    suffixes."""
    stream = SplitStream(folder)
    for row in sorted(pair_rows, key=pair_sort_key):
        stream.add(row)
    return stream.close()


class SplitStream:
    """The three configs' metadata of one split (pairs, images, conversations) written as its rows arrive in
    :func:`pair_sort_key` order (work-folder
    file names; a row out of order is refused): the same bytes as :func:`write_split` of all the rows, holding at
    most a row group of each config and the image being grouped. ``counts`` accumulates the split's counts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counts = SplitCounter()
        self.suffixes: set[str] = set()
        self._pairs = ParquetStream(folder / METADATA, PAIRS_SCHEMA)
        self._images = ParquetStream(folder / IMAGES / METADATA, IMAGES_SCHEMA)
        self._conversations = ParquetStream(folder / IMAGES / CONVERSATIONS, CONVERSATIONS_SCHEMA)
        self.conversations = 0
        self.question_types: dict[str, int] = {}
        self._image: list[PairRow] = []
        self._last: tuple[str, str, str] | None = None

    def add(self, row: PairRow) -> None:
        key = pair_sort_key(row)
        if self._last is not None and key < self._last:
            raise MimicIlsError(f"pair {row.id} of study {row.study_id} comes after {self._last}: the rows of a "
                                "split must arrive sorted by (study_id, dicom_id, id)")
        self._last = key
        self.counts.add(row)
        self.question_types[row.question_type] = self.question_types.get(row.question_type, 0) + 1
        row = replace(row, image_file_name=split_relative(row.image_file_name),
                      mask_file_name=row.mask_file_name and split_relative(row.mask_file_name))
        self.suffixes.add(Path(row.image_file_name).suffix)
        self._pairs.add(row)
        if self._image and self._image[0].dicom_id != row.dicom_id:
            self._end_image()
        self._image.append(row)

    def _end_image(self) -> None:
        from mimic_ils.conversations import image_conversations

        for image in image_rows(self._image):
            self._images.add(image)
            for conversation in image_conversations(image.pairs):
                self._conversations.add(conversation)
                self.conversations += 1
        self._image = []

    def close(self) -> list[str]:
        """Write the last row groups; returns the sorted image suffixes."""
        if self._image:
            self._end_image()
        self._pairs.close()
        self._images.close()
        self._conversations.close()
        return sorted(self.suffixes)


def split_folders(out: str | Path, relative: str = METADATA) -> dict[str, Path]:
    """``{split: its folder}`` of a built folder, by the dataset's split names in SPLITS order, for the splits that
    hold ``relative``; a folder built before the rename (``validate/``) is found under ``validation``."""
    out = Path(out)
    found = {}
    for split in SPLITS:
        folder = next((out / name for name in split_names(split) if (out / name / relative).is_file()), None)
        if folder is not None:
            found[split] = folder
    return found


def read_split_pairs(out: str | Path, split: str | None = None) -> list[tuple[Path, list[PairRow]]]:
    """``(folder, rows)`` per split of a built folder's ``pairs`` config (``split``: that one only; ``validate`` names
    ``validation``), file names relative to ``folder``; no image decoding."""
    folders = split_folders(out)
    chosen = [folders[canonical_split(split)]] if split and canonical_split(split) in folders else []
    return [(folder, [PairRow.from_json(row) for row in pq.read_table(folder / METADATA).to_pylist()])
            for folder in (chosen if split else folders.values())]
