"""End to end: examples/evaluate_rosalia.py on a tiny random ROSALIA and a tiny MIMIC-ILS folder made here."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from mimic_ils.features import pairs_features

REPO = Path(__file__).resolve().parents[1]
testing = pytest.importorskip("rosalia_hf.testing")
if not hasattr(testing, "tiny_rosalia"):
    pytest.skip("rosalia_hf.testing.tiny_rosalia is missing", allow_module_level=True)

from rosalia_hf import table2  # noqa: E402
from rosalia_hf.evaluation import evaluate_model, load_ils_metric  # noqa: E402
from rosalia_hf.predictor import RosaliaPredictor  # noqa: E402

CARD = """---
configs:
- config_name: pairs
  data_files:
  - split: test
    path: test/pairs-*.parquet
---
# tiny MIMIC-ILS
"""

# (lesion, question type, polarity, instruction, answer, target, locations, certainty)
PAIRS = [
    ("edema", "basic", "positive", "Segment the edema in the right lung base.", "[SEG]", "edema",
     ["right lung base"], "definitive"),
    ("edema", "global", "negative", "Segment the edema.", "[SEG] There is no edema.", "edema", [], None),
    ("pneumonia", "lesion_inference", "positive", "Segment the opacity in the left lung and predict its type.",
     "[SEG] It possibly reflects pneumonia.", "opacity", ["left lung"], "tentative"),
    ("pneumonia", "basic", "negative", "Segment the pneumonia in the right upper zone lung.",
     "[SEG] There is no pneumonia in the right upper zone lung.", "pneumonia", ["right upper zone lung"], None),
    ("effusion", "global", "positive", "Segment the effusion.",
     "[SEG] It is located in the right lung base and left lung base.", "effusion",
     ["right lung base", "left lung base"], "definitive"),
    ("cardiomegaly", "global", "positive", "Segment the cardiomegaly.", "[SEG] It is located in the heart.",
     "cardiomegaly", ["heart"], "definitive"),
    ("effusion", "lesion_inference", "negative", "Segment the opacity in the left lung base and predict its type.",
     "[SEG] There is no opacity in the left lung base.", "opacity", ["left lung base"], None),
]


def make_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for index, (lesion, qtype, polarity, instruction, answer, target, locations, certainty) in enumerate(PAIRS):
        height, width = (40, 48) if index % 2 else (52, 36)  # non-square frames, both orientations
        image = rng.integers(0, 256, (height, width), dtype=np.uint8)
        mask = None  # a negative pair: no mask file, an empty mask of the image's size
        if polarity == "positive":
            mask = np.zeros((height, width), dtype=np.uint8)
            y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
            mask[y : y + height // 2, x : x + width // 2] = 255
            mask = Image.fromarray(mask)
        rows.append({
            "id": f"p{index}", "image": Image.fromarray(image), "mask": mask,
            "instruction": instruction, "answer": answer, "target": target, "lesion": lesion, "question_type": qtype,
            "polarity": polarity, "locations": locations, "certainty": certainty, "study_id": f"s{index // 2}",
            "dicom_id": f"d{index // 2}", "split": "test",
        })
    return rows


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_mimic_ils")
    (folder / "test").mkdir()
    datasets.Dataset.from_list(make_rows(), features=pairs_features()).to_parquet(folder / "test/pairs-00000.parquet")
    (folder / "README.md").write_text(CARD)
    return folder


@pytest.fixture(scope="module")
def pairs(dataset_folder):
    from rosalia_hf.evaluation_cli import load_pairs

    return load_pairs(dataset_folder, "test")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    model, processor = testing.tiny_rosalia(seed=0)
    folder = tmp_path_factory.mktemp("tiny_rosalia")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def metric():
    return load_ils_metric()


class OracleModel:
    """Answers every instruction with the reference mask and answer of its row (looked up by instruction)."""

    def __init__(self, rows: list[dict], wrong_text: bool = False):
        self.rows = {row["instruction"]: row for row in rows}
        self.wrong_text = wrong_text

    def predict(self, images, instructions, *, segment_only=False, max_new_tokens=32):
        outputs = []
        for image, instruction in zip(images, instructions, strict=True):
            row = self.rows[instruction]
            mask = np.zeros(image.size[::-1], bool) if row["mask"] is None else np.asarray(row["mask"]) > 0
            text = "[SEG]" if segment_only else ("Sure, [SEG]." if self.wrong_text else row["answer"])
            outputs.append({"mask": mask, "text": text, "empty": not mask.any()})
        return outputs


def test_the_built_folder_loads_with_the_documented_features(pairs):
    assert pairs.features == pairs_features()
    assert len(pairs) == len(PAIRS)
    assert pairs[1]["mask"] is None and pairs[0]["mask"].size == pairs[0]["image"].size


def test_an_oracle_scores_one_everywhere(pairs, metric):
    evaluation = evaluate_model(OracleModel(make_rows()), pairs, batch_size=3, metric=metric, progress=False)
    metrics = evaluation["metrics"]
    assert (metrics["giou"], metrics["ciou"], metrics["n_acc"], metrics["text_accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert (metrics["num_positive"], metrics["num_negative"], metrics["num_text"]) == (4, 3, 7)
    assert metrics["per_lesion"]["pneumonia"]["num_negative"] == 1
    assert evaluation["num_samples"] == 7 and evaluation["samples_per_second"] > 0
    best = evaluation["cases"]["edema"]["best"][0]
    assert best.iou == 1.0 and best.instruction == PAIRS[0][3] and best.image.shape == (52, 36)


def test_paraphrased_answers_score_zero_and_segment_only_skips_text(pairs, metric):
    wrong = evaluate_model(OracleModel(make_rows(), wrong_text=True), pairs, batch_size=4, metric=metric,
                           progress=False)
    assert wrong["metrics"]["text_accuracy"] == 0.0 and wrong["metrics"]["giou"] == 1.0
    seg = evaluate_model(OracleModel(make_rows()), pairs, segment_only=True, metric=metric, progress=False)
    assert "text_accuracy" not in seg["metrics"]


def test_example_script_end_to_end_on_tiny_rosalia(model_folder, dataset_folder, tmp_path, metric):
    out = tmp_path / "eval"
    main = runpy.run_path(str(REPO / "examples" / "evaluate_rosalia.py"))["main"]
    argv = ["--model", str(model_folder), "--dataset", str(dataset_folder), "--split", "test", "--out", str(out),
            "--batch-size", "3", "--max-new-tokens", "8", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    for heading in ("Segmentation (Table 4)", "by lesion (Table 5)", "Text accuracy (Table 6)", "(Table 13)"):
        assert heading in report
    assert "| Edema |" in report and "| Lesion inference |" in report and "cases.png" in report
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["num_positive"], saved["num_negative"], saved["num_text"]) == (4, 3, 7)
    assert Image.open(out / "cases.png").size[1] > 200

    expected = recompute(model_folder, make_rows(), batch_size=3, segment_only=False)
    for key in ("giou", "n_acc", "text_accuracy"):
        assert saved[key] == pytest.approx(expected[key], abs=1e-9), key


def recompute(model_folder: Path, rows: list[dict], *, batch_size: int, segment_only: bool) -> dict:
    """The figures recomputed per sample from the same model's predictions (checks wiring and row order)."""
    from rosalia_hf import RosaliaForSegmentation, RosaliaProcessor

    model = RosaliaForSegmentation.from_pretrained(model_folder).eval()
    processor = RosaliaProcessor.from_pretrained(model_folder)
    parser = table2
    ious, negatives_ok, text_ok = [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        outs = RosaliaPredictor(model, processor).predict(
            [r["image"] for r in chunk], [r["instruction"] for r in chunk],
                             max_new_tokens=8, segment_only=segment_only)
        for row, pred in zip(chunk, outs, strict=True):
            text_ok.append(parser.parse_answer(pred["text"]) == parser.parse_answer(row["answer"]))
            if row["mask"] is None:
                negatives_ok.append(not pred["mask"].any())
                continue
            ref = np.asarray(row["mask"]) > 0
            ious.append((pred["mask"] & ref).sum() / (pred["mask"] | ref).sum())
    return {"giou": float(np.mean(ious)), "n_acc": float(np.mean(negatives_ok)), "text_accuracy": np.mean(text_ok)}


def test_segment_only_report_says_text_was_not_measured(model_folder, dataset_folder, tmp_path):
    from rosalia_hf.evaluation_cli import main

    out = tmp_path / "seg"
    argv = ["--model", str(model_folder), "--dataset", str(dataset_folder), "--out", str(out), "--segment-only",
            "--limit", "4", "--no-progress", "--num-cases", "2"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "Not measured (segment-only" in report
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["num_positive"], saved["num_negative"]) == (2, 2) and "text_accuracy" not in saved
    expected = recompute(model_folder, make_rows()[:4], batch_size=8, segment_only=True)
    assert expected["giou"] > 0.05  # the tiny model's teacher-forced masks are not empty: a real comparison
    assert saved["giou"] == pytest.approx(expected["giou"], abs=1e-9)
    assert saved["n_acc"] == pytest.approx(expected["n_acc"], abs=1e-9)


def test_case_keeper_keeps_the_k_best_and_worst_per_lesion_and_builds_only_those():
    from rosalia_hf.evaluation import CaseKeeper

    keeper, built = CaseKeeper(k=2), []

    def maker(iou, index):
        def make():
            built.append(index)
            return (iou, index)
        return make

    for index, iou in enumerate([0.2, 0.9, 0.5, 0.1, 0.5, 0.3]):
        keeper.offer(iou, index, "edema", maker(iou, index))
    keeper.offer(0.7, 6, "effusion", maker(0.7, 6))
    cases = keeper.cases()
    assert cases["edema"]["best"] == [(0.9, 1), (0.5, 2)]  # ties keep the earlier pair
    assert cases["edema"]["worst"] == [(0.1, 3), (0.2, 0)]
    assert cases["effusion"] == {"best": [(0.7, 6)], "worst": [(0.7, 6)]}
    assert 5 not in built  # 0.3 ranks neither among the two best nor the two worst


def test_validation_and_validate_name_one_split_and_an_unknown_split_is_one_line(tmp_path, model_folder, capsys):
    from rosalia_hf.evaluation_cli import load_pairs

    folder = tmp_path / "ils"
    (folder / "validate").mkdir(parents=True)
    datasets.Dataset.from_list(make_rows(), features=pairs_features()).to_parquet(
        folder / "validate/pairs-00000.parquet")
    (folder / "README.md").write_text(CARD.replace("split: test", "split: validate").replace("test/", "validate/"))
    assert len(load_pairs(folder, "validation")) == len(load_pairs(folder, "validate")) == len(PAIRS)
    main = runpy.run_path(str(REPO / "examples" / "evaluate_rosalia.py"))["main"]
    argv = ["--model", str(model_folder), "--dataset", str(folder), "--split", "tset", "--out", str(tmp_path / "e"),
            "--device", "cpu", "--no-progress"]
    capsys.readouterr()  # what writing the fixture printed
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"--split tset: {folder} has no such split (it has validate)") and len(err) <= 3


def test_a_folder_without_pairs_is_one_line(tmp_path, model_folder, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    main = runpy.run_path(str(REPO / "examples" / "evaluate_rosalia.py"))["main"]
    argv = ["--model", str(model_folder), "--dataset", str(folder), "--out", str(tmp_path / "e"), "--device", "cpu",
            "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert f"--dataset {folder}: " in err[-1] and "doesn't contain any data files" in err[-1] and len(err) <= 3
