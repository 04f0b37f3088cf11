"""The vision runner: all four cues for a batch of frontal images, written to one artifact folder per image.

Per image, in order (paper Sec. 3.1, App. A.3): lungs/heart on the image -> pseudo-normal image edited inside
lungs ∪ heart -> anatomy labels on the pseudo-normal image -> lesion boxes on the image. Each image's cues go to
``out_dir/<dicom_id>/`` (original frame throughout):

* ``image.png``: the HxW uint8 image, encoded once by ``files.encode_png`` (the output folder reuses these bytes);
* ``masks.bin``: the 19 HxW bool masks (``lung_right``, ``lung_left``, ``heart``, the 16 anatomy labels), each
  cropped to its bounding box and bit-packed, in one zlib stream (:func:`pack_masks`);
* ``pseudo_normal.bin``: the HxW uint8 pseudo-normal image as its difference from the image (mod 256) inside the
  bounding box of the pixels the editor changed, zlib-compressed (:func:`pack_pseudo_normal`); exact, and small
  because RadEdit edits only lungs ∪ heart;
* ``boxes.json``: list of ``{"xyxy": [x0, y0, x1, y1], "confidence", "class_id", "class_name"}`` (original-frame
  pixels);
* ``cues.json``: the manifest (version, dicom id, frame, backends, size and SHA-256 of every file above), written
  last.

A folder is built under a temporary name and renamed into place, so a folder with a valid manifest is complete;
images whose folder is complete (every file present with its recorded size, manifest of this version) are
skipped, which makes a run resumable and recomputes folders of an older layout; :func:`load_cues` also checks the
checksums of the bytes it decodes. One image's problem becomes its status (a one-line reason) and never stops
the batch.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
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
MANIFEST_VERSION = 3  # 3: masks.bin and pseudo_normal.bin instead of 19 mask PNGs and pseudo_normal.png
ANATOMY_NAMES = (*LUNG_LABELS, HEART_LABEL)
MASK_NAMES = ("lung_right", "lung_left", "heart", *(f"anatomy/{label}" for label in ANATOMY_NAMES))
MASKS_FILE = "masks.bin"
PSEUDO_NORMAL_FILE = "pseudo_normal.bin"
MASKS_MAGIC = b"MILS-MASKS-1\n"
PSEUDO_MAGIC = b"MILS-PSEUDO-1\n"

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


def read_frame(root: Path, record: ImageRecord) -> np.ndarray | str:
    """The record's image (``HxW uint8``), or the status ``"read failed: <reason>"`` (both engines decode here)."""
    try:
        image = _read_image(root, record)
        if image.ndim != 2 or image.dtype != np.uint8:
            raise MimicIlsError(f"reader returned {image.dtype} {image.shape}, expected HxW uint8")
    except (MimicIlsError, OSError) as error:
        return f"read failed: {error}"
    return image


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
        image = read_frame(root, record)
        if isinstance(image, str):
            statuses[record.dicom_id] = image
        else:
            images[record.dicom_id] = image
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
    lungs = call_step("lungs_heart", backends["lungs_heart"].segment, statuses, ids, [images[i] for i in ids])
    ids = [i for i in ids if i in lungs]
    masks = [lungs[i].lung_right | lungs[i].lung_left | lungs[i].heart for i in ids]
    normal = call_step(
        "pseudo_normal", backends["pseudo_normal"].edit, statuses, ids, [images[i] for i in ids], masks
    )
    ids = [i for i in ids if i in normal]
    anatomy = call_step("anatomy", backends["anatomy"].segment, statuses, ids, [normal[i] for i in ids])
    ids = [i for i in ids if i in anatomy]
    boxes = call_step("lesion_boxes", backends["lesion_boxes"].detect, statuses, ids, [images[i] for i in ids])
    return {i: (images[i], lungs[i], normal[i], anatomy[i], boxes[i]) for i in ids if i in boxes}


def call_step(step: str, method, statuses: dict[str, str], ids: list[str], *columns: list) -> dict[str, object]:
    """Call one backend on a batch (both engines call the models here); on an unexpected crash retry image by
    image so only the culprit fails.

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
                accepted.update(call_step(step, method, statuses, [dicom_id], *[[column[k]] for column in columns]))
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
        named = {"lung_right": lungs_heart.lung_right, "lung_left": lungs_heart.lung_left,
                 "heart": lungs_heart.heart, **{f"anatomy/{label}": anatomy[label] for label in ANATOMY_NAMES}}
        payloads = {
            "image.png": encode_png(image),
            MASKS_FILE: pack_masks(named, image.shape),
            PSEUDO_NORMAL_FILE: pack_pseudo_normal(pseudo_normal, image),
            "boxes.json": json.dumps([_box_dict(box) for box in boxes], indent=1).encode(),
        }
        for name, data in payloads.items():
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


def _deflate(data: bytes) -> bytes:
    """zlib level 1 with run-length matching: masks and pseudo-normal differences are long runs of equal bytes."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return compressor.compress(data) + compressor.flush()


def _container(magic: bytes, header: dict, body: bytes) -> bytes:
    """``magic``, the JSON header's length (uint32 little-endian), the header, then the deflated body."""
    text = json.dumps(header, separators=(",", ":")).encode()
    return magic + struct.pack("<I", len(text)) + text + _deflate(body)


def _open_container(data: bytes, magic: bytes, what: str) -> tuple[dict, bytes]:
    """The header and inflated body of a :func:`_container`; ``BackendError`` naming ``what`` when it is damaged."""
    try:
        if not data.startswith(magic):
            raise ValueError("unknown format")
        (length,) = struct.unpack_from("<I", data, len(magic))
        start = len(magic) + 4
        header = json.loads(data[start : start + length])
        inflater = zlib.decompressobj()
        body = inflater.decompress(data[start + length :])
        if not inflater.eof or inflater.unused_data:
            raise ValueError("truncated or trailing bytes")
        return header, body
    except (ValueError, struct.error, zlib.error) as error:
        raise BackendError(f"{what}: damaged ({error})") from None


def _bounding_window(mask: np.ndarray) -> tuple[slice, slice]:
    """Tightest ``(rows, cols)`` slices around the True pixels of an ``HxW bool`` mask; empty slices if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def pack_masks(masks_by_name: dict[str, np.ndarray], shape: tuple[int, int]) -> bytes:
    """One file of ``HxW bool`` masks: each cropped to its bounding box, bit-packed (``np.packbits``), deflated."""
    entries, planes = [], []
    for name, mask in masks_by_name.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask {name!r} is {mask.shape}, not in the frame {tuple(shape)}")
        rows, cols = _bounding_window(mask)
        entries.append([name, rows.start, rows.stop, cols.start, cols.stop])
        planes.append(np.packbits(mask[rows, cols]).tobytes())
    header = {"height": int(shape[0]), "width": int(shape[1]), "masks": entries}
    return _container(MASKS_MAGIC, header, b"".join(planes))


def unpack_masks(data: bytes, what: str = MASKS_FILE) -> dict[str, np.ndarray]:
    """The ``HxW bool`` masks of :func:`pack_masks`; ``BackendError`` when the bytes are damaged."""
    header, body = _open_container(data, MASKS_MAGIC, what)
    try:
        shape = (int(header["height"]), int(header["width"]))
        out, offset = {}, 0
        for name, r0, r1, c0, c1 in header["masks"]:
            count = (r1 - r0) * (c1 - c0)
            size = (count + 7) // 8
            if not (0 <= r0 <= r1 <= shape[0] and 0 <= c0 <= c1 <= shape[1]) or offset + size > len(body):
                raise ValueError(f"mask {name!r} does not fit")
            mask = np.zeros(shape, dtype=bool)
            bits = np.frombuffer(body, np.uint8, size, offset)
            mask[r0:r1, c0:c1] = np.unpackbits(bits, count=count).view(bool).reshape(r1 - r0, c1 - c0)
            out[str(name)] = mask
            offset += size
        if offset != len(body):
            raise ValueError("trailing bytes")
    except (KeyError, TypeError, ValueError) as error:
        raise BackendError(f"{what}: damaged ({error})") from None
    return out


def pack_pseudo_normal(pseudo_normal: np.ndarray, image: np.ndarray) -> bytes:
    """The ``HxW uint8`` pseudo-normal image relative to the image: ``pseudo_normal - image`` (mod 256) inside the
    bounding box of the changed pixels, deflated (an edit of lungs ∪ heart is all it keeps)."""
    pseudo_normal, image = np.asarray(pseudo_normal), np.asarray(image)
    if pseudo_normal.shape != image.shape or pseudo_normal.dtype != np.uint8 or image.dtype != np.uint8:
        raise ValueError(f"pseudo-normal {pseudo_normal.dtype} {pseudo_normal.shape} is not like the image "
                         f"{image.dtype} {image.shape}")
    rows, cols = _bounding_window(pseudo_normal != image)
    difference = np.subtract(pseudo_normal[rows, cols], image[rows, cols])  # uint8: wraps mod 256, undone on load
    header = {"height": int(image.shape[0]), "width": int(image.shape[1]),
              "window": [rows.start, rows.stop, cols.start, cols.stop]}
    return _container(PSEUDO_MAGIC, header, difference.tobytes())


def unpack_pseudo_normal(data: bytes, image: np.ndarray, what: str = PSEUDO_NORMAL_FILE) -> np.ndarray:
    """The ``HxW uint8`` pseudo-normal image of :func:`pack_pseudo_normal`, given the same ``image``."""
    header, body = _open_container(data, PSEUDO_MAGIC, what)
    try:
        r0, r1, c0, c1 = (int(value) for value in header["window"])
        if (int(header["height"]), int(header["width"])) != image.shape:
            raise ValueError(f"frame {header['height']}x{header['width']} is not the image's {image.shape}")
        if not (0 <= r0 <= r1 <= image.shape[0] and 0 <= c0 <= c1 <= image.shape[1]):
            raise ValueError("window outside the frame")
        if len(body) != (r1 - r0) * (c1 - c0):
            raise ValueError("wrong length")
    except (KeyError, TypeError, ValueError) as error:
        raise BackendError(f"{what}: damaged ({error})") from None
    pseudo_normal = image.copy()
    pseudo_normal[r0:r1, c0:c1] += np.frombuffer(body, np.uint8).reshape(r1 - r0, c1 - c0)
    return pseudo_normal


def _box_dict(box: Box) -> dict:
    return {
        "xyxy": [float(box.x0), float(box.y0), float(box.x1), float(box.y1)],
        "confidence": float(box.confidence),
        "class_id": int(box.class_id),
        "class_name": box.class_name,
    }


def load_cues(artifact_dir: str | Path) -> VisionCues:
    """Read one image's artifact folder back into :class:`~mimic_ils.schema.VisionCues` (all in the original frame).

    Raises ``BackendError`` when the folder is incomplete or of another layout, or a file does not match its
    manifest checksum (each file is read once: checked, then decoded from the same bytes).
    """
    folder = Path(artifact_dir)
    incomplete = BackendError(f"{folder}: incomplete vision artifacts (missing or mismatched {MANIFEST})")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        records = {name: FileRecord.from_json(record) for name, record in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise incomplete from None
    names = {"image.png", MASKS_FILE, PSEUDO_NORMAL_FILE, "boxes.json"}
    if manifest.get("version") != MANIFEST_VERSION or not names <= set(records):
        raise incomplete
    data = {}
    for name in sorted(names):
        try:
            data[name] = (folder / name).read_bytes()
        except OSError:
            raise incomplete from None
        if records[name] is None or FileRecord.of_bytes(data[name]) != records[name]:
            raise BackendError(f"{folder}: incomplete vision artifacts (mismatched {MANIFEST}: {name} was altered)")
    image = _decode_png(data["image.png"], folder / "image.png")
    masks = unpack_masks(data[MASKS_FILE], str(folder / MASKS_FILE))
    missing = [name for name in MASK_NAMES if name not in masks]
    if missing or any(mask.shape != image.shape for mask in masks.values()):
        raise BackendError(f"{folder / MASKS_FILE}: masks {missing or 'of another frame'} than the image")
    boxes = [
        Box(*entry["xyxy"], entry["confidence"], entry["class_id"], entry["class_name"])
        for entry in json.loads(data["boxes.json"])
    ]
    return VisionCues(
        dicom_id=manifest["dicom_id"],
        image=image,
        pseudo_normal=unpack_pseudo_normal(data[PSEUDO_NORMAL_FILE], image, str(folder / PSEUDO_NORMAL_FILE)),
        lung_right=masks["lung_right"],
        lung_left=masks["lung_left"],
        heart=masks["heart"],
        anatomy={label: masks[f"anatomy/{label}"] for label in ANATOMY_NAMES},
        boxes=boxes,
    )


def _decode_png(data: bytes, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            return np.asarray(picture.convert("L"))
    except (OSError, ValueError) as error:
        raise BackendError(f"{path}: damaged ({error})") from None
