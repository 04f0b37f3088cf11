"""Grounding of one frontal image: quality control, Algorithm 1 per finding, verification.

:func:`ground_image` is the single entry point the build calls. It never raises for bad input: an image that fails
quality control (or has malformed cues) comes back with ``excluded`` set and no masks, and every dropped finding
is listed in ``exclusions`` with a one-line reason. Exclusion texts name lesion types and
sentence numbers, never report text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from mimic_ils.grounding import qc, verify
from mimic_ils.grounding.algorithm1 import BoxDecision, ImageContext, box_window, run_algorithm1
from mimic_ils.grounding.anomaly import AnomalyField
from mimic_ils.grounding.config import GroundingConfig
from mimic_ils.grounding.grid import Grid, GridMasks
from mimic_ils.schema import (
    HEART_LABEL,
    LESION_TYPES,
    Box,
    ClinicalContext,
    Finding,
    FindingOutcome,
    StructuredReport,
    VisionCues,
)

UNPLACEABLE_REASON = "no lung location reported; no lung region can be called empty"

@dataclass
class ImageGrounding:
    """Everything grounding produced for one image (the pair stage, ``mimic_ils.pairs.image_pairs``, reads it).

    ``masks`` maps each grounded finding's ``mask_key`` (``f"{dicom_id}_{lesion}_{k}"``) to an ``HxW bool`` mask in
    the original frame. ``exclusions``
    are ``(what, reason)``; ``excluded`` is the reason when quality control dropped the whole image.
    ``findings`` are the outcomes of the report's findings (negated ones with ``presence="negative"``),
    ``empty_locations`` the lung regions no positive finding touches, ``ctr`` the cardiothoracic ratio (None when
    not measured), ``cardiomegaly_negative_reason`` None when the CTR rule allows a cardiomegaly negative,
    ``clinical`` the report's indication and history cues (the reasoning pairs read them).
    """

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    exclusions: list[tuple[str, str]] = field(default_factory=list)
    excluded: str | None = None
    findings: list[FindingOutcome] = field(default_factory=list)
    empty_locations: tuple[str, ...] = ()
    ctr: float | None = None
    cardiomegaly_negative_reason: str | None = None
    clinical: ClinicalContext = field(default_factory=ClinicalContext)  # the report's indication cues (reasoning)


def ground_image(
    report: StructuredReport,
    cues: VisionCues,
    *,
    study_id: str,
    dicom_id: str,
    view: str,
    config: GroundingConfig | None = None,
) -> ImageGrounding:
    """Ground a structured report on one image: QC, then Algorithm 1 per finding, then the empty locations."""
    config = config or GroundingConfig()
    reason = qc.view_reason(view) or cues_problem(cues)
    hybrid = None if reason else qc.Outline.of(cues.lung_right, cues.lung_left, cues.heart)
    reason = reason or qc.discrepancy_reason(cues, config.qc, hybrid)
    if reason is not None:
        return ImageGrounding(exclusions=[(f"image {dicom_id}", reason)], excluded=reason)
    findings = canonical_findings(report.findings)
    frame = _Frame.build(cues, config, hybrid)
    result = ImageGrounding(ctr=hybrid.ctr, clinical=report.clinical)
    result.masks = _ground_findings(findings, frame, dicom_id, result)
    result.empty_locations = verify.empty_locations(findings, cues.anatomy)
    result.cardiomegaly_negative_reason = qc.cardiomegaly_negative_reason(result.ctr, config.qc)
    return result


def cues_problem(cues: VisionCues) -> str | None:
    """Why the cues cannot be grounded (wrong dtype or shape), or None. Masks must be ``HxW bool``."""
    image = cues.image
    if image.ndim != 2 or image.dtype != np.uint8:
        return f"image must be HxW uint8, got {image.dtype} {image.shape}"
    if cues.pseudo_normal.shape != image.shape or cues.pseudo_normal.dtype != np.uint8:
        pseudo = cues.pseudo_normal
        return f"pseudo-normal must be HxW uint8 like the image, got {pseudo.dtype} {pseudo.shape}"
    named = {"lung_right": cues.lung_right, "lung_left": cues.lung_left, "heart": cues.heart, **cues.anatomy}
    for name, mask in named.items():
        if mask.shape != image.shape or mask.dtype != bool:
            return f"mask {name!r} must be HxW bool like the image, got {mask.dtype} {mask.shape}"
    return None


_FINDING_ORDER = {lesion: index for index, lesion in enumerate(LESION_TYPES)}


def _finding_key(finding: Finding) -> tuple:
    return (
        not finding.is_positive,
        _FINDING_ORDER.get(finding.lesion_type, len(LESION_TYPES)),
        verify.reported_locations(finding),
        finding.certainty != "definitive",
        finding.sentence_index,
        finding.entity,
        finding.location or "",
        finding.predicted_lesion_type or "",
    )


def canonical_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Findings in a canonical order; of positive findings with the same type and places, the definitive is kept."""
    seen: set[tuple[str, frozenset[str]]] = set()
    kept = []
    for finding in sorted(findings, key=_finding_key):
        if finding.is_positive and finding.lesion_type in LESION_TYPES:
            signature = (finding.lesion_type, frozenset(verify.reported_locations(finding)))
            if signature in seen:
                continue
            seen.add(signature)
        kept.append(finding)
    return kept


def _box_key(box: Box) -> tuple:
    return (box.x0, box.y0, box.x1, box.y1, box.confidence, box.class_id, box.class_name)


@dataclass
class _Frame:
    """The original-frame cues, the working grid, and Algorithm 1's context on that grid.

    ``boxes`` are the original boxes in the canonical order of ``ctx.boxes`` (their grid versions).
    """

    cues: VisionCues
    grid: Grid
    boxes: list[Box]
    ctx: ImageContext

    @classmethod
    def build(cls, cues: VisionCues, config: GroundingConfig, hybrid: qc.Outline) -> _Frame:
        grid = Grid.for_shape(cues.shape, config.work_max_side)
        boxes = sorted(cues.boxes, key=_box_key)
        lungs = {"right": grid.down(cues.lung_right), "left": grid.down(cues.lung_left)}
        windows = {"right": hybrid.right, "left": hybrid.left} if grid.stride == 1 else {}
        image = grid.down(cues.image)
        ctx = ImageContext(
            image=image,
            lungs=lungs,
            anatomy=GridMasks(cues.anatomy, grid),
            boxes=[grid.box(box) for box in boxes],
            field=AnomalyField(
                image, grid.down(cues.pseudo_normal), lungs, noise_radius=config.refine.noise_radius, windows=windows
            ),
            config=config,
        )
        return cls(cues=cues, grid=grid, boxes=boxes, ctx=ctx)


def _ground_findings(
    findings: Sequence[Finding], frame: _Frame, dicom_id: str, result: ImageGrounding
) -> dict[str, np.ndarray]:
    """Run Algorithm 1 on every positive finding; fill ``result.findings``/``exclusions``; return the masks."""
    masks: dict[str, np.ndarray] = {}
    counters = dict.fromkeys(LESION_TYPES, 0)
    for finding in findings:
        if not finding.is_positive:
            if finding.lesion_type in LESION_TYPES:
                reported = verify.reported_locations(finding)
                negated = FindingOutcome(
                    finding.lesion_type,
                    finding.certainty,
                    reported,
                    presence="negative",
                    sentence=finding.sentence_index,
                )
                result.findings.append(negated)
            continue
        what = f"{finding.lesion_type or 'untyped'} finding (sentence {finding.sentence_index})"
        outcome, mask, reason = _ground_one(finding, frame)
        if mask is not None:
            key = f"{dicom_id}_{finding.lesion_type}_{counters[finding.lesion_type]}"
            counters[finding.lesion_type] += 1
            masks[key] = mask
            outcome = replace(outcome, mask_key=key)
        if reason is not None:
            result.exclusions.append((what, reason))
        result.findings.append(outcome)
    return masks


def _ground_one(finding: Finding, frame: _Frame) -> tuple[FindingOutcome, np.ndarray | None, str | None]:
    """One positive finding -> (outcome without mask key, ``HxW bool`` mask or None, exclusion reason or None)."""
    reported = verify.reported_locations(finding)
    outcome = FindingOutcome(finding.lesion_type, finding.certainty, reported, sentence=finding.sentence_index)
    anatomy = frame.cues.anatomy
    if finding.lesion_type not in LESION_TYPES:
        return outcome, None, None
    if finding.lesion_type == "cardiomegaly":
        outcome = replace(outcome, reported=(HEART_LABEL,), grounded=(HEART_LABEL,))
        heart = frame.cues.heart
        return (outcome, heart.copy(), None) if heart.any() else (outcome, None, "heart mask is empty")
    if not reported:
        # verify.empty_locations treats it as everywhere: the reason says so, and the ledger counts these
        return outcome, None, UNPLACEABLE_REASON
    missing = [label for label in reported if label not in anatomy]
    if missing:
        return outcome, None, f"anatomy mask missing for {', '.join(missing)}"
    found = run_algorithm1(finding.lesion_type, reported, frame.ctx)
    if not found.kept:
        return outcome, None, _rejection_summary(found.decisions)
    mask = None if found.mask is None else frame.grid.up(found.mask, frame.cues.lung_right, frame.cues.lung_left)
    if mask is None or not mask.any():
        return outcome, None, "kept boxes hold no anomaly component"
    kept = [box for box, decision in zip(frame.boxes, found.decisions, strict=True) if decision.kept]
    windows = [box_window(box, frame.cues.shape) for box in kept]
    grounded = verify.grounded_locations(reported, anatomy, [window for window in windows if window is not None])
    return replace(outcome, grounded=grounded), mask, None


def _rejection_summary(decisions: Sequence[BoxDecision]) -> str:
    """One line on why no box passed c1-c4."""
    if not decisions:
        return "no lesion box on the image"
    failed = {
        "class": sum(not d.class_allowed for d in decisions),
        "c1": sum(d.lung_iou is not None and not d.c1 for d in decisions),
        "c2": sum(d.lung_iou is not None and not d.c2 for d in decisions),
        "c3": sum(d.signal is not None and not d.c3 for d in decisions),
        "c4": sum(d.lung_iou is not None and not d.c4 for d in decisions),
    }
    parts = ", ".join(f"{name} failed for {count}" for name, count in failed.items() if count)
    return f"no box passes c1-c4 ({len(decisions)} boxes; {parts})"
