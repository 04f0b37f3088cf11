"""``mimic-ils stats``: Tables 9-11, counts, ledger reasons and the Fig. 4-like chart of a built folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimic_ils.cli import main
from mimic_ils.orchestration import build
from mimic_ils.schema import LESION_TYPES, MimicIlsError
from mimic_ils.stats import compute_stats, tables_markdown, write_stats

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import FakeStages  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stats") / "out"
    build(None, out, stages=FakeStages(12), progress=False)
    return out


def test_tables_count_pairs_per_lesion_question_type_and_polarity(built):
    stats = compute_stats(built)
    # FakeStages: every used image has one basic and one global effusion positive and one global edema negative;
    # train holds studies k = 0, 1, 4, 5, 8, 9 of which k = 0 (report) and k = 4 (vision) fail, so 4 images.
    train = stats["tables"]["train"]
    assert train["effusion"]["basic/positive"] == train["effusion"]["global/positive"] == 4
    assert train["edema"]["global/negative"] == 4
    assert sum(sum(row.values()) for row in train.values()) == stats["counts"]["train"]["pairs"] == 12
    assert set(train) == set(LESION_TYPES) and train["cardiomegaly"]["global/positive"] == 0
    assert stats["counts"]["train"]["unique_masks"] == 4 and stats["counts"]["validation"]["images"] == 4
    assert stats["ledger"]["fates"]["study:excluded"] == 3
    assert stats["ledger"]["reasons"]["image: qc: view LATERAL is not frontal (PA/AP)"] == 4
    shares = stats["global_negative_share"]
    assert shares["edema"] == {"ours": 1.0, "negatives": shares["edema"]["negatives"], "paper": 0.02}
    assert shares["edema"]["negatives"] >= 4 and shares["effusion"]["ours"] is None  # no effusion negative
    assert "| edema | " in tables_markdown(stats) and "| 1.000 | 0.020 |" in tables_markdown(stats)


def test_markdown_and_chart(built, tmp_path):
    paths = write_stats(built, tmp_path / "stats")
    text = paths["markdown"].read_text()
    assert "### Pairs per lesion, question type and polarity — validation" in text
    assert "| effusion | 4 | 0 | 4 | 0 | 0 | 0 | 0 | 0 | 8 |" in text  # (FakeStages make no reasoning pair)
    assert "| study: report: report file is not valid UTF-8 | 1 |" in text
    assert tables_markdown(compute_stats(built)) == text
    chart = np.asarray(Image.open(paths["figure"]).convert("RGB"))
    assert chart.shape[0] > 300 and chart.shape[1] > 600
    assert (np.abs(chart.astype(int) - (31, 119, 180)).sum(axis=2) < 30).any()  # basic-positive bars are drawn


def test_cli_and_bad_folder(built, tmp_path, capsys):
    assert main(["stats", str(built), "--dest", str(tmp_path / "s")]) == 0
    assert "### Counts" in capsys.readouterr().out
    with pytest.raises(MimicIlsError, match="not a built MIMIC-ILS folder"):
        compute_stats(tmp_path)
    assert main(["stats", str(tmp_path / "nothing")]) == 1
