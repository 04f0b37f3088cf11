"""The anomaly map of paper Eq. 1 and its per-lung connected components.

``x_ano = (x - x_hat) / I_max`` with ``I_max = 255`` on the 8-bit original image ``x`` and pseudo-normal image
``x_hat`` (both ``HxW uint8``, original frame); ``A = {x_ano >= tau_ano}``: lesions are brighter than the
pseudo-normal lung the editor paints in their place.

:class:`AnomalyField` evaluates ``A`` lazily inside the bounding box of each HybridGNet lung, intersected with
that lung and cleaned by the Refine opening (Appendix A.5), once per threshold and side; connected components
are labelled only around the boxes that need them. The pseudo-normal editor only changes lungs and heart, and
lung-lesion masks are the only masks built from ``A``, so ``A`` is never needed elsewhere; working per lung keeps
the cost proportional to the lungs, not the frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mimic_ils.grounding import masks
from mimic_ils.grounding.masks import Window

I_MAX = 255


def difference_threshold(tau_ano: float) -> int:
    """Smallest integer ``d = x - x_hat`` with ``d / I_MAX >= tau_ano`` (exactly Eq. 1 on 8-bit images)."""
    candidates = np.arange(-I_MAX, I_MAX + 2)
    hits = np.flatnonzero(candidates / I_MAX >= tau_ano)
    return int(candidates[hits[0]]) if hits.size else I_MAX + 1


def anomaly_map(image: np.ndarray, pseudo_normal: np.ndarray, tau_ano: float) -> np.ndarray:
    """Eq. 1 over the whole frame: ``HxW bool``, True where ``(x - x_hat) / 255 >= tau_ano``."""
    if image.shape != pseudo_normal.shape:
        raise ValueError(f"image {image.shape} and pseudo-normal {pseudo_normal.shape} differ in shape")
    return np.subtract(image, pseudo_normal, dtype=np.int16) >= difference_threshold(tau_ano)


_EIGHT = np.ones((3, 3), bool)


@dataclass
class SideAnomaly:
    """Cleaned ``A`` inside one lung: ``mask`` (bool) covers the full-frame ``window``."""

    window: Window
    mask: np.ndarray

    def touching(self, local_box: Window, margin: int = 32) -> tuple[np.ndarray, Window] | None:
        """The 8-connected components of ``mask`` that intersect ``local_box`` (crop coordinates).

        Components are labelled in a window around the box that doubles until no selected component reaches its
        edge (or the window is the whole crop), so the result equals labelling the whole crop while the cost
        follows the lesion's size. Returns ``(patch, crop-local window)`` or None.
        """
        shape = self.mask.shape
        while True:
            window = masks.grow_window(local_box, margin, shape)
            labels, count = ndimage.label(self.mask[window], structure=_EIGHT)
            inner = _local(local_box, window)
            hit = np.bincount(labels[inner].ravel(), minlength=count + 1)
            hit[0] = 0
            if not hit.any():
                return None
            selected = (hit > 0)[labels]
            if not _reaches_open_edge(selected, window, shape):
                tight = masks.bbox(selected)
                return selected[tight], _global(tight, window)
            margin *= 2


def _reaches_open_edge(selected: np.ndarray, window: Window, shape: tuple[int, int]) -> bool:
    """Whether ``selected`` touches an edge of ``window`` that is not also an edge of the crop."""
    rows, cols = window
    return bool(
        (rows.start > 0 and selected[0].any())
        or (rows.stop < shape[0] and selected[-1].any())
        or (cols.start > 0 and selected[:, 0].any())
        or (cols.stop < shape[1] and selected[:, -1].any())
    )


@dataclass
class AnomalyField:
    """Lazily evaluated, cleaned anomaly map per ``(tau_ano, side)``; sides are ``"right"`` and ``"left"``.

    ``lungs`` maps side to the HybridGNet ``HxW bool`` lung mask; ``noise_radius`` is the Refine opening radius;
    ``windows`` optionally gives each lung's bounding window when the caller already measured it.
    """

    image: np.ndarray
    pseudo_normal: np.ndarray
    lungs: dict[str, np.ndarray]
    noise_radius: int
    windows: dict[str, Window | None] = field(default_factory=dict)
    _cache: dict[tuple[int, str], SideAnomaly | None] = field(default_factory=dict)

    def window(self, side: str) -> Window | None:
        """Bounding box of the lung of ``side`` (None if that lung mask is empty)."""
        if side not in self.windows:
            self.windows[side] = masks.bbox(self.lungs[side])
        return self.windows[side]

    def side(self, tau_ano: float, side: str) -> SideAnomaly | None:
        """The cleaned anomaly map inside the lung of ``side``."""
        key = (difference_threshold(tau_ano), side)
        if key not in self._cache:
            self._cache[key] = self._compute(key[0], side)
        return self._cache[key]

    def _compute(self, threshold: int, side: str) -> SideAnomaly | None:
        window = self.window(side)
        if window is None:
            return None
        diff = np.subtract(self.image[window], self.pseudo_normal[window], dtype=np.int16)
        raw = (diff >= threshold) & self.lungs[side][window]
        return SideAnomaly(window=window, mask=masks.opening(raw, self.noise_radius))

    def count_in(self, tau_ano: float, box_window: Window) -> int:
        """Number of cleaned-``A`` pixels inside a full-frame window (both lungs)."""
        total = 0
        for side in ("right", "left"):
            part = self._clip(tau_ano, side, box_window)
            if part is not None:
                anomaly, local = part
                total += int(np.count_nonzero(anomaly.mask[local]))
        return total

    def _clip(self, tau_ano: float, side: str, box_window: Window) -> tuple[SideAnomaly, Window] | None:
        lung_window = self.window(side)
        if lung_window is None or masks.intersect_window(lung_window, box_window) is None:
            return None
        anomaly = self.side(tau_ano, side)
        overlap = masks.intersect_window(anomaly.window, box_window)
        return anomaly, _local(overlap, anomaly.window)

    def components_touching(self, tau_ano: float, box_window: Window) -> list[tuple[str, np.ndarray, Window]]:
        """Connected components of cleaned ``A`` that intersect ``box_window``.

        Returns, per side with any, ``(side, hxw bool patch, full-frame window of the patch)``.
        """
        found = []
        for side in ("right", "left"):
            part = self._clip(tau_ano, side, box_window)
            if part is None:
                continue
            anomaly, local = part
            touching = anomaly.touching(local)
            if touching is not None:
                patch, patch_window = touching
                found.append((side, patch, _global(patch_window, anomaly.window)))
        return found


def _local(window: Window, origin: Window) -> Window:
    """A full-frame window in the coordinates of a crop that starts at ``origin``."""
    dy, dx = origin[0].start, origin[1].start
    return slice(window[0].start - dy, window[0].stop - dy), slice(window[1].start - dx, window[1].stop - dx)


def _global(window: Window, origin: Window) -> Window:
    """A crop-local window back in full-frame coordinates."""
    dy, dx = origin[0].start, origin[1].start
    return slice(window[0].start + dy, window[0].stop + dy), slice(window[1].start + dx, window[1].stop + dx)
