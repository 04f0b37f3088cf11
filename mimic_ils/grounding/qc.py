"""Quality control (paper Appendix D): frontal views, HybridGNet-vs-CXAS agreement, cardiothoracic ratio.

Frames: masks are ``HxW bool`` in the original frame, x to the right, y down; the patient's right lung is on the
image's left, so its outermost x is its *smallest* column and the left lung's outermost x its *largest* column;
the heart's lowest y is its largest row.

Two segmenters that disagree about the outline of the chest mean one of them failed, and every mask downstream
(anatomy labels from CXAS, lungs and heart from HybridGNet) would be suspect, so the image is excluded when

* the outermost x of the right lung, or of the left lung, differs by more than ``lung_x_tolerance * W`` pixels
  between HybridGNet (``VisionCues.lung_right``/``lung_left``) and CXAS (``anatomy["right lung"]``/``["left
  lung"]``), or
* the lowest y of the heart differs by more than ``heart_y_tolerance * H`` pixels between HybridGNet
  (``VisionCues.heart``) and CXAS (``anatomy["heart"]``).

The cardiothoracic ratio (CTR) is the heart's width over the thoracic width, measured on HybridGNet masks:
``(heart max x - heart min x + 1) / (left lung max x - right lung min x + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimic_ils.grounding import masks
from mimic_ils.grounding.config import QcConfig
from mimic_ils.grounding.masks import Window
from mimic_ils.schema import FRONTAL_VIEWS, HEART_LABEL, VisionCues


@dataclass(frozen=True)
class Extents:
    """Outermost x of each lung and lowest y of the heart, in pixels (None where a mask is empty)."""

    right_lung_x: int | None
    left_lung_x: int | None
    heart_y: int | None


@dataclass(frozen=True)
class Outline:
    """Bounding windows (``(rows, cols)`` slices) of the right lung, left lung and heart; None for empty masks."""

    right: Window | None
    left: Window | None
    heart: Window | None

    @classmethod
    def of(cls, lung_right: np.ndarray, lung_left: np.ndarray, heart: np.ndarray) -> Outline:
        """Measure the three ``HxW bool`` masks."""
        return cls(masks.bbox(lung_right), masks.bbox(lung_left), masks.bbox(heart))

    @property
    def extents(self) -> Extents:
        return Extents(
            right_lung_x=None if self.right is None else self.right[1].start,
            left_lung_x=None if self.left is None else self.left[1].stop - 1,
            heart_y=None if self.heart is None else self.heart[0].stop - 1,
        )

    @property
    def ctr(self) -> float | None:
        """Cardiothoracic ratio; None when a mask is empty or the lungs are swapped."""
        if self.right is None or self.left is None or self.heart is None:
            return None
        thorax = self.left[1].stop - self.right[1].start
        return (self.heart[1].stop - self.heart[1].start) / thorax if thorax > 0 else None


def extents(lung_right: np.ndarray, lung_left: np.ndarray, heart: np.ndarray) -> Extents:
    """Measure the three landmarks QC compares (``HxW bool`` masks)."""
    return Outline.of(lung_right, lung_left, heart).extents


def view_reason(view: str) -> str | None:
    """Why a view is excluded (only PA and AP frontal views are used), or None."""
    return None if view in FRONTAL_VIEWS else f"view {view!r} is not frontal (PA/AP)"


def discrepancy_reason(cues: VisionCues, config: QcConfig, hybrid: Outline | None = None) -> str | None:
    """Why HybridGNet and CXAS disagree too much on this image, or None when they agree.

    ``hybrid`` is the HybridGNet outline when the caller already measured it.
    """
    missing = [label for label in ("right lung", "left lung", HEART_LABEL) if label not in cues.anatomy]
    if missing:
        return f"anatomy masks missing for QC: {', '.join(missing)}"
    height, width = cues.shape
    hybrid = (hybrid or Outline.of(cues.lung_right, cues.lung_left, cues.heart)).extents
    cxas = extents(cues.anatomy["right lung"], cues.anatomy["left lung"], cues.anatomy[HEART_LABEL])
    checks = (
        ("right lung outermost x", hybrid.right_lung_x, cxas.right_lung_x, config.lung_x_tolerance * width),
        ("left lung outermost x", hybrid.left_lung_x, cxas.left_lung_x, config.lung_x_tolerance * width),
        ("heart lowest y", hybrid.heart_y, cxas.heart_y, config.heart_y_tolerance * height),
    )
    for name, ours, theirs, tolerance in checks:
        if ours is None or theirs is None:
            return f"{name}: empty mask ({'HybridGNet' if ours is None else 'CXAS'})"
        if abs(ours - theirs) > tolerance:
            return f"HybridGNet and CXAS disagree on {name}: {ours} vs {theirs} px (tolerance {tolerance:.0f} px)"
    return None


def cardiothoracic_ratio(lung_right: np.ndarray, lung_left: np.ndarray, heart: np.ndarray) -> float | None:
    """CTR from HybridGNet lungs and heart (``HxW bool``); None when a mask is empty or the lungs are swapped."""
    return Outline.of(lung_right, lung_left, heart).ctr


def cardiomegaly_negative_reason(ctr: float | None, config: QcConfig) -> str | None:
    """Why no cardiomegaly negative may be made (CTR unknown or above the threshold), or None."""
    if ctr is None:
        return "cardiothoracic ratio unavailable (empty lung or heart mask)"
    if ctr > config.ctr_negative_max:
        return f"cardiothoracic ratio {ctr:.3f} > {config.ctr_negative_max}"
    return None
