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
    patch: np.ndarray,
    window: Window,
    lung: np.ndarray,
    *,
    min_row_fraction: float,
    lung_window: Window | None = None,
    mode: str = "per_column",
) -> Patch:
    """Add the lung below the lesion, down to the costophrenic angle.

    ``lung`` is the HybridGNet lung (``HxW bool``) on the lesion's side; its lowest row is taken as the
    costophrenic angle. The fill never starts above ``min_row_fraction`` of the lung height. ``mode``:

    * ``"per_column"``: in every column of the lung, the lung pixels from the lesion's upper outline in that column
      down to the lung's lower outline. Columns left or right of the lesion take the top of its nearest column
      (so a lesion that stops short of the chest wall still reaches the lateral angle), and columns inside its span
      that it misses take the lower of their two neighbours' tops. A meniscus keeps its shape.
    * ``"full_rows"``: every lung pixel from the lesion's top row down, across the full width of the lung (the lung
      above the low side of a meniscus is added too).
    """
    lung_window = lung_window or masks.bbox(lung)
    rows_with_lesion = np.flatnonzero(patch.any(axis=1))
    if lung_window is None or rows_with_lesion.size == 0:
        return patch, window
    top, bottom = lung_window[0].start, lung_window[0].stop
    floor_row = top + int(np.floor(min_row_fraction * (bottom - top)))
    start = max(window[0].start + int(rows_with_lesion[0]), floor_row)
    if start >= bottom:
        return patch, window
    fill_window = (slice(start, bottom), lung_window[1])
    target = masks.union_window(window, fill_window)
    out = reframe(patch, window, target)
    fill = lung[fill_window]
    if mode == "per_column":
        fill = fill & _below_outline(patch, window, fill_window, floor_row)
    out |= reframe(fill, fill_window, target)
    return out, target


def _below_outline(patch: np.ndarray, window: Window, fill_window: Window, floor_row: int) -> np.ndarray:
    """``fill_window``-shaped mask of the pixels at or below the patch's upper outline (and ``floor_row``)."""
    rows, cols = fill_window
    width = cols.stop - cols.start
    has = patch.any(axis=0)
    tops = np.full(width, np.inf)
    local = np.arange(window[1].start, window[1].stop) - cols.start
    inside = (local >= 0) & (local < width) & has
    tops[local[inside]] = window[0].start + np.argmax(patch, axis=0)[inside]
    known = np.flatnonzero(np.isfinite(tops))
    if known.size == 0:
        return np.zeros((rows.stop - rows.start, width), dtype=bool)
    # gaps and the columns beside the lesion: the nearest lesion column's top (the lower one where two are equally
    # near), so the fill reaches the lung's edges without rising above the lesion
    positions = np.arange(width)
    right = np.searchsorted(known, positions).clip(0, known.size - 1)
    left = (right - 1).clip(0, known.size - 1)
    use_left = np.abs(positions - known[left]) < np.abs(positions - known[right])
    tie = np.abs(positions - known[left]) == np.abs(positions - known[right])
    nearest = np.where(use_left, tops[known[left]], tops[known[right]])
    nearest = np.where(tie, np.maximum(tops[known[left]], tops[known[right]]), nearest)
    tops = np.where(np.isfinite(tops), tops, nearest)
    tops = np.maximum(tops, floor_row)
    row_index = np.arange(rows.start, rows.stop)[:, None]
    return row_index >= tops[None, :]


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
    clip: np.ndarray | None = None,
) -> Patch:
    """Refine one lesion component on one side: expansion, then (effusion touching ``base``) the basal fill.

    ``lung`` is that side's HybridGNet lung and ``base`` the CXAS lung-base mask of that side (``HxW bool``);
    the result stays inside ``lung``. ``clip`` (``HxW bool``, ``GroundingConfig.focal_mask_clip``) confines the
    component before the expansion (whose mean intensity is then the clipped lesion's) and the expansion itself;
    pass ``lung & region``.
    """
    domain = lung
    if clip is not None:
        patch = patch & clip[window]
        if not patch.any():
            return patch, window
        domain = clip
    patch, window = grow_similar(
        patch, window, image, domain, tolerance=config.grow_tolerance, steps=config.grow_steps
    )
    if effusion and touches(patch, window, base):
        patch, window = fill_effusion_base(
            patch,
            window,
            lung,
            min_row_fraction=config.effusion_min_row_fraction,
            lung_window=lung_window,
            mode=config.effusion_fill,
        )
    return patch & domain[window], window
