"""The evaluation report's case grid: best AND worst per lesion, labelled; a lone case or a tie is said so."""

from __future__ import annotations

import numpy as np
from PIL import Image

from rosalia_hf.evaluation import Case, CaseKeeper
from rosalia_hf.evaluation_report import case_rows, plot_cases, write_report

ROW_HEIGHT_PX = 3 * 80  # plot_cases: 3.0 inches per row at 80 dpi


def _case(index: int, iou: float, lesion: str = "edema") -> Case:
    image = np.zeros((8, 8), np.uint8)
    return Case(iou=iou, index=index, lesion=lesion, instruction=f"Segment the {lesion}.", answer="[SEG]",
                image=image, reference=image > 0, prediction=image > 0)


def _kept(ious_by_lesion: dict[str, list[float]], k: int = 1) -> dict:
    """The cases a real ``CaseKeeper`` keeps when offered these IoUs in order."""
    keeper = CaseKeeper(k=k)
    index = 0
    for lesion, ious in ious_by_lesion.items():
        for iou in ious:
            keeper.offer(iou, index, lesion, lambda iou=iou, index=index, lesion=lesion: _case(index, iou, lesion))
            index += 1
    return keeper.cases()


def _labels(rows) -> list[tuple[str, str, float]]:
    return [(lesion, label, case.iou) for lesion, label, case in rows]


def test_each_lesion_shows_its_best_and_its_worst_case():
    cases = _kept({"edema": [0.4, 0.9, 0.1], "effusion": [0.5, 0.2]})
    rows = case_rows(cases, {"edema": 3, "effusion": 2})
    assert _labels(rows) == [("edema", "best", 0.9), ("edema", "worst", 0.1),
                             ("effusion", "best", 0.5), ("effusion", "worst", 0.2)]


def test_a_lesion_with_one_positive_pair_is_one_row_saying_so():
    rows = case_rows(_kept({"edema": [0.7], "atelectasis": [0.3, 0.6]}), {"edema": 1, "atelectasis": 2})
    assert _labels(rows) == [("edema", "only case", 0.7), ("atelectasis", "best", 0.6),
                             ("atelectasis", "worst", 0.3)]
    assert not [row for row in rows if row[0] == "edema" and row[1] in ("best", "worst")]


def test_when_every_pair_ties_the_row_says_so_instead_of_best():
    """The untrained demo model: every IoU 0, so the best case is the worst one (the old grid said 'best')."""
    rows = case_rows(_kept({"edema": [0.0, 0.0, 0.0], "effusion": [0.0, 0.5]}), {"edema": 3, "effusion": 2})
    assert _labels(rows) == [("edema", "all 3 tie", 0.0), ("effusion", "best", 0.5), ("effusion", "worst", 0.0)]


def test_without_counts_the_kept_cases_tell_a_lone_case():
    assert _labels(case_rows(_kept({"edema": [0.2]}))) == [("edema", "only case", 0.2)]


def test_several_cases_per_kind_are_listed_best_first_then_worst_first():
    rows = case_rows(_kept({"edema": [0.1, 0.2, 0.3, 0.8, 0.9]}, k=2), {"edema": 5})
    assert _labels(rows) == [("edema", "best", 0.9), ("edema", "best", 0.8), ("edema", "worst", 0.1),
                             ("edema", "worst", 0.2)]


def test_grid_has_one_row_per_case_row(tmp_path):
    cases = _kept({"edema": [0.4, 0.9, 0.1], "effusion": [0.5]})
    path = plot_cases(cases, tmp_path / "cases.png", {"edema": 3, "effusion": 1})
    with Image.open(path) as picture:
        assert picture.height == 3 * ROW_HEIGHT_PX


def test_report_lists_the_grid_rows_with_their_labels(tmp_path):
    per_lesion = {"edema": {"giou": 0.5, "ciou": 0.5, "n_acc": 1.0, "num_positive": 3, "num_negative": 1},
                  "effusion": {"giou": 0.5, "ciou": 0.5, "n_acc": float("nan"), "num_positive": 1,
                               "num_negative": 0}}
    metrics = {"giou": 0.5, "ciou": 0.5, "n_acc": 1.0, "num_positive": 4, "num_negative": 1,
               "per_lesion": per_lesion, "per_question_type": {}}
    evaluation = {"metrics": metrics, "cases": _kept({"edema": [0.4, 0.9, 0.1], "effusion": [0.5]}),
                  "num_samples": 5, "seconds": 1.0, "samples_per_second": 5.0, "segment_only": True}
    text = write_report(evaluation, tmp_path).read_text()
    assert "| Edema | best | #1 | 90.0 |" in text and "| Edema | worst | #2 | 10.0 |" in text
    assert "| Effusion | only case | #3 | 50.0 |" in text
    assert (tmp_path / "cases.png").is_file()
