"""Protocols of the four vision cues (DESIGN.md, "Backends") and the registry that picks implementations by name.

Every backend takes a batch of images in the original frame (``HxW uint8``, the radiologist's view) with their
dicom ids and returns results in the same frame. A backend raises :class:`~mimic_ils.schema.BackendError` for a
problem that concerns the whole backend (missing weights) and returns a ``BackendError`` *instance* in place of a
result for a problem of one image, so one bad image never stops a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from mimic_ils.schema import BackendError, Box


@dataclass(frozen=True)
class LungsHeart:
    """Lung and heart masks of one image (``HxW bool``, original frame); ``landmarks`` are optional (N, 2) xy."""

    lung_right: np.ndarray
    lung_left: np.ndarray
    heart: np.ndarray
    landmarks: np.ndarray | None = None


@runtime_checkable
class LungsHeartBackend(Protocol):
    name: str

    def segment(self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]) -> list[LungsHeart | BackendError]:
        """Lungs and heart per image."""


@runtime_checkable
class PseudoNormalBackend(Protocol):
    name: str

    def edit(
        self, images: Sequence[np.ndarray], edit_masks: Sequence[np.ndarray], dicom_ids: Sequence[str]
    ) -> list[np.ndarray | BackendError]:
        """Pseudo-normal image per input (``HxW uint8``, original frame), edited only inside ``edit_masks``."""


@runtime_checkable
class AnatomyBackend(Protocol):
    name: str

    def segment(
        self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]
    ) -> list[dict[str, np.ndarray] | BackendError]:
        """Per image, a dict from each of ``schema.LUNG_LABELS`` and ``"heart"`` to an ``HxW bool`` mask."""


@runtime_checkable
class LesionBoxBackend(Protocol):
    name: str

    def detect(self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]) -> list[list[Box] | BackendError]:
        """Hyperintense-class lesion boxes per image (xyxy original-frame pixels), excluded classes dropped."""


STEPS = ("lungs_heart", "pseudo_normal", "anatomy", "lesion_boxes")
_REGISTRY: dict[tuple[str, str], Callable[..., object]] = {}


def register(step: str, name: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Class decorator: make ``factory(**options)`` available as backend ``name`` of ``step``."""
    if step not in STEPS:
        raise ValueError(f"unknown vision step {step!r}; expected one of {STEPS}")

    def decorator(factory: Callable[..., object]) -> Callable[..., object]:
        _REGISTRY[(step, name)] = factory
        return factory

    return decorator


def available(step: str) -> list[str]:
    """Names of the registered backends of ``step``."""
    _import_builtin_backends()
    return sorted(name for registered_step, name in _REGISTRY if registered_step == step)


def create(step: str, name: str, **options: object) -> object:
    """Instantiate backend ``name`` of ``step`` with ``options`` (weight paths, device, batch size, ...)."""
    _import_builtin_backends()
    try:
        factory = _REGISTRY[(step, name)]
    except KeyError:
        raise BackendError(f"no {step} backend named {name!r}; available: {', '.join(available(step))}") from None
    return factory(**options)


def _import_builtin_backends() -> None:
    """Import the modules that register the built-in backends (lazy, so importing this module stays cheap)."""
    import importlib

    for module in ("hybridgnet", "chexmask", "cxas", "radedit", "yolo", "phantom"):
        try:
            importlib.import_module(f"mimic_ils.vision.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"mimic_ils.vision.{module}":
                raise
