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
mask. Question type, polarity, locations and certainty come from the Table 2 templates (``orchestration.templates``);
``lesion`` is the release's ``target`` (or the lesion an inference answer names). Items or pairs that cannot be
imported (missing image, unreadable mask, text off the templates) go to the ledger with their reason. The folder is
written by the build's own writer (:class:`mimic_ils.orchestration.folder.DatasetFolder`).

Nothing outside the two roots is ever read: every path the JSON names (``../``, absolute, a symlink out) is resolved
and must lie inside ``--images`` (images) or ``--release`` (masks), else that record is refused with its reason; an
image file must decode as an image, else it is refused too.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mimic_ils.orchestration.folder import DatasetFolder
from mimic_ils.orchestration.output import check_out_folder, hold_lock, out_lock_path
from mimic_ils.orchestration.templates import parse_pair
from mimic_ils.orchestration.workdir import mask_digest
from mimic_ils.progress import progress
from mimic_ils.rows import LedgerRow, PairRow
from mimic_ils.schema import LESION_TYPES, SPLIT_ALIASES, SPLITS, MimicIlsError, canonical_split

RELEASE_JSON = "mimic_ils_instruction_answer.json"
# the release's split keys (``val``; ``validate`` / ``validation`` accepted too) → our split names
SPLIT_NAMES = {name: canonical_split(name) for name in (*SPLITS, *SPLIT_ALIASES)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_DICOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    subject, study, dicom = parts[-3][1:], parts[-2][1:], Path(parts[-1]).stem
    if not (subject.isdigit() and study.isdigit() and _DICOM_ID.fullmatch(dicom)):
        raise MimicIlsError(f"image_path {image_path!r} is not pXX/pSUBJECT/sSTUDY/DICOM.jpg")
    return subject, study, dicom


class OutsideRoot(MimicIlsError):
    """A path of the release JSON that resolves outside the folder it must be read from."""


def inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` resolved (``..``, symlinks), refused unless it lies inside ``root`` (resolved)."""
    base = root.resolve()
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(base):
        raise OutsideRoot(f"{what} {relative!r} points outside {root}; refused")
    return candidate


def find_image(images: Path, image_path: str) -> Path | None:
    """The image file inside ``images`` (or its ``files`` / ``mimic-cxr-jpg/2.1.0/files``); None when absent;
    OutsideRoot when ``image_path`` leaves the folder."""
    inside(images, image_path, "image_path")
    for base in (images, images / "files", images / "mimic-cxr-jpg" / "2.1.0" / "files"):
        if (base / image_path).is_file():
            return inside(base, image_path, "image_path")
    return None


def find_mask(release: Path, mask_path: str) -> Path | None:
    masks = release / "lesion_mask"
    inside(release, mask_path, "seg_mask_path")
    for root, relative in ((release, mask_path), (masks, mask_path), (masks, Path(mask_path).name)):
        if (root / relative).is_file():
            return inside(release, str((root / relative).relative_to(release)), "seg_mask_path")
    return None


def check_image(path: Path, image_path: str) -> None:
    """Refuse a file that does not decode as an image (a JPG/PNG of the release)."""
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise MimicIlsError(f"image {image_path} is not a {'/'.join(IMAGE_SUFFIXES)} file; refused")
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, ImportError) as error:
        # ImportError: ultralytics, once imported, wraps Image.open and tries a HEIF plugin on unknown files
        raise MimicIlsError(f"image {image_path} does not decode as an image ({error}); refused") from None


def import_release(release: str | Path, images: str | Path, out: str | Path, *,
                   show_progress: bool = False) -> dict[str, Any]:
    """Write the release as a built folder at ``out`` (same features as ``mimic-ils build``); returns build info.
    ``show_progress``: progress of the items read and the files placed (:mod:`mimic_ils.progress`)."""
    release, images, out = Path(release), Path(images), Path(out)
    trusted = check_out_folder(out)
    with contextlib.ExitStack() as locks:
        locks.enter_context(hold_lock(out_lock_path(out), f"--out {out}"))
        return _import(release, images, out, trusted, show_progress)


def _import(release: Path, images: Path, out: Path, trusted: set, show_progress: bool = False) -> dict[str, Any]:
    splits = load_release(release)
    folder = DatasetFolder.begin(out, trusted, show_progress=show_progress, name="import-release")
    ledger: list[LedgerRow] = []
    split_rows: dict[str, tuple[list[PairRow], dict[str, Path]]] = {}
    total = sum(len(splits.get(split, [])) for split in SPLITS)
    with progress("import-release", total, "items", enabled=show_progress) as bar:
        for split in SPLITS:
            rows, sources = split_rows.setdefault(split, ([], {}))
            for item in splits.get(split, []):
                item_rows, item_ledger, source = _import_item(item, split, release, images, folder)
                rows += item_rows
                ledger += item_ledger
                if item_rows:
                    sources.setdefault(item_rows[0].image_file_name, source)  # the first item of an image wins
                bar.update()
    for split, (rows, sources) in split_rows.items():
        if rows:
            folder.add_split(split, rows, files=sources)
    if not folder.counts:
        raise MimicIlsError(f"no pair of {release / RELEASE_JSON} could be imported (see the ledger reasons)")
    ledger.sort(key=lambda row: (row.split, row.study_id, row.dicom_id or "", row.reason or ""))
    folder.add_ledger(ledger)
    return folder.finish({"code_version": _version(), "source": "mimic-cxr-ext-ils 1.0.0 release"})


def _import_item(item: dict, split: str, release: Path, images: Path,
                 folder: DatasetFolder) -> tuple[list[PairRow], list[LedgerRow], Path | None]:
    """The pair rows of one release item, its ledger rows, and its image file (None when it has none)."""
    image_path = str(item.get("image_path", ""))
    try:
        _, study_id, dicom_id = image_ids(image_path)
    except MimicIlsError as error:
        return [], [LedgerRow("image", "", None, split, "excluded", str(error))], None
    try:
        source = find_image(images, image_path)
        if source is None:
            raise MimicIlsError(f"image {image_path} not found")
        check_image(source, image_path)
    except MimicIlsError as error:
        return [], [LedgerRow("image", study_id, dicom_id, split, "excluded", str(error))], None
    image_file = f"images/{dicom_id}{source.suffix.lower()}"
    rows, ledger = [], []
    for index, (pair, positive) in enumerate(_item_pairs(item)):
        try:
            rows.append(_pair_row(pair, positive, release, folder, f"{dicom_id}-{index:03d}", study_id, dicom_id,
                                  split, image_file))
        except MimicIlsError as error:
            ledger.append(LedgerRow("pair", study_id, dicom_id, split, "excluded", f"pair {index}: {error}"))
    fate, reason = ("used", None) if rows else ("excluded", "no importable pair")
    return rows, [LedgerRow("image", study_id, dicom_id, split, fate, reason), *ledger], source


def _item_pairs(item: dict) -> Iterator[tuple[dict, bool]]:
    pairs = item.get("instruction_answer_pairs") or {}
    for pair in pairs.get("positive_pairs") or []:
        yield pair, True
    for pair in pairs.get("negative_pairs") or []:
        yield pair, False


def _pair_row(pair, positive, release, folder, row_id, study_id, dicom_id, split, image_file) -> PairRow:
    parsed = parse_pair(str(pair.get("instruction", "")), str(pair.get("answer", "")))
    if (parsed.polarity == "positive") != positive:
        listed = "positive" if positive else "negative"
        raise MimicIlsError(f"a {parsed.polarity} answer listed among the {listed} pairs")
    lesion = parsed.lesion if parsed.question_type == "lesion_inference" and positive else pair.get("target")
    if lesion not in LESION_TYPES:
        lesion = parsed.target if parsed.target in LESION_TYPES else None
    if lesion is None:
        raise MimicIlsError(f"target {pair.get('target')!r} is not one of the seven lesion types")
    mask_file = _import_mask(release, folder, split, str(pair.get("seg_mask_path", ""))) if positive else None
    return PairRow(
        id=row_id, image_file_name=image_file, mask_file_name=mask_file, instruction=pair["instruction"],
        answer=pair["answer"], target=parsed.target, lesion=lesion, question_type=parsed.question_type,
        polarity=parsed.polarity, locations=tuple(parsed.locations), certainty=parsed.certainty, study_id=study_id,
        dicom_id=dicom_id, split=split,
    )


def _import_mask(release: Path, folder: DatasetFolder, split: str, mask_path: str) -> str:
    from PIL import Image, UnidentifiedImageError

    source = find_mask(release, mask_path) if mask_path else None
    if source is None:
        raise MimicIlsError(f"mask {mask_path or '(none)'} not found under {release}")
    try:
        mask = np.asarray(Image.open(source).convert("L")) > 0
    except (OSError, UnidentifiedImageError, ValueError, ImportError) as error:
        raise MimicIlsError(f"mask {mask_path} unreadable: {error}") from None
    if not mask.any():
        raise MimicIlsError(f"mask {mask_path} is empty for a positive pair")
    name = f"masks/{mask_digest(mask)}.png"
    folder.write_png(split, name, mask)
    return name


def _version() -> str:
    from mimic_ils import __version__

    return __version__
