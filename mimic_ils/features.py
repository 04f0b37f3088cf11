"""The three configurations of a built MIMIC-ILS folder, as ``datasets.Features``, derived from the typed rows.

``pairs``: one row per instruction-answer pair (:class:`mimic_ils.rows.PairRow`). ``images``: one row per frontal
image with the list of its pairs (:class:`mimic_ils.rows.ImageRow`), so a trainer can run the image encoders once per
image. ``conversations``: 2 to 4 pairs of one image as the turns of a conversation, each with its ``[SEG]`` and mask
(:class:`mimic_ils.rows.ConversationRow`, :mod:`mimic_ils.conversations`). ``load_dataset(folder, "pairs")``,
``load_dataset(folder, "images")`` and ``load_dataset(folder, "conversations")`` return exactly these features (column
order included): the loader turns each ``<name>_file_name`` column into an ``Image`` feature named ``<name>``.

Images are 8-bit greyscale PNGs in the original DICOM frame; masks are 8-bit PNGs (0 or 255) in the same frame.
Negative pairs have ``mask = None`` (an empty mask of the image's size). ``certainty`` is None for negatives
and for pairs whose answer carries no certainty.
"""

from __future__ import annotations

from typing import Any

import datasets

from mimic_ils.rows import (
    FILE,
    PAIRS,
    STRING,
    STRINGS,
    Column,
    ConversationRow,
    ImageRow,
    PairRow,
    columns,
    image_pair_columns,
)

FILE_SUFFIX = "_file_name"


def feature_name(column: Column) -> str:
    """The feature a column becomes once loaded: ``image_file_name`` → ``image``; other names stay."""
    return column.name.removesuffix(FILE_SUFFIX) if column.kind == FILE else column.name


def pairs_features() -> datasets.Features:
    """Features of the ``pairs`` configuration."""
    return datasets.Features(_features(columns(PairRow)))


def images_features() -> datasets.Features:
    """Features of the ``images`` configuration: one row per image, its pairs as a list."""
    return datasets.Features(_features(columns(ImageRow)))


def conversations_features() -> datasets.Features:
    """Features of the ``conversations`` configuration: 2 to 4 pairs of one image as turns, each with its mask."""
    return datasets.Features(_features(columns(ConversationRow)))


def _features(row_columns: tuple[Column, ...]) -> dict[str, Any]:
    return {feature_name(column): _feature(column) for column in row_columns}


def _feature(column: Column) -> Any:
    if column.kind == STRING:
        return datasets.Value("string")
    if column.kind == STRINGS:
        return datasets.Sequence(datasets.Value("string"))
    if column.kind == FILE:
        return datasets.Image()
    if column.kind == PAIRS:
        return datasets.List(_features(image_pair_columns()))
    raise ValueError(f"column {column.name} has no feature for kind {column.kind!r}")
