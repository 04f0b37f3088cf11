"""``phantom`` backends of the four vision cues: the synthetic cohort's ground truth plus controlled, seeded noise.

For the demo and tests only, never for real data: every backend reads ``<cohort_root>/phantom_truth/`` (the sidecar
that :mod:`mimic_ils.synth` writes) through ``synth.load_truth`` / ``synth.load_image_truth`` and refuses to start
(``CohortError``) on a cohort without it.

Noise model (all amplitudes in original-frame pixels are relative to the image's shorter side, so the same options
fit a 128 px test phantom and a 3000 px one):

* masks (lungs, heart, anatomy) are warped by one smooth random displacement field per image and step, amplitude
  ``jitter`` x shorter side; all labels of one image move together, as a real segmenter's errors would;
* boxes: each connected part of a lesion mask is found with probability ``1 - miss_rate``, its box jittered by
  ``box_jitter`` x box size, with a confidence in [0.35, 0.95] (Beta(5, 2) shaped); ``spurious_rate`` false
  boxes per image (Poisson mean) land inside the lungs with confidences in [0.05, 0.35];
* pseudo-normal: inside the edit mask the lesions are removed except for ``residual`` of their contrast, plus
  Gaussian noise of ``noise`` grey levels; outside the edit mask the input is returned untouched, so the anomaly
  map ``(image - pseudo_normal) / 255`` is strong inside lesions and noisy elsewhere.

Every random draw comes from ``numpy.random.default_rng`` seeded by ``(seed, step, dicom_id)`` through a stable
hash, so reruns are byte-identical. ``seconds_per_image`` (every backend, default 0) waits that long per image, as a
real model would take, for tests and benchmarks of how the build engines schedule slow stages; it changes no output.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from mimic_ils.schema import HEART_LABEL, LUNG_LABELS, BackendError, Box, CohortError
from mimic_ils.vision import base
from mimic_ils.vision.yolo import VINBIG_CLASSES

if TYPE_CHECKING:
    from mimic_ils.synth import PhantomImageTruth

# Which VinBigData classes a detector would plausibly fire for each MIMIC-ILS lesion type (first = most likely).
LESION_TO_VINBIG = {
    "cardiomegaly": ("Cardiomegaly",),
    "pneumonia": ("Consolidation", "Lung Opacity", "Infiltration"),
    "atelectasis": ("Atelectasis", "Lung Opacity"),
    "opacity": ("Lung Opacity", "Infiltration"),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "edema": ("Infiltration", "Lung Opacity"),
    "effusion": ("Pleural effusion",),
}
SPURIOUS_CLASSES = ("Lung Opacity", "Infiltration", "Nodule/Mass", "Pleural thickening", "Calcification")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` that is the same in every process (unlike ``hash()``)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class PhantomTruth:
    """Read access to a synthetic cohort's ``phantom_truth/`` sidecar, shared by the four phantom backends."""

    def __init__(self, cohort_root: str | Path) -> None:
        from mimic_ils import synth

        self.root = Path(cohort_root)
        self._lesion_types: dict[str, tuple[str, ...]] = {}
        for study in synth.load_truth(self.root).values():  # CohortError when the sidecar is missing
            types = tuple(lesion["lesion_type"] for lesion in study.get("lesions", []))
            for image in study.get("images", []):
                self._lesion_types[image["dicom_id"]] = types

    def load(self, dicom_id: str) -> PhantomImageTruth:
        """The truth of one frontal image; raises ``BackendError`` when the sidecar has none for it."""
        from mimic_ils import synth

        try:
            return synth.load_image_truth(self.root, dicom_id)
        except CohortError as error:
            raise BackendError(f"phantom: {error}") from None

    def lesion_types(self, dicom_id: str, count: int) -> tuple[str, ...]:
        """The lesion type of each of the image's ``count`` lesion masks, in sidecar order."""
        return self._lesion_types.get(dicom_id, ("opacity",) * count)[:count]


def smooth_displacement(shape: tuple[int, int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A (2, H, W) float field of smooth random shifts whose typical size is ``amplitude`` pixels.

    White noise on a coarse 8x8 grid, upsampled with a cubic spline: wavelengths of about an eighth of the image.
    """
    from skimage.transform import resize

    field = np.stack([resize(rng.standard_normal((8, 8)), shape, order=3, mode="reflect") for _ in range(2)])
    scale = field.std() or 1.0
    return field / scale * amplitude


def warp_masks(masks: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Warp a (N, H, W) bool stack by a (2, H, W) displacement field (nearest neighbour, same frame)."""
    height, width = masks.shape[1:]
    rows = np.clip(np.rint(np.arange(height)[:, None] + displacement[0]), 0, height - 1).astype(np.intp)
    cols = np.clip(np.rint(np.arange(width)[None, :] + displacement[1]), 0, width - 1).astype(np.intp)
    # one flat gather per mask: each result is a C-contiguous HxW mask, as a real segmenter's (masks[:, rows, cols]
    # would interleave the N masks pixel by pixel)
    return np.take(masks.reshape(len(masks), -1), rows * width + cols, axis=1)


def _check_frame(image: np.ndarray, truth: PhantomImageTruth, dicom_id: str) -> None:
    if image.shape[:2] != truth.display.shape:
        raise BackendError(f"{dicom_id}: image is {image.shape[:2]} but its phantom truth is {truth.display.shape}")


class _PhantomBackend:
    """Shared options and the per-image error isolation of the four phantom backends."""

    name = "phantom"
    step = ""

    def __init__(self, cohort_root: str | Path, seed: int = 0, seconds_per_image: float = 0.0, **_: object) -> None:
        self.truth = PhantomTruth(cohort_root)
        self.seed = seed
        self.seconds_per_image = max(0.0, float(seconds_per_image))

    def _rng(self, dicom_id: str) -> np.random.Generator:
        return np.random.default_rng(stable_seed(self.seed, self.step, dicom_id))

    def _displacement(self, shape: tuple[int, int], dicom_id: str) -> np.ndarray:
        return smooth_displacement(shape, getattr(self, "jitter", 0.0) * min(shape), self._rng(dicom_id))

    def _each(self, function, *columns: Sequence[object]) -> list[object]:
        results: list[object] = []
        for row in zip(*columns, strict=True):
            if self.seconds_per_image:
                time.sleep(self.seconds_per_image)
            try:
                results.append(function(*row))
            except BackendError as error:
                results.append(error)
        return results


@base.register("lungs_heart", "phantom")
class PhantomLungsHeart(_PhantomBackend):
    """Ground-truth lungs and heart, warped by a smooth field of amplitude ``jitter`` x shorter side."""

    step = "lungs_heart"

    def __init__(self, cohort_root: str | Path, seed: int = 0, jitter: float = 0.01, **options: object) -> None:
        super().__init__(cohort_root, seed, **options)
        self.jitter = jitter

    def segment(self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]) -> list[base.LungsHeart | BackendError]:
        return self._each(self._segment_one, images, dicom_ids)

    def _segment_one(self, image: np.ndarray, dicom_id: str) -> base.LungsHeart:
        truth = self.truth.load(dicom_id)
        _check_frame(image, truth, dicom_id)
        shift = self._displacement(truth.heart.shape, dicom_id)
        right, left, heart = warp_masks(np.stack([truth.lung_right, truth.lung_left, truth.heart]), shift)
        return base.LungsHeart(lung_right=right, lung_left=left & ~right, heart=heart)


@base.register("anatomy", "phantom")
class PhantomAnatomy(_PhantomBackend):
    """Ground-truth 15 lung labels and heart, all warped together by one smooth field per image."""

    step = "anatomy"

    def __init__(self, cohort_root: str | Path, seed: int = 0, jitter: float = 0.015, **options: object) -> None:
        super().__init__(cohort_root, seed, **options)
        self.jitter = jitter

    def segment(
        self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]
    ) -> list[dict[str, np.ndarray] | BackendError]:
        return self._each(self._segment_one, images, dicom_ids)

    def _segment_one(self, image: np.ndarray, dicom_id: str) -> dict[str, np.ndarray]:
        truth = self.truth.load(dicom_id)
        _check_frame(image, truth, dicom_id)
        shift = self._displacement(truth.heart.shape, dicom_id)
        warped = warp_masks(np.concatenate([truth.anatomy, truth.heart[None]]), shift)
        return dict(zip((*LUNG_LABELS, HEART_LABEL), warped, strict=True))


@base.register("pseudo_normal", "phantom")
class PhantomPseudoNormal(_PhantomBackend):
    """The lesion-free rendering inside the edit mask, with ``residual`` lesion contrast left and ``noise`` grey
    levels of Gaussian noise; the input outside the edit mask."""

    step = "pseudo_normal"

    def __init__(
        self, cohort_root: str | Path, seed: int = 0, residual: float = 0.15, noise: float = 3.0, **options: object
    ) -> None:
        super().__init__(cohort_root, seed, **options)
        self.residual, self.noise = residual, noise

    def edit(
        self, images: Sequence[np.ndarray], edit_masks: Sequence[np.ndarray], dicom_ids: Sequence[str]
    ) -> list[np.ndarray | BackendError]:
        return self._each(self._edit_one, images, edit_masks, dicom_ids)

    def _edit_one(self, image: np.ndarray, edit_mask: np.ndarray, dicom_id: str) -> np.ndarray:
        truth = self.truth.load(dicom_id)
        _check_frame(image, truth, dicom_id)
        edit_mask = np.asarray(edit_mask, bool)
        if edit_mask.shape != image.shape[:2] or not edit_mask.any():
            raise BackendError(f"{dicom_id}: edit mask is empty or not in the image frame {image.shape[:2]}")
        grey = image if image.ndim == 2 else image.mean(axis=2)
        lesion_contrast = truth.display.astype(np.float64) - truth.normal.astype(np.float64)
        noise = self._rng(dicom_id).normal(0.0, self.noise, grey.shape)
        edited = grey.astype(np.float64) - (1.0 - self.residual) * lesion_contrast + noise
        out = np.where(edit_mask, edited, grey.astype(np.float64))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@base.register("lesion_boxes", "phantom")
class PhantomLesionBoxes(_PhantomBackend):
    """Boxes around the connected parts of the ground-truth lesions, with misses, jitter and spurious boxes."""

    step = "lesion_boxes"

    def __init__(
        self,
        cohort_root: str | Path,
        seed: int = 0,
        miss_rate: float = 0.15,
        box_jitter: float = 0.06,
        spurious_rate: float = 0.3,
        min_area: float = 0.0005,
        **options: object,
    ) -> None:
        super().__init__(cohort_root, seed, **options)
        self.miss_rate, self.box_jitter = miss_rate, box_jitter
        self.spurious_rate, self.min_area = spurious_rate, min_area

    def detect(self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]) -> list[list[Box] | BackendError]:
        return self._each(self._detect_one, images, dicom_ids)

    def _detect_one(self, image: np.ndarray, dicom_id: str) -> list[Box]:
        truth = self.truth.load(dicom_id)
        _check_frame(image, truth, dicom_id)
        rng = self._rng(dicom_id)
        types = self.truth.lesion_types(dicom_id, len(truth.lesions))
        boxes = [
            box
            for mask, lesion_type in zip(truth.lesions, types, strict=True)
            for box in self._lesion_boxes(mask, lesion_type, rng)
        ]
        boxes += self._spurious_boxes(truth.lung_right | truth.lung_left, rng)
        return sorted(boxes, key=lambda box: -box.confidence)

    def _lesion_boxes(self, mask: np.ndarray, lesion_type: str, rng: np.random.Generator) -> list[Box]:
        labels, count = ndimage.label(mask)
        min_pixels = self.min_area * mask.size
        boxes = []
        for part, region in enumerate(ndimage.find_objects(labels), start=1):
            if region is None or (labels[region] == part).sum() < min_pixels or rng.random() < self.miss_rate:
                continue
            name = str(rng.choice(LESION_TO_VINBIG.get(lesion_type, ("Lung Opacity",))))
            confidence = 0.35 + 0.6 * rng.beta(5.0, 2.0)
            boxes.append(self._jittered_box(region, mask.shape, name, confidence, rng))
        return boxes

    def _jittered_box(self, region, shape, name: str, confidence: float, rng: np.random.Generator) -> Box:
        y0, y1, x0, x1 = region[0].start, region[0].stop, region[1].start, region[1].stop
        dy, dx = (y1 - y0) * self.box_jitter, (x1 - x0) * self.box_jitter
        y0, y1 = np.array([y0, y1], float) + rng.normal(0.0, max(dy, 0.5), 2)
        x0, x1 = np.array([x0, x1], float) + rng.normal(0.0, max(dx, 0.5), 2)
        return _clipped_box(x0, y0, x1, y1, shape, confidence, name)

    def _spurious_boxes(self, lungs: np.ndarray, rng: np.random.Generator) -> list[Box]:
        points = np.argwhere(lungs)
        if not len(points):
            return []
        boxes = []
        side = min(lungs.shape)
        for _ in range(rng.poisson(self.spurious_rate)):
            cy, cx = points[rng.integers(len(points))]
            half_h, half_w = rng.uniform(0.03, 0.08, 2) * side
            name = str(rng.choice(SPURIOUS_CLASSES))
            boxes.append(
                _clipped_box(
                    cx - half_w, cy - half_h, cx + half_w, cy + half_h, lungs.shape, 0.05 + 0.3 * rng.random(), name
                )
            )
        return boxes


def _clipped_box(x0: float, y0: float, x1: float, y1: float, shape, confidence: float, name: str) -> Box:
    height, width = shape
    x0, x1 = sorted((float(np.clip(x0, 0, width - 1)), float(np.clip(x1, 1, width))))
    y0, y1 = sorted((float(np.clip(y0, 0, height - 1)), float(np.clip(y1, 1, height))))
    x1, y1 = max(x1, x0 + 1.0), max(y1, y0 + 1.0)
    return Box(x0, y0, x1, y1, float(confidence), VINBIG_CLASSES.index(name), name)
