"""Pictures a person can look at: an X-ray with the pair's mask in red, its instruction and answer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from mimic_ils.rows import PairRow

FolderRow = tuple[Path, PairRow]  # a pairs row and the split folder its file names are relative to


def read_pair_rows(out_folder: str | Path, split: str | None = None) -> list[FolderRow]:
    """The pairs rows of a built folder, each with its split folder, in file order."""
    from mimic_ils.orchestration.writer import read_split_pairs

    return [(folder, row) for folder, rows in read_split_pairs(out_folder, split) for row in rows]


def pick_pairs(rows: list[FolderRow], n: int) -> list[FolderRow]:
    """Up to ``n`` pairs, one per (lesion, question type) first, positives before negatives; deterministic."""
    ordered = sorted(rows, key=lambda item: (item[1].polarity != "positive", item[1].id))
    picked, seen = [], set()
    for item in ordered:
        key = (item[1].lesion, item[1].question_type, item[1].polarity)
        if key not in seen:
            seen.add(key)
            picked.append(item)
    leftovers = [item for item in ordered if item not in picked]
    return (picked + leftovers)[:n]


def render_overlay(item: FolderRow, path: Path) -> Path:
    """One PNG: the image in grey, the mask in translucent red (none for negatives), the text as the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folder, row = item
    image = np.asarray(Image.open(folder / row.image_file_name).convert("L"))
    figure, axis = plt.subplots(figsize=(5, 5.8), dpi=100)
    axis.imshow(image, cmap="gray", vmin=0, vmax=255)
    if row.mask_file_name:
        mask = np.asarray(Image.open(folder / row.mask_file_name).convert("L")) > 0
        tint = np.zeros((*mask.shape, 4), np.float32)
        tint[mask] = (1.0, 0.1, 0.1, 0.4)
        axis.imshow(tint)
        axis.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    axis.set_axis_off()
    title = "\n".join(textwrap.wrap(f"Q: {row.instruction}", 60) + textwrap.wrap(f"A: {row.answer}", 60))
    axis.set_title(title, fontsize=8, loc="left")
    figure.text(0.01, 0.01, f"{row.question_type} · {row.polarity} · {row.lesion} · {row.dicom_id}", fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def demo_overlays(out_folder: str | Path, dest_dir: str | Path, n: int = 6) -> list[Path]:
    """Write ``n`` overlay PNGs of pairs from a built folder into ``dest_dir``; returns their paths."""
    rows = pick_pairs(read_pair_rows(out_folder), n)
    dest_dir = Path(dest_dir)
    return [render_overlay((folder, row), dest_dir / f"overlay_{index:02d}_{row.id}.png")
            for index, (folder, row) in enumerate(rows)]
