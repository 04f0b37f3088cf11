"""A shared synthetic cohort for tests: generated once per (n_studies, seed) per test session.

Usage from any test module::

    @pytest.fixture(scope="session")
    def cohort(tmp_path_factory):
        return make_cohort(tmp_path_factory, n_studies=12, seed=1)

Treat the returned folder as read-only (copy it with :func:`copy_cohort` before planting faults).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mimic_ils.synth import generate_cohort

_CACHE: dict[tuple[int, int], Path] = {}


def make_cohort(tmp_path_factory: pytest.TempPathFactory, n_studies: int = 12, seed: int = 1) -> Path:
    """Path of a synthetic MIMIC-CXR cohort of ``n_studies`` studies (seed ``seed``), shared across the session."""
    key = (n_studies, seed)
    if key not in _CACHE or not _CACHE[key].is_dir():
        root = tmp_path_factory.mktemp(f"cohort_{n_studies}_{seed}") / "mimic-cxr"
        _CACHE[key] = generate_cohort(root, n_studies, seed, workers=1)
    return _CACHE[key]


def copy_cohort(source: Path, target: Path) -> Path:
    """A private, writable copy of a cohort (for tests that damage files)."""
    shutil.copytree(source, target)
    return target
