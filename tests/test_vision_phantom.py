"""Phantom backends on a synthetic cohort: cues overlap the ground truth by the designed amounts, seeded noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _vision_helpers import cohort_with_truth

from mimic_ils import synth
from mimic_ils.schema import HEART_LABEL, LUNG_LABELS, BackendError, CohortError
from mimic_ils.vision import base
from mimic_ils.vision.phantom import smooth_displacement, stable_seed, warp_masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    root, records = cohort_with_truth(tmp_path_factory)
    truths = {record.dicom_id: synth.load_image_truth(root, record.dicom_id) for record in records}
    lesion_types = {
        image["dicom_id"]: [lesion["lesion_type"] for lesion in study["lesions"]]
        for study in synth.load_truth(root).values()
        for image in study["images"]
    }
    return root, records, truths, lesion_types


def _inputs(truths) -> tuple[list[str], list[np.ndarray]]:
    ids = sorted(truths)
    return ids, [truths[i].display for i in ids]


def test_lungs_and_heart_overlap_truth_with_jitter(cohort) -> None:
    root, _, truths, _ = cohort
    ids, images = _inputs(truths)
    results = base.create("lungs_heart", "phantom", cohort_root=root).segment(images, ids)
    for dicom_id, result in zip(ids, results, strict=True):
        truth = truths[dicom_id]
        assert 0.85 <= dice(result.lung_right, truth.lung_right) <= 0.99
        assert 0.85 <= dice(result.lung_left, truth.lung_left) <= 0.99
        assert 0.80 <= dice(result.heart, truth.heart) <= 0.99
        assert not (result.lung_right & result.lung_left).any()
        assert result.lung_right.shape == truth.display.shape


def test_anatomy_overlaps_truth_and_labels_move_together(cohort) -> None:
    root, _, truths, _ = cohort
    ids, images = _inputs(truths)
    results = base.create("anatomy", "phantom", cohort_root=root).segment(images, ids)
    for dicom_id, masks in zip(ids, results, strict=True):
        assert set(masks) == {*LUNG_LABELS, HEART_LABEL}
        scores = [dice(masks[label], truths[dicom_id].anatomy[k]) for k, label in enumerate(LUNG_LABELS)]
        assert 0.75 <= np.mean(scores) <= 0.99
        assert min(scores[-2:]) >= 0.85  # whole lungs
        union = np.logical_or.reduce([masks[label] for label in LUNG_LABELS[:4]])
        np.testing.assert_array_equal(union, masks["right lung"])  # a shared warp keeps zones inside their lung


def test_pseudo_normal_leaves_an_anomaly_mostly_inside_lesions(cohort) -> None:
    root, _, truths, lesion_types = cohort
    ids, images = _inputs(truths)
    masks = [truths[i].lung_right | truths[i].lung_left | truths[i].heart for i in ids]
    results = base.create("pseudo_normal", "phantom", cohort_root=root).edit(images, masks, ids)
    checked = 0
    for dicom_id, image, mask, normal in zip(ids, images, masks, results, strict=True):
        np.testing.assert_array_equal(normal[~mask], image[~mask])
        anomaly = (image.astype(np.int16) - normal) / 255.0 >= 0.10
        hyperintense = [
            m for m, t in zip(truths[dicom_id].lesions, lesion_types[dicom_id], strict=True) if t != "cardiomegaly"
        ]
        lesions = np.logical_or.reduce(hyperintense) if hyperintense else np.zeros_like(mask)
        if lesions.sum() > 500:
            checked += 1
            assert (anomaly & lesions).sum() / lesions.sum() >= 0.6
        every_lesion = truths[dicom_id].lesions.any(axis=0) if len(truths[dicom_id].lesions) else np.zeros_like(mask)
        assert (anomaly & ~every_lesion).sum() <= 0.15 * max(anomaly.sum(), 1) + 0.002 * anomaly.size
    assert checked >= 2


def test_boxes_find_most_lesions_with_realistic_confidences(cohort) -> None:
    root, _, truths, _ = cohort
    ids, images = _inputs(truths)
    results = base.create("lesion_boxes", "phantom", cohort_root=root).detect(images, ids)
    matched = total = 0
    for dicom_id, boxes in zip(ids, results, strict=True):
        truth_boxes = [tuple(box) for box in truths[dicom_id].boxes]
        total += len(truth_boxes)
        matched += sum(any(iou((b.x0, b.y0, b.x1, b.y1), t) >= 0.2 for b in boxes) for t in truth_boxes)
        for box in boxes:
            assert 0.05 <= box.confidence <= 0.95 and box.class_id not in (0, 9, 12)
            assert 0 <= box.x0 < box.x1 <= truths[dicom_id].display.shape[1]
    assert total >= 4 and 0.5 <= matched / total <= 1.0


def test_miss_and_spurious_rates_are_controlled(cohort) -> None:
    root, _, truths, _ = cohort
    ids, images = _inputs(truths)
    none_found = base.create("lesion_boxes", "phantom", cohort_root=root, miss_rate=1.0, spurious_rate=0.0)
    assert all(boxes == [] for boxes in none_found.detect(images, ids))
    noisy = base.create("lesion_boxes", "phantom", cohort_root=root, miss_rate=1.0, spurious_rate=5.0)
    spurious = [box for boxes in noisy.detect(images, ids) for box in boxes]
    assert len(spurious) >= 10 and max(box.confidence for box in spurious) <= 0.35


def test_same_seed_same_cues_other_seed_other_noise(cohort) -> None:
    root, _, truths, _ = cohort
    ids, images = _inputs(truths)
    first = base.create("lungs_heart", "phantom", cohort_root=root, seed=1).segment(images[:2], ids[:2])
    again = base.create("lungs_heart", "phantom", cohort_root=root, seed=1).segment(images[:2], ids[:2])
    other = base.create("lungs_heart", "phantom", cohort_root=root, seed=2).segment(images[:2], ids[:2])
    assert all(np.array_equal(a.lung_right, b.lung_right) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0].lung_right, other[0].lung_right)
    assert stable_seed(0, "x") == stable_seed(0, "x") != stable_seed(0, "y")


def test_refuses_cohort_without_sidecar_and_isolates_unknown_images(cohort, tmp_path: Path) -> None:
    root, _, truths, _ = cohort
    with pytest.raises(CohortError, match="phantom_truth"):
        base.create("lungs_heart", "phantom", cohort_root=tmp_path)
    ids, images = _inputs(truths)
    results = base.create("anatomy", "phantom", cohort_root=root).segment(
        [images[0], images[0], images[1][:50]], [ids[0], "not-a-frontal-id", ids[1]]
    )
    assert isinstance(results[0], dict)
    assert isinstance(results[1], BackendError) and isinstance(results[2], BackendError)
    empty = base.create("pseudo_normal", "phantom", cohort_root=root).edit(
        [images[0]], [np.zeros(images[0].shape, bool)], [ids[0]]
    )
    assert isinstance(empty[0], BackendError) and "empty" in str(empty[0])


def test_warp_is_a_permutation_free_nearest_lookup() -> None:
    masks = np.zeros((1, 40, 30), bool)
    masks[0, 10:20, 5:15] = True
    shift = np.zeros((2, 40, 30))
    shift[1] = -3.0  # sample 3 columns to the left: the square moves right by 3
    moved = warp_masks(masks, shift)[0]
    assert moved[10:20, 8:18].all() and moved.sum() == masks.sum()
    field = smooth_displacement((64, 48), 2.0, np.random.default_rng(0))
    assert field.shape == (2, 64, 48) and 1.5 <= field.std() <= 2.5
