"""Algorithm 1 of the paper: which detector boxes ground a finding, and the lesion mask they yield.

For a finding with mapped locations, ``M_union`` is the union of the CXAS anatomy masks of those locations. A box
``B`` (``xyxy`` original-frame pixels, rasterised with :meth:`Box.as_int_slices`) is kept iff

* c1 ``|B ∩ M_union| / |B ∪ M_union| >= tau_anatomy`` (it sits on the reported place),
* c2 ``confidence >= tau_conf``,
* c3 ``|B ∩ A| / |B| >= tau_signal`` (the pseudo-normal edit removed something there),
* c4 ``IoU(B, L_r) >= tau_size`` or ``IoU(B, L_l) >= tau_size`` (it is lung-sized, not a whole-chest box).

The lesion mask is the union, over kept boxes, of the refined connected components of the cleaned anomaly map
``A`` that intersect the box (for focal lesions optionally confined to a region, ``GroundingConfig.focal_mask_clip``;
off by default). c1-c4 below are small pure functions over full-frame ``HxW bool`` masks; the
pipeline passes precomputed pixel counts so that only the box window is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mimic_ils.grounding import masks
from mimic_ils.grounding.anomaly import AnomalyField
from mimic_ils.grounding.config import FOCAL_CLIP_TYPES, GroundingConfig, Thresholds
from mimic_ils.grounding.masks import Window
from mimic_ils.grounding.refine import refine_component
from mimic_ils.schema import Box

SIDES = ("right", "left")
BASE_LABELS = {"right": "right lung base", "left": "left lung base"}


def box_window(box: Box, shape: tuple[int, int]) -> Window | None:
    """Pixel window of a box clipped to the frame; None when nothing of it is left (or a coordinate is not finite)."""
    if not all(math.isfinite(value) for value in (box.x0, box.y0, box.x1, box.y1)):
        return None
    window = box.as_int_slices(*shape)
    return window if masks.window_area(window) > 0 else None


def box_mask_iou(window: Window, mask: np.ndarray, mask_count: int | None = None) -> float:
    """IoU of a box window with a full-frame ``HxW bool`` mask (``mask_count`` = its pixel count, if known)."""
    inter = int(np.count_nonzero(mask[window]))
    total = int(np.count_nonzero(mask)) if mask_count is None else mask_count
    union = masks.window_area(window) + total - inter
    return inter / union if union else 0.0


def box_fraction(window: Window, mask: np.ndarray) -> float:
    """Fraction of a box window covered by a full-frame ``HxW bool`` mask."""
    area = masks.window_area(window)
    return int(np.count_nonzero(mask[window])) / area if area else 0.0


def c1_anatomy(box: Box, m_union: np.ndarray, tau_anatomy: float, *, union_count: int | None = None) -> bool:
    """c1: the box overlaps the reported anatomy, ``IoU(B, M_union) >= tau_anatomy``."""
    window = box_window(box, m_union.shape)
    return window is not None and box_mask_iou(window, m_union, union_count) >= tau_anatomy


def c2_confidence(box: Box, tau_conf: float) -> bool:
    """c2: the detector is confident enough, ``conf >= tau_conf``."""
    return box.confidence >= tau_conf


def c3_signal(box: Box, anomaly: np.ndarray, tau_signal: float) -> bool:
    """c3: enough of the box is anomalous, ``|B ∩ A| / |B| >= tau_signal`` (``anomaly``: ``HxW bool``)."""
    window = box_window(box, anomaly.shape)
    return window is not None and box_fraction(window, anomaly) >= tau_signal


def c4_size(
    box: Box,
    lung_right: np.ndarray,
    lung_left: np.ndarray,
    tau_size: float,
    *,
    counts: tuple[int, int] | None = None,
) -> bool:
    """c4: the box is lesion-sized relative to a lung, ``IoU(B, L_r) >= tau_size or IoU(B, L_l) >= tau_size``."""
    window = box_window(box, lung_right.shape)
    if window is None:
        return False
    right_count, left_count = counts if counts is not None else (None, None)
    return box_mask_iou(window, lung_right, right_count) >= tau_size or (
        box_mask_iou(window, lung_left, left_count) >= tau_size
    )


@dataclass(frozen=True)
class BoxDecision:
    """Why a box was kept or not: the measured values (None where a cheaper criterion already failed)."""

    box: Box
    anatomy_iou: float | None = None
    signal: float | None = None
    lung_iou: float | None = None
    c1: bool = False
    c2: bool = False
    c3: bool = False
    c4: bool = False
    class_allowed: bool = True

    @property
    def kept(self) -> bool:
        return self.class_allowed and self.c1 and self.c2 and self.c3 and self.c4


@dataclass
class ImageContext:
    """Per-image state shared by the findings: cues, cleaned anomaly maps, and cached pixel counts."""

    image: np.ndarray
    lungs: dict[str, np.ndarray]
    anatomy: Mapping[str, np.ndarray]
    boxes: Sequence[Box]
    field: AnomalyField
    config: GroundingConfig
    _counts: dict[str, int] = field(default_factory=dict)
    _lung_ious: dict[Box, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    def lung_count(self, side: str) -> int:
        if side not in self._counts:
            self._counts[side] = int(np.count_nonzero(self.lungs[side]))
        return self._counts[side]

    def lung_iou(self, box: Box, window: Window) -> float:
        """``max(IoU(B, L_r), IoU(B, L_l))``, measured once per box and image (c4 does not depend on the finding)."""
        if box not in self._lung_ious:
            area, best = masks.window_area(window), 0.0
            for side in SIDES:
                count = self.lung_count(side)
                if iou_upper_bound(area, count) > best:
                    best = max(best, box_mask_iou(window, self.lungs[side], count))
            self._lung_ious[box] = best
        return self._lung_ious[box]


def anatomy_union(anatomy: Mapping[str, np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """``M_union``: the union of the anatomy masks of ``labels`` (``HxW bool``)."""
    return masks.union([anatomy[label] for label in labels])


def iou_upper_bound(area: int, count: int) -> float:
    """The largest IoU two sets of ``area`` and ``count`` pixels can have (one inside the other)."""
    return min(area, count) / max(area, count) if max(area, count) else 0.0


def decide_box(
    box: Box, lesion_type: str, m_union: np.ndarray, union_count: int, thresholds: Thresholds, ctx: ImageContext
) -> BoxDecision:
    """Evaluate c1-c4 for one box, cheapest first; c3 (which needs the anomaly map) only if the rest pass.

    An IoU is only measured when its upper bound (from the two areas) can reach the threshold; otherwise the
    criterion fails and its value stays None.
    """
    allowed = ctx.config.box_allowed(lesion_type, box.class_name)
    window = box_window(box, ctx.shape)
    if window is None or not allowed:
        return BoxDecision(box=box, class_allowed=allowed)
    c2 = c2_confidence(box, thresholds.tau_conf)
    lung_iou = ctx.lung_iou(box, window)
    anatomy_iou = None
    if iou_upper_bound(masks.window_area(window), union_count) >= thresholds.tau_anatomy:
        anatomy_iou = box_mask_iou(window, m_union, union_count)
    c1 = anatomy_iou is not None and anatomy_iou >= thresholds.tau_anatomy
    c4 = lung_iou >= thresholds.tau_size
    signal = None
    if c1 and c2 and c4:
        signal = ctx.field.count_in(thresholds.tau_ano, window) / masks.window_area(window)
    c3 = signal is not None and signal >= thresholds.tau_signal
    return BoxDecision(box=box, anatomy_iou=anatomy_iou, signal=signal, lung_iou=lung_iou, c1=c1, c2=c2, c3=c3, c4=c4)


def focal_clip_region(
    lesion_type: str, kept: Sequence[BoxDecision], m_union: np.ndarray, ctx: ImageContext
) -> np.ndarray | None:
    """The region a focal lesion's mask is confined to (``GroundingConfig.focal_mask_clip``), or None when off.

    ``"anatomy"``: ``M_union``, the union of the finding's reported anatomy masks. ``"box_dilation"``: the union of
    the kept boxes, each widened on every side by ``focal_clip_margin`` times its width (left and right) and height
    (top and bottom), clipped to the frame; boxes whose IoU with a lung exceeds ``focal_clip_max_lung_iou`` (a
    diffuse lesion's box, which c1-c4 also keep for a focal finding) are left out; when only such boxes are kept,
    the region is ``M_union`` as for ``"anatomy"``.
    None for edema, effusion and cardiomegaly, whatever the setting.
    """
    config = ctx.config
    if config.focal_mask_clip is None or lesion_type not in FOCAL_CLIP_TYPES:
        return None
    if config.focal_mask_clip == "anatomy":
        return m_union
    focal = [d for d in kept if d.lung_iou is not None and d.lung_iou <= config.focal_clip_max_lung_iou]
    if not focal:
        return m_union
    margin = config.focal_clip_margin
    region = np.zeros(ctx.shape, dtype=bool)
    for decision in focal:
        box = decision.box
        dx, dy = margin * (box.x1 - box.x0), margin * (box.y1 - box.y0)
        wide = Box(box.x0 - dx, box.y0 - dy, box.x1 + dx, box.y1 + dy, box.confidence, box.class_id, box.class_name)
        window = box_window(wide, ctx.shape)
        if window is not None:
            region[window] = True
    return region


def lesion_patches(
    kept: Sequence[BoxDecision],
    lesion_type: str,
    thresholds: Thresholds,
    ctx: ImageContext,
    clip: np.ndarray | None = None,
) -> list[tuple[np.ndarray, Window]]:
    """Refined components of cleaned ``A`` touching the kept boxes, as ``(hxw bool patch, full-frame window)``.

    ``clip`` (``HxW bool``, see :func:`focal_clip_region`) confines each component and its expansion.
    """
    patches = []
    domains: dict[str, np.ndarray] = {}
    for decision in kept:
        window = box_window(decision.box, ctx.shape)
        for side, patch, patch_window in ctx.field.components_touching(thresholds.tau_ano, window):
            if clip is not None and side not in domains:
                domains[side] = ctx.lungs[side] & clip
            patches.append(
                refine_component(
                    patch,
                    patch_window,
                    image=ctx.image,
                    lung=ctx.lungs[side],
                    lung_window=ctx.field.window(side),
                    base=ctx.anatomy.get(BASE_LABELS[side]),
                    effusion=lesion_type == "effusion",
                    config=ctx.config.refine,
                    clip=domains.get(side),
                )
            )
    return patches


@dataclass
class FindingMask:
    """Algorithm 1 for one finding: box decisions, kept boxes and the lesion mask (``HxW bool``, maybe empty)."""

    decisions: list[BoxDecision]
    mask: np.ndarray | None

    @property
    def kept(self) -> list[BoxDecision]:
        return [decision for decision in self.decisions if decision.kept]


def run_algorithm1(lesion_type: str, locations: Sequence[str], ctx: ImageContext) -> FindingMask:
    """Algorithm 1 for a finding of ``lesion_type`` reported at ``locations`` (anatomy labels present in ``ctx``)."""
    thresholds = ctx.config.thresholds_for(lesion_type)
    m_union = anatomy_union(ctx.anatomy, locations)
    union_count = int(np.count_nonzero(m_union))
    decisions = [decide_box(box, lesion_type, m_union, union_count, thresholds, ctx) for box in ctx.boxes]
    kept = [decision for decision in decisions if decision.kept]
    if not kept:
        return FindingMask(decisions=decisions, mask=None)
    mask = np.zeros(ctx.shape, dtype=bool)
    clip = focal_clip_region(lesion_type, kept, m_union, ctx)
    for patch, window in lesion_patches(kept, lesion_type, thresholds, ctx, clip):
        mask[window] |= patch
    return FindingMask(decisions=decisions, mask=mask)
