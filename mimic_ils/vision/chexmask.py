"""Lungs and heart from the CheXmask database (Gaggion et al., Sci. Data 2024), backend ``chexmask``.

CheXmask publishes HybridGNet segmentations of MIMIC-CXR-JPG (and other datasets) as one CSV per dataset, e.g.
``MIMIC-CXR-JPG.csv`` with the columns ``dicom_id, Dice RCA (Mean), Dice RCA (Max), Landmarks, Left Lung,
Right Lung, Heart, Height, Width``. Masks are run-length encoded over the row-major flattened ``Height x Width``
image as ``"start length start length ..."`` with 1-based starts. ``Right Lung`` is the patient's right (image
left). Rows whose ``Dice RCA (Mean)`` is below 0.7 (the authors' recommended quality threshold) are refused.

The CSV is large (about 240K rows, several GB), so it is never parsed whole: the first lookup scans it once and
keeps the byte offset of each ``dicom_id``'s line; every later lookup seeks to its line and parses only that row.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.transform import resize

from mimic_ils.files import atomic_write_bytes
from mimic_ils.schema import BackendError
from mimic_ils.vision import base

logger = logging.getLogger(__name__)

CSV_NAME = "CheXmask MIMIC-CXR-JPG.csv"
DICE_COLUMN = "Dice RCA (Mean)"
MIN_DICE = 0.7
REQUIRED_COLUMNS = ("dicom_id", DICE_COLUMN, "Right Lung", "Left Lung", "Heart", "Height", "Width")
ORGAN_COLUMNS = (("lung_right", "Right Lung"), ("lung_left", "Left Lung"), ("heart", "Heart"))
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ASPECT_TOLERANCE = 0.01


def rle_encode(mask: np.ndarray) -> str:
    """``HxW bool`` -> CheXmask RLE: ``"start length ..."`` over the row-major flattening, 1-based starts."""
    pixels = np.concatenate([[0], np.asarray(mask, dtype=bool).ravel().astype(np.int8), [0]])
    edges = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{start} {end - start}" for start, end in zip(starts, ends, strict=True))


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """CheXmask RLE -> ``HxW bool``; ValueError for an odd number of values or runs outside the image."""
    values = np.array(rle.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError(f"run-length code has an odd number of values ({values.size})")
    starts, lengths = values[::2] - 1, values[1::2]
    if values.size and (starts.min() < 0 or lengths.min() < 0 or (starts + lengths).max() > height * width):
        raise ValueError(f"run-length code runs outside a {height}x{width} image")
    flat = np.zeros(height * width + 1, dtype=np.int32)
    np.add.at(flat, starts, 1)
    np.add.at(flat, starts + lengths, -1)
    return (np.cumsum(flat[:-1]) > 0).reshape(height, width)


def parse_landmarks(text: str) -> np.ndarray | None:
    """The ``Landmarks`` cell (any bracketed/flat list of numbers) -> ``(N, 2)`` xy float32, None if not pairs."""
    numbers = _NUMBER.findall(text.encode())
    if not numbers or len(numbers) % 2:
        return None
    return np.array([float(number) for number in numbers], dtype=np.float32).reshape(-1, 2)


class CheXmaskIndex:
    """Byte offsets of a CheXmask CSV's rows by ``dicom_id``, built lazily with one pass over the file.

    ``cache`` (optional) is a JSON file that keeps the offsets between runs; it is reused only while the CSV's
    size and modification time are those it was built from, and rewritten otherwise.
    """

    def __init__(self, path: str | Path, cache: str | Path | None = None) -> None:
        self.path = Path(path)
        self.cache = Path(cache) if cache else None
        if not self.path.is_file():
            raise BackendError(f"CheXmask CSV {str(self.path)!r} not found (expected the {CSV_NAME} file)")
        if self.path.suffix in (".gz", ".zip", ".bz2", ".xz"):
            raise BackendError(f"CheXmask CSV {str(self.path)!r} is compressed; decompress it (rows are seeked)")
        with self.path.open("rb") as handle:
            self.columns = next(csv.reader([handle.readline().decode("utf-8-sig")]), [])
        missing = [column for column in REQUIRED_COLUMNS if column not in self.columns]
        if missing:
            raise BackendError(f"CheXmask CSV {str(self.path)!r} lacks the columns {missing}; has {self.columns}")
        self._key_column = self.columns.index("dicom_id")
        self._offsets: dict[str, int] | None = None
        self.scans = 0

    def _key(self, line: bytes) -> str:
        head = line.split(b",", self._key_column + 1)
        if b'"' not in b",".join(head[: self._key_column + 1]):
            return head[self._key_column].strip().decode()
        return next(csv.reader([line.decode()]))[self._key_column].strip()

    def _build(self) -> dict[str, int]:
        offsets: dict[str, int] = {}
        with self.path.open("rb") as handle:
            handle.readline()
            offset = handle.tell()
            for line in iter(handle.readline, b""):
                if line.strip():
                    offsets.setdefault(self._key(line), offset)
                offset += len(line)
        self.scans += 1
        return offsets

    def _stamp(self) -> dict[str, int]:
        stat = self.path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _read_cache(self) -> dict[str, int] | None:
        try:
            cached = json.loads(self.cache.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict) or cached.get("stamp") != self._stamp():
            return None
        return cached.get("offsets")

    def _write_cache(self, offsets: dict[str, int]) -> None:
        try:
            atomic_write_bytes(self.cache, json.dumps({"csv": str(self.path), "stamp": self._stamp(),
                                                       "offsets": offsets}).encode())
        except OSError as error:
            logger.warning("could not write the CheXmask index cache %s: %s", self.cache, error)

    def offsets(self) -> dict[str, int]:
        """``{dicom_id: byte offset of its line}``, from the cache or one scan of the file on first use."""
        if self._offsets is None:
            self._offsets = self._read_cache() if self.cache else None
            if self._offsets is None:
                self._offsets = self._build()
                if self.cache:
                    self._write_cache(self._offsets)
        return self._offsets

    def __contains__(self, dicom_id: str) -> bool:
        return dicom_id in self.offsets()

    def __len__(self) -> int:
        return len(self.offsets())

    def row(self, dicom_id: str) -> dict[str, str] | None:
        """The row of ``dicom_id`` as ``{column: text}``, or None when the CSV has none."""
        if dicom_id not in self:
            return None
        with self.path.open("rb") as handle:
            handle.seek(self.offsets()[dicom_id])
            values = next(csv.reader([handle.readline().decode()]))
        return dict(zip(self.columns, values, strict=False))


def _fit_to_image(masks: dict[str, np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray] | str:
    """Masks at the CSV's size -> the image's size (nearest) when the aspect ratios agree, else a reason."""
    height, width = next(iter(masks.values())).shape
    if (height, width) == shape:
        return masks
    if abs(height / width - shape[0] / shape[1]) > _ASPECT_TOLERANCE * height / width:
        return f"CheXmask masks are {height}x{width}, the image is {shape[0]}x{shape[1]} (another aspect ratio)"
    return {name: resize(mask, shape, order=0, anti_aliasing=False) > 0 for name, mask in masks.items()}


@base.register("lungs_heart", "chexmask")
class CheXmaskLungsHeart:
    """Lungs/heart backend reading precomputed CheXmask masks; ``csv`` (or ``weights``) is the local CSV path.

    ``index_cache`` is an optional JSON file keeping the row offsets between runs (see :class:`CheXmaskIndex`).

    ``device`` and ``batch_size`` are accepted for a uniform factory signature and unused (nothing runs a model).
    """

    name = "chexmask"

    def __init__(
        self,
        csv: str | Path | None = None,
        weights: str | Path | None = None,
        min_dice: float = MIN_DICE,
        index_cache: str | Path | None = None,
        device: object = None,
        batch_size: int | None = None,
    ) -> None:
        path = csv if csv is not None else weights
        if path is None:
            raise BackendError(f"the chexmask backend needs the path of the {CSV_NAME} file (option csv=...)")
        self.index = CheXmaskIndex(path, cache=index_cache)
        self.min_dice = min_dice

    def segment(self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]) -> list[base.LungsHeart | BackendError]:
        """Per image, the CheXmask lungs and heart (``HxW bool``, original frame), or a BackendError."""
        if len(images) != len(dicom_ids):
            raise ValueError(f"{len(images)} images but {len(dicom_ids)} dicom ids")
        return [self._one(image, dicom_id) for image, dicom_id in zip(images, dicom_ids, strict=True)]

    def _one(self, image: np.ndarray, dicom_id: str) -> base.LungsHeart | BackendError:
        row = self.index.row(dicom_id)
        if row is None:
            return BackendError(f"chexmask, {dicom_id}: no row in {self.index.path.name}")
        try:
            dice = float(row[DICE_COLUMN])
            height, width = int(float(row["Height"])), int(float(row["Width"]))
            masks = {name: rle_decode(row[column], height, width) for name, column in ORGAN_COLUMNS}
        except (ValueError, KeyError) as error:
            return BackendError(f"chexmask, {dicom_id}: unreadable row ({error})")
        if not dice >= self.min_dice:
            return BackendError(f"chexmask, {dicom_id}: {DICE_COLUMN} {dice:.3f} is below {self.min_dice}")
        fitted = _fit_to_image(masks, tuple(np.shape(image)[:2]))
        if isinstance(fitted, str):
            return BackendError(f"chexmask, {dicom_id}: {fitted}")
        landmarks = parse_landmarks(row.get("Landmarks", ""))
        if landmarks is not None and fitted is not masks:
            landmarks = landmarks * [np.shape(image)[1] / width, np.shape(image)[0] / height]
        return base.LungsHeart(landmarks=landmarks, **fitted)
