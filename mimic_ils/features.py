"""The two configurations of a built MIMIC-ILS folder, as ``datasets.Features``.

``pairs``: one row per instruction-answer pair. ``images``: one row per frontal image with the list of its pairs,
so a trainer can run the image encoders once per image. ``load_dataset(folder, "pairs")`` and
``load_dataset(folder, "images")`` return exactly these features (column order included).

Images are 8-bit greyscale PNGs in the original DICOM frame; masks are 8-bit PNGs (0 or 255) in the same frame.
Negative pairs have ``mask = None`` (an empty mask of the image's size). ``certainty`` is None for negatives
and for pairs whose answer carries no certainty.
"""

from __future__ import annotations

import datasets

PAIR_TEXT_FIELDS = {
    "instruction": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "target": datasets.Value("string"),
    "lesion": datasets.Value("string"),
    "question_type": datasets.Value("string"),
    "polarity": datasets.Value("string"),
    "locations": datasets.Sequence(datasets.Value("string")),
    "certainty": datasets.Value("string"),
}


def pairs_features() -> datasets.Features:
    """Features of the ``pairs`` configuration."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "mask": datasets.Image(),
            **PAIR_TEXT_FIELDS,
            "study_id": datasets.Value("string"),
            "dicom_id": datasets.Value("string"),
            "split": datasets.Value("string"),
        }
    )


def images_features() -> datasets.Features:
    """Features of the ``images`` configuration: one row per image, its pairs as a list."""
    pair = {"id": datasets.Value("string"), "mask": datasets.Image(), **PAIR_TEXT_FIELDS}
    return datasets.Features(
        {
            "dicom_id": datasets.Value("string"),
            "image": datasets.Image(),
            "study_id": datasets.Value("string"),
            "split": datasets.Value("string"),
            "pairs": datasets.List(pair),
        }
    )
