"""Fixtures of the vision tests: the shared tiny synthetic cohort (``tests/_cohort.py``) and its frontal images."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from mimic_ils.schema import ImageRecord
from mimic_ils.synth import METADATA_NAME


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


def cohort_with_truth(tmp_path_factory, n_studies: int = 6, seed: int = 0) -> tuple[Path, list[ImageRecord]]:
    """The session's shared synthetic cohort (read-only) and its frontal image records."""
    from _cohort import make_cohort

    root = make_cohort(tmp_path_factory, n_studies=n_studies, seed=seed)
    return root, frontal_records(root)
