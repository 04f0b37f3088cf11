"""``yolo`` lesion-box backend: an ``ultralytics`` YOLO detector trained on VinBigData's 14 classes (paper App. A.3).

The checkpoint is a local ``.pt`` file saved by the ``ultralytics`` package (YOLOv8 and later) whose model has the
14 VinBigData classes in the order of :data:`VINBIG_CLASSES`. Checkpoints from the older ``yolov5`` repository
pickle its ``models.yolo.Model`` class, which ``ultralytics`` cannot load: they are detected before loading (by
reading the checkpoint's pickle opcodes, without running it) and refused with a clear message.

``ultralytics`` unpickles checkpoints with ``weights_only=False``, i.e. a pickle can run any code. So before it
touches the file, every global the pickle references is read from its opcodes (nothing is unpickled) and checked
against what ultralytics checkpoints need (:func:`check_checkpoint`): ``torch.nn`` / ``ultralytics.nn`` module
classes, tensor and storage rebuilders, plain containers and metadata value types. Anything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``, a module that is not installed, an obfuscated reference) is refused naming
the first one. Residual risk: an allowed network class may be *called* by a crafted pickle, which runs its
constructor with pickled arguments (ultralytics' own constructors read YAML configs and build layers).

Boxes of aortic enlargement, other lesion and pneumothorax are dropped (not hyperintense lesions). Output boxes are
``xyxy`` in original-frame pixels with their confidence, class id and class name.
"""

from __future__ import annotations

import importlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimic_ils.schema import BackendError, Box
from mimic_ils.vision import base
from mimic_ils.vision._pickles import python3_name, stream_globals, zip_pickles

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


def _pickle_streams(path: Path) -> list[bytes]:
    """Every pickle of a ``torch.save`` zip; a BackendError for legacy (non-zip) files and zips without one."""
    try:
        streams = zip_pickles(path)
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, EOFError) as error:
        raise BackendError(
            f"yolo: {path} is not a zip-format PyTorch checkpoint, which ultralytics saves ({error})"
        ) from None
    if not streams:
        raise BackendError(f"yolo: {path} is not a PyTorch checkpoint (its zip holds no data.pkl)")
    return streams


def pickled_globals(path: str | Path) -> set[str]:
    """The ``module.name`` globals a ``torch.save`` checkpoint references, read from its pickle without loading it."""
    return set(ordered_globals(Path(path)))


def ordered_globals(path: Path) -> list[str]:
    """:func:`pickled_globals` in the order the pickles reference them (first reference first, no repeats)."""
    found: dict[str, None] = {}
    for data in _pickle_streams(path):
        try:
            found.update(dict.fromkeys(stream_globals(data)))
        except Exception as error:  # pickletools raises ValueError and others on damaged data
            raise BackendError(f"yolo: {path} is not a readable PyTorch checkpoint ({error})") from None
    # protocol-2 pickles name Python 2 modules (__builtin__, copy_reg) that pickle maps to their Python 3 names
    return list(dict.fromkeys(python3_name(name) for name in found))


# Globals an ultralytics checkpoint may reference besides the network classes (see ``_allowed``): tensor and
# storage rebuilding, plain containers, and the value types of its metadata (train args, metrics, paths).
ALLOWED_GLOBALS = frozenset(
    {
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.complex",
        "builtins.bytearray",
        "builtins.object",
        "_codecs.encode",  # protocol 2 pickles bytes as _codecs.encode(text, "latin1")
        "copyreg._reconstructor",
        "collections.OrderedDict",
        "collections.defaultdict",
        "types.SimpleNamespace",
        "argparse.Namespace",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "pathlib._local.PosixPath",
        "pathlib._local.WindowsPath",
        "torch.Size",
        "torch.device",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "ultralytics.utils.IterableSimpleNamespace",
    }
)
# Modules whose torch.nn.Module subclasses (defined there) a checkpoint may pickle: the network's layers and model
# classes, and the loss objects older ultralytics versions left on the model (``model.criterion``).
MODULE_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.utils.loss", "ultralytics.utils.tal")
MODULES = ("ultralytics.nn.tasks", "ultralytics.utils.loss", "ultralytics.utils.tal")
PLAIN_CLASS_MODULES = ("ultralytics.utils.loss", "ultralytics.utils.tal")  # criterion helpers, not nn.Modules


def _allowed(name: str) -> str | None:
    """None if an ultralytics checkpoint may reference global ``name``, else why not (for the refusal)."""
    if name in ALLOWED_GLOBALS:
        return None
    module, _, attribute = name.rpartition(".")
    if module == "torch" and (attribute.endswith("Storage") or attribute in _TORCH_DTYPES):
        return None if hasattr(__import__("torch"), attribute) else "not a torch storage or dtype"
    family = module in MODULES or module.startswith(MODULE_PREFIXES)
    if not family or not attribute.isidentifier():
        return "not a class an ultralytics checkpoint needs"
    try:
        value = getattr(importlib.import_module(module), attribute)
    except Exception:  # noqa: BLE001 - ImportError, AttributeError, or a module that fails to import
        return "not in the installed ultralytics/torch (a checkpoint of another version?)"
    import torch

    if not isinstance(value, type) or value.__module__ != module:
        return "not a class defined there"
    if issubclass(value, torch.nn.Module) or module in PLAIN_CLASS_MODULES:
        return None
    return "not a network module class"


_TORCH_DTYPES = frozenset(
    {"float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32", "int64",
     "uint8", "bool", "long", "int", "short"}
)


def check_checkpoint(path: str | Path) -> None:
    """Raise ``BackendError`` unless ``path`` is an existing ultralytics checkpoint that is safe to unpickle.

    Its pickle's globals are read from the opcodes (nothing is unpickled) and every one must be allowed (see
    :func:`_allowed`): anything else, ``os.system`` or ``builtins.eval`` say, is refused naming the first one, before
    ``ultralytics`` (which unpickles with ``weights_only=False``) touches the file.
    """
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"yolo: weights file {path} not found (expected an ultralytics .pt trained on VinBigData)")
    names = ordered_globals(path)
    if any(name.split(".")[0] in YOLOV5_MODULES for name in names):
        raise BackendError(
            f"yolo: {path} is a checkpoint of the old yolov5 repository (it pickles 'models.yolo.Model'), which "
            "ultralytics cannot load; re-export it with ultralytics (YOLOv8+) or train a new VinBigData model"
        )
    refused = [(name, reason) for name in names if (reason := _allowed(name)) is not None]
    if refused:
        name, reason = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise BackendError(
            f"yolo: {path} refused, nothing of it was run: its pickle references {name}{more}, {reason}; "
            "only ultralytics/torch network classes and tensor data are allowed"
        )


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
