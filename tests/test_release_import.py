"""``mimic-ils import-release`` on a small release-shaped fixture (mimic-cxr-ext-ils 1.0.0 layout)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mimic_ils.cli import main
from mimic_ils.features import images_features, pairs_features
from mimic_ils.orchestration.templates import appendix_c_problems
from mimic_ils.release import import_release
from mimic_ils.schema import MimicIlsError

H, W = 40, 32


def _mask(y0: int, x0: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y0 + 8, x0:x0 + 6] = 255
    return mask


def _image(folder: Path, subject: str, study: str, dicom: str, value: int) -> str:
    relative = f"p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W), value, np.uint8)).save(folder / relative, quality=90)
    return relative


@pytest.fixture
def release(tmp_path) -> tuple[Path, Path, dict]:
    images = tmp_path / "mimic-cxr-jpg" / "2.1.0" / "files"
    masks = tmp_path / "release" / "lesion_mask"
    masks.mkdir(parents=True)
    Image.fromarray(_mask(20, 4)).save(masks / "a_effusion.png")
    Image.fromarray(_mask(20, 4)).save(masks / "a_effusion_global.png")  # same pixels: stored once
    Image.fromarray(_mask(6, 18)).save(masks / "b_atelectasis.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks / "empty.png")
    item_a = {
        "image_path": _image(images, "10000032", "50414267", "aaa-111", 90),
        "instruction_answer_pairs": {
            "positive_pairs": [
                {"instruction": "Segment the effusion in the right lung base.", "answer": "[SEG]",
                 "target": "effusion", "seg_mask_path": "lesion_mask/a_effusion.png"},
                {"instruction": "Segment the effusion.", "answer": "[SEG] It is located in the right lung base.",
                 "target": "effusion", "seg_mask_path": "a_effusion_global.png"},
                {"instruction": "Segment the effusion in the left lung base.", "answer": "[SEG]",
                 "target": "effusion", "seg_mask_path": "lesion_mask/missing.png"},
            ],
            "negative_pairs": [
                {"instruction": "Segment the edema.", "answer": "[SEG] There is no edema.", "target": "edema"},
                {"instruction": "Find the nodule.", "answer": "[SEG]", "target": "nodule"},
            ],
        },
    }
    item_b = {
        "image_path": _image(images, "10000040", "50000001", "bbb-222", 120),
        "instruction_answer_pairs": {
            "positive_pairs": [
                {"instruction": "Segment the opacity in the right upper zone lung and predict its type.",
                 "answer": "[SEG] It possibly reflects atelectasis.", "target": "atelectasis",
                 "seg_mask_path": "lesion_mask/b_atelectasis.png"},
                {"instruction": "Segment the opacity in the right upper zone lung.", "answer": "[SEG]",
                 "target": "atelectasis", "seg_mask_path": "lesion_mask/empty.png"},
            ],
            "negative_pairs": [
                {"instruction": "Segment the opacity in the left mid zone lung and left lung base and predict its "
                 "type.", "answer": "[SEG] There is no opacity in the left mid zone lung and left lung base.",
                 "target": "opacity"},
            ],
        },
    }
    missing = {"image_path": "p10/p10000099/s59999999/ccc-333.jpg",
               "instruction_answer_pairs": {"positive_pairs": [], "negative_pairs": []}}
    data = {"train": [item_a, missing], "val": [], "test": [item_b]}
    (tmp_path / "release" / "mimic_ils_instruction_answer.json").write_text(json.dumps(data))
    return tmp_path / "release", tmp_path / "mimic-cxr-jpg" / "2.1.0", data


def test_import_round_trip(release, tmp_path):
    release_dir, images_root, data = release
    out = tmp_path / "out"
    info = import_release(release_dir, images_root, out)
    assert info["counts"]["train"]["pairs"] == 3 and info["counts"]["test"]["pairs"] == 2
    assert info["counts"]["train"]["masks"] == 1  # two identical masks, one file
    train = pq.read_table(out / "train" / "metadata.parquet").to_pylist()
    by_instruction = {row["instruction"]: row for row in train}
    glob = by_instruction["Segment the effusion."]
    assert (glob["question_type"], glob["polarity"], glob["locations"]) == ("global", "positive", ["right lung base"])
    assert by_instruction["Segment the edema."]["mask_file_name"] is None
    assert (train[0]["study_id"], train[0]["dicom_id"]) == ("50414267", "aaa-111")
    source = images_root / "files" / data["train"][0]["image_path"]
    assert (out / "train" / "images" / "aaa-111.jpg").read_bytes() == source.read_bytes()
    mask = np.asarray(Image.open(out / "train" / glob["mask_file_name"])) > 0
    assert np.array_equal(mask, _mask(20, 4) > 0)
    test = pq.read_table(out / "test" / "metadata.parquet").to_pylist()
    inference = next(row for row in test if row["answer"].startswith("[SEG] It possibly"))
    assert (inference["question_type"], inference["polarity"]) == ("lesion_inference", "positive")
    assert [inference[key] for key in ("target", "lesion", "certainty")] == ["opacity", "atelectasis", "tentative"]
    negative = next(row for row in test if row["polarity"] == "negative")
    assert negative["locations"] == ["left mid zone lung", "left lung base"]
    assert appendix_c_problems(train + test) == []
    reasons = [row["reason"] for row in pq.read_table(out / "ledger.parquet").to_pylist() if row["reason"]]
    assert any("missing.png not found" in reason for reason in reasons)
    assert any("matches no Table 2 template" in reason for reason in reasons)
    assert any("empty for a positive pair" in reason for reason in reasons)
    assert any("ccc-333.jpg not found" in reason for reason in reasons)


def test_imported_folder_loads_with_documented_features(release, tmp_path):
    release_dir, images_root, _ = release
    assert main(["import-release", "--release", str(release_dir), "--images", str(images_root / "files"),
                 "--out", str(tmp_path / "out")]) == 0
    pairs = datasets.load_dataset(str(tmp_path / "out"), "pairs")
    images = datasets.load_dataset(str(tmp_path / "out"), "images")
    assert set(pairs) == {"train", "test"}
    assert pairs["train"].features == pairs_features() and images["test"].features == images_features()
    assert pairs["train"][0]["image"].size == (W, H)
    assert [len(row["pairs"]) for row in images["train"]] == [3]


def test_bad_release_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MimicIlsError, match="cannot read the release file"):
        import_release(tmp_path, tmp_path, tmp_path / "out")
    (tmp_path / "mimic_ils_instruction_answer.json").write_text('{"foo": []}')
    with pytest.raises(MimicIlsError, match="no train/val/test"):
        import_release(tmp_path, tmp_path, tmp_path / "out")
