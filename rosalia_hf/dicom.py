"""Read a chest X-ray DICOM as the radiologist sees it.

:func:`read_dicom` returns the image in its original resolution (``HxW``, rows x columns) after the modality LUT
(rescale slope/intercept or Modality LUT Sequence), the VOI LUT (VOI LUT Sequence, else Window Center/Width with
the DICOM linear, linear-exact or sigmoid function, else the full range of the modality output), with
MONOCHROME1 inverted so that lungs are dark and bones bright. The default output is ``HxW uint8`` (``I_max = 255``
of the paper's Eq. 1); ``out_dtype=np.float32`` gives values in [0, 1].

Every failure is a :class:`~rosalia_hf.errors.DicomError` whose message is one line naming the file and reason.
The dataset build (``mimic_ils.dicom``) and ``rosalia predict`` read through this one module, so a model sees at
inference the pixels its training images were made from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rosalia_hf.errors import DicomError

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class DicomHeader:
    """What the pipeline needs from a DICOM header, without decoding pixels."""

    path: str
    view: str
    rows: int
    columns: int
    photometric: str
    bits_stored: int
    transfer_syntax: str


def _dcmread(path: str | Path, *, stop_before_pixels: bool = False, defer_size: int | None = None):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except FileNotFoundError:
        raise DicomError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DicomError(f"{path}: is a directory, not a DICOM file") from None
    except InvalidDicomError as error:
        raise DicomError(f"{path}: not a DICOM file ({_one_line(error)})") from None
    except Exception as error:  # pydicom raises many types on corrupt or truncated files
        raise DicomError(f"{path}: corrupt or truncated DICOM ({type(error).__name__}: {_one_line(error)})") \
            from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] if text else type(error).__name__


def _header_from(ds, path: str | Path) -> DicomHeader:
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if not photometric:
        raise DicomError(f"{path}: no PhotometricInterpretation")
    if photometric not in MONOCHROME:
        raise DicomError(f"{path}: unsupported photometric interpretation {photometric!r} (need MONOCHROME1/2)")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise DicomError(f"{path}: missing or zero Rows/Columns")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return DicomHeader(path=str(path), view=str(ds.get("ViewPosition", "") or ""), rows=rows, columns=columns,
                       photometric=photometric, bits_stored=int(ds.get("BitsStored", 0) or 0),
                       transfer_syntax=syntax)


def read_dicom_header(path: str | Path) -> DicomHeader:
    """View position, size, photometry and bit depth of a DICOM, read without its pixel data."""
    return _header_from(_dcmread(path, stop_before_pixels=True), path)


def check_dicom(path: str | Path) -> DicomHeader:
    """Validate a DICOM cheaply: parse its header and locate its pixel data without reading or decoding it.

    Raises :class:`DicomError` for the faults :func:`read_dicom` would hit: corrupt or truncated file, no pixel
    data, unknown photometric interpretation, native pixel data shorter than Rows x Columns x BitsAllocated or
    running past the end of the file.
    """
    ds = _dcmread(path, defer_size=4096)  # large values (the pixels) are skipped, not read
    header = _header_from(ds, path)
    check_pixel_attributes(ds, path)
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    if element is None:
        raise DicomError(f"{path}: no pixel data")
    length = getattr(element, "length", None)
    offset = getattr(element, "value_tell", None) or getattr(element, "file_tell", None)
    if length is None:  # already-read element (small image): measure its value
        length = len(element.value or b"")
    undefined = length == 0xFFFFFFFF or getattr(element, "is_undefined_length", False)
    size = os.path.getsize(path)
    if undefined:  # encapsulated (compressed) pixel data: the fragments must at least start inside the file
        if offset is not None and offset >= size:
            raise DicomError(f"{path}: truncated pixel data (encapsulated data starts past the end of file)")
        return header
    expected = header.rows * header.columns * int(ds.get("SamplesPerPixel", 1) or 1) * \
        int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("BitsAllocated", 16) or 16) // 8
    available = length if offset is None else min(length, size - offset)
    if available < expected:
        raise DicomError(f"{path}: truncated pixel data ({max(available, 0)} of {expected} bytes)")
    return header


def read_dicom(path: str | Path, *, out_dtype: type = np.uint8) -> np.ndarray:
    """The image as the radiologist sees it, ``HxW`` in the original frame (lungs dark, bones bright).

    ``out_dtype=np.uint8`` (default): values 0..255. ``out_dtype=np.float32``: values in [0, 1].
    """
    ds = _dcmread(path)
    header = _header_from(ds, path)
    check_pixel_attributes(ds, path)
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as error:
        raise DicomError(f"{path}: cannot decode pixel data ({type(error).__name__}: {_one_line(error)})") \
            from None
    if pixels.ndim == 3:  # multi-frame: the first frame is the radiograph
        pixels = pixels[0]
    if pixels.ndim != 2 or pixels.shape != (header.rows, header.columns):
        raise DicomError(f"{path}: pixel array of shape {pixels.shape} is not a {header.rows}x{header.columns} "
                             "greyscale image")
    values, low, high = apply_modality_lut(ds, pixels)
    display = apply_voi(ds, values, low, high)
    if not np.isfinite(display).all():  # e.g. a VOI LUT whose descriptor gives 0 output bits
        raise DicomError(f"{path}: {_voi_source(ds)} gives non-finite display values")
    if header.photometric == "MONOCHROME1":
        display = 1.0 - display
    if np.dtype(out_dtype) == np.uint8:
        return np.clip(np.rint(display * 255.0), 0, 255).astype(np.uint8)
    return display.astype(out_dtype)


def _integer(ds, keyword: str, path: str | Path) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DicomError(f"{path}: {keyword} {value!r} is not an integer") from None


def check_pixel_attributes(ds, path: str | Path) -> None:
    """DicomError for header values that would give a wrong image: inconsistent bit depths (BitsStored above
    BitsAllocated, HighBit other than BitsStored - 1) and a non-finite or non-numeric RescaleSlope,
    RescaleIntercept, WindowCenter or WindowWidth (which would turn the whole image black)."""
    allocated = _integer(ds, "BitsAllocated", path)
    stored = _integer(ds, "BitsStored", path)
    high = _integer(ds, "HighBit", path)
    if allocated is not None and not 1 <= allocated <= 64:
        raise DicomError(f"{path}: BitsAllocated {allocated} is out of range")
    if stored is not None and not 1 <= stored <= (allocated or 64):
        raise DicomError(f"{path}: BitsStored {stored} is inconsistent with BitsAllocated {allocated}")
    if high is not None and stored is not None and high != stored - 1:
        raise DicomError(
            f"{path}: HighBit {high} is inconsistent with BitsStored {stored} (expected {stored - 1})"
        )
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        _finite(ds, keyword, 0.0, path)


def _finite(ds, keyword: str, default: float, path: str | Path) -> float:
    """The (first) value of a numeric tag, ``default`` when absent or empty; DicomError naming the tag when it
    is not a finite number."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = _first_value(value)
    except (TypeError, ValueError, IndexError):
        raise DicomError(f"{path}: {keyword} {value!r} is not a number") from None
    if not np.isfinite(number):
        raise DicomError(f"{path}: {keyword} is {number} (not a finite number)")
    return number


def _voi_source(ds) -> str:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return "the VOI LUT Sequence"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return "WindowCenter/WindowWidth"
    return "the modality output"


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _lut(item, path_hint: str = "") -> tuple[int, int, np.ndarray]:
    """(entries, first mapped value, table) of a LUT sequence item; the table as float64."""
    descriptor = [int(value) for value in item.LUTDescriptor]
    entries = descriptor[0] or 65536
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        table = np.frombuffer(data, dtype="<u2" if descriptor[2] > 8 or len(data) >= 2 * entries else "u1")
    else:
        table = np.asarray(data if isinstance(data, list | tuple | np.ndarray) else [data])
    if table.size < entries:
        raise DicomError(f"{path_hint}: LUT has {table.size} of {entries} entries")
    return entries, descriptor[1], table[:entries].astype(np.float64)


def _apply_lut(values: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
    index = np.clip(np.rint(values - first), 0, table.size - 1).astype(np.int64)
    return table[index]


def apply_modality_lut(ds, pixels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Modality output (float64) and its possible range (low, high): Modality LUT Sequence or slope/intercept."""
    low, high = _stored_range(ds)
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        entries, first, table = _lut(ds.ModalityLUTSequence[0], str(ds.filename or ""))
        return _apply_lut(pixels.astype(np.float64), first, table), float(table.min()), float(table.max())
    path = str(getattr(ds, "filename", "") or "")
    slope = _finite(ds, "RescaleSlope", 1.0, path) or 1.0  # an empty or zero slope counts as 1, as before
    intercept = _finite(ds, "RescaleIntercept", 0.0, path)
    values = pixels.astype(np.float64) * slope + intercept
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return values, ends[0], ends[1]


def _first_value(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def apply_voi(ds, values: np.ndarray, low: float, high: float) -> np.ndarray:
    """VOI transform of the modality output to [0, 1] (before any MONOCHROME1 inversion)."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        entries, first, table = _lut(item, str(ds.filename or ""))
        bits = int(item.LUTDescriptor[2])
        if not 1 <= bits <= 16:
            raise DicomError(f"{ds.filename or ''}: VOI LUT Descriptor gives {bits} output bits (need 1..16)")
        return np.clip(_apply_lut(values, first, table) / (2.0**bits - 1), 0.0, 1.0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        path = str(getattr(ds, "filename", "") or "")
        center, width = _finite(ds, "WindowCenter", 0.0, path), _finite(ds, "WindowWidth", 1.0, path)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return window(values, center, width, function)
    return np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1]: LINEAR, LINEAR_EXACT or SIGMOID."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-9)))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / max(width, 1e-9) + 0.5, 0.0, 1.0)
    width = max(width, 1.0)
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5, 0.0, 1.0)
