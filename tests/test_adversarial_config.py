"""A grounding setting with a typo is refused before any work, with the key named (issue 15: it used to exclude
every image as an internal error and crash the merge)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.schema import MimicIlsError

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages  # noqa: E402


@pytest.mark.parametrize(("grounding", "named"), [
    ({"tau_anno": 0.2}, "unknown grounding config keys: ['tau_anno']"),
    ({"refine": {"dilate": 3}}, "unknown RefineConfig keys: ['dilate']"),
    ({"lesion_thresholds": {"pnemonia": {}}}, "unknown lesion types in grounding config: ['pnemonia']"),
])
def test_a_grounding_typo_is_refused_at_start(grounding, named, tmp_path):
    stages = FakeStages(4)
    with pytest.raises(MimicIlsError, match=r"build config grounding: " + re.escape(named)):
        build(None, tmp_path / "out", config=BuildConfig(grounding=grounding), stages=stages,
              work=tmp_path / "work", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
