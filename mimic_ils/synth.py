"""A synthetic cohort in exactly the PhysioNet MIMIC-CXR 2.x layout, with phantom ground truth beside it.

Layout written under ``out`` (ids carry no p/s prefix in the CSVs, as in MIMIC-CXR)::

    files/pXX/pSUBJECT/sSTUDY.txt              MIMIC-style report (ASCII, FINAL REPORT header block)
    files/pXX/pSUBJECT/sSTUDY/DICOM_ID.dcm     DICOM (MONOCHROME1/2, 12/16 bits stored, VOI LUT / window / none)
    mimic-cxr-2.0.0-metadata.csv.gz            dicom_id, subject_id, study_id, PerformedProcedureStepDescription,
                                               ViewPosition, Rows, Columns, StudyDate, StudyTime, ...
    mimic-cxr-2.0.0-split.csv.gz               dicom_id, study_id, subject_id, split
    phantom_truth/truth.jsonl                  one JSON object per study, sorted by study_id (format below)
    phantom_truth/<dicom_id>.npz               arrays of every frontal image (format below)

``truth.jsonl`` objects: ``{"subject_id", "study_id", "split", "section": "findings" | "impression" |
"last_paragraph", "images": [{"dicom_id", "view": "PA" | "AP" | "LATERAL" | "LL", "height", "width",
"photometric": "MONOCHROME1" | "MONOCHROME2", "bits_stored": 12 | 16, "voi_lut": bool}], "lesions": [{"index",
"lesion_type", "locations", "side", "certainty", "phrase"}], "negated": [...], "other_findings": [...]}``.
``locations`` are the ``LUNG_LABELS`` the lesion occupies (its mask lies inside their union; [] for
cardiomegaly); ``side`` is "right" | "left" | "bilateral", and None for cardiomegaly (the heart has no lung side);
``phrase`` is the one report sentence that describes the lesion, as written in the chosen ``section`` (the report
wraps lines: compare after collapsing whitespace). Lesions appear in every frontal image of the study.

``<dicom_id>.npz`` (frontal images only; all arrays in the original frame, rows x columns): ``display`` HxW uint8
(what :func:`mimic_ils.dicom.read_dicom` returns, within a grey level), ``normal`` HxW uint8 (the same image
without lesions), ``lung_right``, ``lung_left``, ``heart`` HxW bool (right = patient's right = image left),
``anatomy`` (15, H, W) bool in ``LUNG_LABELS`` order, ``lesions`` (K, H, W) bool in the study's ``lesions`` order,
``boxes`` (K, 4) float32 xyxy pixel boxes of the lesion masks.

Everything is a function of ``seed``: same seed, byte-identical files (UIDs and dates derived from the seed, gzip
and zip timestamps fixed).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import textwrap
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimic_ils import phantom_render
from mimic_ils.progress import progress
from mimic_ils.schema import LESION_TYPES, CohortError
from mimic_ils.synth_phrases import (
    CLINICAL_HEADERS,
    COMPARISON_OPENERS,
    COMPARISONS,
    EFFUSION_SIDES,
    EXAMINATIONS,
    FOCAL_LOCATIONS,
    HEDGE_CUES,
    INDICATIONS,
    INDICATIONS_BY_LESION,
    LESION_TEMPLATES,
    LESION_WORDS,
    LOCATIONS,
    NEGATIONS,
    NO_ACUTE_IMPRESSION,
    NORMAL_SENTENCES,
    OTHER_FINDINGS,
    SIZES,
)

__all__ = [
    "HEDGE_CUES", "LESION_TEMPLATES", "LESION_WORDS", "LOCATIONS", "NEGATIONS", "OTHER_FINDINGS", "SIDECAR_DIR",
    "PhantomImageTruth", "generate_cohort", "load_image_truth", "load_truth",
]

METADATA_NAME = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_NAME = "mimic-cxr-2.0.0-split.csv.gz"
SIDECAR_DIR = "phantom_truth"
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
LESION_WEIGHTS = {"opacity": 0.19, "atelectasis": 0.17, "effusion": 0.17, "pneumonia": 0.13, "consolidation": 0.12,
                  "edema": 0.11, "cardiomegaly": 0.11}
SECTION_WEIGHTS = {"findings": 0.6, "impression": 0.25, "last_paragraph": 0.15}
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


@dataclass(frozen=True)
class PhantomImageTruth:
    """Ground truth of one frontal phantom image (see the module docstring for shapes and frames)."""

    dicom_id: str
    display: np.ndarray
    normal: np.ndarray
    lung_right: np.ndarray
    lung_left: np.ndarray
    heart: np.ndarray
    anatomy: np.ndarray
    lesions: np.ndarray
    boxes: np.ndarray


@dataclass
class ImagePlan:
    """One DICOM to write: view, size and the pixel encoding variant (``voi`` in lut / window / none)."""

    dicom_id: str
    view: str
    height: int
    width: int
    photometric: str
    bits_stored: int
    voi: str

    @property
    def is_frontal(self) -> bool:
        return self.view in ("PA", "AP")

    def truth(self) -> dict:
        return {"dicom_id": self.dicom_id, "view": self.view, "height": self.height, "width": self.width,
                "photometric": self.photometric, "bits_stored": self.bits_stored, "voi_lut": self.voi == "lut"}


@dataclass
class LesionPlan:
    """One lesion of a study: what the report says about it and where the phantom draws it."""

    lesion_type: str
    locations: tuple[str, ...]
    side: str | None
    certainty: str
    regions: tuple[str, ...]
    fill: dict[str, str]
    strength: float

    def spec(self) -> phantom_render.LesionSpec:
        return phantom_render.LesionSpec(self.lesion_type, self.regions, self.strength)


@dataclass
class StudyPlan:
    """Everything about one synthetic study, decided before anything is rendered."""

    index: int
    subject_id: str
    study_id: str
    split: str
    date: str
    time: str
    images: list[ImagePlan]
    lesions: list[LesionPlan] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    negated: list[str] = field(default_factory=list)
    other_findings: list[str] = field(default_factory=list)
    other_sentences: list[str] = field(default_factory=list)
    negation_sentences: list[str] = field(default_factory=list)
    normal_sentences: list[str] = field(default_factory=list)
    section: str = "findings"
    report: str = ""

    @property
    def folder(self) -> str:
        return f"files/p{self.subject_id[:2]}/p{self.subject_id}"


# ----------------------------------------------------------------------------------------------------- planning


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _unique_ids(rng: np.random.Generator, count: int, low: int, high: int) -> list[str]:
    ids: set[int] = set()
    while len(ids) < count:
        ids.update(int(value) for value in rng.integers(low, high, size=count - len(ids)))
    return sorted(str(value) for value in ids)


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(value):08x}" for value in rng.integers(0, 2**32, size=5))


def _assign_splits(rng: np.random.Generator, n_subjects: int) -> list[str]:
    """Mostly train; when there are at least three subjects every split gets at least one. The names are those of
    MIMIC-CXR's split CSV (``validate``; the build names that split ``validation``)."""
    splits = [str(value) for value in rng.choice(["train", "validate", "test"], size=n_subjects, p=[0.8, 0.1, 0.1])]
    if n_subjects >= 3:
        for position, split in zip((-1, -2), ("test", "validate"), strict=True):
            if split not in splits:
                splits[position] = split
    return splits


def _plan_images(rng: np.random.Generator) -> list[ImagePlan]:
    first = "PA" if rng.random() < 0.6 else "AP"
    views = [first]
    if rng.random() < 0.15:
        views.append("AP" if first == "PA" else str(rng.choice(["AP", "PA"])))
    if rng.random() < 0.35:
        views.append("LATERAL" if rng.random() < 0.8 else "LL")
    images = []
    for view in views:
        height, width = int(rng.integers(56, 81)) * 8, int(rng.integers(48, 73)) * 8
        if height == width:
            width -= 8
        images.append(ImagePlan(
            dicom_id=_dicom_id(rng), view=view, height=height, width=width,
            photometric="MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
            bits_stored=12 if rng.random() < 0.5 else 16,
            voi=str(rng.choice(["lut", "window", "none"], p=[0.3, 0.55, 0.15])),
        ))
    return images


def plan_cohort(n_studies: int, seed: int) -> list[StudyPlan]:
    """Decide ids, splits, images, lesions and reports of every study (sorted by study_id)."""
    if n_studies < 1:
        raise ValueError(f"n_studies must be at least 1, got {n_studies}")
    rng = _rng(seed, 0)
    n_subjects = max(1, round(n_studies * 0.7))
    subjects = _unique_ids(rng, n_subjects, 10_000_000, 20_000_000)
    owners = list(range(n_subjects)) + [int(value) for value in rng.integers(0, n_subjects, n_studies - n_subjects)]
    splits = _assign_splits(rng, n_subjects)
    study_ids = _unique_ids(rng, n_studies, 50_000_000, 60_000_000)
    order = rng.permutation(n_studies)
    plans = []
    for index, study_id in enumerate(study_ids):
        owner = owners[int(order[index])]
        study_rng = _rng(seed, 1, index)
        date = f"21{int(study_rng.integers(10, 90)):02d}{int(study_rng.integers(1, 13)):02d}" \
               f"{int(study_rng.integers(1, 29)):02d}"
        time = f"{int(study_rng.integers(0, 24)):02d}{int(study_rng.integers(0, 60)):02d}" \
               f"{int(study_rng.integers(0, 60)):02d}.{int(study_rng.integers(0, 1000)):03d}"
        plan = StudyPlan(index=index, subject_id=subjects[owner], study_id=study_id, split=splits[owner],
                         date=date, time=time, images=_plan_images(study_rng))
        _plan_findings(plan, study_rng)
        plan.report = compose_report(plan, study_rng)
        plans.append(plan)
    return plans


def _plan_findings(plan: StudyPlan, rng: np.random.Generator) -> None:
    """Lesions (at most one focal lesion or effusion per lung side), negations and other findings."""
    count = int(rng.choice([0, 1, 2, 3], p=[0.2, 0.4, 0.3, 0.1]))
    types = list(LESION_WEIGHTS)
    weights = np.array([LESION_WEIGHTS[name] for name in types])
    chosen = rng.choice(types, size=count, replace=False, p=weights / weights.sum()) if count else []
    occupied: set[str] = set()
    for lesion_type in sorted(chosen, key=LESION_TYPES.index):
        lesion = _plan_lesion(str(lesion_type), rng, occupied)
        if lesion is not None:
            plan.lesions.append(lesion)
    present = {lesion.lesion_type for lesion in plan.lesions}
    negations = _pick_negations(rng, present)
    plan.negated = [name for name in LESION_TYPES if any(name in entry[1] for entry in negations)]
    n_other = int(rng.choice([0, 1, 2], p=[0.5, 0.35, 0.15]))
    others = [OTHER_FINDINGS[int(pick)] for pick in sorted(rng.choice(len(OTHER_FINDINGS), n_other, replace=False))]
    plan.other_findings = [name for name, _ in others]
    plan.section = str(rng.choice(list(SECTION_WEIGHTS), p=list(SECTION_WEIGHTS.values())))
    plan.phrases = [_lesion_sentence(lesion, rng) for lesion in plan.lesions]
    if plan.phrases and rng.random() < 0.3:
        opener = str(rng.choice(COMPARISON_OPENERS))
        plan.phrases[0] = opener + plan.phrases[0][0].lower() + plan.phrases[0][1:] if opener else plan.phrases[0]
    plan.other_sentences = [text for _, text in others]
    plan.negation_sentences = [text for text, _ in negations]
    plan.normal_sentences = _pick_normals(rng, present, " ".join(plan.negation_sentences))


def _pick_negations(rng: np.random.Generator, present: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """One to three negation sentences about absent lesion types, no type negated twice. "Opacity" is never
    negated next to a lung lesion (their sentences may say "opacities")."""
    forbidden = present | ({"opacity"} if present - {"effusion", "cardiomegaly"} else set())
    candidates = [entry for entry in NEGATIONS if not set(entry[1]) & forbidden]
    wanted, chosen, covered = int(rng.integers(1, 4)), [], set()
    for pick in rng.permutation(len(candidates)):
        text, types = candidates[int(pick)]
        if not set(types) & covered and len(chosen) < wanted:
            chosen.append(candidates[int(pick)])
            covered |= set(types)
    return sorted(chosen, key=candidates.index)


def _pick_normals(rng: np.random.Generator, present: set[str], negations: str) -> list[str]:
    """One or two statements of normality consistent with the lesions, not repeating a negated pneumothorax."""
    chosen: list[str] = []
    for pick in rng.permutation(len(NORMAL_SENTENCES)):
        text, absent = NORMAL_SENTENCES[int(pick)]
        repeats = "pneumothorax" in text and "pneumothorax" in negations + " ".join(chosen)
        if not set(absent) & present and not repeats and len(chosen) < 2:
            chosen.append(text)
    return chosen


def _plan_lesion(lesion_type: str, rng: np.random.Generator, occupied: set[str]) -> LesionPlan | None:
    """Where a lesion goes and how the report words it; None when its sides are already taken."""
    certainty = "tentative" if rng.random() < 0.3 else "definitive"
    strength = float(rng.uniform(0.9, 1.1))
    size = str(rng.choice(SIZES[lesion_type])) if lesion_type in SIZES else ""
    if lesion_type == "cardiomegaly":
        return LesionPlan(lesion_type, (), None, certainty, (), {"size": size}, strength)
    if lesion_type == "edema":
        return LesionPlan(lesion_type, ("right lung", "left lung"), "bilateral", certainty,
                          ("right lung", "left lung"), {"size": size}, strength)
    if lesion_type == "effusion":
        sides = [side for side in ("right", "left", "bilateral") if not _sides(side) & occupied]
        if not sides:
            return None
        side = str(rng.choice(sides))
        occupied |= _sides(side)
        return LesionPlan(lesion_type, EFFUSION_SIDES[side], side, certainty, EFFUSION_SIDES[side],
                          {"size": size, "side": side}, strength)
    keys = [key for key in FOCAL_LOCATIONS[lesion_type] if not _sides(str(LOCATIONS[key]["side"])) & occupied]
    if not keys:
        return None
    location = LOCATIONS[str(rng.choice(keys))]
    occupied |= _sides(str(location["side"]))
    fill = {"adj": str(rng.choice(location["adj"])), "noun": str(rng.choice(location["noun"]))}
    return LesionPlan(lesion_type, tuple(location["labels"]), str(location["side"]), certainty,
                      tuple(location["region"]), fill, strength)


def _sides(side: str) -> set[str]:
    return {"right", "left"} if side == "bilateral" else {side}


def _lesion_sentence(lesion: LesionPlan, rng: np.random.Generator) -> str:
    templates = [template for template in LESION_TEMPLATES[lesion.lesion_type][lesion.certainty]
                 if not (lesion.fill.get("side") == "bilateral" and "costophrenic" in template)]
    sentence = str(rng.choice(templates)).format(**lesion.fill).replace("  ", " ")
    return sentence[0].upper() + sentence[1:]


# ------------------------------------------------------------------------------------------------------ reports


def compose_report(plan: StudyPlan, rng: np.random.Generator) -> str:
    """The report text in MIMIC-CXR's layout: header block, then FINDINGS/IMPRESSION, IMPRESSION only, or a final
    unlabelled paragraph (``plan.section``). Lines start with a space; blank lines hold a single space."""
    body = " ".join(plan.other_sentences + plan.phrases + plan.negation_sentences + plan.normal_sentences)
    frontal = next(image.view for image in plan.images if image.is_frontal)
    lines = ["                                 FINAL REPORT", f" EXAMINATION:  {EXAMINATIONS[frontal]}", " ",
             *_clinical_lines(plan, rng)]
    if rng.random() < 0.5:
        lines += [f" TECHNIQUE:  Chest {'PA and lateral' if frontal == 'PA' else 'portable AP'}", " "]
    lines += [f" COMPARISON:  {rng.choice(COMPARISONS)}", " "]
    if plan.section == "findings":
        lines += [" FINDINGS: ", " ", *_wrap(body), " ", " IMPRESSION: ", " ", *_wrap(_impression(plan, rng))]
    elif plan.section == "impression":
        lines += [" IMPRESSION: ", " ", *_wrap(body)]
    else:
        lines += _wrap(body)
    return "\n".join(lines) + "\n"


def _clinical_lines(plan: StudyPlan, rng: np.random.Generator) -> list[str]:
    """The indication (or history) block: for most studies with lesions one written for one of their types, else a
    general one; one study in ten has none."""
    draw = rng.random()
    if draw < 0.1:
        return []
    header = CLINICAL_HEADERS[int(rng.integers(len(CLINICAL_HEADERS)))]
    types = sorted({lesion.lesion_type for lesion in plan.lesions})
    if types and draw < 0.8:
        text = str(rng.choice(INDICATIONS_BY_LESION[types[int(rng.integers(len(types)))]]))
    else:
        text = str(rng.choice(INDICATIONS))
    return [f" {header}:  {text}", " "]


def _impression(plan: StudyPlan, rng: np.random.Generator) -> str:
    if not plan.lesions:
        return str(rng.choice(NO_ACUTE_IMPRESSION))
    return " ".join(_lesion_sentence(lesion, rng) for lesion in plan.lesions)


def _wrap(text: str) -> list[str]:
    return [f" {line}" for line in textwrap.wrap(text, width=76, break_on_hyphens=False)]


# ----------------------------------------------------------------------------------------------- pixels, DICOM


def _uid(seed: int, *parts: str) -> str:
    digest = hashlib.sha256("/".join([str(seed), *parts]).encode()).digest()[:15]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def encode_pixels(display: np.ndarray, image: ImagePlan, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Stored values (HxW uint16) and the DICOM attributes that map them back to ``display`` (HxW uint8).

    The reader undoes: rescale slope/intercept (modality LUT), then the VOI LUT sequence or the window
    (DICOM linear function) or, with neither, the full stored range; then inverts MONOCHROME1.
    """
    y = display.astype(np.float64) / 255.0
    if image.photometric == "MONOCHROME1":
        y = 1.0 - y
    max_value = 2**image.bits_stored - 1
    attributes: dict = {}
    if image.voi == "window":
        width = round(max_value * rng.uniform(0.7, 0.8))
        center = round(max_value * rng.uniform(0.45, 0.55))
        intercept = -1024.0 if image.bits_stored == 16 else 0.0
        stored = (center - 0.5) + (y - 0.5) * (width - 1) - intercept
        attributes = {"WindowCenter": center, "WindowWidth": width, "RescaleIntercept": intercept,
                      "RescaleSlope": 1.0, "RescaleType": "US"}
    elif image.voi == "lut":
        entries, gamma = 4096, float(rng.uniform(0.75, 1.35))
        first = 0 if image.bits_stored == 12 else int(rng.integers(1000, 60000))
        lut = np.rint((np.arange(entries) / (entries - 1)) ** gamma * 65535).astype("<u2")
        stored = first + (entries - 1) * y ** (1.0 / gamma)
        attributes = {"voi_lut": (entries, first, lut)}
    else:
        stored = y * max_value
    return np.clip(np.rint(stored), 0, max_value).astype(np.uint16), attributes


def write_dicom(path: Path, display: np.ndarray, image: ImagePlan, study: StudyPlan, seed: int) -> None:
    """Write ``display`` (HxW uint8, radiologist's view) as a CR DICOM in ``image``'s encoding variant."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    stored, attributes = encode_pixels(display, image, _rng(seed, 3, study.index, int(image.dicom_id[:8], 16)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = _uid(seed, "sop", image.dicom_id)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(seed, "study", study.study_id)
    ds.SeriesInstanceUID = _uid(seed, "series", image.dicom_id)
    ds.Modality, ds.PatientID, ds.PatientName = "CR", study.subject_id, "___"
    ds.StudyDate, ds.StudyTime, ds.StudyID = study.date, study.time, study.study_id
    ds.ViewPosition = image.view
    ds.PerformedProcedureStepDescription = EXAMINATIONS["AP" if image.view == "AP" else "PA"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, image.photometric
    ds.Rows, ds.Columns = image.height, image.width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, image.bits_stored, \
        image.bits_stored - 1, 0
    ds.PixelSpacing = [0.35, 0.35]
    lut = attributes.pop("voi_lut", None)
    if lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [lut[0], lut[1], 16])  # LUTDescriptor: entries, first mapped, bits
        item.add_new(0x00283006, "OW", lut[2].tobytes())  # LUTData
        ds.VOILUTSequence = Sequence([item])
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so the bytes depend on the arrays only."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=1)


def _write_csv_gz(path: Path, columns: tuple[str, ...], rows: list[tuple]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        handle.write(text.getvalue().encode("utf-8"))


# -------------------------------------------------------------------------------------------------- generation


def generate_cohort(out: str | Path, n_studies: int, seed: int, *, workers: int | None = None,
                    show_progress: bool = False) -> Path:
    """Write a synthetic MIMIC-CXR-shaped cohort of ``n_studies`` studies under ``out`` and return its path.

    ``out`` must be missing or empty (a fresh cohort, so the files are exactly a function of ``seed``).
    ``workers`` processes render the studies (default: up to 2 CPUs for 16 studies or more); the bytes written do
    not depend on it. ``show_progress``: progress of the studies written (:mod:`mimic_ils.progress`).
    """
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise CohortError(f"{root} is not empty; synth writes a fresh cohort into a new or empty folder")
    (root / SIDECAR_DIR).mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(n_studies, seed)
    with progress("synth", len(plans), "studies", enabled=show_progress) as bar:
        _write_studies(root, plans, seed, workers, bar.update)
    truth_lines, metadata, split_rows = [], [], []
    for plan in plans:
        truth_lines.append(json.dumps(_truth_record(plan)))
        for image in plan.images:
            metadata.append(_metadata_row(plan, image))
            split_rows.append((image.dicom_id, plan.study_id, plan.subject_id, plan.split))
    metadata.sort(key=lambda row: (row[1], row[2], row[0]))
    split_rows.sort(key=lambda row: (row[2], row[1], row[0]))
    _write_csv_gz(root / METADATA_NAME, METADATA_COLUMNS, metadata)
    _write_csv_gz(root / SPLIT_NAME, SPLIT_COLUMNS, split_rows)
    (root / SIDECAR_DIR / "truth.jsonl").write_text("\n".join(truth_lines) + "\n", encoding="utf-8")
    return root


def _write_studies(root: Path, plans: list[StudyPlan], seed: int, workers: int | None,
                   done: Callable[[], None]) -> None:
    """Write every study (``done()`` after each, in order)."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(plans) >= 16 else 1
    if workers <= 1:
        for plan in plans:
            _write_study(root, plan, seed)
            done()
        return
    context = multiprocessing.get_context("spawn")  # no fork: the caller may hold threads (torch, pytest plugins)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for _ in pool.map(_write_study, [root] * len(plans), plans, [seed] * len(plans), chunksize=4):
            done()


def _write_study(root: Path, plan: StudyPlan, seed: int) -> None:
    study_dir = root / plan.folder / f"s{plan.study_id}"
    study_dir.mkdir(parents=True, exist_ok=True)
    (root / plan.folder / f"s{plan.study_id}.txt").write_text(plan.report, encoding="utf-8")
    specs = [lesion.spec() for lesion in plan.lesions]
    for number, image in enumerate(plan.images):
        render_rng = _rng(seed, 2, plan.index, number)
        if image.is_frontal:
            geometry = phantom_render.sample_geometry(render_rng, image.height, image.width)
            render = phantom_render.render_frontal(geometry, specs, render_rng)
            display = render.display
            _write_npz(root / SIDECAR_DIR / f"{image.dicom_id}.npz", {
                "display": render.display, "normal": render.normal, "lung_right": render.lung_right,
                "lung_left": render.lung_left, "heart": render.heart, "anatomy": render.anatomy,
                "lesions": render.lesions, "boxes": render.boxes,
            })
        else:
            display = phantom_render.render_lateral(render_rng, image.height, image.width)
        write_dicom(study_dir / f"{image.dicom_id}.dcm", display, image, plan, seed)


def _truth_record(plan: StudyPlan) -> dict:
    lesions = [
        {"index": index, "lesion_type": lesion.lesion_type, "locations": list(lesion.locations), "side": lesion.side,
         "certainty": lesion.certainty, "phrase": phrase}
        for index, (lesion, phrase) in enumerate(zip(plan.lesions, plan.phrases, strict=True))
    ]
    return {"subject_id": plan.subject_id, "study_id": plan.study_id, "split": plan.split, "section": plan.section,
            "images": [image.truth() for image in plan.images], "lesions": lesions, "negated": plan.negated,
            "other_findings": plan.other_findings}


def _metadata_row(plan: StudyPlan, image: ImagePlan) -> tuple:
    frontal = next(item.view for item in plan.images if item.is_frontal)
    orientation = "Recumbent" if frontal == "AP" else "Erect"
    return (image.dicom_id, plan.subject_id, plan.study_id, EXAMINATIONS[frontal], image.view, image.height,
            image.width, plan.date, plan.time, EXAMINATIONS[frontal], VIEW_MEANINGS[image.view], orientation)


# ------------------------------------------------------------------------------------------------------ reading


def _sidecar(root: str | Path) -> Path:
    folder = Path(root) / SIDECAR_DIR
    if not (folder / "truth.jsonl").is_file():
        raise CohortError(f"{root} has no {SIDECAR_DIR} sidecar: phantom backends run only on a synthetic cohort")
    return folder


def load_truth(root: str | Path) -> dict[str, dict]:
    """The parsed ``truth.jsonl`` of a synthetic cohort: study_id -> record (format in the module docstring)."""
    with open(_sidecar(root) / "truth.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return {record["study_id"]: record for record in records}


def load_image_truth(root: str | Path, dicom_id: str) -> PhantomImageTruth:
    """The ground-truth arrays of one frontal image of a synthetic cohort."""
    path = _sidecar(root) / f"{dicom_id}.npz"
    if not path.is_file():
        raise CohortError(f"no phantom truth for {dicom_id} (not a frontal image of this synthetic cohort)")
    with np.load(path, allow_pickle=False) as arrays:
        return PhantomImageTruth(dicom_id=dicom_id, **{name: arrays[name] for name in arrays.files})
