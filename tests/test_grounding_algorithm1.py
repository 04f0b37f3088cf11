"""Algorithm 1 (c1-c4), Eq. 1, Refine, location verification and quality control on hand-built masks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _grounding_helpers import Chest, finding, ground_and_pair, report
from scipy import ndimage

from mimic_ils.grounding import GroundingConfig, Thresholds, masks, qc, verify
from mimic_ils.grounding.algorithm1 import box_window, c1_anatomy, c2_confidence, c3_signal, c4_size
from mimic_ils.grounding.anomaly import AnomalyField, anomaly_map, difference_threshold
from mimic_ils.grounding.config import QcConfig, RefineConfig
from mimic_ils.grounding.refine import fill_effusion_base, grow_similar, refine_component
from mimic_ils.schema import LUNG_REGIONS, Box


def _box(x0, y0, x1, y1, confidence=0.9, class_name="Lung Opacity") -> Box:
    return Box(x0, y0, x1, y1, confidence, 7, class_name)


def _mask(shape, *rects) -> np.ndarray:
    out = np.zeros(shape, bool)
    for r0, r1, c0, c1 in rects:
        out[r0:r1, c0:c1] = True
    return out


# --- c1-c4 -------------------------------------------------------------------------------------------------------

UNION = _mask((20, 20), (0, 4, 0, 4))  # 16 pixels


@pytest.mark.parametrize(
    ("box", "expected_iou"),
    [
        (_box(0, 0, 4, 4), 1.0),
        (_box(0, 0, 8, 4), 0.5),
        (_box(0, 0, 8, 8), 0.25),  # exactly tau_anatomy: kept (>=)
        (_box(0, 0, 9, 8), 16 / 72),
        (_box(10, 10, 14, 14), 0.0),
        (_box(0.4, 0.6, 3.2, 3.7), 1.0),  # fractional corners cover whole pixels
    ],
)
def test_c1_anatomy_overlap(box, expected_iou):
    assert c1_anatomy(box, UNION, 0.25) == (expected_iou >= 0.25)
    assert c1_anatomy(box, UNION, expected_iou) and (expected_iou == 1.0 or not c1_anatomy(box, UNION, 1.0))


def test_c1_uses_the_given_union_count():
    box = _box(0, 0, 8, 4)
    assert c1_anatomy(box, UNION, 0.5, union_count=16)
    assert not c1_anatomy(box, UNION, 0.5, union_count=48)  # a larger union elsewhere lowers the IoU


@pytest.mark.parametrize(("confidence", "tau", "kept"), [(0.2, 0.2, True), (0.19, 0.2, False), (0.05, 0.01, True)])
def test_c2_confidence(confidence, tau, kept):
    assert c2_confidence(_box(0, 0, 2, 2, confidence), tau) is kept


@pytest.mark.parametrize(("anomalous", "kept"), [(20, True), (19, False), (100, True), (0, False)])
def test_c3_signal_fraction(anomalous, kept):
    anomaly = np.zeros((20, 20), bool)
    anomaly[5:15, 5:15].flat[:anomalous] = True
    anomaly[0:5, 0:5] = True  # outside the box: never counts
    assert c3_signal(_box(5, 5, 15, 15), anomaly, 0.20) is kept


RIGHT = _mask((20, 20), (0, 20, 0, 8))
LEFT = _mask((20, 20), (0, 20, 12, 20))


@pytest.mark.parametrize(
    ("box", "kept"),
    [
        (_box(0, 0, 4, 4), True),  # 16 / 160 = 0.1 with the right lung
        (_box(0, 0, 3, 5), False),  # 15 / 160
        (_box(12, 0, 16, 4), True),  # the left lung alone suffices
        (_box(9, 0, 11, 20), False),  # between the lungs
        (_box(0, 0, 1, 1), False),
    ],
)
def test_c4_size(box, kept):
    assert c4_size(box, RIGHT, LEFT, 0.10) is kept


def test_non_finite_boxes_are_ignored_not_fatal():
    chest = Chest()
    chest.add_lesion(chest.band("right", 0.75, 0.95))
    cues = chest.cues()
    cues.boxes.append(_box(float("nan"), 10, 50, 60))
    result = ground_and_pair(
        report(finding("atelectasis", "right lung base")), cues, study_id="s", dicom_id="d", view="PA"
    )
    assert [p.instruction for p in result.pairs if p.polarity == "positive"][0] == (
        "Segment the atelectasis in the right lung base."
    )


def test_box_outside_the_frame_fails_every_mask_criterion():
    box = _box(30, 30, 40, 40)
    assert box_window(box, (20, 20)) is None
    assert not c1_anatomy(box, UNION, 0.0) and not c3_signal(box, UNION, 0.0) and not c4_size(box, RIGHT, LEFT, 0.0)


# --- Eq. 1 --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.10, 0.01, 0.0, 0.5, 1.0])
def test_anomaly_map_matches_eq1_for_every_8bit_pair(tau):
    x, x_hat = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    expected = (x.astype(np.float64) - x_hat.astype(np.float64)) / 255.0 >= tau
    assert (anomaly_map(x, x_hat, tau) == expected).all()


def test_difference_threshold_values():
    assert difference_threshold(0.10) == 26 and difference_threshold(0.01) == 3


# --- Refine -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_square_morphology_matches_scipy(radius):
    rng = np.random.default_rng(radius)
    mask = rng.random((37, 41)) < 0.6
    square = np.ones((2 * radius + 1,) * 2, bool)
    assert (masks.erode(mask, radius) == ndimage.binary_erosion(mask, square)).all()
    assert (masks.dilate(mask, radius) == ndimage.binary_dilation(mask, square)).all()
    assert (masks.opening(mask, radius) == ndimage.binary_opening(mask, square)).all()


def test_opening_removes_scattered_noise_but_keeps_lesions():
    mask = _mask((30, 30), (5, 10, 5, 10))
    mask[20, 20] = mask[25, 3] = mask[2, 27] = True
    assert (masks.opening(mask, 1) == _mask((30, 30), (5, 10, 5, 10))).all()


def test_grow_similar_follows_similar_intensity_only():
    image = np.full((30, 30), 150, np.uint8)
    image[10:13, 10:13] = 100  # the component
    image[10:13, 13:30] = 105  # similar, to the right: grows at most `steps` pixels
    image[13:16, 10:13] = 140  # dissimilar, below
    domain = np.ones((30, 30), bool)
    domain[:, 15:] = False
    patch = np.ones((3, 3), bool)
    grown, window = grow_similar(patch, (slice(10, 13), slice(10, 13)), image, domain, tolerance=0.04, steps=4)
    full = np.zeros((30, 30), bool)
    full[window] = grown
    assert (full == _mask((30, 30), (10, 13, 10, 15))).all()  # right strip up to the domain edge, nothing below


def test_grow_similar_step_limit():
    image = np.full((20, 40), 100, np.uint8)
    domain = np.ones((20, 40), bool)
    grown, window = grow_similar(
        np.ones((1, 1), bool), (slice(10, 11), slice(10, 11)), image, domain, tolerance=0.04, steps=3
    )
    full = np.zeros((20, 40), bool)
    full[window] = grown
    assert (full == _mask((20, 40), (7, 14, 7, 14))).all()


def test_effusion_fill_reaches_the_costophrenic_angle():
    lung = _mask((60, 40), (10, 50, 5, 35))
    patch = np.ones((3, 6), bool)  # lesion rows 40..43, cols 20..26
    filled, window = fill_effusion_base(patch, (slice(40, 43), slice(20, 26)), lung, min_row_fraction=0.5)
    full = np.zeros((60, 40), bool)
    full[window] = filled
    assert (full == _mask((60, 40), (40, 50, 5, 35))).all()
    high = np.ones((3, 6), bool)  # a lesion reaching row 15 only fills from mid-lung (row 30) down
    filled, window = fill_effusion_base(high, (slice(15, 18), slice(20, 26)), lung, min_row_fraction=0.5)
    full = np.zeros((60, 40), bool)
    full[window] = filled
    assert (full == _mask((60, 40), (30, 50, 5, 35), (15, 18, 20, 26))).all()


@pytest.mark.parametrize(
    ("effusion", "base_rows", "filled"), [(True, (40, 50), True), (True, (10, 20), False), (False, (40, 50), False)]
)
def test_refine_component_fills_only_basal_effusion(effusion, base_rows, filled):
    image = np.full((60, 40), 60, np.uint8)
    image[40:43, 20:26] = 120
    lung = _mask((60, 40), (10, 50, 5, 35))
    base = _mask((60, 40), (*base_rows, 5, 35))
    patch, window = refine_component(
        np.ones((3, 6), bool),
        (slice(40, 43), slice(20, 26)),
        image=image,
        lung=lung,
        lung_window=None,
        base=base,
        effusion=effusion,
        config=RefineConfig(),
    )
    full = np.zeros((60, 40), bool)
    full[window] = patch
    assert bool(full[49, 5]) is filled
    assert full[40:43, 20:26].all() and not (full & ~lung).any()


def test_anomaly_field_returns_whole_components_touching_a_box():
    image = np.full((40, 60), 60, np.uint8)
    pseudo = image.copy()
    image[5:25, 5:10] = 120  # long component: the box touches only its top
    image[30:35, 5:10] = 120  # separate component, not touched
    image[20, 30] = 200  # single-pixel noise inside the box
    lungs = {"right": _mask((40, 60), (0, 40, 0, 28)), "left": _mask((40, 60), (0, 40, 32, 60))}
    lungs["right"][:, 28:32] = False
    field = AnomalyField(image, pseudo, lungs, noise_radius=1)
    [(side, patch, window)] = field.components_touching(0.1, (slice(0, 8), slice(0, 40)))
    full = np.zeros((40, 60), bool)
    full[window] = patch
    assert side == "right" and (full == _mask((40, 60), (5, 25, 5, 10))).all()
    assert field.count_in(0.1, (slice(18, 22), slice(28, 34))) == 0  # the speck was opened away


def test_components_reaching_far_beyond_the_labelling_window_are_whole():
    from mimic_ils.grounding.anomaly import SideAnomaly

    mask = np.zeros((40, 400), bool)
    mask[5:8, 10:390] = True  # a long band starting in the box
    mask[8:30, 385:390] = True  # that turns down at the far end
    mask[30:35, 100:110] = True  # a separate blob
    patch, window = SideAnomaly(window=(slice(0, 40), slice(0, 400)), mask=mask).touching(
        (slice(0, 10), slice(0, 20)), margin=4
    )
    full = np.zeros_like(mask)
    full[window] = patch
    assert (full == _mask((40, 400), (5, 8, 10, 390), (8, 30, 385, 390))).all()
    assert SideAnomaly(window=(slice(0, 40), slice(0, 400)), mask=mask).touching((slice(20, 25), slice(0, 5))) is None


# --- verification -------------------------------------------------------------------------------------------------


def test_grounded_locations_keep_reported_labels_under_kept_boxes():
    chest = Chest()
    anatomy = chest.anatomy()
    right_base = box_window(_box(40, 140, 100, 165), (chest.height, chest.width))
    reported = ("right lung base", "left lung base")
    assert verify.grounded_locations(reported, anatomy, [right_base]) == ("right lung base",)
    assert verify.grounded_locations(reported, anatomy, []) == ()


def test_reported_locations_keep_the_mapping_order():
    f = finding("edema", "left lung", "right lung", "left lung", "heart")
    assert verify.reported_locations(f) == ("left lung", "right lung")


@pytest.mark.parametrize(
    ("findings", "expected_missing", "expected_present"),
    [
        (
            [finding("atelectasis", "right lung base")],
            {"right lung base", "right lung"},
            {"left lung", "right mid zone lung"},
        ),
        ([finding("atelectasis", "right lung base", presence="negative")], set(), set(LUNG_REGIONS)),
        (
            [finding(None, "lung upper lobe left")],
            {"left apical zone lung", "left upper zone lung", "left lung", "left mid zone lung"},
            {"left lung base", "right lung"},
        ),
        ([finding(None)], set(), set(LUNG_REGIONS)),  # a device or hernia occupies no lung region
        ([finding("cardiomegaly")], set(), set(LUNG_REGIONS)),
    ],
)
def test_empty_locations(findings, expected_missing, expected_present):
    empty = set(verify.empty_locations(findings, Chest().anatomy()))
    assert not (empty & expected_missing) and expected_present <= empty


def test_unlocated_lung_lesion_leaves_nothing_empty():
    assert verify.empty_locations([finding("pneumonia")], Chest().anatomy()) == ()


# --- quality control ----------------------------------------------------------------------------------------------


def _ground(chest: Chest, *findings, view="PA", config=None, cues=None):
    cues = cues or chest.cues()
    return ground_and_pair(report(*findings), cues, study_id="s1", dicom_id="d1", view=view, config=config)


def test_lateral_views_are_excluded():
    result = _ground(Chest(), view="LATERAL")
    assert result.excluded == "view 'LATERAL' is not frontal (PA/AP)" and not result.pairs
    assert result.exclusions == [("image d1", result.excluded)]


@pytest.mark.parametrize(
    ("label", "shift", "excluded"),
    [
        ("right lung", 15, True),
        ("right lung", 9, False),
        ("left lung", -15, True),
        ("heart", 11, True),
        ("heart", 9, False),
    ],
)
def test_hybridgnet_cxas_discrepancy(label, shift, excluded):
    cues = Chest().cues()
    axis = 0 if label == "heart" else 1
    cues.anatomy[label] = np.roll(cues.anatomy[label], -shift if label == "right lung" else shift, axis=axis)
    result = _ground(Chest(), cues=cues)
    assert (result.excluded is not None) is excluded
    if excluded:
        assert "disagree" in result.excluded and ("heart" in result.excluded) == (label == "heart")


def test_cardiothoracic_ratio_from_hybridgnet_masks():
    chest = Chest()
    cues = chest.cues()
    assert qc.cardiothoracic_ratio(cues.lung_right, cues.lung_left, cues.heart) == pytest.approx(55 / 180)
    assert qc.cardiothoracic_ratio(cues.lung_right, cues.lung_left, np.zeros_like(cues.heart)) is None


def test_cardiomegaly_negative_only_under_the_ctr_rule():
    small = _ground(Chest())
    assert [p.answer for p in small.pairs if p.lesion == "cardiomegaly"] == ["[SEG] There is no cardiomegaly."]
    big_chest = Chest(heart_rect=(100, 176, 60, 170))  # 110 / 180 = 0.61
    cues = big_chest.cues()
    cues.anatomy["heart"] = cues.heart.copy()
    big = _ground(big_chest, cues=cues)
    assert not [p for p in big.pairs if p.lesion == "cardiomegaly"]
    assert ("cardiomegaly negative", "cardiothoracic ratio 0.611 > 0.45") in big.exclusions
    relaxed = _ground(big_chest, cues=cues, config=GroundingConfig(qc=QcConfig(ctr_negative_max=0.7)))
    assert [p.polarity for p in relaxed.pairs if p.lesion == "cardiomegaly"] == ["negative"]


def test_malformed_cues_are_excluded_with_a_reason():
    cues = Chest().cues()
    cues.lung_left = cues.lung_left.astype(np.uint8)
    result = _ground(Chest(), cues=cues)
    assert result.excluded.startswith("mask 'lung_left' must be HxW bool")


# --- findings bookkeeping -----------------------------------------------------------------------------------------


def test_every_dropped_finding_is_recorded():
    chest = Chest()
    result = _ground(chest, finding("pneumonia", sentence=1), finding("edema", "right lung", sentence=2))
    reasons = dict(result.exclusions)
    assert reasons["pneumonia finding (sentence 1)"] == "no lung location reported; no lung region can be called empty"
    assert result.empty_locations == ()  # a lung lesion that could be anywhere: no region is empty
    assert reasons["edema finding (sentence 2)"] == "no lesion box on the image"


def test_class_table_switch():
    chest = Chest()
    chest.add_lesion(chest.band("right", 0.85, 1.0), class_name="Lung Opacity")
    paper = _ground(chest, finding("effusion", "right lung base"))
    assert [p.lesion for p in paper.pairs if p.polarity == "positive"] == ["effusion", "effusion"]
    strict = _ground(chest, finding("effusion", "right lung base"), config=GroundingConfig(use_class_table=True))
    assert not [p for p in strict.pairs if p.polarity == "positive"]
    assert "class failed for 1" in dict(strict.exclusions)["effusion finding (sentence 1)"]


def test_config_round_trips_and_rejects_unknown_keys():
    config = GroundingConfig.from_dict({"tau_ano": 0.2, "refine": {"grow_steps": 0}, "use_class_table": True})
    assert config.thresholds.tau_ano == 0.2 and config.thresholds_for("edema").tau_ano == 0.01
    assert GroundingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        GroundingConfig.from_dict({"tau_anomaly": 0.2})
    partial = GroundingConfig.from_dict(
        {"tau_size": 0.3, "lesion_thresholds": {"edema": {"tau_ano": 0.02}, "effusion": {"tau_conf": 0.5}}}
    )
    assert partial.thresholds_for("edema") == Thresholds(tau_ano=0.02, tau_conf=0.01)  # Table 7 edema otherwise
    assert partial.thresholds_for("effusion") == Thresholds(tau_conf=0.5, tau_size=0.3)
    assert partial.thresholds_for("pneumonia") == Thresholds(tau_size=0.3)


def test_grounding_and_pairs_do_not_import_torch():
    code = (
        "import sys, mimic_ils.grounding, mimic_ils.pairs, mimic_ils.grounding.pipeline; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- working grid -------------------------------------------------------------------------------------------------


def test_grid_stride_and_round_trip():
    from mimic_ils.grounding.grid import Grid

    assert Grid.for_shape((2048, 2500), 1024).stride == 3 and Grid.for_shape((200, 240), None).stride == 1
    grid = Grid.for_shape((30, 40), 14)
    assert grid.stride == 3
    mask = _mask((30, 40), (4, 20, 5, 31))
    domain = _mask((30, 40), (0, 30, 0, 25))
    back = grid.up(grid.down(mask), domain)
    assert back.shape == (30, 40) and not (back & ~domain).any()
    assert (back == _mask((30, 40), (6, 21, 6, 25))).all()  # sampled rows 6..18 and cols 6..30, 3-pixel blocks
    assert grid.box(_box(3, 6, 9, 12)) == _box(1, 2, 3, 4)


def test_grounding_on_a_coarse_grid_matches_full_resolution():
    chest = Chest()
    chest.add_lesion(chest.band("right", 0.75, 0.95))
    chest.add_lesion(chest.band("left", 0.75, 0.95))
    findings = (finding("atelectasis", "right lung base", "left lung base"), finding("cardiomegaly", sentence=2))
    exact = _ground(chest, *findings, config=GroundingConfig(work_max_side=None))
    coarse = _ground(chest, *findings, config=GroundingConfig(work_max_side=80))  # stride 3
    assert coarse.pairs == exact.pairs and coarse.masks.keys() == exact.masks.keys()
    lungs = chest.lung_mask()
    for key, mask in exact.masks.items():
        other = coarse.masks[key]
        assert (other & mask).sum() / (other | mask).sum() > 0.9 and not (
            other & ~lungs & ~chest.mask(chest.heart_rect)
        ).any()
