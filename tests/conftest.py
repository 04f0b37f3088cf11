"""Test configuration: offline, every cache in a temporary folder, and the shared synthetic-cohort fixture."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CACHE_ROOT = Path(tempfile.mkdtemp(prefix="mimic_ils_tests_"))
for _name, _sub in (("HF_HOME", "hf"), ("YOLO_CONFIG_DIR", "yolo"), ("TORCH_EXTENSIONS_DIR", "torch_ext"),
                    ("MPLCONFIGDIR", "mpl"), ("HF_DATASETS_CACHE", "hf/datasets")):
    os.environ[_name] = str(_CACHE_ROOT / _sub)
    (_CACHE_ROOT / _sub).mkdir(parents=True, exist_ok=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cache_root() -> Path:
    return _CACHE_ROOT
