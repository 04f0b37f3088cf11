"""Read a local PhysioNet MIMIC-CXR 2.x copy: metadata and split CSVs, reports, DICOM paths.

Expected layout under ``root`` (the CSVs gzipped, as PhysioNet ships them, or uncompressed)::

    mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ..., ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split (train / validate / test;
                                        the study's split is the dataset's name: validate → validation)
    files/pXX/pSUBJECT/sSTUDY.txt       the study's free-text report
    files/pXX/pSUBJECT/sSTUDY/DICOM_ID.dcm

Ids carry no p/s prefix in the returned records; paths are relative to ``root``. Reading the index costs one pass
over each CSV (no file-system calls), so it is fast even for the full 377K-image release.

A study whose split rows disagree (one dicom_id listed with two splits, or two images of the study in different
splits) gets the split ``"conflicting <splits>"``, not one of SPLITS, so the build excludes it; the conflict is a
problem of the index (and so of ``mimic-ils scan``), naming the study, the splits and the images.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mimic_ils.schema import SPLITS, CohortError, ImageRecord, ReportError, Study, canonical_split

METADATA_STEM = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_STEM = "mimic-cxr-2.0.0-split.csv"
METADATA_REQUIRED = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_REQUIRED = ("dicom_id", "study_id", "subject_id", "split")
# the split given to a study whose split rows disagree: not one of SPLITS, so the build excludes the study
CONFLICTING_SPLIT = "conflicting"


@dataclass(frozen=True)
class Cohort:
    """A validated MIMIC-CXR root and the paths of its two CSVs."""

    root: Path
    metadata_path: Path
    split_path: Path


@dataclass(frozen=True)
class IndexProblem:
    """A fault found while indexing (``path`` relative to the root, one-line ``reason``)."""

    path: str
    reason: str


@dataclass
class CohortIndex:
    """All studies of a cohort, sorted by study_id, plus the faults of the CSVs themselves."""

    cohort: Cohort
    studies: list[Study] = field(default_factory=list)
    problems: list[IndexProblem] = field(default_factory=list)


def _find_csv(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def open_cohort(root: str | Path) -> Cohort:
    """Check that ``root`` looks like a MIMIC-CXR copy; raise :class:`CohortError` with the reason if not."""
    path = Path(root)
    if not path.is_dir():
        raise CohortError(f"{path} is not a directory")
    metadata, split = _find_csv(path, METADATA_STEM), _find_csv(path, SPLIT_STEM)
    missing = [name for name, found in ((f"{METADATA_STEM}.gz", metadata), (f"{SPLIT_STEM}.gz", split)) if not found]
    if missing:
        raise CohortError(f"{path} is not a MIMIC-CXR copy: missing {' and '.join(missing)}")
    if not (path / "files").is_dir():
        raise CohortError(f"{path} is not a MIMIC-CXR copy: no files/ folder")
    return Cohort(root=path, metadata_path=metadata, split_path=split)


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """All rows of a (possibly gzipped) CSV as dicts; :class:`CohortError` for unreadable files or missing columns."""
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as error:
        raise CohortError(f"{path.name}: unreadable CSV ({type(error).__name__}: {error})") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    absent = [name for name in required if name not in columns]
    if absent:
        raise CohortError(f"{path.name}: missing column(s) {', '.join(absent)}")
    return list(reader)


def strip_prefix(value: str, prefix: str) -> str:
    """``"p10000032"`` -> ``"10000032"``; ``"s50414267"`` -> ``"50414267"``; plain ids unchanged."""
    value = (value or "").strip()
    if value[:1].lower() == prefix and value[1:].isdigit():
        return value[1:]
    if value.endswith(".0") and value[:-2].isdigit():  # ids that went through a float column
        return value[:-2]
    return value


def study_folder(subject_id: str, study_id: str) -> str:
    """``files/pXX/pSUBJECT/sSTUDY`` (relative to the root)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


def _int(value: str | None) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


def _splits(
    rows: list[dict[str, str]], name: str, problems: list[IndexProblem]
) -> tuple[dict[str, str], dict[str, set[str]], dict[str, set[str]]]:
    """Split of each image, the splits of each study, and the images listed with several different splits.

    Repeating an identical row is harmless; rows that give one image, or two images of one study, different splits
    leave the study without a valid split (:func:`load_index` excludes it and names the conflict).
    """
    split_of_image: dict[str, str] = {}
    splits_of_image: dict[str, set[str]] = {}
    split_of_study: dict[str, set[str]] = {}
    for row in rows:
        dicom_id, split = row["dicom_id"].strip(), canonical_split(row["split"].strip())
        split_of_image[dicom_id] = split
        splits_of_image.setdefault(dicom_id, set()).add(split)
        split_of_study.setdefault(strip_prefix(row["study_id"], "s"), set()).add(split)
    conflicts = {dicom_id: splits for dicom_id, splits in splits_of_image.items() if len(splits) > 1}
    for dicom_id in sorted(conflicts):
        problems.append(IndexProblem(f"{name}:{dicom_id}",
                                     f"image listed with conflicting splits {', '.join(sorted(conflicts[dicom_id]))}"))
    return split_of_image, split_of_study, conflicts


def load_index(root: str | Path) -> CohortIndex:
    """Read both CSVs once and group images into studies (sorted by study_id, images by dicom_id)."""
    cohort = open_cohort(root)
    index = CohortIndex(cohort=cohort)
    split_rows = _read_csv(cohort.split_path, SPLIT_REQUIRED)
    split_of_image, split_of_study, conflicts = _splits(split_rows, cohort.split_path.name, index.problems)
    grouped: dict[str, tuple[str, list[ImageRecord]]] = {}
    metadata_ids: set[str] = set()
    for number, row in enumerate(_read_csv(cohort.metadata_path, METADATA_REQUIRED), start=2):
        dicom_id = row["dicom_id"].strip()
        subject_id, study_id = strip_prefix(row["subject_id"], "p"), strip_prefix(row["study_id"], "s")
        if not (dicom_id and subject_id.isdigit() and study_id.isdigit()):
            index.problems.append(IndexProblem(f"{cohort.metadata_path.name}:{number}",
                                               "malformed metadata row (empty or non-numeric ids)"))
            continue
        if dicom_id in metadata_ids:
            index.problems.append(IndexProblem(f"{cohort.metadata_path.name}:{number}",
                                               f"duplicate metadata row for {dicom_id} (ignored)"))
            continue
        metadata_ids.add(dicom_id)
        folder = study_folder(subject_id, study_id)
        record = ImageRecord(dicom_id=dicom_id, subject_id=subject_id, study_id=study_id,
                             view=(row.get("ViewPosition") or "").strip().upper(), path=f"{folder}/{dicom_id}.dcm",
                             rows=_int(row.get("Rows")), columns=_int(row.get("Columns")))
        if dicom_id not in split_of_image:
            index.problems.append(IndexProblem(record.path, "metadata row without a split entry"))
        grouped.setdefault(study_id, (subject_id, []))[1].append(record)
    for dicom_id in sorted(set(split_of_image) - metadata_ids):
        index.problems.append(IndexProblem(f"{cohort.split_path.name}:{dicom_id}", "split row without metadata row"))
    for study_id in sorted(grouped):
        subject_id, images = grouped[study_id]
        split = next(iter(split_of_study.get(study_id, ())), "")
        conflicting = {image.dicom_id: conflicts[image.dicom_id] for image in images if image.dicom_id in conflicts}
        if len(split_of_study.get(study_id, ())) > 1 or conflicting:
            # not a valid split: the build excludes the study ("ingest: study has no valid split (conflicting ...)")
            splits = sorted(set().union(*conflicting.values(), split_of_study.get(study_id, set())) - {""})
            split = f"{CONFLICTING_SPLIT} {'/'.join(splits)}"
            named = f" ({', '.join(sorted(conflicting))} listed with several)" if conflicting else ""
            index.problems.append(IndexProblem(study_folder(subject_id, study_id),
                                               f"study excluded: conflicting split rows {', '.join(splits)}{named}"))
        elif split not in SPLITS:
            index.problems.append(IndexProblem(study_folder(subject_id, study_id),
                                               f"study has no valid split ({split or 'none'})"))
        index.studies.append(Study(subject_id=subject_id, study_id=study_id, split=split,
                                   report_path=f"{study_folder(subject_id, study_id)}.txt",
                                   images=tuple(sorted(images, key=lambda image: image.dicom_id))))
    return index


def iter_studies(root: str | Path) -> Iterator[Study]:
    """Every study of the cohort with its split and images, sorted by study_id (deterministic)."""
    yield from load_index(root).studies


def read_report(root: str | Path, study: Study) -> str:
    """The study's report text; :class:`ReportError` for a missing, empty or non-UTF-8 file."""
    path = Path(root) / study.report_path
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{study.report_path}: missing report") from None
    except OSError as error:
        raise ReportError(f"{study.report_path}: unreadable report ({type(error).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ReportError(f"{study.report_path}: report is not UTF-8 text (byte 0x{raw[error.start]:02x} at "
                          f"offset {error.start})") from None
    if not text.strip():
        raise ReportError(f"{study.report_path}: empty report")
    return text
