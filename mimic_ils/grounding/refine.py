"""Refine (paper Appendix A.5): clean, expand and, for basal effusion, complete a lesion component.

Components arrive as *patches*: an ``hxw bool`` array together with the full-frame window (``(rows, cols)``
slices) it covers, so that work stays proportional to the lesion, not the ``HxW`` frame. The noise-removing
opening (erosion then dilation) is applied to the anomaly map before filtering (see
:class:`~mimic_ils.grounding.anomaly.AnomalyField`); a connected component of an opened map is already open, so it
is not repeated here.
"""

from __future__ import annotations

import numpy as np

from mimic_ils.grounding import masks
from mimic_ils.grounding.config import RefineConfig
from mimic_ils.grounding.masks import Window

Patch = tuple[np.ndarray, Window]


def reframe(patch: np.ndarray, window: Window, target: Window) -> np.ndarray:
    """The patch copied into a larger ``target`` window (which must contain ``window``)."""
    out = np.zeros((target[0].stop - target[0].start, target[1].stop - target[1].start), dtype=bool)
    rows = slice(window[0].start - target[0].start, window[0].stop - target[0].start)
    cols = slice(window[1].start - target[1].start, window[1].stop - target[1].start)
    out[rows, cols] = patch
    return out


def grow_similar(
    patch: np.ndarray, window: Window, image: np.ndarray, domain: np.ndarray, *, tolerance: float, steps: int
) -> Patch:
    """Expand a component into adjacent pixels of similar intensity.

    In each of ``steps`` rounds, the 8-connected neighbours of the mask that lie in ``domain`` (``HxW bool``, the
    lung) and whose ``image`` value (``HxW uint8``) is within ``tolerance * 255`` of the component's mean intensity
    join the mask. Returns the grown patch and its (possibly larger) window.
    """
    if steps <= 0 or not patch.any():
        return patch, window
    mean = float(image[window][patch].mean())
    target = masks.grow_window(window, steps, image.shape)
    grown = reframe(patch, window, target)
    similar = (np.abs(image[target].astype(np.float32) - mean) <= tolerance * 255.0) & domain[target]
    for _ in range(steps):
        ring = masks.dilate(grown, 1) & similar & ~grown
        if not ring.any():
            break
        grown |= ring
    return grown, target


def touches(patch: np.ndarray, window: Window, region: np.ndarray | None) -> bool:
    """Whether a patch shares a pixel with a full-frame ``HxW bool`` region (False if ``region`` is None)."""
    return region is not None and bool((patch & region[window]).any())


def fill_effusion_base(
    patch: np.ndarray, window: Window, lung: np.ndarray, *, min_row_fraction: float, lung_window: Window | None = None
) -> Patch:
    """Add the lower portion of the lung, from the lesion's top row down to the costophrenic angle.

    ``lung`` is the HybridGNet lung (``HxW bool``) on the lesion's side; its lowest row is taken as the
    costophrenic angle. The fill starts at the lesion's top row, but never above ``min_row_fraction`` of the lung
    height, and covers the full width of the lung in those rows.
    """
    lung_window = lung_window or masks.bbox(lung)
    rows_with_lesion = np.flatnonzero(patch.any(axis=1))
    if lung_window is None or rows_with_lesion.size == 0:
        return patch, window
    top, bottom = lung_window[0].start, lung_window[0].stop
    start = max(window[0].start + int(rows_with_lesion[0]), top + int(np.floor(min_row_fraction * (bottom - top))))
    if start >= bottom:
        return patch, window
    fill_window = (slice(start, bottom), lung_window[1])
    target = masks.union_window(window, fill_window)
    out = reframe(patch, window, target)
    out |= reframe(lung[fill_window], fill_window, target)
    return out, target


def refine_component(
    patch: np.ndarray,
    window: Window,
    *,
    image: np.ndarray,
    lung: np.ndarray,
    lung_window: Window | None,
    base: np.ndarray | None,
    effusion: bool,
    config: RefineConfig,
) -> Patch:
    """Refine one lesion component on one side: expansion, then (effusion touching ``base``) the basal fill.

    ``lung`` is that side's HybridGNet lung and ``base`` the CXAS lung-base mask of that side (``HxW bool``);
    the result stays inside ``lung``.
    """
    patch, window = grow_similar(patch, window, image, lung, tolerance=config.grow_tolerance, steps=config.grow_steps)
    if effusion and touches(patch, window, base):
        patch, window = fill_effusion_base(
            patch, window, lung, min_row_fraction=config.effusion_min_row_fraction, lung_window=lung_window
        )
    return patch & lung[window], window
