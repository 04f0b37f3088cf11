"""``mimic-ils validate``: a built folder's masks (or a model's) against MS-CXR's radiologist boxes, per lesion type.

For every image of MS-CXR (:mod:`mimic_ils.ms_cxr`) and every finding category of it that MIMIC-ILS covers, the
boxes of that finding are compared with our mask of that lesion type on that image: the union of the masks of the
image's Table 2 positives of the type (a global positive's is already the union).

* **coverage**: per box, the share of the box inside our mask; per image and finding, the share of our mask inside
  the union of the finding's boxes;
* **pointing**: a box is pointed at when our mask's deepest point lies inside it: the maximum of the mask's
  distance transform (the pixel farthest from its edge; a binary mask has no maximum of its own), taken on the box's
  half of the image when the box lies in one half, so that each box of a bilateral finding is pointed at by its
  side (and a side our mask leaves empty is a miss); and the IoU of the box with the nearest bounding box of a
  connected part of our mask;
* **recall**: a box whose finding has no positive mask on that image is missed, with the reason the ledger gives:
  the image is not in the cohort, the finding was dropped (c1-c4, no lung label, ...), the image was excluded (and
  why), or the report has no positive finding of the type; a box on an image half our mask leaves empty (the other
  side of a bilateral finding grounded on one side, Fig. 11) is missed too, and kept out of coverage and pointing;
* **contradictions**: a missed box whose finding the dataset *denies* on that image: a negative pair of the type
  whose place covers the box (a global negative covers every box; a lung or zone is matched to the box's centre by
  the image's halves and thirds, since no anatomy is read at validation time).

With a model (:func:`score_model`) the masks are the model's, for instructions made from MS-CXR's category and the
location words of its phrase ("Segment the effusion in the left lung base."), with the same figures. Output
(:func:`write_validation`): ``report.md`` (a per-lesion table, the reasons, what the CSV had that could not be used),
``validation.json`` (keys ``coverage``, ``pointing``, ``recall``, ``contradictions`` per lesion type, and the
counts) and ``agreement_grid.png`` (the best and the worst agreements: our mask in red, the boxes in green).
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mimic_ils.files import atomic_write_bytes
from mimic_ils.ms_cxr import MsCxrBox
from mimic_ils.orchestration.ledger import reason_class
from mimic_ils.schema import LESION_TYPES, MimicIlsError

MASK_THRESHOLD = 127
NOT_IN_COHORT = "image not in the dataset's cohort"
NO_FINDING = "no positive finding of this type in the report"
OTHER_SIDE = "grounded on the other side only"


@dataclass
class GroupResult:
    """One image and one finding: its boxes, our mask's agreement with them (None when missed) and why it is missed."""

    dicom_id: str
    lesion: str
    boxes: list[MsCxrBox]
    box_coverage: list[float] = field(default_factory=list)
    pointed: list[bool] = field(default_factory=list)
    box_iou: list[float] = field(default_factory=list)
    mask_in_boxes: float | None = None
    other_side: int = 0  # boxes on an image half our mask leaves empty (a bilateral finding grounded on one side)
    missed: str | None = None
    contradicted: bool = False
    image_file: Path | None = None
    mask: np.ndarray | None = None

    @property
    def score(self) -> float:
        """The harmonic mean of the mean box coverage and the share of the mask in the boxes (the grid's order)."""
        if self.mask_in_boxes is None or not self.box_coverage:
            return 0.0
        a, b = float(np.mean(self.box_coverage)), self.mask_in_boxes
        return 2 * a * b / (a + b) if a + b else 0.0


# ------------------------------------------------------------------------------------------------------ geometry


def agreement(mask: np.ndarray, boxes: Sequence[MsCxrBox]) -> dict[str, Any]:
    """The figures of one mask (``HxW`` bool, the image's frame) against the boxes of one finding."""
    from skimage.measure import label, regionprops

    height, width = mask.shape
    box_masks = [box.mask(height, width) for box in boxes]
    union = np.logical_or.reduce(box_masks)
    regions = regionprops(label(mask, connectivity=2))
    coverage, pointed, ious = [], [], []
    for box_mask, box in zip(box_masks, boxes, strict=True):
        area = int(box_mask.sum())
        coverage.append(float(np.count_nonzero(mask & box_mask)) / area if area else 0.0)
        y0, y1 = box.y0 * height / box.height, box.y1 * height / box.height
        x0, x1 = box.x0 * width / box.width, box.x1 * width / box.width
        point = deepest_point(_side_of(mask, x0, x1))
        pointed.append(point is not None and y0 <= point[0] <= y1 and x0 <= point[1] <= x1)
        ious.append(max((_box_iou(r.bbox, (y0, x0, y1, x1)) for r in regions), default=0.0))
    total = int(mask.sum())
    side_empty = [deepest_point(_side_of(mask, box.x0 * width / box.width, box.x1 * width / box.width)) is None
                  for box in boxes]
    return {"box_coverage": coverage, "pointed": pointed, "box_iou": ious, "side_empty": side_empty,
            "mask_in_boxes": float(np.count_nonzero(mask & union)) / total if total else 0.0}


def deepest_point(mask: np.ndarray) -> tuple[float, float] | None:
    """``(row, column)`` of the maximum of the mask's distance transform (the first in row order), None when empty."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return None
    depth = distance_transform_edt(mask)
    row, column = np.unravel_index(int(np.argmax(depth)), mask.shape)
    return float(row), float(column)


def _side_of(mask: np.ndarray, x0: float, x1: float) -> np.ndarray:
    """The mask on the image half a box lies in (the whole mask for a box that crosses the middle)."""
    middle = mask.shape[1] / 2
    if x1 <= middle or x0 >= middle:
        side = np.zeros_like(mask)
        columns = slice(0, int(np.ceil(middle))) if x1 <= middle else slice(int(np.floor(middle)), mask.shape[1])
        side[:, columns] = mask[:, columns]
        return side
    return mask


def _box_iou(a: tuple, b: tuple) -> float:
    """IoU of two ``(y0, x0, y1, x1)`` boxes."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_places(box: MsCxrBox) -> set[str]:
    """The lung regions a box's centre falls in, by the image's halves (the patient's right is the image's left) and
    thirds (upper / mid / base); the apical zone is the upper sixth."""
    cx, cy = (box.x0 + box.x1) / 2 / box.width, (box.y0 + box.y1) / 2 / box.height
    side = "right" if cx < 0.5 else "left"
    zone = "apical zone lung" if cy < 1 / 6 else "upper zone lung" if cy < 0.4 else "mid zone lung" \
        if cy < 0.6 else "lung base"
    return {f"{side} lung", f"{side} {zone}"}


def _denies(negatives: Iterable[tuple[str, ...]], boxes: Sequence[MsCxrBox]) -> bool:
    """Whether a negative (its places; () for a global one) covers a box of the finding."""
    for places in negatives:
        if not places or any(set(places) & box_places(box) for box in boxes):
            return True
    return False


# ------------------------------------------------------------------------------------------------ the dataset


@dataclass
class DatasetIndex:
    """What validation reads of a built folder, without decoding an image until it is needed: per image its file,
    its positive masks' files by lesion, its negatives' places by lesion; and per image the ledger's fate and the
    reasons of its dropped findings by lesion."""

    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[tuple[str, str], list[Path]] = field(default_factory=lambda: defaultdict(list))
    negatives: dict[tuple[str, str], list[tuple[str, ...]]] = field(default_factory=lambda: defaultdict(list))
    fates: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    dropped: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, out: str | Path) -> DatasetIndex:
        import pyarrow.parquet as pq

        from mimic_ils.orchestration.writer import LEDGER, read_split_pairs

        index = cls()
        splits = read_split_pairs(out)
        if not splits:
            raise MimicIlsError(f"{out} is not a built MIMIC-ILS folder (no <split>/metadata.parquet)")
        for folder, rows in splits:
            for row in rows:
                index.images.setdefault(row.dicom_id, folder / row.image_file_name)
                if row.question_type == "reasoning":
                    continue  # its masks are a Table 2 positive's; its negatives ask a Table 2 negative again
                key = (row.dicom_id, row.lesion)
                if row.polarity == "positive" and row.mask_file_name:
                    if folder / row.mask_file_name not in index.masks[key]:
                        index.masks[key].append(folder / row.mask_file_name)
                elif row.polarity == "negative" and row.target == row.lesion:
                    index.negatives[key].append(tuple(row.locations))
        ledger = Path(out) / LEDGER
        if ledger.is_file():
            for row in pq.read_table(ledger).to_pylist():
                if row["kind"] == "image":
                    index.fates[row["dicom_id"]] = (row["fate"], row["reason"])
                elif row["kind"] == "finding" and row["reason"]:
                    lesion = row["reason"].split(" ", 1)[0]
                    if lesion in LESION_TYPES and row["reason"].startswith(f"{lesion} finding"):
                        index.dropped[(row["dicom_id"], lesion)].append(row["reason"].split(": ", 1)[-1])
        return index

    def mask(self, dicom_id: str, lesion: str) -> np.ndarray | None:
        """Our mask of ``lesion`` on the image (the union of its positives' masks), or None."""
        from PIL import Image

        files = self.masks.get((dicom_id, lesion))
        if not files:
            return None
        return np.logical_or.reduce([np.asarray(Image.open(path).convert("L")) > MASK_THRESHOLD for path in files])

    def missed_reason(self, dicom_id: str, lesion: str) -> str:
        if dicom_id not in self.fates and dicom_id not in self.images:
            return NOT_IN_COHORT
        dropped = self.dropped.get((dicom_id, lesion))
        if dropped:  # before the image's fate: an image whose findings were all dropped is excluded for it
            return f"finding dropped: {reason_class(dropped[0])}"
        fate, reason = self.fates.get(dicom_id, ("used", None))
        if fate != "used":
            return f"image excluded: {reason_class(reason)}"
        return NO_FINDING


def group_boxes(boxes: Iterable[MsCxrBox]) -> dict[tuple[str, str], list[MsCxrBox]]:
    """Boxes by (dicom id, lesion type), in the CSV's order."""
    groups: dict[tuple[str, str], list[MsCxrBox]] = defaultdict(list)
    for box in boxes:
        groups[(box.dicom_id, box.lesion)].append(box)
    return dict(groups)


def validate_dataset(out: str | Path, boxes: Sequence[MsCxrBox]) -> list[GroupResult]:
    """Every (image, finding) of ``boxes`` against the built folder ``out``."""
    index = DatasetIndex.read(out)
    results = []
    for (dicom_id, lesion), found in sorted(group_boxes(boxes).items()):
        result = GroupResult(dicom_id, lesion, found, image_file=index.images.get(dicom_id))
        mask = index.mask(dicom_id, lesion)
        if mask is None:
            result.missed = index.missed_reason(dicom_id, lesion)
            result.contradicted = _denies(index.negatives.get((dicom_id, lesion), ()), found)
        else:
            _fill(result, mask)
        results.append(result)
    return results


def _fill(result: GroupResult, mask: np.ndarray) -> None:
    """The figures of the boxes our mask reaches; a box on an image half the mask leaves empty (the other side of a
    bilateral finding grounded on one side) counts as missed instead."""
    figures = agreement(mask, result.boxes)
    kept = [i for i, empty in enumerate(figures["side_empty"]) if not empty]
    result.box_coverage = [figures["box_coverage"][i] for i in kept]
    result.pointed = [figures["pointed"][i] for i in kept]
    result.box_iou = [figures["box_iou"][i] for i in kept]
    result.other_side = len(result.boxes) - len(kept)
    result.mask_in_boxes, result.mask = figures["mask_in_boxes"], mask


# -------------------------------------------------------------------------------------------------- a model


def ms_cxr_instruction(box: MsCxrBox) -> str:
    """The instruction a model gets for a finding: its category and the location words of its phrase (Table 2's
    basic form; the global one when the phrase names no lung place, and always for cardiomegaly)."""
    from mimic_ils.pairs import instruction_locations
    from mimic_ils.report.locations import map_lung_labels
    from rosalia_hf.table2 import BASIC_INSTRUCTION, GLOBAL_INSTRUCTION, join_locations

    places = () if box.lesion == "cardiomegaly" else instruction_locations(map_lung_labels(box.phrase.lower()))
    if not places:
        return GLOBAL_INSTRUCTION.format(target=box.lesion)
    return BASIC_INSTRUCTION.format(target=box.lesion, location=join_locations(places))


def score_model(predict: Callable[[np.ndarray, str], np.ndarray], boxes: Sequence[MsCxrBox],
                image_of: Callable[[str], tuple[np.ndarray | None, Path | None, str | None]]) -> list[GroupResult]:
    """The figures of a model's masks: ``predict(image, instruction)`` gives an ``HxW`` bool mask;
    ``image_of(dicom_id)`` gives ``(pixels, file, None)`` or ``(None, None, reason)``."""
    results = []
    for (dicom_id, lesion), found in sorted(group_boxes(boxes).items()):
        image, path, reason = image_of(dicom_id)
        result = GroupResult(dicom_id, lesion, found, image_file=path)
        if image is None:
            result.missed = reason
            results.append(result)
            continue
        mask = np.asarray(predict(image, ms_cxr_instruction(found[0])), bool)
        if not mask.any():
            result.missed = "the model's mask is empty"
        else:
            _fill(result, mask)
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------- figures


def summarize(results: Sequence[GroupResult], problems: Counter | None = None) -> dict[str, Any]:
    """Per lesion type: coverage, pointing, recall and contradictions; and the CSV's unusable rows."""

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {"coverage": {}, "pointing": {}, "recall": {}, "contradictions": {}}
    for lesion in LESION_TYPES:
        mine = [result for result in results if result.lesion == lesion]
        if not mine:
            continue
        found = [result for result in mine if result.missed is None]
        boxes = [box for result in mine for box in result.boxes]
        covered = [value for result in found for value in result.box_coverage]
        out["coverage"][lesion] = {"box_in_mask_mean": mean(covered),
                                   "box_in_mask_median": float(np.median(covered)) if covered else None,
                                   "mask_in_boxes_mean": mean([result.mask_in_boxes for result in found])}
        pointed = [flag for result in found for flag in result.pointed]
        out["pointing"][lesion] = {"accuracy": mean([float(flag) for flag in pointed]),
                                   "box_iou_mean": mean([value for result in found for value in result.box_iou])}
        reasons = Counter()
        for result in mine:
            if result.missed is not None:
                reasons[result.missed] += len(result.boxes)
            elif result.other_side:
                reasons[OTHER_SIDE] += result.other_side
        missed_boxes = sum(reasons.values())
        out["recall"][lesion] = {
            "boxes": len(boxes), "images": len({result.dicom_id for result in mine}),
            "found_boxes": len(boxes) - missed_boxes, "missed_boxes": missed_boxes,
            "recall": (len(boxes) - missed_boxes) / len(boxes) if boxes else None,
            "missed_reasons": dict(reasons.most_common()),
        }
        out["contradictions"][lesion] = sum(len(result.boxes) for result in mine if result.contradicted)
    out["boxes_used"] = sum(len(result.boxes) for result in results)
    out["rows_left_out"] = dict((problems or Counter()).most_common())
    return out


def report_markdown(summary: dict[str, Any], title: str, grid: str | None) -> str:
    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    lines = [f"# {title}", "", f"{summary['boxes_used']:,} radiologist boxes of MS-CXR compared.", "",
             "| lesion | boxes | images | recall % | box in mask % (mean / median) | mask in boxes % | pointing % "
             "| box IoU % | contradictions |", "|---|---|---|---|---|---|---|---|---|"]
    for lesion, recall in summary["recall"].items():
        coverage, pointing = summary["coverage"][lesion], summary["pointing"][lesion]
        lines.append(f"| {lesion} | {recall['boxes']} | {recall['images']} | {pct(recall['recall'])} | "
                     f"{pct(coverage['box_in_mask_mean'])} / {pct(coverage['box_in_mask_median'])} | "
                     f"{pct(coverage['mask_in_boxes_mean'])} | {pct(pointing['accuracy'])} | "
                     f"{pct(pointing['box_iou_mean'])} | {summary['contradictions'][lesion]} |")
    lines += ["", "## Why boxes were missed", "", "| lesion | reason | boxes |", "|---|---|---|"]
    for lesion, recall in summary["recall"].items():
        lines += [f"| {lesion} | {reason} | {count} |" for reason, count in recall["missed_reasons"].items()]
    lines += ["", "## Rows of the CSV left out", "", "| reason | rows |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in summary["rows_left_out"].items()] or ["| none | 0 |"]
    lines += ["", "Coverage: the share of each box inside our mask, and of our mask inside the union of the finding's "
              "boxes. Pointing: a box is hit when our mask's deepest point (on the box's half of the image) lies in "
              "it. Box IoU: "
              "the box against the nearest bounding box of a part of our mask. Contradictions: missed boxes whose "
              "finding a negative pair of the image denies at a place covering the box (by the image's halves and "
              "thirds)."]
    if grid:
        lines += ["", f"![best and worst agreements]({grid})",
                  "", "Best agreements on the top row, worst on the bottom: our mask in red, the boxes in green."]
    return "\n".join(lines) + "\n"


def plot_grid(results: Sequence[GroupResult], path: Path, per_row: int = 4) -> Path | None:
    """The ``per_row`` best and worst agreements (of the findings we have a mask for) on the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    scored = sorted((result for result in results if result.mask is not None and result.image_file
                     and Path(result.image_file).is_file()), key=lambda result: (-result.score, result.dicom_id))
    if not scored:
        return None
    count = min(per_row, len(scored))
    rows = [scored[:count], scored[::-1][:count]]
    figure, axes = plt.subplots(2, count, figsize=(2.6 * count, 5.6), dpi=110, squeeze=False)
    for row_axes, row in zip(axes, rows, strict=True):
        for axis, result in zip(row_axes, row, strict=True):
            image = np.asarray(Image.open(result.image_file).convert("L"))
            axis.imshow(image, cmap="gray")
            overlay = np.zeros((*result.mask.shape, 4))
            overlay[result.mask] = (1.0, 0.1, 0.1, 0.4)
            axis.imshow(overlay)
            height, width = image.shape
            for box in result.boxes:
                sx, sy = width / box.width, height / box.height
                axis.add_patch(Rectangle((box.x0 * sx, box.y0 * sy), (box.x1 - box.x0) * sx,
                                         (box.y1 - box.y0) * sy, fill=False, edgecolor="lime", linewidth=1.5))
            axis.set_title(f"{result.lesion}  {100 * result.score:.0f}%\n{result.dicom_id[:17]}", fontsize=7)
            axis.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_validation(results: Sequence[GroupResult], problems: Counter, dest: str | Path, *,
                     title: str = "MIMIC-ILS masks against MS-CXR") -> dict[str, Path]:
    """``DEST/report.md``, ``DEST/validation.json`` and ``DEST/agreement_grid.png``."""
    dest = Path(dest)
    summary = summarize(results, problems)
    grid = plot_grid(results, dest / "agreement_grid.png")
    atomic_write_bytes(dest / "validation.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(dest / "report.md", report_markdown(summary, title, grid.name if grid else None).encode())
    paths = {"report": dest / "report.md", "json": dest / "validation.json"}
    if grid:
        paths["grid"] = grid
    return paths
