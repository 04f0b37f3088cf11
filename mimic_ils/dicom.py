"""Read a chest X-ray DICOM for the build: :mod:`rosalia_hf.dicom`, with its errors as ``DicomReadError``.

The pixel pipeline (modality LUT, VOI LUT or window, MONOCHROME1 inversion) lives once, in :mod:`rosalia_hf.dicom`,
so that ``rosalia predict`` on a DICOM sees the pixels the dataset's PNGs were made from. Here each failure
becomes a :class:`~mimic_ils.schema.DicomReadError` (a ``MimicIlsError``: one line, one study or image).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mimic_ils.schema import DicomReadError
from rosalia_hf import dicom as _dicom
from rosalia_hf.dicom import MONOCHROME, DicomHeader, apply_modality_lut, apply_voi, window
from rosalia_hf.errors import DicomError


def _as_build_error(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DicomError as error:
            raise DicomReadError(str(error)) from None

    return wrapper


@_as_build_error
def read_dicom_header(path: str | Path) -> DicomHeader:
    return _dicom.read_dicom_header(path)


@_as_build_error
def check_dicom(path: str | Path) -> DicomHeader:
    return _dicom.check_dicom(path)


@_as_build_error
def read_dicom(path: str | Path, *, out_dtype: type = np.uint8) -> np.ndarray:
    return _dicom.read_dicom(path, out_dtype=out_dtype)


__all__ = ["MONOCHROME", "DicomHeader", "read_dicom_header", "check_dicom", "read_dicom", "apply_modality_lut",
           "apply_voi", "window"]
