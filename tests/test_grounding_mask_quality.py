"""Issue 14: focal masks on a diffuse haze (``focal_mask_clip``) and the shape of the effusion base fill."""

from __future__ import annotations

import numpy as np
import pytest
from _grounding_helpers import Chest, finding, ground_and_pair, report

from mimic_ils import phantom_render
from mimic_ils.grounding import GroundingConfig, RefineConfig
from mimic_ils.grounding.refine import fill_effusion_base
from mimic_ils.schema import LUNG_LABELS, Box, VisionCues


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    return float((first & second).sum() / (first | second).sum())


def _ground(cues: VisionCues, *findings, config: GroundingConfig | None = None):
    return ground_and_pair(report(*findings), cues, study_id="s1", dicom_id="d1", view="PA", config=config)


# --- focal lesion on a diffuse haze ---------------------------------------------------------------------------------

LESION = (132, 166, 35, 95)  # rows, cols: inside the right lung base (rows 128..170, cols 30..110)


def _hazy_chest(edema_box: bool) -> tuple[Chest, np.ndarray]:
    """Haze (+30 grey levels, above tau_ano = 0.1) over the whole right lung, a focal lesion (+60 more) in its base,
    the lesion's box, and optionally the haze's own lung-sized box (a detector fires on edema too)."""
    chest = Chest()
    chest.add_lesion(chest.lungs["right"], delta=30, with_box=edema_box, class_name="Infiltration", box_margin=0)
    chest.add_lesion(LESION, delta=60, class_name="Consolidation")
    return chest, chest.mask(LESION)


@pytest.mark.parametrize("edema_box", [False, True])
def test_default_focal_mask_swallows_the_haze(edema_box):
    chest, truth = _hazy_chest(edema_box)
    mask = _ground(chest.cues(), finding("pneumonia", "right lung base")).masks["d1_pneumonia_0"]
    lung = chest.mask(chest.lungs["right"])
    assert mask.sum() > 0.9 * lung.sum() and _iou(mask, truth) < 0.2  # the paper's component: the whole haze


@pytest.mark.parametrize("edema_box", [False, True])
def test_box_dilation_clip_keeps_the_focal_mask_near_the_lesion(edema_box):
    chest, truth = _hazy_chest(edema_box)
    config = GroundingConfig(focal_mask_clip="box_dilation")
    mask = _ground(chest.cues(), finding("pneumonia", "right lung base"), config=config).masks["d1_pneumonia_0"]
    assert _iou(mask, truth) > 0.55 and mask[truth].all()
    near = chest.mask((LESION[0] - 6, LESION[1] + 6, LESION[2] - 9, LESION[3] + 9))
    assert not (mask & ~near).any()  # the box (2 px margin) widened by 10 %: a few pixels around the lesion


def test_anatomy_clip_keeps_the_focal_mask_in_the_reported_place():
    chest, truth = _hazy_chest(edema_box=True)
    config = GroundingConfig(focal_mask_clip="anatomy")
    mask = _ground(chest.cues(), finding("pneumonia", "right lung base"), config=config).masks["d1_pneumonia_0"]
    base = chest.anatomy()["right lung base"]
    assert not (truth & ~base).any() and (mask == base).all()  # the haze outside the base is gone


def test_box_dilation_falls_back_to_the_anatomy_when_only_a_lung_sized_box_is_kept():
    chest = Chest()
    chest.add_lesion(chest.lungs["right"], delta=30, class_name="Infiltration", box_margin=0)
    chest.add_lesion(LESION, delta=60, with_box=False)
    config = GroundingConfig(focal_mask_clip="box_dilation")
    mask = _ground(chest.cues(), finding("pneumonia", "right lung base"), config=config).masks["d1_pneumonia_0"]
    assert (mask == chest.anatomy()["right lung base"]).all()


def test_focal_clip_leaves_edema_and_effusion_alone():
    chest, _ = _hazy_chest(edema_box=True)
    findings = (finding("edema", "right lung"), finding("effusion", "right lung base", sentence=2))
    for config in (GroundingConfig(focal_mask_clip="box_dilation"), GroundingConfig(focal_mask_clip="anatomy")):
        clipped, paper = _ground(chest.cues(), *findings, config=config), _ground(chest.cues(), *findings)
        assert clipped.masks.keys() == paper.masks.keys() == {"d1_edema_0", "d1_effusion_0"}
        assert all((clipped.masks[key] == paper.masks[key]).all() for key in paper.masks)


def test_focal_clip_does_not_change_an_isolated_lesion():
    chest = Chest()
    chest.add_lesion(LESION, delta=60, class_name="Consolidation")
    paper = _ground(chest.cues(), finding("pneumonia", "right lung base")).masks["d1_pneumonia_0"]
    for clip in ("box_dilation", "anatomy"):
        config = GroundingConfig(focal_mask_clip=clip)
        mask = _ground(chest.cues(), finding("pneumonia", "right lung base"), config=config).masks["d1_pneumonia_0"]
        assert (mask == paper).all() and (mask == chest.mask(LESION)).all()


# --- configuration --------------------------------------------------------------------------------------------------


def test_focal_clip_settings_are_validated_and_round_trip():
    assert GroundingConfig().focal_mask_clip is None and GroundingConfig().refine.effusion_fill == "per_column"
    config = GroundingConfig.from_dict(
        {"focal_mask_clip": "box_dilation", "focal_clip_margin": 0.2, "refine": {"effusion_fill": "full_rows"}}
    )
    assert GroundingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="focal_mask_clip value 'box'"):
        GroundingConfig.from_dict({"focal_mask_clip": "box"})
    with pytest.raises(ValueError, match="focal_clip_margin"):
        GroundingConfig(focal_clip_margin=-0.1)
    with pytest.raises(ValueError, match="focal_clip_max_lung_iou"):
        GroundingConfig(focal_clip_max_lung_iou=1.5)
    with pytest.raises(ValueError, match="refine.effusion_fill value 'rows'"):
        GroundingConfig.from_dict({"refine": {"effusion_fill": "rows"}})


# --- effusion base fill ---------------------------------------------------------------------------------------------


def test_per_column_fill_follows_the_meniscus_and_reaches_both_lung_edges():
    lung = np.zeros((60, 40), bool)
    lung[10:50, 5:35] = True
    lung[50:53, 30:35] = True  # the costophrenic angle: the lung's lowest pixels, laterally
    tops = {col: 44 - (col - 8) // 4 for col in range(8, 31)}  # a meniscus rising towards the chest wall
    patch = np.zeros((60, 40), bool)
    for col, top in tops.items():
        patch[top:48, col] = True
    window = (slice(38, 48), slice(8, 31))
    filled, out_window = fill_effusion_base(patch[window], window, lung, min_row_fraction=0.5)
    full = np.zeros_like(lung)
    full[out_window] = filled
    expected = np.zeros_like(lung)
    for col in range(5, 35):
        expected[tops[min(max(col, 8), 30)] :, col] = True
    assert (full == (expected & lung)).all()
    assert full[52, 30:35].all()  # the lowest lung pixels
    rows, _ = fill_effusion_base(patch[window], window, lung, min_row_fraction=0.5, mode="full_rows")
    assert rows.sum() > full.sum()  # the old fill adds the lung above the meniscus' low side


def _phantom_effusion(seed: int) -> tuple[VisionCues, np.ndarray]:
    """A noise-free phantom (as ``mimic_ils.synth`` renders it) with one right effusion: ideal cues."""
    rng = np.random.default_rng(seed)
    geometry = phantom_render.sample_geometry(rng, 480, 416)
    spec = phantom_render.LesionSpec("effusion", ("right lung base",))
    render = phantom_render.render_frontal(geometry, [spec], rng)
    [truth] = render.lesions
    x0, y0, x1, y1 = (float(v) for v in render.boxes[0])
    cues = VisionCues(
        dicom_id="d1",
        image=render.display,
        pseudo_normal=render.normal,
        lung_right=render.lung_right,
        lung_left=render.lung_left,
        heart=render.heart,
        anatomy={**dict(zip(LUNG_LABELS, render.anatomy, strict=True)), "heart": render.heart},
        boxes=[Box(x0, y0, x1, y1, 0.9, 10, "Pleural effusion")],
    )
    return cues, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isolated_phantom_effusion_keeps_its_shape_and_reaches_the_costophrenic_angle(seed):
    cues, truth = _phantom_effusion(seed)
    effusion = finding("effusion", "right lung base")
    mask = _ground(cues, effusion).masks["d1_effusion_0"]
    assert _iou(mask, truth) >= 0.9
    lowest = np.flatnonzero(cues.lung_right.any(axis=1))[-1]
    assert (mask[lowest] & cues.lung_right[lowest]).any()  # the lowest lung pixels: the costophrenic angle
    old = GroundingConfig(refine=RefineConfig(effusion_fill="full_rows"))
    assert _iou(_ground(cues, effusion, config=old).masks["d1_effusion_0"], truth) < 0.9
