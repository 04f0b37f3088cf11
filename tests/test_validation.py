"""MS-CXR validation: the CSV reader and its counted problems, the agreement figures on hand-made masks, and
``mimic-ils validate`` end to end on the synthetic cohort's MS-CXR-format CSV (phantom focal lesions point
correctly; a shifted mask set scores lower), plus a model's masks through the same figures."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mimic_ils.cli import main as cli_main
from mimic_ils.ms_cxr import COLUMNS, SYNTHETIC_NAME, MsCxrBox, read_ms_cxr, write_synthetic_ms_cxr
from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.schema import MimicIlsError
from mimic_ils.validation import (
    NOT_IN_COHORT,
    agreement,
    box_places,
    ms_cxr_instruction,
    score_model,
    summarize,
    validate_dataset,
)

FOCAL = ("pneumonia", "atelectasis", "opacity", "consolidation")


def _write_csv(path: Path, rows: list[dict], columns=COLUMNS) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(**changes) -> dict:
    row = {"dicom_id": "d1", "category_name": "Pleural Effusion", "label_text": "Small left pleural effusion.",
           "path": "files/p10/p10000001/s50000001/d1.jpg", "x": "60", "y": "70", "w": "20", "h": "20",
           "image_width": "100", "image_height": "100", "split": "test"}
    return {**row, **changes}


def _box(x0, y0, x1, y1, lesion="effusion", size=(100, 100)) -> MsCxrBox:
    return MsCxrBox("d1", "Pleural Effusion", lesion, "left effusion", x0, y0, x1, y1, size[1], size[0])


def test_the_reader_keeps_good_rows_and_counts_every_other_one(tmp_path):
    path = _write_csv(tmp_path / "ms.csv", [
        _row(), _row(category_name="Pneumothorax"), _row(x="left"), _row(x="150"), _row(w="0"),
        _row(x="90", w="30"), _row(dicom_id=""),
    ])
    boxes, problems = read_ms_cxr(path)
    assert [(box.x0, box.x1) for box in boxes] == [(60.0, 80.0), (90.0, 100.0)]  # the second clipped
    assert boxes[0].lesion == "effusion" and boxes[0].phrase == "Small left pleural effusion."
    assert problems == {"category not covered by MIMIC-ILS (Pneumothorax)": 1,
                        "a coordinate or image size is not a number": 1, "box outside its image": 1,
                        "empty box or image size": 1, "box partly outside its image (clipped)": 1, "no dicom_id": 1}


def test_a_csv_with_other_columns_is_one_line(tmp_path):
    path = _write_csv(tmp_path / "other.csv", [{"image": "a", "finding": "b"}], columns=("image", "finding"))
    with pytest.raises(MimicIlsError, match=r"not an MS-CXR local-alignment CSV: no column dicom_id, category_name"):
        read_ms_cxr(path)
    with pytest.raises(MimicIlsError, match="cannot read the MS-CXR CSV"):
        read_ms_cxr(tmp_path / "missing.csv")


def test_agreement_of_hand_made_masks():
    mask = np.zeros((100, 100), bool)
    mask[70:90, 60:80] = True
    same = agreement(mask, [_box(60, 70, 80, 90)])
    assert same == {"box_coverage": [1.0], "pointed": [True], "box_iou": [pytest.approx(1.0)], "side_empty": [False],
                    "mask_in_boxes": 1.0}
    half = agreement(mask, [_box(70, 70, 90, 90)])  # the box half over the mask
    assert half["box_coverage"] == [0.5] and half["mask_in_boxes"] == 0.5
    # a bilateral finding grounded on the patient's left only (image right): its right box is not pointed at
    both = agreement(mask, [_box(10, 70, 30, 90), _box(60, 70, 80, 90)])
    assert both["pointed"] == [False, True] and both["box_coverage"] == [0.0, 1.0]
    assert both["side_empty"] == [True, False]
    assert box_places(_box(10, 70, 30, 90)) == {"right lung", "right lung base"}
    assert box_places(_box(60, 5, 80, 12)) == {"left lung", "left apical zone lung"}


def test_instructions_from_the_category_and_the_phrase_location():
    def box(lesion, phrase):
        return MsCxrBox("d", "x", lesion, phrase, 0, 0, 1, 1, 10, 10)

    assert ms_cxr_instruction(box("atelectasis", "Bibasilar atelectasis")) == (
        "Segment the atelectasis in the right lung base and left lung base.")
    assert ms_cxr_instruction(box("effusion", "Small left pleural effusion")) == (
        "Segment the effusion in the left lung.")
    assert ms_cxr_instruction(box("cardiomegaly", "Mild cardiomegaly on the left")) == "Segment the cardiomegaly."
    assert ms_cxr_instruction(box("pneumonia", "pneumonia")) == "Segment the pneumonia."


def test_a_model_is_scored_with_the_same_figures():
    boxes = [_box(60, 70, 80, 90), MsCxrBox("gone", "Edema", "edema", "edema", 0, 0, 5, 5, 100, 100)]
    asked = []

    def predict(image, instruction):
        asked.append(instruction)
        return _box(60, 70, 80, 90).mask(*image.shape)

    def image_of(dicom_id):
        return (np.zeros((100, 100), np.uint8), None, None) if dicom_id == "d1" else (None, None, "image not found")

    results = score_model(predict, boxes, image_of)
    summary = summarize(results)
    assert asked == ["Segment the effusion in the left lung."]
    assert summary["pointing"]["effusion"]["accuracy"] == 1.0 and summary["recall"]["effusion"]["recall"] == 1.0
    assert summary["recall"]["edema"]["missed_reasons"] == {"image not found": 1}


# ------------------------------------------------------------------------------------- the synthetic cohort


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, Path]:
    from _cohort import make_cohort

    cohort = make_cohort(tmp_path_factory, n_studies=30, seed=0)
    folder = tmp_path_factory.mktemp("validation")
    out = folder / "out"
    build(cohort, out, config=BuildConfig(vision="phantom"), progress=False)
    return cohort, out, write_synthetic_ms_cxr(cohort, folder / SYNTHETIC_NAME)


def test_the_synthetic_csv_is_in_ms_cxr_format_with_a_box_per_lesion_part(built):
    cohort, _, csv_path = built
    rows = list(csv.DictReader(csv_path.open()))
    assert tuple(rows[0]) == COLUMNS and len(rows) > 30
    truth = [json.loads(line) for line in (cohort / "phantom_truth/truth.jsonl").read_text().splitlines()]
    phrases = {" ".join(lesion["phrase"].split()) for study in truth for lesion in study["lesions"]}
    assert {row["label_text"] for row in rows} <= phrases
    assert {row["category_name"] for row in rows} >= {"Cardiomegaly", "Pleural Effusion", "Lung Opacity"}
    boxes, problems = read_ms_cxr(csv_path)
    assert len(boxes) == len(rows) and not problems
    bilateral = [row for row in rows if "bilateral" in row["label_text"].lower() or "bibasilar" in
                 row["label_text"].lower()]
    assert not bilateral or any(sum(r["dicom_id"] == row["dicom_id"] and r["label_text"] == row["label_text"]
                                    for r in rows) == 2 for row in bilateral)
    assert write_synthetic_ms_cxr(cohort, csv_path.with_name("again.csv")).read_bytes() == csv_path.read_bytes()


def test_validate_command_writes_the_report_the_json_and_the_grid(built, tmp_path, capsys):
    _, out, csv_path = built
    dest = tmp_path / "validation"
    assert cli_main(["validate", "--dataset", str(out), "--ms-cxr", str(csv_path), "--out", str(dest)]) == 0
    assert "| lesion | boxes | images | recall % |" in capsys.readouterr().out
    figures = json.loads((dest / "validation.json").read_text())
    for key in ("coverage", "pointing", "recall"):
        assert set(figures[key]) >= {"cardiomegaly", "effusion", "opacity"}
    assert set(figures["pointing"]) >= set(FOCAL)
    pointed = _pooled_pointing(validate_dataset(out, read_ms_cxr(csv_path)[0]))
    assert pointed >= 0.9, pointed  # the phantom focal lesions are pointed at
    assert figures["pointing"]["cardiomegaly"]["accuracy"] == 1.0
    assert figures["coverage"]["cardiomegaly"]["mask_in_boxes_mean"] > 0.9
    report = (dest / "report.md").read_text()
    assert "![best and worst agreements](agreement_grid.png)" in report and "## Why boxes were missed" in report
    assert Image.open(dest / "agreement_grid.png").size[0] > 600


def _pooled_pointing(results) -> float:
    flags = [flag for result in results if result.lesion in FOCAL and result.missed is None
             for flag in result.pointed]
    return float(np.mean(flags))


def test_a_shifted_mask_set_scores_lower(built, tmp_path):
    _, out, csv_path = built
    shifted = tmp_path / "shifted"
    shutil.copytree(out, shifted)
    for mask_path in shifted.glob("*/images/masks/*.png"):
        mask = np.asarray(Image.open(mask_path))
        moved = np.roll(mask, (mask.shape[0] // 4, mask.shape[1] // 4), axis=(0, 1))
        mask_path.unlink()
        Image.fromarray(moved).save(mask_path)
    boxes = read_ms_cxr(csv_path)[0]
    good, bad = summarize(validate_dataset(out, boxes)), summarize(validate_dataset(shifted, boxes))
    assert _pooled_pointing(validate_dataset(shifted, boxes)) < _pooled_pointing(validate_dataset(out, boxes)) - 0.3
    for lesion in ("cardiomegaly", "effusion"):
        assert bad["coverage"][lesion]["box_in_mask_mean"] < good["coverage"][lesion]["box_in_mask_mean"] - 0.2


def test_missed_boxes_carry_the_ledgers_reason_and_denied_ones_are_contradictions(built, tmp_path):
    _, out, csv_path = built
    pairs = [row for path in sorted(out.glob("*/metadata.parquet")) for row in pq.read_table(path).to_pylist()]
    denied = next(row for row in pairs if row["polarity"] == "negative" and row["question_type"] == "global"
                  and row["lesion"] == "effusion")
    image = Image.open(next(out.glob(f"*/images/{denied['dicom_id']}.png")))
    width, height = image.size
    rows = [_row(dicom_id=denied["dicom_id"], x=str(width * 0.6), y=str(height * 0.7), w="10", h="10",
                 image_width=str(width), image_height=str(height)),
            _row(dicom_id="not-a-mimic-image")]
    boxes, _ = read_ms_cxr(_write_csv(tmp_path / "denied.csv", rows))
    summary = summarize(validate_dataset(out, boxes))
    assert summary["contradictions"]["effusion"] == 1
    reasons = summary["recall"]["effusion"]["missed_reasons"]
    assert reasons[NOT_IN_COHORT] == 1 and sum(reasons.values()) == 2


def test_validate_refuses_a_call_with_nothing_to_validate(built, tmp_path, capsys):
    _, _, csv_path = built
    with pytest.raises(SystemExit):
        cli_main(["validate", "--ms-cxr", str(csv_path)])  # no --out
    assert cli_main(["validate", "--ms-cxr", str(csv_path), "--out", str(tmp_path / "x")]) == 1
    assert "needs --dataset (its masks) or --model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_validate_scores_a_saved_model_on_the_same_boxes(built, tmp_path):
    from rosalia_hf.testing import tiny_rosalia

    _, out, csv_path = built
    model, processor = tiny_rosalia(seed=0)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    dest = tmp_path / "model_validation"
    assert cli_main(["validate", "--model", str(folder), "--dataset", str(out), "--ms-cxr", str(csv_path),
                     "--out", str(dest), "--device", "cpu"]) == 0
    figures = json.loads((dest / "validation.json").read_text())
    assert figures["boxes_used"] == len(read_ms_cxr(csv_path)[0])
    assert set(figures["recall"]) >= {"cardiomegaly", "effusion"}
    for recall in figures["recall"].values():  # a random model: what it missed is said, never a crash
        assert recall["found_boxes"] + recall["missed_boxes"] == recall["boxes"]
        assert set(recall["missed_reasons"]) <= {"the model's mask is empty", "image not found"}
    assert "ROSALIA" in (dest / "report.md").read_text().splitlines()[0]
