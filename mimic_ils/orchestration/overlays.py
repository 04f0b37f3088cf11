"""Pictures a person can look at: an X-ray with the pair's mask in red, its instruction and answer."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np


def read_pair_rows(out_folder: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The pairs rows of a built folder (plain dicts, file names relative to the split folder), sorted by id."""
    from mimic_ils.orchestration.writer import read_metadata

    tables = read_metadata(out_folder, "pairs", split)
    return [{**row, "_folder": str(folder)} for folder, rows in tables for row in rows]


def pick_pairs(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` pairs, one per (lesion, question type) first, positives before negatives; deterministic."""
    ordered = sorted(rows, key=lambda row: (row["polarity"] != "positive", row["id"]))
    picked, seen = [], set()
    for row in ordered:
        key = (row["lesion"], row["question_type"], row["polarity"])
        if key not in seen:
            seen.add(key)
            picked.append(row)
    leftovers = [row for row in ordered if row not in picked]
    return (picked + leftovers)[:n]


def render_overlay(row: dict[str, Any], path: Path) -> Path:
    """One PNG: the image in grey, the mask in translucent red (none for negatives), the text as the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folder = Path(row["_folder"])
    image = np.asarray(Image.open(folder / row["image_file_name"]).convert("L"))
    figure, axis = plt.subplots(figsize=(5, 5.8), dpi=100)
    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    if row["mask_file_name"]:
        mask = np.asarray(Image.open(folder / row["mask_file_name"]).convert("L")) > 0
        tint = np.zeros((*mask.shape, 4), np.float32)
        tint[mask] = (1.0, 0.1, 0.1, 0.4)
        axis.imshow(tint)
        axis.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    axis.set_axis_off()
    title = "\n".join(textwrap.wrap(f"Q: {row['instruction']}", 60) + textwrap.wrap(f"A: {row['answer']}", 60))
    axis.set_title(title, fontsize=8, loc="left")
    figure.text(0.01, 0.01, f"{row['question_type']} · {row['polarity']} · {row['lesion']} · {row['dicom_id']}",
                fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def demo_overlays(out_folder: str | Path, dest_dir: str | Path, n: int = 6) -> list[Path]:
    """Write ``n`` overlay PNGs of pairs from a built folder into ``dest_dir``; returns their paths."""
    rows = pick_pairs(read_pair_rows(out_folder), n)
    dest_dir = Path(dest_dir)
    return [render_overlay(row, dest_dir / f"overlay_{index:02d}_{row['id']}.png") for index, row in enumerate(rows)]
