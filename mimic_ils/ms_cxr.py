"""MS-CXR's radiologist boxes (PhysioNet ``ms-cxr``, Boecking et al. 2022), read and checked; and a synthetic CSV in
the same format from the phantom cohort's truth.

The local-alignment CSV (``MS_CXR_Local_Alignment_v1.1.0.csv``; v1.0.0 has no ``split``) has one row per box::

    dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height, split

``x, y`` is the box's top-left corner and ``w, h`` its size, in pixels of the original image (``image_width`` x
``image_height``, the DICOM's columns x rows, as MIMIC-CXR-JPG keeps them); ``label_text`` is the report phrase the
box grounds. Eight categories, seven of them ours (:data:`CATEGORY_LESION`); Pneumothorax is not a MIMIC-ILS type.

:func:`read_ms_cxr` never fails on a row: a row with a bad number, an empty box, a box wholly outside its image or a
category we do not cover is left out and counted by its reason (a box partly outside is clipped, and counted too).
A file that is not such a CSV (missing columns, unreadable) is one :class:`MimicIlsError` line.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimic_ils.schema import MimicIlsError

CATEGORY_LESION = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
                   "Edema": "edema", "Lung Opacity": "opacity", "Pleural Effusion": "effusion",
                   "Pneumonia": "pneumonia"}
LESION_CATEGORY = {lesion: category for category, lesion in CATEGORY_LESION.items()}
REQUIRED_COLUMNS = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width", "image_height")
COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height",
           "split")
SYNTHETIC_NAME = "ms_cxr_local_alignment_synthetic.csv"


@dataclass(frozen=True)
class MsCxrBox:
    """One radiologist box: ``xyxy`` in the original image's pixels (clipped to it), its category, our lesion type
    and the report phrase it grounds."""

    dicom_id: str
    category: str
    lesion: str
    phrase: str
    x0: float
    y0: float
    x1: float
    y1: float
    width: int
    height: int
    path: str = ""

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def mask(self, height: int, width: int) -> np.ndarray:
        """The box as an ``HxW`` bool mask of a frame of that size (rescaled when it differs from the box's image)."""
        sx, sy = width / self.width, height / self.height
        out = np.zeros((height, width), bool)
        y0, y1 = int(math.floor(self.y0 * sy)), int(math.ceil(self.y1 * sy))
        x0, x1 = int(math.floor(self.x0 * sx)), int(math.ceil(self.x1 * sx))
        out[max(0, y0):min(height, y1), max(0, x0):min(width, x1)] = True
        return out


def read_ms_cxr(path: str | Path) -> tuple[list[MsCxrBox], Counter]:
    """The usable boxes of an MS-CXR local-alignment CSV and the count of every row left out (or clipped), by
    reason."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in REQUIRED_COLUMNS if name not in (reader.fieldnames or [])]
            if missing:
                raise MimicIlsError(f"{path} is not an MS-CXR local-alignment CSV: no column {', '.join(missing)} "
                                    f"(it has {', '.join(reader.fieldnames or []) or 'none'})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MimicIlsError(f"cannot read the MS-CXR CSV {path}: {error}") from None
    boxes, problems = [], Counter()
    for row in rows:
        box, problem = _box(row)
        if problem:
            problems[problem] += 1
        if box is not None:
            boxes.append(box)
    return boxes, problems


def _box(row: dict) -> tuple[MsCxrBox | None, str | None]:
    category = (row.get("category_name") or "").strip()
    lesion = CATEGORY_LESION.get(category)
    if lesion is None:
        return None, f"category not covered by MIMIC-ILS ({category or 'empty'})"
    try:
        x, y, w, h = (float(row[name]) for name in ("x", "y", "w", "h"))
        width, height = int(float(row["image_width"])), int(float(row["image_height"]))
    except (TypeError, ValueError):
        return None, "a coordinate or image size is not a number"
    if not all(math.isfinite(value) for value in (x, y, w, h)) or w <= 0 or h <= 0 or width <= 0 or height <= 0:
        return None, "empty box or image size"
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    if x1 <= x0 or y1 <= y0:
        return None, "box outside its image"
    problem = "box partly outside its image (clipped)" if (x0, y0, x1, y1) != (x, y, x + w, y + h) else None
    dicom_id = (row.get("dicom_id") or "").strip()
    if not dicom_id:
        return None, "no dicom_id"
    return MsCxrBox(dicom_id, category, lesion, (row.get("label_text") or "").strip(), x0, y0, x1, y1, width,
                    height, (row.get("path") or "").strip()), problem


# ---------------------------------------------------------------------------------------------------- synthetic


def write_synthetic_ms_cxr(cohort: str | Path, out: str | Path | None = None, min_component: float = 0.05) -> Path:
    """``<cohort>/ms_cxr_local_alignment_synthetic.csv`` (or ``out``) in MS-CXR's format, from the phantom truth:
    one box per connected part of each phantom lesion (a bilateral lesion gets a box per side, as a radiologist
    draws them; parts under ``min_component`` of the lesion are left out), with the lesion's report phrase as
    ``label_text``. Rows are sorted by dicom id, category and box; byte-identical per cohort."""
    from skimage.measure import label, regionprops

    cohort = Path(cohort)
    truth_dir = cohort / "phantom_truth"
    try:
        studies = [json.loads(line) for line in (truth_dir / "truth.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError) as error:
        raise MimicIlsError(f"{cohort} has no readable phantom truth (phantom_truth/truth.jsonl): {error}") from None
    rows = []
    for study in studies:
        for image in study["images"]:
            npz = truth_dir / f"{image['dicom_id']}.npz"
            if not npz.is_file():
                continue  # lateral views have no arrays
            lesions = np.load(npz)["lesions"]
            folder = f"files/p{study['subject_id'][:2]}/p{study['subject_id']}/s{study['study_id']}"
            for lesion, mask in zip(study["lesions"], lesions, strict=True):
                regions = [region for region in regionprops(label(mask, connectivity=2))
                           if region.area >= min_component * mask.sum()]
                for region in sorted(regions, key=lambda item: item.bbox):
                    y0, x0, y1, x1 = region.bbox
                    rows.append([image["dicom_id"], LESION_CATEGORY[lesion["lesion_type"]],
                                 " ".join(lesion["phrase"].split()), f"{folder}/{image['dicom_id']}.jpg", x0, y0,
                                 x1 - x0, y1 - y0, image["width"], image["height"], study["split"]])
    rows.sort(key=lambda row: (row[0], row[1], row[4], row[5]))
    out = Path(out) if out is not None else cohort / SYNTHETIC_NAME
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return out
