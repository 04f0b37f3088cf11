"""Run the stages over the studies of one shard, caching every result in the work folder.

Per chunk of studies: report stage (cached per study) → vision cues (cached per image by the runner) →
grounding + QC + pairs per frontal image → one checked study artifact (the commit point, written after its image
and mask PNGs). A study whose artifact is valid, with every file it names intact, is skipped on a rerun; anything
else is recomputed. Every study ends with a fate (used, or excluded with the reason from whichever stage failed).

Cache keys are contents, not ids: a study's artifact records the digests of its inputs (``Stages.input_keys``: the
report file's bytes, each DICOM's bytes), and a report is reused only for the same report bytes, so an edited report
or DICOM is recomputed on the next run. ``force`` (``--force-stage report|vision|grounding``) recomputes that stage
(and what follows it) for every study of the run. A transient failure (``TransientError``: a service down) is never
cached as an outcome: the study is written with ``transient`` set, its ledger reason says "retried next run", and the
next run recomputes it; an OSError (a full disk, a lost mount) stops the build with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from mimic_ils.files import FileRecord, encode_png
from mimic_ils.orchestration.shard import Shard
from mimic_ils.orchestration.stages import Stages
from mimic_ils.orchestration.workdir import WorkDir, mask_digest, read_checked_json, write_checked_json
from mimic_ils.pairs import limit_study_negatives
from mimic_ils.schema import SPLITS, Finding, MimicIlsError, Section, StructuredReport, Study, TransientError

logger = logging.getLogger(__name__)

STUDY_ARTIFACT_VERSION = 3
FORCE_STAGES = ("report", "vision", "grounding")
RETRIED = "retried next run"


class TransientReason(str):
    """The one-line reason of a failure that is not the study's (a service down): never cached as its outcome."""


def transient_reason(stage: str, error: BaseException) -> TransientReason:
    return TransientReason(f"{stage}: {error} (transient failure, {RETRIED})")


def input_keys(stages: Stages, work: WorkDir, study: Study) -> dict[str, Any] | None:
    """The digests of the inputs ``study``'s result depends on (None when the stages give none)."""
    keys = getattr(stages, "input_keys", None)
    return None if keys is None else keys(study, work)


def select_studies(studies: Iterable[Study], shard: Shard, limit: int | None = None) -> list[Study]:
    """The studies of ``shard``, sorted by study id; ``limit`` keeps the first N of the whole cohort (before sharding),
    so ``--limit`` picks the same studies whatever the shard count."""
    ordered = sorted(studies, key=lambda study: study.study_id)
    if limit is not None:
        ordered = ordered[:limit]
    return [study for study in ordered if shard.owns(study.study_id)]


def run_shard(
    stages: Stages, work: WorkDir, studies: Sequence[Study], *, chunk_size: int = 16, progress: bool = True,
    force: Iterable[str] = (),
) -> dict[str, int]:
    """Process ``studies`` (skipping valid cached ones whose inputs did not change; ``force``: recompute those stages
    for all); returns counts ``{"cached", "computed", "retry"}`` (retry: a transient failure, retried next run)."""
    force = set(force)
    unknown = force - set(FORCE_STAGES)
    if unknown:
        raise MimicIlsError(f"--force-stage {', '.join(sorted(unknown))}: expected one of {', '.join(FORCE_STAGES)}")
    keys = {study.study_id: input_keys(stages, work, study) for study in studies}
    todo = [study for study in studies if force or not _cached_is_current(work, study, keys[study.study_id])]
    counts = {"cached": len(studies) - len(todo), "computed": 0, "retry": 0}
    bars = _Bars(progress, total_studies=len(todo), total_images=sum(len(s.frontal_images) for s in todo))
    try:
        for start in range(0, len(todo), chunk_size):
            for result in _run_chunk(stages, work, todo[start:start + chunk_size], bars, keys, force):
                write_checked_json(work.study_path(result["study_id"]), result)
                counts["retry" if result.get("transient") else "computed"] += 1
    finally:
        bars.close()
    return counts


def _cached_is_current(work: WorkDir, study: Study, keys: dict[str, Any] | None) -> bool:
    result = load_study_result(work, study.study_id)
    return result is not None and not result.get("transient") and result.get("inputs") == keys


def _run_chunk(stages: Stages, work: WorkDir, chunk: Sequence[Study], bars: _Bars, keys: dict[str, Any],
               force: set[str]) -> list[dict[str, Any]]:
    reports = {
        study.study_id: _split_problem(study) or cached_report(
            stages, work, study, key=(keys.get(study.study_id) or {}).get("report"), force="report" in force)
        for study in chunk
    }
    bars.update("report", len(chunk))
    usable = [study for study in chunk if not isinstance(reports[study.study_id], str)]
    frontal = [image for study in usable for image in study.frontal_images]
    if frontal and "vision" in force and hasattr(stages, "forget_cues"):
        stages.forget_cues(frontal, work.vision_dir)
    try:
        cues = stages.cues(frontal, work.vision_dir) if frontal else {}
    except TransientError as error:
        cues = {image.dicom_id: transient_reason("vision", error) for image in frontal}
    bars.update("vision", sum(len(study.frontal_images) for study in chunk))
    results = []
    for study in chunk:
        result = study_result(stages, work, study, reports[study.study_id], cues)
        result["inputs"] = keys.get(study.study_id)
        results.append(result)
        bars.update("grounding", len(study.frontal_images))
    return results


def _split_problem(study: Study) -> str | None:
    if study.split in SPLITS:
        return None
    return f"ingest: study has no valid split ({study.split or 'none'})"


def cached_report(stages: Stages, work: WorkDir, study: Study, *, key: str | None = None,
                  force: bool = False) -> StructuredReport | str:
    """The structured report of ``study`` (from the cache when made from the same report bytes ``key``, or
    computed), or ``"report: <reason>"``; a transient failure gives a TransientReason and caches nothing."""
    path = work.report_path(study.study_id)
    cached = None if force else read_checked_json(path)
    if cached is not None and cached.get("key") != key:
        cached = None  # the report file changed since (or the cache predates content keys): recompute
    if cached is None:
        try:
            cached = {"report": report_to_dict(stages.structure(study)), "key": key}
        except TransientError as error:
            return transient_reason("report", error)
        except MimicIlsError as error:
            cached = {"error": f"report: {error}", "key": key}
        except OSError:  # the machine's problem (full disk, lost mount), not the study's: stop with the reason
            raise
        except Exception as error:  # a bug in one study's stage must not stop the batch; the ledger names it
            logger.exception("report stage crashed on study %s", study.study_id)
            cached = {"error": f"report: internal error ({type(error).__name__}: {error})", "key": key}
        write_checked_json(path, cached)
    return cached["error"] if "error" in cached else report_from_dict(cached["report"])


def study_result(
    stages: Stages, work: WorkDir, study: Study, report: StructuredReport | str, cues: dict[str, Any]
) -> dict[str, Any]:
    """Ground every frontal image of a study and write its PNGs; the JSON-able study artifact."""
    images, pairs, findings, files = [], [], [], {}
    for image in sorted(study.images, key=lambda record: record.dicom_id):
        entry = {"dicom_id": image.dicom_id, "view": image.view, "fate": "excluded", "reason": None}
        if not image.is_frontal:
            entry["reason"] = f"qc: view {image.view or 'unknown'} is not frontal (PA/AP)"
        elif isinstance(report, str):
            entry["reason"] = f"study excluded ({report.split(':')[0]} failed)"
        else:
            image_pairs, image_findings, reason = _ground_one(stages, work, study, image, report, cues, files)
            pairs += image_pairs
            findings += image_findings
            entry.update(fate="used" if image_pairs else "excluded", reason=reason if not image_pairs else None)
        images.append(entry)
    pairs = _one_negative_per_lesion(pairs, images, files)
    fate, reason = _study_fate(report, images)
    transient = isinstance(report, TransientReason) or any(isinstance(e["reason"], TransientReason) for e in images)
    if transient and reason and RETRIED not in reason:
        reason = f"{reason} (not done: a transient failure on one of its images, {RETRIED})"
    result = {
        "version": STUDY_ARTIFACT_VERSION, "study_id": study.study_id, "subject_id": study.subject_id,
        "split": study.split, "fate": fate, "reason": reason, "images": images, "pairs": pairs,
        "findings": findings, "files": dict(sorted(files.items())),
    }
    if transient:
        result["transient"] = True
    return result


def _one_negative_per_lesion(pairs: list[dict], images: list[dict], files: dict[str, str]) -> list[dict]:
    """Appendix C holds per study, grounding works per image: keep one negative per lesion type in the study.

    An image left with no pair is excluded with that reason, and its image file is not written out.
    """
    kept = limit_study_negatives(pairs)
    used = {row["dicom_id"] for row in kept}
    for entry in images:
        if entry["fate"] == "used" and entry["dicom_id"] not in used:
            entry.update(fate="excluded", reason="pairs: its negatives are given by another image of the study")
            files.pop(f"images/{entry['dicom_id']}.png", None)
    return kept


def _ground_one(stages, work, study, image, report, cues, files) -> tuple[list[dict], list[dict], str | None]:
    image_cues = cues.get(image.dicom_id, "vision: no cues produced")
    if isinstance(image_cues, str):
        return [], [], image_cues
    try:
        image_cues = image_cues() if callable(image_cues) else image_cues
    except TransientError as error:
        return [], [], transient_reason("vision", error)
    except (MimicIlsError, ValueError, KeyError) as error:
        return [], [], f"vision: {error}"
    try:
        return _grounded_rows(stages, work, study, image, report, image_cues, files)
    except TransientError as error:
        return [], [], transient_reason("grounding", error)
    except MimicIlsError as error:
        return [], [], f"grounding: {error}"
    except OSError:  # the machine's problem (full disk, lost mount), not the image's: stop with the reason
        raise
    except Exception as error:  # a bug on one image must not stop the batch; the ledger names it
        logger.exception("grounding crashed on image %s of study %s", image.dicom_id, study.study_id)
        return [], [], f"grounding: internal error ({type(error).__name__}: {error})"


def _grounded_rows(stages, work, study, image, report, image_cues, files) -> tuple[list[dict], list[dict], str | None]:
    grounded = stages.ground(report, image_cues, study, image)
    if grounded.excluded:
        return [], [], f"qc: {grounded.excluded}"
    findings = [{"dicom_id": image.dicom_id, "what": what, "reason": why} for what, why in grounded.exclusions]
    if not grounded.pairs:
        return [], findings, "pairs: no instruction-answer pair for this image"
    image_file = f"images/{image.dicom_id}.png"
    files[image_file] = work.write_file_checked(work.root / image_file, _image_png(stages, work, image_cues)).to_json()
    rows = [_pair_row(k, pair, grounded.masks, work, files, image_file) for k, pair in enumerate(grounded.pairs)]
    return rows, findings, None


def _image_png(stages: Stages, work: WorkDir, cues) -> bytes:
    """The image's PNG: the vision stage's own ``image.png`` when it has one (same pixels, no second encoding)."""
    find = getattr(stages, "image_png_path", None)
    path = find(cues.dicom_id, work.vision_dir) if find else None
    return path.read_bytes() if path is not None and path.is_file() else encode_png(cues.image)


def _pair_row(index, pair, masks, work: WorkDir, files: dict[str, str], image_file: str) -> dict[str, Any]:
    mask_file = None
    if pair.mask_key is not None:
        if pair.mask_key not in masks:
            raise MimicIlsError(f"pair {pair.instruction!r} names mask {pair.mask_key!r} that grounding did not give")
        digest = mask_digest(masks[pair.mask_key])
        mask_file = f"masks/{digest}.png"
        if mask_file not in files:
            record = work.write_file_checked(work.mask_path(digest), encode_png(masks[pair.mask_key]))
            files[mask_file] = record.to_json()
    return {
        "id": f"{pair.dicom_id}-{index:03d}", "image_file_name": image_file, "mask_file_name": mask_file,
        "instruction": pair.instruction, "answer": pair.answer, "target": pair.target, "lesion": pair.lesion,
        "question_type": pair.question_type, "polarity": pair.polarity, "locations": list(pair.locations),
        "certainty": pair.certainty, "study_id": pair.study_id, "dicom_id": pair.dicom_id,
    }


def _study_fate(report: StructuredReport | str, images: list[dict]) -> tuple[str, str | None]:
    if isinstance(report, str):
        return "excluded", report
    if any(entry["fate"] == "used" for entry in images):
        return "used", None
    reasons = [entry["reason"] for entry in images if entry["reason"]]
    frontal_reasons = [reason for reason in reasons if not reason.startswith("qc: view")]
    if not images:
        return "excluded", "ingest: study has no image"
    return "excluded", f"no usable frontal image ({(frontal_reasons or reasons)[0]})"


def load_study_result(work: WorkDir, study_id: str, *, full_check: bool = False) -> dict[str, Any] | None:
    """The cached study artifact if valid and every PNG it names is intact, else None (recompute it).

    Resuming checks the PNGs' sizes (a restart at full scale must not re-hash a terabyte); ``full_check`` (the
    merge) also checks their sha256 and, on a mismatch, deletes the study artifact so that a rerun recomputes it.
    """
    path = work.study_path(study_id)
    result = read_checked_json(path)
    if result is None or result.get("version") != STUDY_ARTIFACT_VERSION:
        return None
    for relative, record in result["files"].items():
        record = FileRecord.from_json(record)
        if record is None or not record.matches(work.root / relative, full=full_check):
            logger.warning("study %s: %s is missing or corrupted; the study will be recomputed", study_id, relative)
            path.unlink(missing_ok=True)
            return None
    return result


def report_to_dict(report: StructuredReport) -> dict[str, Any]:
    return asdict(report)


def report_from_dict(data: dict[str, Any]) -> StructuredReport:
    findings = tuple(
        Finding(**{**finding, "locations": tuple(finding.get("locations", ()))}) for finding in data["findings"]
    )
    return StructuredReport(section=Section(**data["section"]), findings=findings)


class _Bars:
    """One tqdm bar per stage (report: studies; vision and grounding: images) with rates and ETA."""

    def __init__(self, enabled: bool, *, total_studies: int, total_images: int) -> None:
        self.bars = {}
        if not enabled:
            return
        from tqdm.auto import tqdm

        for position, (name, total, unit) in enumerate(
            (("report", total_studies, "study"), ("vision", total_images, "img"), ("grounding", total_images, "img"))
        ):
            self.bars[name] = tqdm(total=total, desc=f"{name:>9}", unit=unit, position=position, leave=True,
                                   dynamic_ncols=True)

    def update(self, name: str, count: int) -> None:
        if name in self.bars:
            self.bars[name].update(count)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

