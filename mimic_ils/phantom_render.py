"""Phantom chest radiographs for the synthetic cohort: geometry, anatomy masks and lesions (NumPy + SciPy only).

Everything is rendered in the *display* domain, the image as the radiologist sees it: a float map in [0, 1]
(lungs dark, bones bright) quantised to ``HxW uint8`` (``I_max = 255``). Masks are ``HxW bool`` in the same frame;
"right" is the patient's right, which is the image's left half. A lesion raises the intensity of the normal image
by a known increment; its mask is where that increment is at least ``LESION_MASK_LEVEL`` (0.10, i.e. 25.5 grey
levels, the anomaly threshold of the paper's Eq. 1), so thresholding ``(display - normal) / 255`` at 0.10 gives the
lesion masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mimic_ils.schema import LUNG_LABELS

LESION_MASK_LEVEL = 0.10  # display units a lesion must add to belong to its mask: the anomaly threshold of Eq. 1
ZONE_BANDS = (("apical zone lung", 0.0, 0.16), ("upper zone lung", 0.16, 0.40), ("mid zone lung", 0.40, 0.66),
              ("lung base", 0.66, 1.01))  # fractions of each lung's height, top to bottom
CARDIOMEGALY_SCALE = (1.35, 1.2)  # heart semi-axes x, y relative to the normal heart


@dataclass(frozen=True)
class LesionSpec:
    """A lesion to draw: its type and the phantom regions it lies in (``LUNG_LABELS`` names or ``retrocardiac``).

    ``strength`` scales the peak increment (1.0 = typical); effusions and edema use ``regions`` only for the side.
    """

    lesion_type: str
    regions: tuple[str, ...]
    strength: float = 1.0


@dataclass(frozen=True)
class FrontalGeometry:
    """Normalised shape parameters of one frontal phantom (fractions of width / height)."""

    height: int
    width: int
    lung_cx: tuple[float, float]  # right lung (image left), left lung
    lung_cy: float
    lung_a: float
    lung_b: float
    diaphragm_y: tuple[float, float]
    heart_cx: float
    heart_cy: float
    heart_a: float
    heart_b: float
    rib_phase: float


@dataclass
class FrontalRender:
    """A rendered frontal phantom; arrays in the original frame (see the sidecar format in :mod:`mimic_ils.synth`)."""

    display: np.ndarray  # HxW uint8
    normal: np.ndarray  # HxW uint8, same image without lesions
    lung_right: np.ndarray  # HxW bool
    lung_left: np.ndarray
    heart: np.ndarray
    anatomy: np.ndarray  # (15, H, W) bool, schema.LUNG_LABELS order
    lesions: np.ndarray  # (K, H, W) bool
    boxes: np.ndarray  # (K, 4) float32 xyxy


def sample_geometry(rng: np.random.Generator, height: int, width: int) -> FrontalGeometry:
    """Draw a plausible frontal chest geometry with small random variation."""
    jitter = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731
    return FrontalGeometry(
        height=height, width=width,
        lung_cx=(0.30 + jitter(0.015), 0.70 + jitter(0.015)), lung_cy=0.45 + jitter(0.02),
        lung_a=0.165 + jitter(0.012), lung_b=0.33 + jitter(0.02),
        diaphragm_y=(0.70 + jitter(0.02), 0.72 + jitter(0.02)),
        heart_cx=0.56 + jitter(0.01), heart_cy=0.62 + jitter(0.015), heart_a=0.155 + jitter(0.01),
        heart_b=0.095 + jitter(0.008), rib_phase=float(rng.uniform(0.0, 1.0)),
    )


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised row (y) and column (x) coordinates, broadcastable to HxW."""
    yy = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xx = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    return yy, xx


def heart_mask(geometry: FrontalGeometry, enlarged: bool) -> np.ndarray:
    """HxW bool heart ellipse; an enlarged heart grows mostly towards the patient's left (image right)."""
    yy, xx = _grid(geometry.height, geometry.width)
    scale_x, scale_y = CARDIOMEGALY_SCALE if enlarged else (1.0, 1.0)
    cx = geometry.heart_cx + (0.035 if enlarged else 0.0)
    cy = geometry.heart_cy + (0.01 if enlarged else 0.0)
    return ((xx - cx) / (geometry.heart_a * scale_x)) ** 2 + ((yy - cy) / (geometry.heart_b * scale_y)) ** 2 <= 1.0


def lung_masks(geometry: FrontalGeometry, heart: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and left lung (HxW bool): ellipses cut by domed hemidiaphragms, minus the mediastinum and heart."""
    yy, xx = _grid(geometry.height, geometry.width)
    lungs = []
    for index, cx in enumerate(geometry.lung_cx):
        widening = np.clip((yy - geometry.lung_cy + 0.5 * geometry.lung_b) / geometry.lung_b, 0.0, 1.0)
        stretch = 1.0 + 0.22 * widening  # the bases are wider than the apices
        ellipse = ((xx - cx) / (geometry.lung_a * stretch)) ** 2 + ((yy - geometry.lung_cy) / geometry.lung_b) ** 2
        dome = geometry.diaphragm_y[index] + 0.08 * ((xx - cx) / geometry.lung_a) ** 2
        mediastinum = np.abs(xx - 0.5) < 0.055
        lungs.append((ellipse <= 1.0) & (yy <= dome) & ~mediastinum & ~heart)
    return lungs[0], lungs[1]


def anatomy_masks(lung_right: np.ndarray, lung_left: np.ndarray) -> np.ndarray:
    """(15, H, W) bool masks of ``schema.LUNG_LABELS``: zones by height bands, lobes by fissure-like lines."""
    masks = {"right lung": lung_right, "left lung": lung_left}
    for side, lung in (("right", lung_right), ("left", lung_left)):
        rows = np.flatnonzero(lung.any(axis=1))
        top, bottom = (rows[0], rows[-1] + 1) if rows.size else (0, lung.shape[0])
        yy = (np.arange(lung.shape[0], dtype=np.float32)[:, None] - top) / max(bottom - top, 1)
        for name, start, stop in ZONE_BANDS:
            masks[f"{side} {name}"] = lung & (yy >= start) & (yy < stop)
        masks.update(_lobes(side, lung, yy))
    return np.stack([masks[label] for label in LUNG_LABELS])


def _lobes(side: str, lung: np.ndarray, yy: np.ndarray) -> dict[str, np.ndarray]:
    """Lobes of one lung: the oblique fissure runs from high medially to the lateral base; the right minor
    fissure is horizontal at 45% of the lung height."""
    cols = np.flatnonzero(lung.any(axis=0))
    left_edge, right_edge = (cols[0], cols[-1] + 1) if cols.size else (0, lung.shape[1])
    xx = (np.arange(lung.shape[1], dtype=np.float32)[None, :] - left_edge) / max(right_edge - left_edge, 1)
    lateral = 1.0 - xx if side == "right" else xx  # 0 at the mediastinum, 1 at the chest wall
    lower = lung & (yy >= 0.38 + 0.45 * lateral)
    if side == "right":
        upper = lung & ~lower & (yy < 0.45)
        return {"lung lower lobe right": lower, "lung upper lobe right": upper,
                "lung middle lobe right": lung & ~lower & ~upper}
    return {"lung lower lobe left": lower, "lung upper lobe left": lung & ~lower}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise (float32), filtered at quarter resolution and upsampled (fast)."""
    small_shape = (shape[0] // 4 + 1, shape[1] // 4 + 1)
    small = ndimage.gaussian_filter(rng.standard_normal(small_shape).astype(np.float32), max(sigma / 4, 0.5))
    noise = _upsample_linear(_upsample_linear(small, shape[0], axis=0), shape[1], axis=1)
    return noise / max(float(noise.std()), 1e-6)


def _upsample_linear(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``array`` to ``size`` samples along ``axis`` (pixel centres aligned)."""
    position = np.clip((np.arange(size, dtype=np.float32) + 0.5) * array.shape[axis] / size - 0.5, 0,
                       array.shape[axis] - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, array.shape[axis] - 1)
    weight = (position - low).astype(np.float32).reshape([-1 if dim == axis else 1 for dim in range(array.ndim)])
    return np.take(array, low, axis=axis) * (1 - weight) + np.take(array, high, axis=axis) * weight


def _soften(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A bool mask blurred into a float32 map in [0, 1] (soft anatomical edges)."""
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma, truncate=2.0)


def _soften_inside(mask: np.ndarray) -> np.ndarray:
    """A soft version of ``mask`` that is ~0 outside it, so a lesion's increment never leaks past its region."""
    return _soften(ndimage.binary_erosion(mask, iterations=2), 1.0)


def _ribs_and_clavicles(geometry: FrontalGeometry) -> np.ndarray:
    """HxW float32 bone map in [0, 1]: posterior rib arcs on both sides and the clavicles."""
    yy, xx = _grid(geometry.height, geometry.width)
    offset = np.abs(xx - 0.5) / 0.45
    bones = np.zeros((geometry.height, geometry.width), np.float32)
    rows = yy[:, 0]
    for k in range(10):
        y_k = 0.10 + (k + geometry.rib_phase * 0.5) * 0.062
        band = slice(*np.searchsorted(rows, (y_k - 0.10, y_k + 0.27)))  # rows the arc can reach (speed)
        arc = y_k + 0.22 * offset**1.8 - 0.06 * offset
        bones[band] += np.exp(-(((yy[band] - arc) / 0.011) ** 2)) * (offset < 1.0)
    for sign in (-1, 1):
        t = np.clip((xx - 0.5) * sign / 0.38, 0.0, 1.0)
        clavicle_y = 0.13 - 0.06 * t
        bones += 1.3 * np.exp(-(((yy - clavicle_y) / 0.012) ** 2)) * ((xx - 0.5) * sign > 0.04) * (t < 1.0)
    return np.clip(bones, 0.0, 1.3)


def _base_image(geometry: FrontalGeometry, lungs: np.ndarray, heart: np.ndarray, textures: dict) -> np.ndarray:
    """Display-domain float map of the chest without lesions."""
    yy, xx = _grid(geometry.height, geometry.width)
    sigma = 0.006 * geometry.width
    radius = np.sqrt(((xx - 0.5) / 0.48) ** 2 + ((yy - 0.6) / 0.66) ** 2)
    body = np.clip((1.0 - radius) / 0.04, 0.0, 1.0)
    image = 0.04 + 0.50 * body + 0.10 * body * np.clip((yy - 0.55) / 0.3, 0.0, 1.0)
    image += 0.20 * np.exp(-(((xx - 0.5) / 0.06) ** 2)) * body  # spine and mediastinum
    image += 0.08 * _soften(heart, sigma)
    lung_soft = _soften(lungs, sigma)
    hilum = np.exp(-(((np.abs(xx - 0.5) - 0.12) / 0.08) ** 2 + ((yy - 0.45) / 0.10) ** 2))
    image -= lung_soft * (0.36 - 0.035 * textures["vessels"] - 0.10 * hilum)
    image += 0.11 * textures["bones"] * body
    return image + 0.008 * textures["grain"]


def _box(mask: np.ndarray) -> np.ndarray:
    """xyxy float32 box (pixel edges) of a non-empty HxW bool mask; zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return np.zeros(4, np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def _region(name: str, anatomy: dict[str, np.ndarray]) -> np.ndarray:
    """The mask of a named lesion region: a LUNG_LABELS mask, or ``retrocardiac`` (the medial part of the left lung
    base, next to the heart)."""
    if name != "retrocardiac":
        return anatomy[name]
    base = anatomy["left lung base"]
    cols = np.flatnonzero(base.any(axis=0))
    medial = np.zeros_like(base)
    if cols.size:
        medial[:, : int(np.percentile(cols, 65)) + 1] = True
    return base & medial


def _focal_increment(region: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Irregular blob (sum of 3 anisotropic Gaussians) centred deep inside ``region``, confined to it."""
    distance = ndimage.distance_transform_edt(region[::2, ::2]) * 2.0  # half resolution is plenty (speed)
    deep = np.argwhere(distance >= 0.7 * distance.max())
    cy, cx = deep[rng.integers(len(deep))]
    distance_at_center = float(distance[cy, cx])
    cy, cx = 2 * cy, 2 * cx
    # at least ~5% of the short side, so lesions in thin regions (retrocardiac, apices) stay visible; the region
    # boundary then clips the blob
    radius = float(np.clip(distance_at_center * 0.95, 0.05 * min(region.shape), 0.12 * min(region.shape)))
    yy = np.arange(region.shape[0], dtype=np.float32)[:, None]
    xx = np.arange(region.shape[1], dtype=np.float32)[None, :]
    blob = np.zeros(region.shape, np.float32)
    for _ in range(3):  # axis-aligned Gaussians are separable: an outer product of two 1-D profiles
        dy, dx = rng.uniform(-0.35, 0.35, size=2) * radius
        sy, sx = rng.uniform(0.45, 0.75, size=2) * radius
        blob += np.exp(-0.5 * ((yy - cy - dy) / sy) ** 2) * np.exp(-0.5 * ((xx - cx - dx) / sx) ** 2)
    blob /= blob.max()
    peak = float(rng.uniform(0.30, 0.40)) * strength
    return peak * blob * _soften_inside(region)


def _effusion_increment(lung: np.ndarray, base: np.ndarray, side: str, rng: np.random.Generator,
                        strength: float) -> np.ndarray:
    """Basal fluid with a meniscus rising towards the chest wall, confined to the lung base."""
    rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    top, bottom = rows[0], rows[-1] + 1
    yy = np.arange(lung.shape[0], dtype=np.float32)[:, None]
    xx = (np.arange(lung.shape[1], dtype=np.float32)[None, :] - cols[0]) / max(cols[-1] + 1 - cols[0], 1)
    lateral = np.clip(1.0 - xx if side == "right" else xx, 0.0, 1.0)
    level = bottom - rng.uniform(0.16, 0.26) * (bottom - top)
    meniscus = level - 0.07 * (bottom - top) * lateral**2
    fluid = base & (yy >= meniscus)
    return float(rng.uniform(0.34, 0.42)) * strength * _soften_inside(fluid)


def _edema_increment(geometry: FrontalGeometry, lungs: np.ndarray, rng: np.random.Generator,
                     strength: float) -> np.ndarray:
    """Diffuse bilateral perihilar haze inside both lungs."""
    yy, xx = _grid(geometry.height, geometry.width)
    perihilar = np.exp(-(((np.abs(xx - 0.5) - 0.1) / 0.2) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    patchy = _smooth_noise(rng, lungs.shape, 0.02 * geometry.width)
    haze = (0.09 + 0.13 * perihilar + 0.025 * patchy) * strength
    return np.clip(haze, 0.0, None) * _soften_inside(lungs)


def _lesion_increment(spec: LesionSpec, geometry: FrontalGeometry, anatomy: dict[str, np.ndarray],
                      lungs: np.ndarray, heart: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(increment HxW float32, mask HxW bool) of one lesion."""
    if spec.lesion_type == "cardiomegaly":
        return np.zeros(lungs.shape, np.float32), heart
    if spec.lesion_type == "edema":
        increment = _edema_increment(geometry, lungs, rng, spec.strength)
        return increment, lungs & (increment >= LESION_MASK_LEVEL)
    increment, mask = np.zeros(lungs.shape, np.float32), np.zeros(lungs.shape, bool)
    for name in spec.regions:
        region = _region(name, anatomy)
        if spec.lesion_type == "effusion":
            side = name.split()[0]
            part = _effusion_increment(anatomy[f"{side} lung"], region, side, rng, spec.strength)
        else:
            part = _focal_increment(region, rng, spec.strength)
        increment += part
        mask |= region & (part >= LESION_MASK_LEVEL)
    return increment, mask


def render_frontal(geometry: FrontalGeometry, lesions: list[LesionSpec], rng: np.random.Generator) -> FrontalRender:
    """Render one frontal phantom with ``lesions`` and the same phantom without them (the ideal pseudo-normal)."""
    shape = (geometry.height, geometry.width)
    textures = {"vessels": _smooth_noise(rng, shape, 0.012 * geometry.width), "bones": _ribs_and_clavicles(geometry),
                "grain": rng.standard_normal(shape).astype(np.float32)}
    enlarged = any(spec.lesion_type == "cardiomegaly" for spec in lesions)
    normal_heart = heart_mask(geometry, enlarged=False)
    normal_lungs = np.logical_or(*lung_masks(geometry, normal_heart))
    normal = _base_image(geometry, normal_lungs, normal_heart, textures)
    heart = heart_mask(geometry, enlarged=enlarged)
    lung_right, lung_left = lung_masks(geometry, heart)
    lungs = lung_right | lung_left
    anatomy = anatomy_masks(lung_right, lung_left)
    named = dict(zip(LUNG_LABELS, anatomy, strict=True))
    display = _base_image(geometry, lungs, heart, textures) if enlarged else normal.copy()
    lesion_masks = []
    for spec in lesions:
        increment, mask = _lesion_increment(spec, geometry, named, lungs, heart, rng)
        display += increment
        lesion_masks.append(mask)
    masks = np.stack(lesion_masks) if lesion_masks else np.zeros((0, *shape), bool)
    boxes = np.stack([_box(mask) for mask in masks]) if lesion_masks else np.zeros((0, 4), np.float32)
    return FrontalRender(display=to_uint8(display), normal=to_uint8(normal), lung_right=lung_right,
                         lung_left=lung_left, heart=heart, anatomy=anatomy, lesions=masks, boxes=boxes)


def render_lateral(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A lateral-view phantom (HxW uint8): one lung field, the heart anteriorly, the spine posteriorly."""
    yy, xx = _grid(height, width)
    body = np.clip((1.0 - np.sqrt(((xx - 0.5) / 0.44) ** 2 + ((yy - 0.55) / 0.62) ** 2)) / 0.03, 0.0, 1.0)
    lung = ((((xx - 0.5) / 0.30) ** 2 + ((yy - 0.45) / 0.33) ** 2) <= 1.0) & (yy < 0.74 - 0.05 * (xx - 0.5))
    heart = ((xx - 0.36) / 0.15) ** 2 + ((yy - 0.63) / 0.13) ** 2 <= 1.0
    image = 0.04 + 0.52 * body
    image -= 0.30 * _soften(lung, 3)
    image += 0.17 * _soften(heart & lung, 3)  # the heart overlaps the lung field: grey, not a hole
    vertebrae = (np.abs(xx - 0.78) < 0.05) & (np.sin(yy * 60.0) > -0.6) & (yy > 0.1)
    image += 0.18 * _soften(vertebrae, 1.5) * body + 0.10 * np.exp(-(((xx - 0.17) / 0.015) ** 2)) * body
    image += 0.03 * _smooth_noise(rng, (height, width), 0.01 * width) + 0.008 * rng.standard_normal((height, width))
    return to_uint8(image)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Display float map in [0, 1] -> HxW uint8 (rounded, clipped)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
