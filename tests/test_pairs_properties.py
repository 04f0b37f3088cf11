"""Appendix C as properties of ``generate_pairs`` over random reports (Hypothesis), and the split-level choice of
global negatives (Table 9's shares)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mimic_ils.pairs import (
    FindingOutcome,
    choose_global_negatives,
    generate_pairs,
    instruction_locations,
    limit_study_negatives,
    places_overlap,
)
from mimic_ils.schema import LESION_TYPES, LUNG_LABELS, LUNG_REGIONS

LUNG_TYPES = [lesion for lesion in LESION_TYPES if lesion != "cardiomegaly"]


@st.composite
def outcome(draw) -> FindingOutcome:
    lesion = draw(st.sampled_from([*LESION_TYPES, None]))
    presence = draw(st.sampled_from(["positive", "positive", "negative"]))
    if lesion == "cardiomegaly":
        reported = ("heart",)
    else:
        reported = tuple(draw(st.lists(st.sampled_from(LUNG_LABELS), max_size=3, unique=True)))
    grounded = () if presence == "negative" or not reported else tuple(
        draw(st.lists(st.sampled_from(reported), min_size=1, unique=True)))
    key = draw(st.sampled_from([None, "k"])) if grounded else None
    return FindingOutcome(lesion, draw(st.sampled_from(["definitive", "tentative"])), reported, grounded,
                          None if key is None else f"k{draw(st.integers(0, 99))}", presence, draw(st.integers(0, 5)))


def _empty(outcomes: list[FindingOutcome]) -> tuple[str, ...]:
    """Regions no positive finding touches (as verify.empty_locations would, at instruction granularity)."""
    taken = [place for o in outcomes if o.presence == "positive" for place in instruction_locations(o.reported)]
    return tuple(r for r in LUNG_REGIONS if not any(places_overlap(r, t) for t in taken))


def _image(outcomes, study_id: str, dicom_id: str):
    return generate_pairs(outcomes, study_id=study_id, dicom_id=dicom_id, empty_locations=_empty(outcomes),
                          cardiomegaly_negative_reason=None).pairs


REPORTS = st.lists(outcome(), max_size=6)


@settings(max_examples=300, deadline=None)
@given(outcomes=REPORTS, study=st.integers(0, 10**6))
def test_an_image_never_denies_what_it_shows(outcomes, study):
    pairs = _image(outcomes, f"s{study}", "d1")
    shown: dict[str, list[tuple[str, ...]]] = {}
    for pair in pairs:
        if pair.polarity == "positive":
            shown.setdefault(pair.target, []).append(pair.locations)
    for pair in pairs:
        if pair.polarity != "negative" or pair.target not in shown:
            continue
        assert pair.question_type != "global", pair
        for places in shown[pair.target]:
            assert not any(places_overlap(a, b) for a in pair.locations for b in places), (pair, places)


@settings(max_examples=300, deadline=None)
@given(outcomes=REPORTS, study=st.integers(0, 10**6))
def test_lesion_inference_negatives_are_opacity_and_one_negative_per_target(outcomes, study):
    pairs = _image(outcomes, f"s{study}", "d1")
    negatives = [p for p in pairs if p.polarity == "negative"]
    assert all(p.lesion == "opacity" for p in negatives if p.question_type == "lesion_inference")
    assert max(Counter(p.target for p in negatives).values(), default=0) <= 1
    # global negatives are chosen per split; in an image only cardiomegaly's are global
    assert all(p.lesion == "cardiomegaly" for p in negatives if p.question_type == "global")


@settings(max_examples=150, deadline=None)
@given(images=st.lists(REPORTS, min_size=1, max_size=3), study=st.integers(0, 10**6))
def test_one_negative_per_target_per_study(images, study):
    pairs = [p for index, outcomes in enumerate(images) for p in _image(outcomes, f"s{study}", f"d{index}")]
    kept = limit_study_negatives(pairs)
    negatives = [p for p in kept if p.polarity == "negative"]
    assert max(Counter(p.target for p in negatives).values(), default=0) <= 1
    assert [p for p in kept if p.polarity == "positive"] == [p for p in pairs if p.polarity == "positive"]


def _rows(n_studies: int) -> list[dict]:
    rows = []
    for index in range(n_studies):
        study = f"s{index:05d}"
        for lesion in LUNG_TYPES:
            polarity = "positive" if index % 7 == LUNG_TYPES.index(lesion) else "negative"
            rows.append({"study_id": study, "dicom_id": "d", "lesion": lesion, "target": lesion,
                         "question_type": "basic", "polarity": polarity, "instruction": "x", "answer": "y",
                         "locations": ["left lung base"]})
    return rows


def test_global_share_is_exact_and_deterministic():
    shares = {"pneumonia": 0.02, "atelectasis": 0.12, "opacity": 0.004, "consolidation": 0.04, "edema": 0.02,
              "effusion": 0.23}
    rows = _rows(1000)
    chosen = choose_global_negatives(rows, shares)
    for lesion, share in shares.items():
        negatives = [r for r in chosen if r["lesion"] == lesion and r["polarity"] == "negative"]
        globals_ = [r for r in negatives if r["question_type"] == "global"]
        assert len(globals_) == round(share * len(negatives))
        assert all(r["instruction"] == f"Segment the {lesion}." and r["locations"] == [] for r in globals_)
    again = choose_global_negatives(list(reversed(rows)), shares)
    assert sorted(map(str, again)) == sorted(map(str, chosen))  # order does not matter
    assert rows[0]["question_type"] == "basic"  # the input rows are not modified


def test_global_negatives_only_where_the_study_has_no_positive_of_the_type():
    rows = [
        {"study_id": "a", "dicom_id": "d", "lesion": "effusion", "target": "effusion", "question_type": "basic",
         "polarity": "positive", "instruction": "x", "answer": "y", "locations": ["left lung base"]},
        {"study_id": "a", "dicom_id": "d", "lesion": "effusion", "target": "effusion", "question_type": "basic",
         "polarity": "negative", "instruction": "x", "answer": "y", "locations": ["right lung base"]},
        {"study_id": "b", "dicom_id": "d", "lesion": "opacity", "target": "opacity",
         "question_type": "lesion_inference", "polarity": "negative", "instruction": "x", "answer": "y",
         "locations": ["right lung base"]},
    ]
    out = choose_global_negatives(rows, {"effusion": 1.0, "opacity": 1.0})
    assert [r["question_type"] for r in out] == ["basic", "basic", "lesion_inference"]
    # a tentative atelectasis shows "opacity": that study cannot say "There is no opacity."
    tentative = {**rows[0], "study_id": "c", "lesion": "atelectasis", "target": "opacity"}
    opacity = {**rows[1], "study_id": "c", "lesion": "opacity", "target": "opacity"}
    out = choose_global_negatives([tentative, opacity], {"opacity": 1.0})
    assert out[1]["question_type"] == "basic"
    assert choose_global_negatives([opacity], {"opacity": 1.0})[0]["question_type"] == "global"
