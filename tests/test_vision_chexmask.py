"""CheXmask backend: RLE (1-based starts), the Dice RCA filter, lazy row index, frames and per-image errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mimic_ils.schema import BackendError
from mimic_ils.vision import base
from mimic_ils.vision.chexmask import CheXmaskIndex, CheXmaskLungsHeart, parse_landmarks, rle_decode, rle_encode

COLUMNS = ["dicom_id", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung", "Heart"]
COLUMNS += ["Height", "Width"]


@pytest.mark.parametrize(
    ("mask", "code"),
    [
        ([[0, 1, 1], [1, 0, 0]], "2 3"),
        ([[1, 1, 0], [0, 0, 1]], "1 2 6 1"),
        ([[0, 0, 0], [0, 0, 0]], ""),
        ([[1, 1, 1], [1, 1, 1]], "1 6"),
    ],
)
def test_rle_matches_hand_encoded_masks(mask: list[list[int]], code: str) -> None:
    mask = np.array(mask, dtype=bool)
    assert rle_encode(mask) == code
    np.testing.assert_array_equal(rle_decode(code, 2, 3), mask)


def test_rle_round_trip_of_random_shapes() -> None:
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (7, 5), (64, 48)]:
        mask = rng.random((height, width)) > 0.6
        assert rle_decode(rle_encode(mask), height, width).tolist() == mask.tolist()


def test_rle_rejects_broken_codes() -> None:
    with pytest.raises(ValueError, match="odd"):
        rle_decode("1 2 3", 2, 3)
    with pytest.raises(ValueError, match="outside"):
        rle_decode("5 3", 2, 3)
    with pytest.raises(ValueError, match="outside"):
        rle_decode("0 1", 2, 3)  # starts are 1-based


def test_landmarks_cell_is_parsed_to_xy_pairs() -> None:
    np.testing.assert_allclose(parse_landmarks("[[10, 20], [30.5, 40]]"), [[10, 20], [30.5, 40]])
    np.testing.assert_allclose(parse_landmarks("[1 2 3 4]"), [[1, 2], [3, 4]])
    assert parse_landmarks("") is None and parse_landmarks("[1, 2, 3]") is None


def _organs(height: int, width: int) -> dict[str, np.ndarray]:
    rows, cols = np.mgrid[:height, :width]
    right = (rows > height // 5) & (rows < 4 * height // 5) & (cols > width // 10) & (cols < 2 * width // 5)
    left = (rows > height // 5) & (rows < 4 * height // 5) & (cols > 3 * width // 5) & (cols < 9 * width // 10)
    heart = (rows > height // 2) & (rows < 3 * height // 4) & (cols > 2 * width // 5) & (cols < 3 * width // 5)
    return {"lung_right": right, "lung_left": left, "heart": heart}


def _write_csv(path: Path, rows: list[tuple[str, float, int, int]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for dicom_id, dice, height, width in rows:
            organs = _organs(height, width)
            landmarks = str([[float(x), float(y)] for x, y in [(1, 2), (3, 4)]])
            writer.writerow(
                [dicom_id, dice, dice + 0.05, landmarks, rle_encode(organs["lung_left"])]
                + [rle_encode(organs["lung_right"]), rle_encode(organs["heart"]), height, width]
            )
    return path


@pytest.fixture()
def chexmask_csv(tmp_path: Path) -> Path:
    rows = [("good", 0.85, 60, 50), ("poor", 0.55, 60, 50), ("edge", 0.7, 60, 50), ("big", 0.9, 120, 100)]
    return _write_csv(tmp_path / "MIMIC-CXR-JPG.csv", rows)


def test_masks_come_back_in_the_image_frame(chexmask_csv: Path) -> None:
    backend = base.create("lungs_heart", "chexmask", weights=chexmask_csv, device="cpu", batch_size=4)
    assert isinstance(backend, base.LungsHeartBackend)
    result = backend.segment([np.zeros((60, 50), np.uint8)], ["good"])[0]
    expected = _organs(60, 50)
    for organ in ("lung_right", "lung_left", "heart"):
        np.testing.assert_array_equal(getattr(result, organ), expected[organ])
    assert result.lung_right[:, :25].sum() > 0 and result.lung_right[:, 25:].sum() == 0  # right lung: image left
    np.testing.assert_allclose(result.landmarks, [[1, 2], [3, 4]])


def test_dice_filter_keeps_rows_at_or_above_the_threshold(chexmask_csv: Path) -> None:
    backend = CheXmaskLungsHeart(csv=chexmask_csv)
    poor, edge = backend.segment([np.zeros((60, 50), np.uint8)] * 2, ["poor", "edge"])
    assert isinstance(poor, BackendError) and "Dice RCA (Mean) 0.550 is below 0.7" in str(poor)
    assert isinstance(edge, base.LungsHeart)
    lenient = CheXmaskLungsHeart(csv=chexmask_csv, min_dice=0.5).segment([np.zeros((60, 50), np.uint8)], ["poor"])
    assert isinstance(lenient[0], base.LungsHeart)


def test_missing_dicom_and_wrong_frame_are_per_image_errors(chexmask_csv: Path) -> None:
    backend = CheXmaskLungsHeart(csv=chexmask_csv)
    images = [np.zeros((60, 50), np.uint8), np.zeros((60, 50), np.uint8), np.zeros((60, 90), np.uint8)]
    missing, good, wrong = backend.segment(images, ["nope", "good", "good"])
    assert isinstance(missing, BackendError) and "nope" in str(missing) and "no row" in str(missing)
    assert isinstance(good, base.LungsHeart)
    assert isinstance(wrong, BackendError) and "aspect ratio" in str(wrong)


def test_same_aspect_masks_are_resized_to_the_image(chexmask_csv: Path) -> None:
    result = CheXmaskLungsHeart(csv=chexmask_csv).segment([np.zeros((60, 50), np.uint8)], ["big"])[0]
    assert result.heart.shape == (60, 50)
    overlap = (result.heart & _organs(60, 50)["heart"]).sum() / _organs(60, 50)["heart"].sum()
    assert overlap > 0.8
    np.testing.assert_allclose(result.landmarks, [[0.5, 1], [1.5, 2]])


def test_index_is_lazy_and_built_once(chexmask_csv: Path) -> None:
    index = CheXmaskIndex(chexmask_csv)
    assert index.scans == 0  # opening reads the header only
    assert index.row("big")["Height"] == "120"
    assert index.row("good")["Dice RCA (Mean)"] == "0.85"
    assert index.row("absent") is None
    assert index.scans == 1 and len(index) == 4


def test_quoted_ids_are_indexed(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        writer.writerow(["Landmarks", *[c for c in COLUMNS if c != "Landmarks"]])
        writer.writerow(["[[1, 2], [3, 4]]", "a,b", 0.9, 0.95, "1 2", "3 1", "", 2, 3])
    row = CheXmaskIndex(path).row("a,b")
    assert row is not None and row["Left Lung"] == "1 2"


def test_missing_or_malformed_csv_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="MIMIC-CXR-JPG.csv"):
        CheXmaskLungsHeart(csv=tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id,Height,Width\nx,1,1\n")
    with pytest.raises(BackendError, match="Dice RCA"):
        CheXmaskLungsHeart(csv=bad)
    with pytest.raises(BackendError, match="needs the path"):
        CheXmaskLungsHeart()


def test_unreadable_row_is_a_per_image_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text(",".join(f'"{c}"' for c in COLUMNS) + '\nx,0.9,0.9,"",1 2 3,1 1,1 1,2,3\n')
    result = CheXmaskLungsHeart(csv=path).segment([np.zeros((2, 3), np.uint8)], ["x"])[0]
    assert isinstance(result, BackendError) and "unreadable" in str(result)


def test_index_cache_is_reused_until_the_csv_changes(chexmask_csv: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "offsets.json"
    first = CheXmaskIndex(chexmask_csv, cache=cache)
    assert first.row("good")["Width"] == "50" and first.scans == 1 and cache.is_file()
    second = CheXmaskIndex(chexmask_csv, cache=cache)
    assert second.row("big")["Height"] == "120" and second.scans == 0  # offsets came from the cache
    _write_csv(chexmask_csv, [("new", 0.9, 10, 10), ("good", 0.8, 60, 50)])
    third = CheXmaskIndex(chexmask_csv, cache=cache)
    assert third.row("big") is None and third.row("good")["Dice RCA (Mean)"] == "0.8" and third.scans == 1
