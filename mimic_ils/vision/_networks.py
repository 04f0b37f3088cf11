"""Helpers shared by the re-implemented vision networks (HybridGNet, CXAS): strict checkpoint loading, input checks.

A checkpoint that does not fit is a whole-backend problem: :class:`~mimic_ils.schema.BackendError` names the file
and the missing, unexpected and mis-shaped keys, so a user can tell a wrong file from a wrong version.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mimic_ils.schema import BackendError

_MAX_LISTED_KEYS = 8


def read_checkpoint(path: str | Path, expected_name: str) -> object:
    """Unpickle the checkpoint at ``path`` on the CPU; ``expected_name`` is the original file name for messages."""
    path = Path(path) if path else Path()
    if not path.is_file():
        raise BackendError(f"weight file {str(path)!r} not found (expected the original {expected_name})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Original training checkpoints may pickle extra objects (optimizer state, argparse namespaces); the user
        # supplied this local file explicitly, so fall back to a full unpickle as the reference code does.
        pass
    except (RuntimeError, EOFError, OSError) as error:
        raise BackendError(f"weight file {str(path)!r} is not a torch checkpoint ({expected_name}): {error}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not this checkpoint"
        raise BackendError(f"weight file {str(path)!r} is not a torch checkpoint ({expected_name}): {error}") from None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. ``"module."`` from ``DataParallel``) from every key that has it."""
    return {key[len(prefix) :] if key.startswith(prefix) else key: value for key, value in state_dict.items()}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED_KEYS else "")


def key_problems(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable list of missing, unexpected and mis-shaped keys of ``state_dict`` for ``model`` (empty: fits)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mis_shaped = [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mis_shaped:
        problems.append(f"wrong shapes: {_listed(mis_shaped)}")
    return problems


def load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | Path, expected_name: str
) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, raising a BackendError that names every problem."""
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise BackendError(f"weight file {str(path)!r} holds no state dict of tensors (expected {expected_name})")
    problems = key_problems(model, state_dict)
    if problems:
        raise BackendError(f"weight file {str(path)!r} does not match {expected_name}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def image_problem(image: object, min_side: int = 16) -> str | None:
    """Why ``image`` cannot be fed to a network (None if it can): expects ``HxW`` or ``HxWx3`` uint8."""
    if not isinstance(image, np.ndarray):
        return f"image is a {type(image).__name__}, expected a numpy array"
    if image.dtype != np.uint8:
        return f"image dtype is {image.dtype}, expected uint8"
    if image.ndim == 3 and image.shape[2] not in (1, 3):
        return f"image has {image.shape[2]} channels, expected grey (HxW) or RGB (HxWx3)"
    if image.ndim not in (2, 3):
        return f"image has shape {image.shape}, expected HxW or HxWx3"
    if min(image.shape[:2]) < min_side:
        return f"image of {image.shape[0]}x{image.shape[1]} px is too small (sides of at least {min_side} px)"
    return None


def to_grey(image: np.ndarray) -> np.ndarray:
    """``HxW uint8`` from ``HxW`` / ``HxWx1`` / ``HxWx3`` uint8 (mean of the channels for RGB)."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[..., 0]
    return np.round(image.astype(np.float32).mean(axis=2)).astype(np.uint8)
