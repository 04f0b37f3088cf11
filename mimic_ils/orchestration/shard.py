"""Sharding by a stable hash of the study id, and the rank / world size / device of this process.

``--shard i/N`` splits by hand (several machines, a job array); under ``accelerate launch`` or ``torchrun`` the same
code reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment, and each process drives one GPU,
``cuda:LOCAL_RANK``. Which shard a study lands in depends on its id only, never on the order of the metadata.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from mimic_ils.schema import MimicIlsError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise MimicIlsError(f"bad shard {self.index}/{self.count}: need 0 <= i < N")

    def owns(self, study_id: str) -> bool:
        return shard_of(study_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(study_id: str, count: int) -> int:
    """Stable shard of a study id: the first 8 bytes of its sha256, modulo ``count``."""
    return int.from_bytes(hashlib.sha256(study_id.encode("utf-8")).digest()[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """``"i/N"`` → Shard(i, N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise MimicIlsError(f"bad --shard {text!r}: expected i/N, e.g. 0/4")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_env(environ: dict[str, str] | None = None) -> Shard | None:
    """The shard of this process under ``torchrun`` / ``accelerate launch`` (``RANK``, ``WORLD_SIZE``), else None."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    return Shard(int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"]))


def resolve_shard(text: str | None, environ: dict[str, str] | None = None) -> Shard:
    """An explicit ``--shard`` wins; else the launcher's environment; else the whole cohort."""
    if text:
        return parse_shard(text)
    return shard_from_env(environ) or Shard()


def process_device(environ: dict[str, str] | None = None) -> str:
    """``cuda:LOCAL_RANK`` when CUDA is available (one GPU per process), else ``cpu``."""
    environ = os.environ if environ is None else environ
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    return f"cuda:{local_rank % torch.cuda.device_count()}"
