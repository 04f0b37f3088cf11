"""Scan a MIMIC-CXR root: counts of studies, images, frontal images and splits, and every problem found.

Problems (``path`` relative to the root, one-line ``reason``): missing report, report not UTF-8 or empty, missing
DICOM (metadata row without file), unreadable DICOM (corrupt, truncated, no pixel data, unknown photometric
interpretation), study without frontal image, DICOM or report on disk without metadata row, and the CSV faults of
:func:`mimic_ils.ingest.load_index`. A problem never stops the scan of the other studies.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mimic_ils.dicom import check_dicom
from mimic_ils.ingest import load_index, read_report
from mimic_ils.progress import progress
from mimic_ils.schema import SPLITS, DicomReadError, ReportError, Study


@dataclass(frozen=True)
class Problem:
    """One fault: ``path`` relative to the root, ``reason`` a single line."""

    path: str
    reason: str


@dataclass
class ScanSummary:
    """Counts over the metadata (``images`` = metadata rows) plus the readable subset and the problems."""

    root: str
    studies: int = 0
    images: int = 0
    frontal_images: int = 0
    readable_images: int = 0
    readable_frontal_images: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict:
        """The ``--json`` object: studies, images, frontal_images, splits (split -> studies), problems, ..."""
        data = asdict(self)
        data["problems"] = [asdict(problem) for problem in self.problems]
        return data

    def format(self) -> str:
        """Human-readable summary, one fact per line, problems last."""
        splits = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        lines = [
            f"MIMIC-CXR root: {self.root}",
            f"studies: {self.studies} ({splits})",
            f"images: {self.images} (frontal {self.frontal_images}); readable: {self.readable_images} "
            f"(frontal {self.readable_frontal_images})",
            f"problems: {len(self.problems)}",
        ]
        lines += [f"  {problem.path}: {problem.reason}" for problem in self.problems]
        return "\n".join(lines)


def _reason(error: Exception, path: str) -> str:
    """The error's message without its leading ``path:`` (the path is reported separately)."""
    message = str(error)
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message


def _scan_study(root: Path, study: Study, summary: ScanSummary) -> None:
    try:
        read_report(root, study)
    except ReportError as error:
        summary.problems.append(Problem(study.report_path, _reason(error, study.report_path)))
    readable_frontal = 0
    for image in study.images:
        path = root / image.path
        if not path.is_file():
            summary.problems.append(Problem(image.path, "missing DICOM: metadata row without file"))
            continue
        try:
            check_dicom(path)
        except DicomReadError as error:
            summary.problems.append(Problem(image.path, f"unreadable DICOM: {_reason(error, str(path))}"))
            continue
        summary.readable_images += 1
        readable_frontal += image.is_frontal
    summary.readable_frontal_images += readable_frontal
    folder = study.report_path[: -len(".txt")]
    if not study.frontal_images:
        summary.problems.append(Problem(folder, "study without frontal image (no PA or AP view in metadata)"))
    elif not readable_frontal:
        summary.problems.append(Problem(folder, "study without readable frontal image"))


def _orphans(root: Path, known_images: set[str], known_reports: set[str]) -> list[Problem]:
    """Files under files/ that no metadata row names (one directory walk, no per-file stat)."""
    problems = []
    for directory, _, names in os.walk(root / "files"):
        relative = Path(directory).relative_to(root).as_posix()
        for name in sorted(names):
            path = f"{relative}/{name}"
            if name.endswith(".dcm") and path not in known_images:
                problems.append(Problem(path, "DICOM file without metadata row"))
            elif name.endswith(".txt") and name.startswith("s") and path not in known_reports:
                problems.append(Problem(path, "report without metadata row"))
    return sorted(problems, key=lambda problem: problem.path)


def scan_cohort(root: str | Path, *, show_progress: bool = False) -> ScanSummary:
    """Scan a MIMIC-CXR root (raises :class:`~mimic_ils.schema.CohortError` when it is not one); ``show_progress``:
    progress of the studies scanned (:mod:`mimic_ils.progress`)."""
    index = load_index(root)
    base = index.cohort.root
    summary = ScanSummary(root=str(root), splits={split: 0 for split in SPLITS})
    summary.problems += [Problem(problem.path, problem.reason) for problem in index.problems]
    with progress("scan", len(index.studies), "studies", enabled=show_progress) as bar:
        for study in index.studies:
            summary.studies += 1
            summary.images += len(study.images)
            summary.frontal_images += len(study.frontal_images)
            if study.split in summary.splits:
                summary.splits[study.split] += 1
            _scan_study(base, study, summary)
            bar.update()
    known_images = {image.path for study in index.studies for image in study.images}
    known_reports = {study.report_path for study in index.studies}
    summary.problems += _orphans(base, known_images, known_reports)
    return summary
