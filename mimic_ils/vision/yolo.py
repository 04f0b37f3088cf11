"""``yolo`` lesion-box backend: an ``ultralytics`` YOLO detector trained on VinBigData's 14 classes (paper App. A.3).

The checkpoint is a local ``.pt`` file saved by the ``ultralytics`` package (YOLOv8 and later) whose model has the
14 VinBigData classes in the order of :data:`VINBIG_CLASSES`. Checkpoints from the older ``yolov5`` repository
pickle its ``models.yolo.Model`` class, which ``ultralytics`` cannot load: they are detected before loading (by
reading the checkpoint's pickle opcodes, without running it) and refused with a clear message; so is any checkpoint
that needs a Python module that is not installed (``ultralytics`` would otherwise try to pip-install it).

Boxes of aortic enlargement, other lesion and pneumothorax are dropped (not hyperintense lesions). Output boxes are
``xyxy`` in original-frame pixels with their confidence, class id and class name.
"""

from __future__ import annotations

import _compat_pickle
import importlib.util
import pickletools
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimic_ils.schema import BackendError, Box
from mimic_ils.vision import base

VINBIG_CLASSES = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
)
DROPPED_CLASSES = (0, 9, 12)  # aortic enlargement, other lesion, pneumothorax
YOLOV5_MODULES = ("models", "utils")  # top-level packages of the yolov5 repository


def pickled_globals(path: str | Path) -> set[str]:
    """The ``module.name`` globals a ``torch.save`` checkpoint references, read from its pickle without loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
    except (zipfile.BadZipFile, StopIteration, OSError):
        data = Path(path).read_bytes()  # legacy (non-zip) torch.save format
    found, strings = set(), []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.add(argument.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(argument, str):
                strings.append(argument)
    except Exception as error:  # pickletools raises ValueError and others on damaged data
        raise BackendError(f"yolo: {path} is not a readable PyTorch checkpoint ({error})") from None
    return found


def check_checkpoint(path: str | Path) -> None:
    """Raise ``BackendError`` unless ``path`` is an existing checkpoint that ``ultralytics`` can load offline."""
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"yolo: weights file {path} not found (expected an ultralytics .pt trained on VinBigData)")
    modules = {name.rsplit(".", 1)[0] for name in pickled_globals(path)}
    if any(module.split(".")[0] in YOLOV5_MODULES for module in modules):
        raise BackendError(
            f"yolo: {path} is a checkpoint of the old yolov5 repository (it pickles 'models.yolo.Model'), which "
            "ultralytics cannot load; re-export it with ultralytics (YOLOv8+) or train a new VinBigData model"
        )
    # protocol-2 pickles name Python 2 modules (__builtin__, copy_reg) that pickle maps to their Python 3 names
    modules = {_compat_pickle.IMPORT_MAPPING.get(module, module) for module in modules}
    missing = sorted(m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None)
    if missing:
        raise BackendError(f"yolo: {path} needs Python modules that are not installed: {', '.join(missing)}")


def to_boxes(xyxy: np.ndarray, confidences: np.ndarray, class_ids: np.ndarray, shape: tuple[int, int]) -> list[Box]:
    """Detector arrays -> hyperintense-class :class:`Box` list (dropped classes removed, clipped to ``shape``)."""
    height, width = shape
    boxes = []
    for (x0, y0, x1, y1), confidence, class_id in zip(xyxy, confidences, class_ids, strict=True):
        class_id = int(class_id)
        if class_id in DROPPED_CLASSES or not 0 <= class_id < len(VINBIG_CLASSES):
            continue
        x0, x1 = float(np.clip(x0, 0, width)), float(np.clip(x1, 0, width))
        y0, y1 = float(np.clip(y0, 0, height)), float(np.clip(y1, 0, height))
        if x1 > x0 and y1 > y0:
            boxes.append(Box(x0, y0, x1, y1, float(confidence), class_id, VINBIG_CLASSES[class_id]))
    return sorted(boxes, key=lambda box: -box.confidence)


def to_three_channels(image: np.ndarray) -> np.ndarray:
    """``HxW`` or ``HxWx1`` grey -> ``HxWx3`` (the same grey in every channel); ``HxWx3`` passes through."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected HxW or HxWx3 image, got shape {image.shape}")


@base.register("lesion_boxes", "yolo")
class YoloLesionBoxes:
    """VinBigData YOLO boxes per image, xyxy original-frame pixels, excluded classes dropped."""

    name = "yolo"

    def __init__(
        self,
        weights: str | Path,
        device: str = "cpu",
        imgsz: int = 1024,
        conf: float = 0.1,
        iou: float = 0.5,
        max_det: int = 100,
        batch_size: int = 8,
        half: bool = False,
    ) -> None:
        check_checkpoint(weights)
        from ultralytics import YOLO

        try:
            self.model = YOLO(str(weights), task="detect")
        except (TypeError, ModuleNotFoundError, RuntimeError, KeyError, AttributeError) as error:
            raise BackendError(f"yolo: cannot load {weights}: {str(error).splitlines()[0]}") from None
        names = self.model.names
        if len(names) != len(VINBIG_CLASSES):
            raise BackendError(f"yolo: {weights} has {len(names)} classes, expected the 14 VinBigData classes")
        self.device, self.imgsz, self.conf, self.iou, self.max_det = device, imgsz, conf, iou, max_det
        self.batch_size, self.half = max(1, batch_size), half and not str(device).startswith("cpu")

    def detect(self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]) -> list[list[Box] | BackendError]:
        results: list[list[Box] | BackendError] = []
        valid, arrays = [], []
        for dicom_id, image in zip(dicom_ids, images, strict=True):
            try:
                arrays.append(np.ascontiguousarray(to_three_channels(image).astype(np.uint8)))
                valid.append(len(results))
                results.append([])
            except ValueError as error:
                results.append(BackendError(f"{dicom_id}: {error}"))
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start : start + self.batch_size]
            for index, boxes in zip(valid[start : start + self.batch_size], self._predict(chunk), strict=True):
                results[index] = boxes
        return results

    def _predict(self, arrays: list[np.ndarray]) -> list[list[Box]]:
        options = {"half": True} if self.half else {}  # 'half' is deprecated in new ultralytics; only pass it on
        predictions = self.model.predict(
            source=arrays,
            imgsz=self.imgsz,
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            device=self.device,
            verbose=False,
            **options,
        )
        out = []
        for array, prediction in zip(arrays, predictions, strict=True):
            found = prediction.boxes
            out.append(
                to_boxes(found.xyxy.cpu().numpy(), found.conf.cpu().numpy(), found.cls.cpu().numpy(), array.shape[:2])
            )
        return out
