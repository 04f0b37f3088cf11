"""Import the authors' published release (PhysioNet ``mimic-cxr-ext-ils`` 1.0.0) into the built-folder format.

Release layout::

    <release>/mimic_ils_instruction_answer.json   {"train": [item, ...], "val": [...], "test": [...]}
    <release>/lesion_mask/...png                  one mask per positive pair

    item = {"image_path": "p10/p10000032/s50414267/<dicom_id>.jpg",      relative to mimic-cxr-jpg/2.1.0/files
            "instruction_answer_pairs": {
                "positive_pairs": [{"instruction", "answer", "target", "seg_mask_path"}, ...],
                "negative_pairs": [{"instruction", "answer", "target"}, ...]}}

``--images`` is the MIMIC-CXR-JPG ``files`` folder (or a folder holding ``mimic-cxr-jpg/2.1.0/files``). Each JPG is
stored once, byte for byte, as ``<split>/images/<dicom_id>.jpg``; each mask is binarised and stored once per unique
mask. Question type, polarity, locations and certainty come from the Table 2 templates (``build.templates``);
``lesion`` is the release's ``target`` (or the lesion an inference answer names). Items or pairs that cannot be
imported (missing image, unreadable mask, text off the templates) go to the ledger with their reason.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mimic_ils.build.card import render_card
from mimic_ils.build.ledger import summarize_ledger
from mimic_ils.build.merge import _counts, _swap_in, check_out_folder
from mimic_ils.build.templates import parse_pair
from mimic_ils.build.workdir import atomic_write_bytes, encode_png, mask_digest
from mimic_ils.build.writer import LEDGER_SCHEMA, place_file, split_relative, write_parquet, write_split
from mimic_ils.schema import LESION_TYPES, MimicIlsError

RELEASE_JSON = "mimic_ils_instruction_answer.json"
SPLIT_NAMES = {"train": "train", "val": "validate", "validate": "validate", "test": "test"}


def load_release(release: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The release JSON by our split names; MimicIlsError when it is missing or not release-shaped."""
    path = Path(release) / RELEASE_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MimicIlsError(f"cannot read the release file {path}: {error}") from None
    if not isinstance(data, dict) or not set(data) & set(SPLIT_NAMES):
        raise MimicIlsError(f"{path} has no train/val/test lists")
    return {SPLIT_NAMES[key]: list(items) for key, items in data.items() if key in SPLIT_NAMES}


def image_ids(image_path: str) -> tuple[str, str, str]:
    """``p10/p10000032/s50414267/<dicom>.jpg`` → (subject_id, study_id, dicom_id) without the p/s prefixes."""
    parts = Path(image_path).parts
    if len(parts) < 3 or not parts[-3].startswith("p") or not parts[-2].startswith("s"):
        raise MimicIlsError(f"image_path {image_path!r} is not pXX/pSUBJECT/sSTUDY/DICOM.jpg")
    return parts[-3][1:], parts[-2][1:], Path(parts[-1]).stem


def find_image(images: Path, image_path: str) -> Path | None:
    for base in (images, images / "files", images / "mimic-cxr-jpg" / "2.1.0" / "files"):
        if (base / image_path).is_file():
            return base / image_path
    return None


def find_mask(release: Path, mask_path: str) -> Path | None:
    masks = release / "lesion_mask"
    for candidate in (release / mask_path, masks / mask_path, masks / Path(mask_path).name):
        if candidate.is_file():
            return candidate
    return None


def import_release(release: str | Path, images: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the release as a built folder at ``out`` (same features as ``mimic-ils build``); returns build info."""
    release, images, out = Path(release), Path(images), Path(out)
    check_out_folder(out)
    splits = load_release(release)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    files, counts, ledger = {}, {}, []
    for split in ("train", "validate", "test"):
        rows = []
        for item in splits.get(split, []):
            item_rows, item_ledger = _import_item(item, split, release, images, partial / split)
            rows += item_rows
            ledger += item_ledger
        if rows:
            files[split] = write_split(partial / split, rows)
            results = [{"fate": "used"} for _ in {row["study_id"] for row in rows}]
            counts[split] = _counts(rows, results)
    if not files:
        raise MimicIlsError(f"no pair of {release / RELEASE_JSON} could be imported (see the ledger reasons)")
    ledger.sort(key=lambda row: (row["split"], row["study_id"], row["dicom_id"] or "", row["reason"] or ""))
    write_parquet(ledger, LEDGER_SCHEMA, partial / "ledger.parquet")
    info = {"code_version": _version(), "source": "mimic-cxr-ext-ils 1.0.0 release", "counts": counts,
            "ledger": summarize_ledger(ledger)}
    atomic_write_bytes(partial / "build_info.json", json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")
    atomic_write_bytes(partial / "README.md", render_card(files, counts, info, partial).encode("utf-8"))
    _swap_in(partial, out)
    return info


def _import_item(item: dict, split: str, release: Path, images: Path, folder: Path) -> tuple[list[dict], list[dict]]:
    image_path = str(item.get("image_path", ""))
    try:
        _, study_id, dicom_id = image_ids(image_path)
    except MimicIlsError as error:
        return [], [_ledger("image", "", None, split, "excluded", str(error))]
    source = find_image(images, image_path)
    if source is None:
        return [], [_ledger("image", study_id, dicom_id, split, "excluded", f"image {image_path} not found")]
    image_file = f"images/{dicom_id}{source.suffix.lower()}"
    rows, ledger = [], []
    for index, (pair, positive) in enumerate(_item_pairs(item)):
        try:
            row = _pair_row(pair, positive, release, folder, study_id, dicom_id, split, image_file)
        except MimicIlsError as error:
            ledger.append(_ledger("pair", study_id, dicom_id, split, "excluded", f"pair {index}: {error}"))
            continue
        rows.append({**row, "id": f"{dicom_id}-{index:03d}"})
    if rows:
        place_file(source, folder / image_file)
    fate, reason = ("used", None) if rows else ("excluded", "no importable pair")
    return rows, [_ledger("image", study_id, dicom_id, split, fate, reason), *ledger]


def _item_pairs(item: dict) -> Iterator[tuple[dict, bool]]:
    pairs = item.get("instruction_answer_pairs") or {}
    for pair in pairs.get("positive_pairs") or []:
        yield pair, True
    for pair in pairs.get("negative_pairs") or []:
        yield pair, False


def _pair_row(pair, positive, release, folder, study_id, dicom_id, split, image_file) -> dict[str, Any]:
    parsed = parse_pair(str(pair.get("instruction", "")), str(pair.get("answer", "")))
    if (parsed.polarity == "positive") != positive:
        listed = "positive" if positive else "negative"
        raise MimicIlsError(f"a {parsed.polarity} answer listed among the {listed} pairs")
    lesion = parsed.lesion if parsed.question_type == "lesion_inference" and positive else pair.get("target")
    if lesion not in LESION_TYPES:
        lesion = parsed.target if parsed.target in LESION_TYPES else None
    if lesion is None:
        raise MimicIlsError(f"target {pair.get('target')!r} is not one of the seven lesion types")
    mask_file = _import_mask(release, folder, str(pair.get("seg_mask_path", ""))) if positive else None
    return {
        "image_file_name": image_file, "mask_file_name": mask_file, "instruction": pair["instruction"],
        "answer": pair["answer"], "target": parsed.target, "lesion": lesion, "question_type": parsed.question_type,
        "polarity": parsed.polarity, "locations": list(parsed.locations), "certainty": parsed.certainty,
        "study_id": study_id, "dicom_id": dicom_id, "split": split,
    }


def _import_mask(release: Path, folder: Path, mask_path: str) -> str:
    from PIL import Image, UnidentifiedImageError

    source = find_mask(release, mask_path) if mask_path else None
    if source is None:
        raise MimicIlsError(f"mask {mask_path or '(none)'} not found under {release}")
    try:
        mask = np.asarray(Image.open(source).convert("L")) > 0
    except (OSError, UnidentifiedImageError) as error:
        raise MimicIlsError(f"mask {mask_path} unreadable: {error}") from None
    if not mask.any():
        raise MimicIlsError(f"mask {mask_path} is empty for a positive pair")
    name = f"masks/{mask_digest(mask)}.png"
    if not (folder / split_relative(name)).exists():
        atomic_write_bytes(folder / split_relative(name), encode_png(mask))
    return name


def _ledger(kind, study_id, dicom_id, split, fate, reason) -> dict[str, Any]:
    return {"kind": kind, "study_id": study_id, "dicom_id": dicom_id, "split": split, "fate": fate, "reason": reason}


def _version() -> str:
    from mimic_ils import __version__

    return __version__
