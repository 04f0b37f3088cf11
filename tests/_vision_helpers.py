"""Fixtures of the vision tests: a tiny synthetic cohort (``mimic_ils.synth``) and its frontal image records."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from mimic_ils.schema import ImageRecord
from mimic_ils.synth import METADATA_NAME, generate_cohort


def frontal_records(root: Path) -> list[ImageRecord]:
    """Frontal image records of a cohort, sorted by dicom id, straight from its metadata CSV."""
    with gzip.open(root / METADATA_NAME, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    records = [
        ImageRecord(
            row["dicom_id"],
            row["subject_id"],
            row["study_id"],
            row["ViewPosition"],
            f"files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}/{row['dicom_id']}.dcm",
            int(row["Rows"]),
            int(row["Columns"]),
        )
        for row in rows
    ]
    return sorted((record for record in records if record.is_frontal), key=lambda record: record.dicom_id)


def cohort_with_truth(root: Path, n_studies: int = 4, seed: int = 7) -> list[ImageRecord]:
    """Generate a synthetic cohort with its phantom sidecar under ``root``; return its frontal image records."""
    generate_cohort(root, n_studies, seed)
    return frontal_records(root)
