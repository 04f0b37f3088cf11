"""YOLO lesion boxes: an ultralytics model built from a yaml, saved as .pt and loaded back through the wrapper."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from _vision_helpers import save_tiny_yolo

from mimic_ils.schema import BackendError
from mimic_ils.vision import base
from mimic_ils.vision.yolo import DROPPED_CLASSES, VINBIG_CLASSES, pickled_globals, to_boxes, to_three_channels

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_yolo(tmp_path_factory.mktemp("yolo") / "vinbig.pt")


@pytest.fixture(scope="module")
def detector(checkpoint: Path):
    return base.create("lesion_boxes", "yolo", weights=str(checkpoint), imgsz=128, conf=1e-6, max_det=300)


def test_random_weights_give_frame_boxes_without_dropped_classes(detector) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (150, 110), dtype=np.uint8), rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)]
    results = detector.detect(images, ["grey", "rgb"])
    assert isinstance(detector, base.LesionBoxBackend)
    for image, boxes in zip(images, results, strict=True):
        assert isinstance(boxes, list) and boxes, "a conf=1e-6 random model should return boxes"
        height, width = image.shape[:2]
        for box in boxes:
            assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height
            assert box.class_id not in DROPPED_CLASSES and box.class_name == VINBIG_CLASSES[box.class_id]
            assert 1e-6 <= box.confidence <= 1.0
        assert [b.confidence for b in boxes] == sorted((b.confidence for b in boxes), reverse=True)


def test_same_image_same_boxes_and_bad_image_isolated(detector) -> None:
    image = np.random.default_rng(1).integers(0, 256, (128, 96), dtype=np.uint8)
    first, broken, second = detector.detect([image, np.zeros((4, 4, 2), np.uint8), image], ["a", "b", "c"])
    assert first == second
    assert isinstance(broken, BackendError) and "HxW" in str(broken)


def test_to_boxes_drops_excluded_classes_and_clips() -> None:
    xyxy = np.array([[-5, 2, 30, 40], [0, 0, 10, 10], [5, 5, 500, 60], [3, 3, 3, 9]], float)
    boxes = to_boxes(xyxy, np.array([0.4, 0.9, 0.7, 0.5]), np.array([4, 12, 10, 1]), (50, 100))
    assert [(b.class_name, b.confidence) for b in boxes] == [("Pleural effusion", 0.7), ("Consolidation", 0.4)]
    assert (boxes[0].x1, boxes[0].y1, boxes[1].x0) == (100.0, 50.0, 0.0)
    assert {VINBIG_CLASSES[i] for i in DROPPED_CLASSES} == {"Aortic enlargement", "Other lesion", "Pneumothorax"}


def test_grey_becomes_three_identical_channels() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_three_channels(grey)
    assert rgb.shape == (3, 4, 3) and all(np.array_equal(rgb[..., c], grey) for c in range(3))
    with pytest.raises(ValueError):
        to_three_channels(np.zeros((3, 4, 2)))


def test_yolov5_repository_checkpoint_is_refused_clearly(tmp_path: Path) -> None:
    package, module = types.ModuleType("models"), types.ModuleType("models.yolo")

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

    Model.__module__, Model.__qualname__ = "models.yolo", "Model"
    module.Model = Model
    sys.modules.update({"models": package, "models.yolo": module})
    try:
        torch.save({"model": Model(), "epoch": 3}, tmp_path / "v5.pt")
    finally:
        del sys.modules["models"], sys.modules["models.yolo"]
    assert "models.yolo.Model" in pickled_globals(tmp_path / "v5.pt")
    with pytest.raises(BackendError, match="yolov5"):
        base.create("lesion_boxes", "yolo", weights=str(tmp_path / "v5.pt"))


def test_missing_file_and_wrong_class_count_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not found"):
        base.create("lesion_boxes", "yolo", weights=str(tmp_path / "absent.pt"))
    wrong = save_tiny_yolo(tmp_path / "coco.pt", n_classes=3)
    with pytest.raises(BackendError, match="14 VinBigData"):
        base.create("lesion_boxes", "yolo", weights=str(wrong))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BackendError):
        base.create("lesion_boxes", "yolo", weights=str(tmp_path / "junk.pt"))
