"""``mimic-ils build``: resumable, sharded, deterministic build of MIMIC-ILS into a ``datasets`` folder.

Entry points: :func:`build` (process a shard and merge), :class:`BuildConfig`, :func:`demo_overlays`.
Modules: ``config`` (YAML config), ``workdir`` (atomic, checksummed cache), ``shard`` (stable hashing, launcher
env), ``stages`` (the stage protocol and the real wiring), ``pipeline`` (the stages over a shard), ``study``
(``decide_study``, pure, and ``persist``), ``ledger``, ``writer`` (Parquet and PNG placement), ``folder`` (the one
output-folder writer, ``DatasetFolder``), ``merge``, ``card`` (dataset card), ``overlays`` (demo pictures).
Typed rows live in :mod:`mimic_ils.rows`.
"""

from __future__ import annotations

from mimic_ils.orchestration.config import BuildConfig
from mimic_ils.orchestration.orchestrate import build, default_work_dir
from mimic_ils.orchestration.overlays import demo_overlays

__all__ = ["BuildConfig", "build", "default_work_dir", "demo_overlays"]
