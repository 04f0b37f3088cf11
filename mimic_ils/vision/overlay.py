"""One overlay PNG per image, so a person can check what the vision models see.

Left panel: the image with the lungs (right lung cyan, left lung green) and heart (red) outlined, the eight lung zones
labelled at their centres, and the lesion boxes with class and confidence. Right panel: the anomaly map
``max(image - pseudo_normal, 0) / 255`` (paper Eq. 1 before thresholding) over the image, with the threshold
``tau`` drawn as a contour.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mimic_ils.files import atomic_write_bytes
from mimic_ils.schema import ZONE_LABELS, VisionCues

ZONE_ABBREVIATIONS = {
    "right upper zone lung": "RUZ",
    "right mid zone lung": "RMZ",
    "right lung base": "RLB",
    "right apical zone lung": "RAZ",
    "left upper zone lung": "LUZ",
    "left mid zone lung": "LMZ",
    "left lung base": "LLB",
    "left apical zone lung": "LAZ",
}
ORGAN_COLOURS = (("lung_right", "cyan"), ("lung_left", "lime"), ("heart", "red"))


def anomaly_map(cues: VisionCues) -> np.ndarray:
    """``max(image - pseudo_normal, 0) / 255`` as HxW float in [0, 1]."""
    difference = cues.image.astype(np.float32) - cues.pseudo_normal.astype(np.float32)
    return np.clip(difference, 0, None) / 255.0


def render_overlay(cues: VisionCues, path: str | Path, tau: float = 0.10, dpi: int = 100) -> Path:
    """Draw the overlay of ``cues`` to ``path`` (PNG, written atomically); return the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    height, width = cues.shape
    scale = 6.0 / max(height, width)
    figure, (left, right) = plt.subplots(1, 2, figsize=(2 * width * scale + 0.4, height * scale + 0.6), dpi=dpi)
    for axis in (left, right):
        axis.imshow(cues.image, cmap="gray", vmin=0, vmax=255)
        axis.set_axis_off()
    for attribute, colour in ORGAN_COLOURS:
        mask = getattr(cues, attribute)
        if mask.any():
            left.contour(mask, levels=[0.5], colors=colour, linewidths=1.0)
    for label in ZONE_LABELS:
        mask = cues.anatomy.get(label)
        if mask is not None and mask.any():
            rows, cols = np.nonzero(mask)
            left.text(
                cols.mean(),
                rows.mean(),
                ZONE_ABBREVIATIONS[label],
                color="yellow",
                fontsize=7,
                ha="center",
                va="center",
            )
    for box in cues.boxes:
        left.add_patch(
            Rectangle(
                (box.x0, box.y0), box.x1 - box.x0, box.y1 - box.y0, fill=False, edgecolor="orange", linewidth=1.2
            )
        )
        left.text(
            box.x0,
            max(box.y0 - 2, 0),
            f"{box.class_name} {box.confidence:.2f}",
            color="orange",
            fontsize=6,
            va="bottom",
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "edgecolor": "none"},
        )
    anomaly = anomaly_map(cues)
    right.imshow(np.ma.masked_less(anomaly, 0.02), cmap="hot", vmin=0, vmax=max(0.3, float(anomaly.max())), alpha=0.7)
    if (anomaly >= tau).any():
        right.contour(anomaly >= tau, levels=[0.5], colors="deepskyblue", linewidths=0.8)
    left.set_title(f"{cues.dicom_id[:24]}: lungs, heart, zones, boxes", fontsize=8)
    right.set_title(f"anomaly map (contour: >= {tau:.2f})", fontsize=8)
    figure.tight_layout()
    return _save_atomically(figure, Path(path))


def _save_atomically(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
