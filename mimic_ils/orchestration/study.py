"""One study's result: decided from its report and its images' grounding outcomes (pure), then persisted.

:func:`decide_study` turns a study, its structured report (or the report stage's :class:`Failure`) and each frontal
image's :class:`ImageOutcome` (or Failure) into a :class:`StudyResult`: every image's fate, the pair rows (Appendix C's
one negative per lesion type in the study applied), the study's fate and reason. It writes nothing.

:func:`persist` writes what the result names (the used images' PNGs, the kept pairs' mask PNGs) and then the study
artifact, the commit point of the study in the work folder; :func:`load_study_result` reads it back when it and every
file it names are intact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from mimic_ils.files import FileRecord, encode_png, link_file_once
from mimic_ils.orchestration.workdir import WorkDir, mask_digest, read_checked_json, write_checked_json
from mimic_ils.pairs import limit_study_negatives
from mimic_ils.rows import RETRIED, DroppedFinding, Failure, ImageFate, PairRow, StudyResult
from mimic_ils.schema import MimicIlsError, Pair, StructuredReport, Study

logger = logging.getLogger(__name__)

NO_CUES = Failure("vision", "no cues produced")
NO_PAIR = Failure("pairs", "no instruction-answer pair for this image")
NEGATIVES_ELSEWHERE = Failure("pairs", "its negatives are given by another image of the study")


@dataclass(frozen=True)
class ImageOutcome:
    """What grounding and pair generation gave for one frontal image: its pairs, their masks by ``mask_key``
    (HxW bool), the findings grounding dropped, and the image's PNG bytes (needed only when it has pairs)."""

    dicom_id: str
    pairs: tuple[Pair, ...] = ()
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    dropped: tuple[DroppedFinding, ...] = ()
    image_png: bytes | Path | None = None  # the PNG's bytes, or the vision artifact's file (hard-linked)

    def __post_init__(self) -> None:
        for pair in self.pairs:
            if pair.mask_key is not None and pair.mask_key not in self.masks:
                raise MimicIlsError(
                    f"pair {pair.instruction!r} names mask {pair.mask_key!r} that grounding did not give")
        if self.pairs and self.image_png is None:
            raise MimicIlsError(f"image {self.dicom_id} has pairs but no PNG")

    @property
    def image_file(self) -> str:
        return f"images/{self.dicom_id}.png"

    @cached_property
    def mask_files(self) -> dict[str, str]:
        """``mask_key`` → work-folder file name (``masks/<digest of the pixels>.png``) of every mask a pair names."""
        keys = sorted({pair.mask_key for pair in self.pairs if pair.mask_key is not None})
        return {key: f"masks/{mask_digest(self.masks[key])}.png" for key in keys}

    def rows(self, split: str) -> list[PairRow]:
        """The pair rows of this image, ids ``<dicom_id>-<index>`` in the order grounding gave the pairs."""
        return [_pair_row(index, pair, self.image_file, self.mask_files.get(pair.mask_key), split)
                for index, pair in enumerate(self.pairs)]


def _pair_row(index: int, pair: Pair, image_file: str, mask_file: str | None, split: str) -> PairRow:
    return PairRow(
        id=f"{pair.dicom_id}-{index:03d}", image_file_name=image_file, mask_file_name=mask_file,
        instruction=pair.instruction, answer=pair.answer, target=pair.target, lesion=pair.lesion,
        question_type=pair.question_type, polarity=pair.polarity, locations=tuple(pair.locations),
        certainty=pair.certainty, study_id=pair.study_id, dicom_id=pair.dicom_id, split=split,
    )


def decide_study(study: Study, report: StructuredReport | Failure,
                 outcomes: Mapping[str, ImageOutcome | Failure], *, inputs: Mapping | None = None) -> StudyResult:
    """The result of ``study`` from its report (or the Failure of the report stage) and each frontal image's outcome
    by dicom id (a frontal image without one has no cues); pure: it writes nothing."""
    images, rows, dropped = [], [], []
    for image in sorted(study.images, key=lambda record: record.dicom_id):
        outcome = outcomes.get(image.dicom_id, NO_CUES)
        if not image.is_frontal:
            fate = ImageFate.excluded(image.dicom_id, image.view,
                                      Failure("qc", f"view {image.view or 'unknown'} is not frontal (PA/AP)"))
        elif isinstance(report, Failure):
            fate = ImageFate(image.dicom_id, image.view, "excluded", f"study excluded ({report.stage} failed)")
        elif isinstance(outcome, Failure):
            fate = ImageFate.excluded(image.dicom_id, image.view, outcome)
        else:
            rows += outcome.rows(study.split)
            dropped += outcome.dropped
            fate = (ImageFate(image.dicom_id, image.view, "used") if outcome.pairs
                    else ImageFate.excluded(image.dicom_id, image.view, NO_PAIR))
        images.append(fate)
    rows, images = _one_negative_per_lesion(rows, images)
    fate, reason = _study_fate(report, images)
    transient = (isinstance(report, Failure) and report.transient) or any(image.transient for image in images)
    if transient and reason and RETRIED not in reason:
        reason = f"{reason} (not done: a transient failure on one of its images, {RETRIED})"
    return StudyResult(study.study_id, study.subject_id, study.split, fate, reason, tuple(images), tuple(rows),
                       tuple(dropped), inputs=inputs, transient=transient)


def _one_negative_per_lesion(rows: list[PairRow], images: list[ImageFate]) -> tuple[list[PairRow], list[ImageFate]]:
    """Appendix C holds per study, grounding works per image: keep one negative per lesion type in the study.

    An image left with no pair is excluded with that reason (and its image file is not written out).
    """
    kept = limit_study_negatives(rows)
    used = {row.dicom_id for row in kept}
    images = [ImageFate.excluded(image.dicom_id, image.view, NEGATIVES_ELSEWHERE)
              if image.fate == "used" and image.dicom_id not in used else image for image in images]
    return kept, images


def _study_fate(report: StructuredReport | Failure, images: list[ImageFate]) -> tuple[str, str | None]:
    if isinstance(report, Failure):
        return "excluded", report.line
    if any(image.fate == "used" for image in images):
        return "used", None
    reasons = [image.reason for image in images if image.reason]
    frontal_reasons = [reason for reason in reasons if not reason.startswith("qc: view")]
    if not images:
        return "excluded", "ingest: study has no image"
    return "excluded", f"no usable frontal image ({(frontal_reasons or reasons)[0]})"


def persist(work: WorkDir, result: StudyResult,
            outcomes: Mapping[str, ImageOutcome | Failure]) -> dict[str, FileRecord]:
    """Write the PNGs ``result`` names (its used images, its pairs' masks; from ``outcomes``), then the study
    artifact with their records (the commit point); returns the records by work-folder file name."""
    sources = {}
    for outcome in outcomes.values():
        if isinstance(outcome, ImageOutcome):
            sources[outcome.image_file] = outcome.image_png
            sources.update({name: outcome.masks[key] for key, name in outcome.mask_files.items()})
    records = {}
    for name in sorted({name for row in result.pairs for name in row.file_names}):
        data = sources[name]  # an image's PNG (bytes or the vision artifact's file), or a mask's pixels
        if isinstance(data, Path):
            records[name] = link_file_once(data, work.root / name)
        else:
            records[name] = work.write_file_checked(work.root / name, data if isinstance(data, bytes)
                                                    else encode_png(data))
    write_checked_json(work.study_path(result.study_id), replace(result, files=records).to_json())
    return records


def load_study_result(work: WorkDir, study_id: str, *, full_check: bool = False,
                      changed_check: bool = False) -> StudyResult | None:
    """The cached study artifact if valid and every PNG it names is intact, else None (recompute it).

    Resuming checks the PNGs' sizes against their records (a restart at full scale must not re-hash a terabyte);
    ``changed_check`` (the merge) also hashes the PNGs modified after the artifact was written (a file written by
    the build is older than the artifact that records it, so only one altered since is hashed); ``full_check`` hashes
    every PNG. On a mismatch the study artifact is deleted, so that a rerun recomputes the study.
    """
    path = work.study_path(study_id)
    result = read_study_result(work, study_id)
    if result is None:
        return None
    try:
        written_ns = path.stat().st_mtime_ns if changed_check else None
    except FileNotFoundError:
        return None
    for relative, record in result.files.items():
        if not _intact(work.root / relative, record, full=full_check, written_ns=written_ns):
            logger.warning("study %s: %s is missing or corrupted; the study will be recomputed", study_id, relative)
            path.unlink(missing_ok=True)
            return None
    return result


def read_study_result(work: WorkDir, study_id: str) -> StudyResult | None:
    """The study artifact as it is (checked payload, this version), its PNGs unchecked; None when absent or invalid."""
    return StudyResult.from_json(read_checked_json(work.study_path(study_id)))


def _intact(path: Path, record: FileRecord, *, full: bool, written_ns: int | None) -> bool:
    """Whether ``path`` is the file ``record`` describes: size (and sha256 when ``full``); with ``written_ns``, also
    the sha256 of a file modified after that time."""
    if not record.matches(path, full=full):
        return False
    if full or written_ns is None:
        return True
    try:
        changed = path.stat().st_mtime_ns > written_ns
    except OSError:
        return False
    return not changed or record.matches(path, full=True)
