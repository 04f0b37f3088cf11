"""The vision runner: all four cues for a batch of frontal images, written to one artifact folder per image.

Per image, in order (paper Sec. 3.1, App. A.3): lungs/heart on the image -> pseudo-normal image edited inside
lungs ∪ heart -> anatomy labels on the pseudo-normal image -> lesion boxes on the image. Each image's cues go to
``out_dir/<dicom_id>/``:

* ``image.png``, ``pseudo_normal.png``: HxW uint8 (original frame);
* ``lung_right.png``, ``lung_left.png``, ``heart.png``, ``anatomy/<label>.png``: HxW masks, 0 / 255;
* ``boxes.json``: list of ``{"xyxy": [x0, y0, x1, y1], "confidence", "class_id", "class_name"}`` (original-frame
  pixels);
* ``cues.json``: the manifest (dicom id, frame, backends, size and SHA-256 of every file above), written last.

A folder is built under a temporary name and renamed into place, so a folder with a valid manifest is complete;
images whose folder is complete (every file present with its recorded size) are skipped, which makes a run
resumable; :func:`load_cues` also checks the checksums. One image's problem becomes its status
(a one-line reason) and never stops the batch.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mimic_ils.files import FileRecord, current_umask, encode_png
from mimic_ils.progress import progress
from mimic_ils.schema import HEART_LABEL, LUNG_LABELS, BackendError, Box, ImageRecord, MimicIlsError, VisionCues
from mimic_ils.vision import base

STATUS_WRITTEN = "written"
STATUS_EXISTS = "exists"
MANIFEST = "cues.json"
MANIFEST_VERSION = 2
ANATOMY_NAMES = (*LUNG_LABELS, HEART_LABEL)

PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "phantom": {step: {"name": "phantom"} for step in base.STEPS},
    # Real backends read their weights from a folder laid out as documented in ``real_preset``.
    "real": {
        "lungs_heart": {"name": "hybridgnet"},
        "pseudo_normal": {"name": "radedit"},
        "anatomy": {"name": "cxas"},
        "lesion_boxes": {"name": "yolo"},
    },
}


@dataclass
class BackendSpec:
    """One step's backend: its registry ``name`` and the keyword ``options`` of its factory."""

    name: str
    options: dict[str, object] = field(default_factory=dict)


@dataclass
class VisionConfig:
    """Which backend runs each vision step, where, and how many images go through a step at once."""

    steps: dict[str, BackendSpec]
    device: str = "cpu"
    batch_size: int = 4

    @classmethod
    def from_dict(cls, data: dict) -> VisionConfig:
        """From ``{"device", "batch_size", "steps": {step: name | {"name": ..., "options": {...}}}}``."""
        unknown = set(data.get("steps", {})) - set(base.STEPS)
        if unknown or set(base.STEPS) - set(data.get("steps", {})):
            raise BackendError(f"vision config must name a backend for each of {base.STEPS}; got {data.get('steps')}")
        steps = {}
        for step, spec in data["steps"].items():
            spec = {"name": spec} if isinstance(spec, str) else dict(spec)
            steps[step] = BackendSpec(str(spec["name"]), dict(spec.get("options") or {}))
        return cls(steps=steps, device=str(data.get("device", "cpu")), batch_size=int(data.get("batch_size", 4)))

    @classmethod
    def from_yaml(cls, path: str | Path) -> VisionConfig:
        import yaml

        try:
            return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError) as error:
            raise BackendError(f"cannot read vision config {path}: {error}") from None

    @classmethod
    def preset(cls, name: str, weights_dir: str | Path | None = None, **kwargs: object) -> VisionConfig:
        """``"phantom"`` (all steps phantom; the runner fills in the cohort root) or ``"real"`` (see real_preset)."""
        if name == "phantom":
            return cls.from_dict({"steps": PRESETS["phantom"], **kwargs})
        if name == "real":
            return real_preset(weights_dir, **kwargs)
        raise BackendError(f"unknown vision preset {name!r}; expected 'phantom', 'real' or a YAML file")

    def to_dict(self) -> dict:
        steps = {step: {"name": spec.name, "options": dict(spec.options)} for step, spec in self.steps.items()}
        return {"device": self.device, "batch_size": self.batch_size, "steps": steps}


def real_preset(weights_dir: str | Path | None, trust_remote_code: bool = False, **kwargs: object) -> VisionConfig:
    """The paper's backends, with weights under ``weights_dir`` (default ``$MIMIC_ILS_WEIGHTS``) laid out as::

    hybridgnet/weights.pt                      CheXmask HybridGNet state dict
    radedit/unet/  radedit/vae/  radedit/text_encoder/   microsoft/radedit unet, SDXL VAE, BioViL-T
    cxas/UNet_ResNet50_default.pth             CXAS checkpoint
    yolo/vinbigdata.pt                         ultralytics YOLO trained on VinBigData (14 classes)

    BioViL-T ships its own model code, which the radedit backend runs only with its option
    ``trust_remote_code: true``; the preset sets it only when asked (``vision: {preset: real,
    trust_remote_code: true}`` in the build config), never by default.
    """
    root = weights_dir or os.environ.get("MIMIC_ILS_WEIGHTS")
    if not root:
        raise BackendError("the 'real' vision preset needs a weights folder (--weights-dir or $MIMIC_ILS_WEIGHTS)")
    root = Path(root)
    options = {
        "lungs_heart": {"weights": str(root / "hybridgnet" / "weights.pt")},
        "pseudo_normal": {
            "unet": str(root / "radedit" / "unet"),
            "vae": str(root / "radedit" / "vae"),
            "text_encoder": str(root / "radedit" / "text_encoder"),
            "trust_remote_code": bool(trust_remote_code),
        },
        "anatomy": {"weights": str(root / "cxas" / "UNet_ResNet50_default.pth")},
        "lesion_boxes": {"weights": str(root / "yolo" / "vinbigdata.pt")},
    }
    steps = {step: {"name": spec["name"], "options": options[step]} for step, spec in PRESETS["real"].items()}
    return VisionConfig.from_dict({"steps": steps, **kwargs})


def create_backends(config: VisionConfig, root: str | Path) -> dict[str, object]:
    """Instantiate the configured backend of each step.

    Phantom backends get ``cohort_root=root`` unless set; every backend whose factory takes ``device`` or
    ``batch_size`` gets the config's value unless its options set one.
    """
    backends = {}
    for step, spec in config.steps.items():
        options = dict(spec.options)
        if spec.name == "phantom":
            options.setdefault("cohort_root", str(root))
        factory = base._REGISTRY.get((step, spec.name)) if base.available(step) else None
        for keyword, value in (("device", config.device), ("batch_size", config.batch_size)):
            if factory is not None and _accepts(factory, keyword):
                options.setdefault(keyword, value)
        backends[step] = base.create(step, spec.name, **options)
    return backends


def _accepts(factory: object, keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _read_image(root: Path, record: ImageRecord) -> np.ndarray:
    """The record's DICOM as ``HxW uint8`` (radiologist's view), through ``mimic_ils.dicom.read_dicom``."""
    from mimic_ils.dicom import read_dicom

    return np.asarray(read_dicom(root / record.path))


def artifact_complete(folder: Path, checksums: bool = False) -> bool:
    """True when ``folder`` has a manifest whose every listed file exists with the recorded size (and, with
    ``checksums``, the recorded SHA-256; sizes alone keep a resume over many images cheap)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(files, dict):
        return False
    records = {name: FileRecord.from_json(record) for name, record in files.items()}
    return all(record is not None and record.matches(folder / name, full=checksums)
               for name, record in records.items())


def label_filename(label: str) -> str:
    """``anatomy/<label with spaces as underscores>.png``."""
    return f"anatomy/{label.replace(' ', '_')}.png"


def run_cues(
    root: str | Path, image_records: Sequence[ImageRecord], out_dir: str | Path, config: VisionConfig, *,
    show_progress: bool = False,
) -> list[tuple[str, str]]:
    """Run the configured backends on ``image_records`` (frontal images of the cohort at ``root``).

    Returns ``(dicom_id, status)`` per record in input order: ``"written"``, ``"exists"`` (complete artifacts were
    already there) or a one-line reason why the image has no cues. Whole-backend problems (missing weights) raise
    ``BackendError`` before any image is processed. ``show_progress``: progress of the images
    (:mod:`mimic_ils.progress`).
    """
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, str] = {}
    todo = []
    for record in image_records:
        if not record.is_frontal:
            statuses[record.dicom_id] = f"not a frontal view ({record.view})"
        elif artifact_complete(out_dir / record.dicom_id):
            statuses[record.dicom_id] = STATUS_EXISTS
        else:
            todo.append(record)
    if todo:
        backends = create_backends(config, root)
        names = {step: spec.name for step, spec in config.steps.items()}
        with progress("cues", len(todo), "images", enabled=show_progress) as bar:
            for start in range(0, len(todo), max(1, config.batch_size)):
                batch = todo[start : start + max(1, config.batch_size)]
                statuses.update(_run_batch(root, batch, out_dir, backends, names))
                bar.update(len(batch))
    return [(record.dicom_id, statuses[record.dicom_id]) for record in image_records]


def _run_batch(root: Path, batch: Sequence[ImageRecord], out_dir: Path, backends: dict, names: dict) -> dict:
    statuses: dict[str, str] = {}
    images: dict[str, np.ndarray] = {}
    for record in batch:
        try:
            image = _read_image(root, record)
            if image.ndim != 2 or image.dtype != np.uint8:
                raise MimicIlsError(f"reader returned {image.dtype} {image.shape}, expected HxW uint8")
            images[record.dicom_id] = image
        except (MimicIlsError, OSError) as error:
            statuses[record.dicom_id] = f"read failed: {error}"
    cues = _compute_cues(images, backends, statuses)
    for dicom_id, (image, lungs_heart, pseudo_normal, anatomy, boxes) in cues.items():
        try:
            write_artifacts(out_dir, dicom_id, image, lungs_heart, pseudo_normal, anatomy, boxes, names)
            statuses[dicom_id] = STATUS_WRITTEN
        except OSError as error:
            statuses[dicom_id] = f"write failed: {error}"
    return statuses


def _compute_cues(images: dict[str, np.ndarray], backends: dict, statuses: dict[str, str]) -> dict:
    """The four cues of each image; an image whose step fails gets its reason in ``statuses`` and drops out."""
    ids = list(images)
    lungs = _call_step("lungs_heart", backends["lungs_heart"].segment, statuses, ids, [images[i] for i in ids])
    ids = [i for i in ids if i in lungs]
    masks = [lungs[i].lung_right | lungs[i].lung_left | lungs[i].heart for i in ids]
    normal = _call_step(
        "pseudo_normal", backends["pseudo_normal"].edit, statuses, ids, [images[i] for i in ids], masks
    )
    ids = [i for i in ids if i in normal]
    anatomy = _call_step("anatomy", backends["anatomy"].segment, statuses, ids, [normal[i] for i in ids])
    ids = [i for i in ids if i in anatomy]
    boxes = _call_step("lesion_boxes", backends["lesion_boxes"].detect, statuses, ids, [images[i] for i in ids])
    return {i: (images[i], lungs[i], normal[i], anatomy[i], boxes[i]) for i in ids if i in boxes}


def _call_step(step: str, method, statuses: dict[str, str], ids: list[str], *columns: list) -> dict[str, object]:
    """Call one backend on a batch; on an unexpected crash retry image by image so only the culprit fails.

    Accepted results are returned by dicom id; the others get their reason in ``statuses``.
    """
    if not ids:
        return {}
    try:
        results = list(method(*columns, ids))
        if len(results) != len(ids):
            raise BackendError(f"{step} backend returned {len(results)} results for {len(ids)} images")
    except BackendError:
        raise
    except Exception as error:  # a crash inside a third-party model must not take the batch down
        if len(ids) > 1:
            accepted: dict[str, object] = {}
            for k, dicom_id in enumerate(ids):
                accepted.update(_call_step(step, method, statuses, [dicom_id], *[[column[k]] for column in columns]))
            return accepted
        results = [BackendError(f"backend crashed: {type(error).__name__}: {error}")]
    accepted = {}
    for index, (dicom_id, result) in enumerate(zip(ids, results, strict=True)):
        reason = _invalid_result(step, result, columns[0][index].shape[:2])
        if reason:
            statuses[dicom_id] = f"{step}: {reason}"
        else:
            accepted[dicom_id] = result
    return accepted


def _invalid_result(step: str, result: object, frame: tuple[int, ...]) -> str | None:
    """A reason when ``result`` is an error or not in the image ``frame``, else None."""
    if isinstance(result, Exception):
        return str(result)
    if step == "lungs_heart":
        arrays = [result.lung_right, result.lung_left, result.heart]
    elif step == "pseudo_normal":
        arrays = [result]
    elif step == "anatomy":
        missing = [label for label in ANATOMY_NAMES if label not in result]
        if missing:
            return f"anatomy backend returned no mask for {missing}"
        arrays = [result[label] for label in ANATOMY_NAMES]
    else:
        return None
    if any(np.shape(array)[:2] != frame for array in arrays):
        return f"result is not in the image frame {frame}"
    return None


def write_artifacts(
    out_dir: Path,
    dicom_id: str,
    image: np.ndarray,
    lungs_heart: base.LungsHeart,
    pseudo_normal: np.ndarray,
    anatomy: dict[str, np.ndarray],
    boxes: list[Box],
    backends: dict[str, str],
) -> Path:
    """Write one image's artifact folder atomically (temporary folder, manifest last, rename); return its path."""
    final = out_dir / dicom_id
    staging = Path(tempfile.mkdtemp(prefix=f".{dicom_id}.", dir=out_dir))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide the cues from the other users
    try:
        files = {
            "image.png": image,
            "pseudo_normal.png": pseudo_normal,
            "lung_right.png": lungs_heart.lung_right,
            "lung_left.png": lungs_heart.lung_left,
            "heart.png": lungs_heart.heart,
        }
        files.update({label_filename(label): anatomy[label] for label in ANATOMY_NAMES})
        payloads = {name: encode_png(array) for name, array in files.items()}
        payloads["boxes.json"] = json.dumps([_box_dict(box) for box in boxes], indent=1).encode()
        for name, data in payloads.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        manifest = {
            "version": MANIFEST_VERSION,
            "dicom_id": dicom_id,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "backends": backends,
            "files": {name: FileRecord.of_bytes(data).to_json() for name, data in payloads.items()},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _box_dict(box: Box) -> dict:
    return {
        "xyxy": [float(box.x0), float(box.y0), float(box.x1), float(box.y1)],
        "confidence": float(box.confidence),
        "class_id": int(box.class_id),
        "class_name": box.class_name,
    }


def load_cues(artifact_dir: str | Path) -> VisionCues:
    """Read one image's artifact folder back into :class:`~mimic_ils.schema.VisionCues` (all in the original frame).

    Raises ``BackendError`` when the folder is incomplete or a file does not match its manifest checksum.
    """
    folder = Path(artifact_dir)
    if not artifact_complete(folder, checksums=True):
        raise BackendError(f"{folder}: incomplete vision artifacts (missing or mismatched {MANIFEST})")
    manifest = json.loads((folder / MANIFEST).read_text())

    def read(name: str) -> np.ndarray:
        return np.asarray(Image.open(folder / name).convert("L"))

    boxes = [
        Box(*entry["xyxy"], entry["confidence"], entry["class_id"], entry["class_name"])
        for entry in json.loads((folder / "boxes.json").read_text())
    ]
    return VisionCues(
        dicom_id=manifest["dicom_id"],
        image=read("image.png"),
        pseudo_normal=read("pseudo_normal.png"),
        lung_right=read("lung_right.png") > 127,
        lung_left=read("lung_left.png") > 127,
        heart=read("heart.png") > 127,
        anatomy={label: read(label_filename(label)) > 127 for label in ANATOMY_NAMES},
        boxes=boxes,
    )
