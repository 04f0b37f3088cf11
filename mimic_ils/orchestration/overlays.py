"""Pictures a person can look at: an X-ray with the pair's mask in red, its instruction and answer, R/L markers."""

from __future__ import annotations

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


def footer_of(row: PairRow) -> str:
    """The overlay's footer: question type, polarity, the target as the instruction words it (and the lesion
    label where that differs: "opacity" of a lesion-inference question is the label's pneumonia, say), the image."""
    from rosalia_hf.table2 import parse_instruction

    parsed = parse_instruction(row.instruction)
    label = row.lesion.replace("_", " ")
    target = parsed.target if parsed else label
    named = f"target: {target}" + (f" (lesion label: {label})" if target != label else "")
    return f"{row.question_type} · {row.polarity} · {named} · {row.dicom_id}"


def render_pair_overlay(item: FolderRow, path: Path) -> Path:
    """One PNG (:func:`rosalia_hf.overlay.render_overlay`): the image in grey, the pair's mask in translucent red
    (none for negatives), the instruction and answer above, R/L side markers, :func:`footer_of` below."""
    from PIL import Image

    from mimic_ils.files import atomic_write_bytes, png_bytes
    from rosalia_hf.overlay import render_overlay

    folder, row = item
    with Image.open(folder / row.image_file_name) as picture:
        image = np.asarray(picture.convert("L"))
    mask = None
    if row.mask_file_name:
        with Image.open(folder / row.mask_file_name) as picture:
            mask = np.asarray(picture.convert("L")) > 0
    drawn = render_overlay(image, mask, instruction=row.instruction, answer=row.answer, footer=footer_of(row))
    atomic_write_bytes(path, png_bytes(drawn))
    return path


def demo_overlays(out_folder: str | Path, dest_dir: str | Path, n: int = 6) -> list[Path]:
    """Write ``n`` overlay PNGs of pairs from a built folder into ``dest_dir``; returns their paths."""
    rows = pick_pairs(read_pair_rows(out_folder), n)
    dest_dir = Path(dest_dir)
    return [render_pair_overlay((folder, row), dest_dir / f"overlay_{index:02d}_{row.id}.png")
            for index, (folder, row) in enumerate(rows)]
