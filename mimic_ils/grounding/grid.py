"""The working grid of Algorithm 1: the original frame sampled every ``stride`` pixels.

The pseudo-normal editor and the anatomy model see the radiograph at 512 px, so the anomaly map carries no detail
finer than a few original pixels; running c1-c4, the connected components and Refine on a grid whose longest
side is at most ``GroundingConfig.work_max_side`` keeps a 2048x2500 image within the time budget. Only that step
uses the grid: quality control, location verification and the returned masks are in the original frame, and a
lesion mask is brought back by repeating each grid pixel into its ``stride x stride`` block and intersecting with
the full-resolution lungs. With ``stride == 1`` every function here is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from mimic_ils.grounding import masks
from mimic_ils.schema import Box


@dataclass(frozen=True)
class Grid:
    """``stride``: original pixels per grid pixel; ``shape``: the original ``(H, W)``."""

    stride: int
    shape: tuple[int, int]

    @classmethod
    def for_shape(cls, shape: tuple[int, int], max_side: int | None) -> Grid:
        """The smallest stride that brings the longest side to at most ``max_side`` (None: full resolution)."""
        stride = 1 if not max_side else max(1, math.ceil(max(shape) / max_side))
        return cls(stride=stride, shape=(int(shape[0]), int(shape[1])))

    def down(self, array: np.ndarray) -> np.ndarray:
        """An ``HxW`` array sampled on the grid (a contiguous copy; the array itself when ``stride == 1``)."""
        return array if self.stride == 1 else np.ascontiguousarray(array[:: self.stride, :: self.stride])

    def box(self, box: Box) -> Box:
        """A box in grid coordinates (``xyxy`` divided by the stride)."""
        if self.stride == 1:
            return box
        s = self.stride
        return Box(box.x0 / s, box.y0 / s, box.x1 / s, box.y1 / s, box.confidence, box.class_id, box.class_name)

    def up(self, small: np.ndarray, *domain: np.ndarray) -> np.ndarray:
        """A grid mask back in the original frame (``HxW bool``), restricted to the union of ``domain`` masks."""
        if self.stride == 1:
            return small & np.logical_or.reduce(domain)
        full = np.zeros(self.shape, dtype=bool)
        window = masks.bbox(small)
        if window is None:
            return full
        s = self.stride
        block = np.repeat(np.repeat(small[window], s, axis=0), s, axis=1)
        r0, c0 = window[0].start * s, window[1].start * s
        r1, c1 = min(self.shape[0], r0 + block.shape[0]), min(self.shape[1], c0 + block.shape[1])
        inside = np.logical_or.reduce([mask[r0:r1, c0:c1] for mask in domain])
        full[r0:r1, c0:c1] = block[: r1 - r0, : c1 - c0] & inside
        return full


class GridMasks(Mapping[str, np.ndarray]):
    """A read-only view of a dict of ``HxW bool`` masks that samples each one on the grid when first read."""

    def __init__(self, masks_by_name: Mapping[str, np.ndarray], grid: Grid) -> None:
        self._source = masks_by_name
        self._grid = grid
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._grid.down(self._source[name])
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)
