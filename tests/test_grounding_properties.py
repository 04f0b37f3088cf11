"""Property tests of the grounding + pair invariants on random hand-built chests (hypothesis)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from _grounding_helpers import Chest, finding, ground_and_pair, report
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimic_ils.schema import LESION_TYPES, LUNG_LABELS

ZONE_BANDS = {"upper zone lung": (0.15, 0.40), "mid zone lung": (0.40, 0.70), "lung base": (0.70, 1.0)}
lesion_st = st.tuples(
    st.sampled_from(["right", "left"]),
    st.sampled_from(sorted(ZONE_BANDS)),
    st.floats(0.0, 0.3),  # how much of the zone the lesion leaves out
    st.integers(2, 90),  # brightness added
    st.floats(0.0, 1.0),  # detector confidence
    st.booleans(),  # with a box
    st.sampled_from((*LESION_TYPES[1:], None)),  # the type of the finding reported at the lesion (None: no finding)
    st.sampled_from(["definitive", "tentative"]),
    st.booleans(),  # reported on both sides (only one is grounded)
)
finding_st = st.builds(
    lambda lesion, presence, certainty, locations, sentence: finding(
        lesion, *locations, presence=presence, certainty=certainty, sentence=sentence
    ),
    st.sampled_from((*LESION_TYPES, None)),
    st.sampled_from(["positive", "positive", "negative"]),
    st.sampled_from(["definitive", "tentative"]),
    st.lists(st.sampled_from(LUNG_LABELS), max_size=3, unique=True),
    st.integers(1, 6),
)
scene_st = st.tuples(
    st.lists(lesion_st, max_size=4),
    st.lists(finding_st, max_size=5),
    st.text("0123456789", min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)


def _chest(lesions) -> Chest:
    chest = Chest(
        height=100,
        width=120,
        lungs={"right": (15, 85, 15, 55), "left": (15, 85, 65, 105)},
        heart_rect=(55, 88, 47, 75),
    )
    for side, zone, leave_out, delta, confidence, with_box, *_ in lesions:
        start, stop = ZONE_BANDS[zone]
        band = chest.band(side, start + leave_out * (stop - start), stop)
        chest.add_lesion(band, delta=delta, confidence=confidence, with_box=with_box)
    return chest


def _findings(lesions, extra) -> list:
    """The random findings plus one finding reported at each lesion's zone (and the other side's, if bilateral)."""
    out = list(extra)
    for index, (side, zone, *_rest, lesion, certainty, both) in enumerate(lesions):
        if lesion is not None:
            sides = ("right", "left") if both else (side,)
            out.append(finding(lesion, *(f"{s} {zone}" for s in sides), certainty=certainty, sentence=7 + index))
    return out


def _ground(chest: Chest, findings, study_id: str, boxes=None):
    cues = chest.cues()
    if boxes is not None:
        cues.boxes = boxes
    return ground_and_pair(report(*findings), cues, study_id=study_id, dicom_id="d1", view="AP"), cues


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scene_st)
def test_invariants(scene):
    lesions, extra, study_id, _random = scene
    chest, findings = _chest(lesions), _findings(lesions, extra)
    result, cues = _ground(chest, findings, study_id)
    assert result.excluded is None
    lungs = cues.lung_right | cues.lung_left
    for pair in result.pairs:
        if pair.polarity == "negative":
            assert pair.mask_key is None and pair.certainty is None
            continue
        mask = result.masks[pair.mask_key]
        assert mask.shape == cues.shape and mask.dtype == bool and mask.any()
        if pair.lesion == "cardiomegaly":
            assert (mask == cues.heart).all()
        else:
            assert not (mask & ~lungs).any()
    assert set(result.masks) == {p.mask_key for p in result.pairs if p.mask_key}
    negatives = Counter(p.lesion for p in result.pairs if p.polarity == "negative")
    assert all(count == 1 for count in negatives.values())
    for pair in result.pairs:
        if pair.question_type == "global" and pair.polarity == "positive" and pair.lesion != "cardiomegaly":
            mine = [o for o in result.findings if o.lesion == pair.lesion and o.presence == "positive"]
            assert mine and all(set(o.grounded) == set(o.reported) and o.mask_key for o in mine)
            assert all(o.certainty == "definitive" for o in mine)
    for pair in result.pairs:
        if pair.polarity == "negative" and pair.locations and pair.lesion not in ("opacity",):
            positives_of_type = [o for o in result.findings if o.lesion == pair.lesion and o.presence == "positive"]
            if positives_of_type:
                assert pair.locations[0] in result.empty_locations


@SETTINGS
@given(scene_st)
def test_output_does_not_depend_on_input_order(scene):
    lesions, extra, study_id, random = scene
    chest, findings = _chest(lesions), _findings(lesions, extra)
    reference, cues = _ground(chest, findings, study_id)
    shuffled_findings, shuffled_boxes = list(findings), list(cues.boxes)
    random.shuffle(shuffled_findings)
    random.shuffle(shuffled_boxes)
    again, _ = _ground(chest, shuffled_findings, study_id, boxes=shuffled_boxes)
    assert again.pairs == reference.pairs
    assert again.masks.keys() == reference.masks.keys()
    assert all(np.array_equal(again.masks[key], reference.masks[key]) for key in reference.masks)
    assert sorted(again.exclusions) == sorted(reference.exclusions)
