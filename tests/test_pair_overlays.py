"""The dataset's overlay pictures (`make demo` step 5): the pair's mask, its text, R/L markers, an honest footer."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimic_ils.orchestration import build, demo_overlays
from mimic_ils.orchestration.overlays import footer_of, pick_pairs, read_pair_rows

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("overlays") / "out"
    build(None, out, stages=FakeStages(12), progress=False)
    return out


def _red(picture: np.ndarray) -> np.ndarray:
    return (picture[..., 0] > 150) & (picture[..., 1] < 110) & (picture[..., 2] < 110)


def test_overlays_show_positive_masks_and_side_markers(built, tmp_path):
    previous = os.umask(0o022)
    try:
        paths = demo_overlays(built, tmp_path / "overlays", n=4)
    finally:
        os.umask(previous)
    rows = {row.id: row for _, row in pick_pairs(read_pair_rows(built), 4)}
    assert len(paths) == 4
    for path in paths:
        picture = np.asarray(Image.open(path).convert("RGB"))
        row = next(row for key, row in rows.items() if key in path.name)
        assert bool(_red(picture).sum() > 50) == (row.polarity == "positive" and bool(row.mask_file_name))
        yellow = (picture[..., 0] > 200) & (picture[..., 1] > 180) & (picture[..., 2] < 120)
        assert yellow[:, : picture.shape[1] // 10].any() and yellow[:, -picture.shape[1] // 10:].any()
        assert os.stat(path).st_mode & 0o777 == 0o644
    assert not list((tmp_path / "overlays").glob(".*"))  # no temporary file left


def test_the_footer_names_the_target_as_the_instruction_says_it(built):
    (_, row), *_ = read_pair_rows(built)
    inference = dataclasses.replace(row, question_type="lesion_inference", lesion="pneumonia",
                                    instruction="Segment the opacity in the right lung base and predict its type.")
    assert "target: opacity (lesion label: pneumonia)" in footer_of(inference)
    effusion = dataclasses.replace(row, question_type="global", lesion="pleural_effusion",
                                   instruction="Segment the pleural effusion.")
    footer = footer_of(effusion)
    assert "target: pleural effusion ·" in footer and "lesion label" not in footer
    assert footer.startswith("global · ") and footer.endswith(row.dicom_id)
