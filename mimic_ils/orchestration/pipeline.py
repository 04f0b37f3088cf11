"""Run the stages over the studies of one shard, caching every result in the work folder.

Per chunk of studies: report stage (cached per study) → vision cues (cached per image by the runner) →
grounding + QC + pairs per frontal image → :func:`~mimic_ils.orchestration.study.decide_study` →
:func:`~mimic_ils.orchestration.study.persist`: one checked study artifact (the commit point, written after its image
and mask PNGs). A study whose artifact is valid, with every file it names intact, is skipped on a rerun; anything
else is recomputed. Every study ends with a fate (used, or excluded with the :class:`~mimic_ils.rows.Failure` of
whichever stage failed).

Cache keys are contents, not ids: a study's artifact records the digests of its inputs (``Stages.input_keys``: the
report file's bytes, each DICOM's bytes), and a report is reused only for the same report bytes, so an edited report
or DICOM is recomputed on the next run. ``force`` (``--force-stage report|vision|grounding``) recomputes that stage
(and what follows it) for every study of the run. A transient failure (``TransientError``: a service down) is never
cached as an outcome (``Failure.transient``): the study is written with ``transient`` set, its ledger reason says
"retried next run", and the next run recomputes it; an OSError (a full disk, a lost mount) stops the build with its
reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mimic_ils.files import encode_png
from mimic_ils.orchestration.shard import Shard
from mimic_ils.orchestration.stages import Stages
from mimic_ils.orchestration.study import NO_CUES, ImageOutcome, decide_study, load_study_result, persist
from mimic_ils.orchestration.workdir import WorkDir, read_checked_json, write_checked_json
from mimic_ils.progress import progress
from mimic_ils.rows import DroppedFinding, Failure, StudyResult
from mimic_ils.schema import (
    SPLITS,
    ClinicalContext,
    Finding,
    MimicIlsError,
    Section,
    StructuredReport,
    Study,
    TransientError,
)

logger = logging.getLogger(__name__)

FORCE_STAGES = ("report", "vision", "grounding")


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
    force = check_force(force)
    keys, todo = pending_studies(stages, work, studies, force)
    counts = {"cached": len(studies) - len(todo), "computed": 0, "retry": 0}
    bars = _Bars(progress, total_studies=len(todo), total_images=sum(len(s.frontal_images) for s in todo))
    try:
        for start in range(0, len(todo), chunk_size):
            for result in _run_chunk(stages, work, todo[start:start + chunk_size], bars, keys, force):
                counts["retry" if result.transient else "computed"] += 1
    finally:
        bars.close()
    return counts


def check_force(force: Iterable[str]) -> set[str]:
    """``--force-stage`` names as a set; an unknown one is refused."""
    force = set(force)
    unknown = force - set(FORCE_STAGES)
    if unknown:
        raise MimicIlsError(f"--force-stage {', '.join(sorted(unknown))}: expected one of {', '.join(FORCE_STAGES)}")
    return force


def pending_studies(stages: Stages, work: WorkDir, studies: Sequence[Study],
                    force: Iterable[str] = ()) -> tuple[dict[str, Any], list[Study]]:
    """The input keys of ``studies`` and the ones to compute (all when ``force``; else those without a valid cached
    result made from the same inputs)."""
    keys = {study.study_id: input_keys(stages, work, study) for study in studies}
    todo = [study for study in studies if force or not cached_is_current(work, study, keys[study.study_id])]
    return keys, todo


def cached_is_current(work: WorkDir, study: Study, keys: dict[str, Any] | None) -> bool:
    result = load_study_result(work, study.study_id)
    return result is not None and not result.transient and result.inputs == keys


def _run_chunk(stages: Stages, work: WorkDir, chunk: Sequence[Study], bars: _Bars, keys: dict[str, Any],
               force: set[str]) -> list[StudyResult]:
    """Report, vision, grounding of a chunk of studies; each study decided and persisted (its commit point)."""
    reports = {study.study_id: study_report(stages, work, study, keys.get(study.study_id), force) for study in chunk}
    bars.update("report", len(chunk))
    usable = [study for study in chunk if not isinstance(reports[study.study_id], Failure)]
    frontal = [image for study in usable for image in study.frontal_images]
    if frontal and "vision" in force and hasattr(stages, "forget_cues"):
        stages.forget_cues(frontal, work.vision_dir)
    try:
        cues = stages.cues(frontal, work.vision_dir) if frontal else {}
    except TransientError as error:
        cues = {image.dicom_id: Failure("vision", str(error), transient=True) for image in frontal}
    bars.update("vision", sum(len(study.frontal_images) for study in chunk))
    results = []
    for study in chunk:
        results.append(finish_study(stages, work, study, reports[study.study_id], cues, keys.get(study.study_id)))
        bars.update("grounding", len(study.frontal_images))
    return results


def study_report(stages: Stages, work: WorkDir, study: Study, keys: dict[str, Any] | None,
                 force: set[str]) -> StructuredReport | Failure:
    """The report stage of one study: its structured report (cached) or the Failure that excludes it."""
    return _split_problem(study) or cached_report(stages, work, study, key=(keys or {}).get("report"),
                                                  force="report" in force)


def finish_study(stages: Stages, work: WorkDir, study: Study, report: StructuredReport | Failure,
                 cues: dict[str, Any], keys: dict[str, Any] | None) -> StudyResult:
    """Grounding, QC and pairs of each frontal image of ``study`` from its ``cues`` (by dicom id), then the study
    decided and persisted (its commit point in the work folder)."""
    outcomes = {} if isinstance(report, Failure) else {
        image.dicom_id: _ground_one(stages, work, study, image, report, cues)
        for image in sorted(study.frontal_images, key=lambda record: record.dicom_id)
    }
    result = decide_study(study, report, outcomes, inputs=keys)
    persist(work, result, outcomes)
    return result


def _split_problem(study: Study) -> Failure | None:
    if study.split in SPLITS:
        return None
    return Failure("ingest", f"study has no valid split ({study.split or 'none'})")


def cached_report(stages: Stages, work: WorkDir, study: Study, *, key: str | None = None,
                  force: bool = False) -> StructuredReport | Failure:
    """The structured report of ``study`` (from the cache when made from the same report bytes ``key``, or
    computed), or the report stage's Failure; a transient failure caches nothing."""
    path = work.report_path(study.study_id)
    cached = None if force else read_checked_json(path)
    if cached is not None and (cached.get("key") != key or not {"report", "failure"} & set(cached)
                               or "clinical" not in cached.get("report", {"clinical": None})):
        cached = None  # the report file changed since (or the cache predates content keys, Failure or the clinical
        # cues of the indication): recompute
    if cached is None:
        try:
            cached = {"report": report_to_dict(stages.structure(study)), "key": key}
        except TransientError as error:
            return Failure("report", str(error), transient=True)
        except MimicIlsError as error:
            cached = {"failure": Failure("report", str(error)).to_json(), "key": key}
        except OSError:  # the machine's problem (full disk, lost mount), not the study's: stop with the reason
            raise
        except Exception as error:  # a bug in one study's stage must not stop the batch; the ledger names it
            logger.exception("report stage crashed on study %s", study.study_id)
            failure = Failure("report", f"internal error ({type(error).__name__}: {error})")
            cached = {"failure": failure.to_json(), "key": key}
        write_checked_json(path, cached)
    return Failure.from_json(cached["failure"]) if "failure" in cached else report_from_dict(cached["report"])


def _ground_one(stages, work, study, image, report, cues) -> ImageOutcome | Failure:
    """Grounding, QC and pairs of one frontal image from its cues; a Failure names the stage that failed."""
    image_cues = cues.get(image.dicom_id, NO_CUES)
    if isinstance(image_cues, Failure):
        return image_cues
    try:
        image_cues = image_cues() if callable(image_cues) else image_cues
    except TransientError as error:
        return Failure("vision", str(error), transient=True)
    except (MimicIlsError, ValueError, KeyError) as error:
        return Failure("vision", str(error))
    try:
        return _grounded_rows(stages, work, study, image, report, image_cues)
    except TransientError as error:
        return Failure("grounding", str(error), transient=True)
    except MimicIlsError as error:
        return Failure("grounding", str(error))
    except OSError:  # the machine's problem (full disk, lost mount), not the image's: stop with the reason
        raise
    except Exception as error:  # a bug on one image must not stop the batch; the ledger names it
        logger.exception("grounding crashed on image %s of study %s", image.dicom_id, study.study_id)
        return Failure("grounding", f"internal error ({type(error).__name__}: {error})")


def _grounded_rows(stages, work, study, image, report, image_cues) -> ImageOutcome | Failure:
    """The image's outcome: its pairs and their masks, the findings grounding dropped, its PNG (when it has pairs)."""
    grounding = stages.ground(report, image_cues, study, image)
    if grounding.excluded:
        return Failure("qc", grounding.excluded)
    paired = stages.pairs(grounding, study, image)
    skipped = (*grounding.exclusions, *paired.skipped)
    dropped = tuple(DroppedFinding(image.dicom_id, what, why) for what, why in skipped)
    png = _image_png(stages, work, image_cues) if paired.pairs else None
    return ImageOutcome(image.dicom_id, tuple(paired.pairs), dict(paired.masks), dropped, png)


def _image_png(stages: Stages, work: WorkDir, cues) -> bytes | Path:
    """The image's PNG: the vision stage's own ``image.png`` file when it has one (same pixels, no second encoding;
    the work folder hard-links it), else its bytes."""
    find = getattr(stages, "image_png_path", None)
    path = find(cues.dicom_id, work.vision_dir) if find else None
    return path if path is not None and path.is_file() else encode_png(cues.image)


def report_to_dict(report: StructuredReport) -> dict[str, Any]:
    return {**asdict(report), "clinical": report.clinical.to_json()}


def report_from_dict(data: dict[str, Any]) -> StructuredReport:
    findings = tuple(
        Finding(**{**finding, "locations": tuple(finding.get("locations", ()))}) for finding in data["findings"]
    )
    return StructuredReport(section=Section(**data["section"]), findings=findings,
                            clinical=ClinicalContext.from_json(data.get("clinical")))


class _Bars:
    """One progress per stage (report: studies; vision and grounding: images): bars on a terminal, lines in a log."""

    def __init__(self, enabled: bool, *, total_studies: int, total_images: int) -> None:
        self.bars = {}
        if not enabled or not total_studies:
            return
        for position, (name, total, unit) in enumerate(
            (("report", total_studies, "studies"), ("vision", total_images, "images"),
             ("grounding", total_images, "images"))
        ):
            self.bars[name] = progress(f"build {name}", total, unit, position=position)

    def update(self, name: str, count: int) -> None:
        if name in self.bars:
            self.bars[name].update(count)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

