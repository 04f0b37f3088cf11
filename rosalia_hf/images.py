"""X-ray images from files and arrays of any bit depth, as the processor takes them (``HxW`` or ``HxWx3`` uint8).

- DICOM (``.dcm``/``.dicom``, or any file with the ``DICM`` preamble) goes through :mod:`rosalia_hf.dicom`, the
  reader the dataset build uses (modality LUT, VOI LUT or window, MONOCHROME1 inverted).
- PNG/JPEG/TIFF/BMP through Pillow: 8-bit grey stays as it is; 16-bit and 32-bit integer or float grey (``I;16``,
  ``I``, ``F``) is min-max scaled to 0..255 (never clipped: a 16-bit PNG opened by ``convert("L")`` would be
  almost all white); palette, grey+alpha and colour images become RGB.
- Arrays: uint8 as they are; other integers and floats min-max scaled (:func:`to_uint8`).

Every failure is an :class:`~rosalia_hf.errors.ImageReadError` (or ``DicomError``) with one line naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from rosalia_hf.errors import ImageReadError

DICOM_SUFFIXES = (".dcm", ".dicom")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IMAGE_SUFFIXES = DICOM_SUFFIXES + PICTURE_SUFFIXES
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit pixels from uint8 (unchanged), wider integers or floats (min-max scaled to 0..255, never clipped:
    a 16-bit X-ray keeps its contrast). Bool, complex and non-finite pixels are refused (``ValueError``)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"images must be integer or float pixels, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if values.size and not np.isfinite(values).all():
        raise ValueError("image has NaN or infinite pixels")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def pil_to_array(image) -> np.ndarray:
    """``HxW`` or ``HxWx3 uint8`` from a PIL image of any mode (wide grey scaled, not clipped)."""
    if image.mode in WIDE_MODES:
        return to_uint8(np.asarray(image))
    if image.mode in ("L", "RGB"):
        return np.array(image)  # a writable copy (torch warns on read-only arrays)
    if image.mode in ("1", "LA", "La"):
        return np.array(image.convert("L"))
    return np.array(image.convert("RGB"))  # P, RGBA, CMYK, YCbCr, ...


def is_dicom(path: Path) -> bool:
    """By suffix, else by the ``DICM`` marker after the 128-byte preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_image(path: str | Path) -> np.ndarray:
    """The X-ray at ``path`` as ``HxW`` (grey) or ``HxWx3`` uint8, in its original frame."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    if is_dicom(path):
        from rosalia_hf.dicom import read_dicom

        return read_dicom(path)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return pil_to_array(image)
    except (UnidentifiedImageError, ImportError):  # ImportError: ultralytics' Image.open patch wants pi_heif
        raise ImageReadError(f"{path}: not an image Pillow can decode (PNG, JPEG, TIFF, BMP or DICOM)") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt files
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ImageReadError(f"{path}: cannot decode the image ({reason})") from None


def as_image_array(image) -> np.ndarray:
    """An array (any integer/float dtype), a PIL image or a file path, as ``HxW``/``HxWx3`` uint8."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image, without importing PIL for arrays
        return pil_to_array(image)
    try:
        return to_uint8(np.asarray(image))
    except ValueError as error:
        raise ImageReadError(str(error)) from None


def find_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """The image files named by ``inputs`` (files as given, folders searched recursively for
    :data:`IMAGE_SUFFIXES`, sorted), and one line per input that does not exist or is a folder without images."""
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{path}: no {'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


__all__ = ["read_image", "as_image_array", "find_images", "to_uint8", "pil_to_array", "is_dicom",
           "IMAGE_SUFFIXES"]
