"""The paper's worked examples (Fig. 3, Fig. 8, Fig. 11) reproduced on hand-built chests."""

from __future__ import annotations

import numpy as np
from _grounding_helpers import Chest, by_type, finding, ground_and_pair, report

from mimic_ils.schema import LESION_TYPES


def _ground(chest: Chest, *findings, study_id: str = "50000001"):
    return ground_and_pair(report(*findings), chest.cues(), study_id=study_id, dicom_id="d1", view="PA")


def _answers(result) -> dict[str, str]:
    return {pair.instruction: pair.answer for pair in result.pairs if pair.polarity == "positive"}


def test_fig3_bibasilar_atelectasis_and_cardiomegaly():
    chest = Chest()
    right = chest.add_lesion(chest.band("right", 0.75, 0.95))
    left = chest.add_lesion(chest.band("left", 0.75, 0.95))
    assert right is not None and left is not None
    result = _ground(
        chest,
        finding("atelectasis", "right lung base", "left lung base", sentence=1),
        finding("cardiomegaly", sentence=2),
    )
    assert result.excluded is None
    answers = _answers(result)
    both = "right lung base and left lung base"
    assert answers[f"Segment the atelectasis in the {both}."] == "[SEG]"
    assert answers["Segment the atelectasis."] == f"[SEG] It is located in the {both}."
    assert answers[f"Segment the opacity in the {both} and predict its type."] == (
        "[SEG] It is highly suggestive of atelectasis."
    )
    assert answers["Segment the cardiomegaly."] == "[SEG] It is located in the heart."
    atelectasis = next(p for p in result.pairs if p.instruction == f"Segment the atelectasis in the {both}.")
    mask = result.masks[atelectasis.mask_key]
    lesion = chest.mask(chest.band("right", 0.75, 0.95)) | chest.mask(chest.band("left", 0.75, 0.95))
    assert (mask == lesion).all()
    cardiomegaly = next(p for p in result.pairs if p.lesion == "cardiomegaly")
    assert (result.masks[cardiomegaly.mask_key] == chest.mask(chest.heart_rect)).all()
    negatives = [p for p in result.pairs if p.polarity == "negative"]
    assert sorted(p.lesion for p in negatives) == sorted(set(LESION_TYPES) - {"cardiomegaly"})
    for pair in negatives:
        assert pair.mask_key is None
        if pair.lesion in ("atelectasis", "opacity"):  # substituted / conflicting: only in empty places
            assert set(pair.locations) <= set(result.empty_locations)
    assert "right lung base" not in result.empty_locations and "right lung" not in result.empty_locations


def test_fig8_bilateral_upper_lobe_opacity_grounded_only_on_the_right():
    chest = Chest()
    chest.add_lesion(chest.band("right", 0.05, 0.38), delta=40)
    result = _ground(chest, finding("opacity", "lung upper lobe right", "lung upper lobe left"))
    [outcome] = result.findings
    assert outcome.reported == ("lung upper lobe right", "lung upper lobe left")
    assert outcome.grounded == ("lung upper lobe right",)
    answers = _answers(result)
    assert answers == {"Segment the opacity in the right lung.": "[SEG]"}  # no global: grounded != reported
    [positive] = by_type(result.pairs, "basic")
    assert result.masks[positive.mask_key][:, 120:].sum() == 0  # nothing on the left lung


def test_fig11_definitive_effusion_right_lung_base():
    chest = Chest()
    chest.add_lesion(chest.band("right", 0.85, 1.0), confidence=0.8, class_name="Pleural effusion")
    result = _ground(chest, finding("effusion", "right lung base"))
    answers = _answers(result)
    assert answers["Segment the effusion."] == "[SEG] It is located in the right lung base."
    assert answers["Segment the effusion in the right lung base."] == "[SEG]"
    mask = result.masks[by_type(result.pairs, "basic")[0].mask_key]
    # Refine fills the lung down to the costophrenic angle (the lung's lowest row), never above mid-lung.
    r0, r1, c0, c1 = chest.lungs["right"]
    assert mask[r1 - 1, c0:c1].all()
    assert not mask[: (r0 + r1) // 2].any()


def test_fig11_tentative_atelectasis_grounded_on_right_base_of_bibasilar_report():
    chest = Chest()
    chest.add_lesion(chest.band("right", 0.75, 0.95))
    result = _ground(chest, finding("atelectasis", "right lung base", "left lung base", certainty="tentative"))
    answers = _answers(result)
    assert answers == {
        "Segment the opacity in the right lung base.": "[SEG]",
        "Segment the opacity in the right lung base and predict its type.": "[SEG] It possibly reflects atelectasis.",
    }
    assert not by_type(result.pairs, "global")


def test_fig11_definitive_edema_grounded_on_left_lung_of_bilateral_report():
    chest = Chest()
    # Faint (delta 8 = 0.03 of I_max) and low-confidence: only the edema thresholds of Table 7 accept it.
    r0, r1, c0, c1 = chest.lungs["left"]
    chest.add_lesion((r0 + 10, r1 - 10, c0 + 5, c1 - 5), delta=8, confidence=0.05, class_name="Infiltration")
    result = _ground(chest, finding("edema", "right lung", "left lung"))
    answers = _answers(result)
    assert answers == {
        "Segment the edema in the left lung.": "[SEG]",
        "Segment the opacity in the left lung and predict its type.": "[SEG] It is highly suggestive of edema.",
    }
    same_as_opacity = _ground(_edema_chest(), finding("opacity", "right lung", "left lung"))
    assert not [p for p in same_as_opacity.pairs if p.polarity == "positive"]
    assert np.any([reason.startswith("no box passes") for _what, reason in same_as_opacity.exclusions])


def _edema_chest() -> Chest:
    chest = Chest()
    r0, r1, c0, c1 = chest.lungs["left"]
    chest.add_lesion((r0 + 10, r1 - 10, c0 + 5, c1 - 5), delta=8, confidence=0.05, class_name="Infiltration")
    return chest
