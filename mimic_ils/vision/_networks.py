"""Helpers shared by the re-implemented vision networks (HybridGNet, CXAS): checkpoint loading, input checks.

A checkpoint that does not fit is a whole-backend problem: :class:`~mimic_ils.schema.BackendError` names the file
and the missing, unexpected and mis-shaped keys, so a user can tell a wrong file from a wrong version.
:func:`load_strict` refuses any difference; :func:`load_tolerant` accepts the differences that a reference loading
with ``load_state_dict(strict=False)`` accepts harmlessly (extra keys, absent ``num_batches_tracked`` buffers),
naming them in one warning line, and refuses absent weights and wrong shapes.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mimic_ils.schema import BackendError
from mimic_ils.vision._pickles import file_globals, python3_name

logger = logging.getLogger(__name__)

_MAX_LISTED_KEYS = 8
# Buffers a checkpoint may lack without changing the network's output: BatchNorm's step counter, unused in eval mode
# (the momentum is set) and saved only by torch >= 0.4.1.
OPTIONAL_SUFFIXES = (".num_batches_tracked",)
# how torch names the global a weights-only load refused ("... unsupported GLOBAL posix.system whose module ...")
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def _disallowed_global(error: BaseException, path: Path) -> str | None:
    """The first ``module.name`` a weights-only unpickling refused (None if torch's message names none).

    Torch names it in its message, builtins without their module ("GLOBAL eval"); the full name is looked up among
    the globals of the file's pickle, read from its opcodes."""
    match = _GLOBAL_IN_MESSAGE.search(str(error))
    if not match:
        return None
    named = match.group(1)
    try:
        names = file_globals(path)
    except Exception:  # noqa: BLE001 - a damaged pickle: keep torch's name
        return named
    wanted = {named, python3_name(named)}
    last = named.rpartition(".")[2]
    exact = [name for name in names if name in wanted]
    return (exact or [name for name in names if name.rpartition(".")[2] == last] or [named])[0]


def read_checkpoint(path: str | Path, expected_name: str) -> object:
    """Read the checkpoint at ``path`` on the CPU; ``expected_name`` is the original file name for messages.

    ``.safetensors`` files are read with ``safetensors`` (a flat state dict); anything else with
    ``torch.load(weights_only=True)`` and no fallback: a checkpoint whose pickle needs other Python globals than
    tensors and plain containers (an optimizer object, an ``argparse.Namespace``, or code such as ``os.system``) is
    refused with a one-line BackendError naming the file and the first such global, and nothing of it is run.
    """
    path = Path(path) if path else Path()
    if not path.is_file():
        raise BackendError(f"weight file {str(path)!r} not found (expected the original {expected_name})")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, expected_name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        name = _disallowed_global(error, path)
        if name is None:  # not a pickle at all ("invalid load key"), or a damaged one
            raise BackendError(
                f"weight file {str(path)!r} is not a torch checkpoint ({expected_name}): {_first_line(error)}"
            ) from None
        raise BackendError(
            f"weight file {str(path)!r} refused ({expected_name}): its pickle needs the Python global {name}, which "
            "a weights-only load does not allow (nothing was run); save the state dict alone "
            "(torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None
    except Exception as error:  # noqa: BLE001 - zip, EOF, decode and type errors all mean "not this checkpoint"
        raise BackendError(
            f"weight file {str(path)!r} is not a torch checkpoint ({expected_name}): {_first_line(error)}"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _read_safetensors(path: Path, expected_name: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BackendError(
            f"weight file {str(path)!r} is not a safetensors file ({expected_name}): {_first_line(error)}"
        ) from None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` (e.g. ``"module."`` from ``DataParallel``) from every key that has it."""
    return {key[len(prefix) :] if key.startswith(prefix) else key: value for key, value in state_dict.items()}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED_KEYS else "")


def _mis_shaped(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, object]) -> list[str]:
    return [
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]


def key_problems(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable list of missing, unexpected and mis-shaped keys of ``state_dict`` for ``model`` (empty: fits)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mis_shaped = _mis_shaped(expected, state_dict)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mis_shaped:
        problems.append(f"wrong shapes: {_listed(mis_shaped)}")
    return problems


def _require_tensors(state_dict: object, keys: object, path: str | Path, expected_name: str) -> None:
    if not isinstance(state_dict, Mapping) or not all(isinstance(state_dict[key], torch.Tensor) for key in keys):
        raise BackendError(f"weight file {str(path)!r} holds no state dict of tensors (expected {expected_name})")


def load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | Path, expected_name: str
) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, raising a BackendError that names every problem."""
    _require_tensors(state_dict, state_dict if isinstance(state_dict, Mapping) else (), path, expected_name)
    problems = key_problems(model, state_dict)
    if problems:
        raise _mismatch(path, expected_name, problems)
    model.load_state_dict(state_dict, strict=True)


def _mismatch(path: str | Path, expected_name: str, problems: list[str]) -> BackendError:
    return BackendError(f"weight file {str(path)!r} does not match {expected_name}: " + "; ".join(problems))


def load_tolerant(
    model: nn.Module, state_dict: Mapping[str, object], path: str | Path, expected_name: str
) -> list[str]:
    """Load ``state_dict`` as ``load_state_dict(strict=False)`` would, but only where that is harmless.

    Accepted, and named together in one ``logging`` warning line: unexpected keys (ignored, whatever they hold) and
    missing buffers ending in :data:`OPTIONAL_SUFFIXES` (they keep their initial value). Refused with a one-line
    BackendError naming the keys: any other missing key (a real weight or statistic) and any wrong shape. Returns
    the tolerated key names (unexpected first).
    """
    expected = model.state_dict()
    present = [key for key in expected if key in state_dict] if isinstance(state_dict, Mapping) else ()
    _require_tensors(state_dict, present, path, expected_name)
    missing = [key for key in expected if key not in state_dict]
    optional = [key for key in missing if key.endswith(OPTIONAL_SUFFIXES)]
    required = [key for key in missing if key not in optional]
    mis_shaped = _mis_shaped(expected, state_dict)
    if required or mis_shaped:
        problems = [f"missing keys: {_listed(required)}"] if required else []
        problems += [f"wrong shapes: {_listed(mis_shaped)}"] if mis_shaped else []
        raise _mismatch(path, expected_name, problems)
    unexpected = [str(key) for key in state_dict if key not in expected]
    notes = []
    if unexpected:
        notes.append(f"ignored {len(unexpected)} unexpected key(s): {', '.join(unexpected)}")
    if optional:
        notes.append(f"{len(optional)} absent buffer(s) left at their initial value: {', '.join(optional)}")
    if notes:
        logger.warning("weight file %r (%s) loaded with %s", str(path), expected_name, "; ".join(notes))
    model.load_state_dict({key: state_dict[key] for key in expected if key in state_dict}, strict=False)
    return unexpected + optional


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
