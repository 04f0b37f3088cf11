"""Instruction-answer generation: Table 2 templates and the Appendix C rules."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import Counter

import pytest

from mimic_ils import pairs as P
from mimic_ils.pairs import FindingOutcome, PairConfig, generate_pairs, instruction_locations
from mimic_ils.schema import LESION_TYPES, LUNG_REGIONS, ZONE_LABELS, Pair
from rosalia_hf.table2 import join_locations, split_locations

EMPTY = ("right apical zone lung", "left apical zone lung", "left upper zone lung")


def _plan(*outcomes, study_id="s1", empty=EMPTY, ctr_reason=None, config=None):
    return generate_pairs(
        outcomes,
        study_id=study_id,
        dicom_id="d1",
        empty_locations=empty,
        cardiomegaly_negative_reason=ctr_reason,
        config=config,
    )


def _row(pair) -> dict:
    return {name: getattr(pair, name) for name in ("study_id", "dicom_id", "lesion", "target", "question_type",
                                                   "polarity", "instruction", "answer", "locations")}


def _positives(plan, question_type=None):
    return [p for p in plan.pairs if p.polarity == "positive" and question_type in (None, p.question_type)]


def _negatives(plan):
    return [p for p in plan.pairs if p.polarity == "negative"]


def test_table2_template_strings():
    assert P.BASIC_INSTRUCTION.format(target="effusion", location="right lung base") == (
        "Segment the effusion in the right lung base."
    )
    assert P.BASIC_POSITIVE == "[SEG]"
    assert P.BASIC_NEGATIVE.format(target="edema", location="left lung") == "[SEG] There is no edema in the left lung."
    assert P.GLOBAL_INSTRUCTION.format(target="edema") == "Segment the edema."
    assert P.GLOBAL_POSITIVE.format(location="left lung") == "[SEG] It is located in the left lung."
    assert P.GLOBAL_NEGATIVE.format(target="edema") == "[SEG] There is no edema."
    assert P.INFERENCE_INSTRUCTION.format(location="left lung") == (
        "Segment the opacity in the left lung and predict its type."
    )
    assert P.INFERENCE_DEFINITIVE.format(lesion="edema") == "[SEG] It is highly suggestive of edema."
    assert P.INFERENCE_TENTATIVE.format(lesion="edema") == "[SEG] It possibly reflects edema."
    assert P.INFERENCE_NEGATIVE.format(location="left lung") == "[SEG] There is no opacity in the left lung."


@pytest.mark.parametrize(
    ("labels", "text"),
    [
        (("right lung base",), "right lung base"),
        (("right lung base", "left lung base"), "right lung base and left lung base"),
        (
            ("right upper zone lung", "right lung base", "left lung"),
            "right upper zone lung, right lung base and left lung",
        ),
    ],
)
def test_join_locations(labels, text):
    assert join_locations(labels) == text


def test_join_locations_needs_a_location():
    with pytest.raises(ValueError):
        join_locations(())


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (("left lung base", "right lung base"), ("left lung base", "right lung base")),  # the report's order
        (("lung upper lobe right",), ("right lung",)),
        (("lung lower lobe left", "left lung base"), ("left lung",)),  # the base is inside the named lung
        (("lung middle lobe right", "left mid zone lung"), ("right lung", "left mid zone lung")),
        (("right lung base", "right lung", "right lung base"), ("right lung",)),
    ],
)
def test_instruction_locations(labels, expected):
    assert instruction_locations(labels) == expected


def test_definitive_finding_gives_basic_global_and_inference():
    plan = _plan(FindingOutcome("pneumonia", "definitive", ("right lung base",), ("right lung base",), "k0"))
    got = {(p.question_type, p.instruction, p.answer, p.mask_key, p.certainty) for p in _positives(plan)}
    assert got == {
        ("basic", "Segment the pneumonia in the right lung base.", "[SEG]", "k0", "definitive"),
        ("global", "Segment the pneumonia.", "[SEG] It is located in the right lung base.", "k0", "definitive"),
        (
            "lesion_inference",
            "Segment the opacity in the right lung base and predict its type.",
            "[SEG] It is highly suggestive of pneumonia.",
            "k0",
            "definitive",
        ),
    }
    inference = _positives(plan, "lesion_inference")[0]
    assert inference.target == "opacity" and inference.lesion == "pneumonia"


def test_tentative_finding_targets_opacity_and_has_no_global():
    plan = _plan(FindingOutcome("edema", "tentative", ("left lung",), ("left lung",), "k0"))
    assert {(p.instruction, p.answer) for p in _positives(plan)} == {
        ("Segment the opacity in the left lung.", "[SEG]"),
        ("Segment the opacity in the left lung and predict its type.", "[SEG] It possibly reflects edema."),
    }
    assert all(p.lesion == "edema" and p.certainty == "tentative" for p in _positives(plan))


@pytest.mark.parametrize("lesion", ["opacity", "consolidation", "effusion"])
def test_no_inference_pairs_outside_pneumonia_atelectasis_edema(lesion):
    plan = _plan(FindingOutcome(lesion, "definitive", ("left lung",), ("left lung",), "k0"))
    assert not _positives(plan, "lesion_inference")
    assert len(_positives(plan, "basic")) == 1 and len(_positives(plan, "global")) == 1


def test_global_needs_grounded_equal_reported():
    partial = FindingOutcome(
        "consolidation", "definitive", ("right lung base", "left lung base"), ("left lung base",), "k0"
    )
    plan = _plan(partial)
    assert not _positives(plan, "global")
    assert _positives(plan, "basic")[0].instruction == "Segment the consolidation in the left lung base."


def test_global_over_several_findings_unites_their_masks():
    plan = _plan(
        FindingOutcome(
            "atelectasis", "definitive", ("right lung base",), ("right lung base",), "d1_atelectasis_0", sentence=1
        ),
        FindingOutcome(
            "atelectasis",
            "definitive",
            ("left upper zone lung",),
            ("left upper zone lung",),
            "d1_atelectasis_1",
            sentence=2,
        ),
        empty=("right apical zone lung",),
    )
    [global_pair] = _positives(plan, "global")
    assert global_pair.answer == "[SEG] It is located in the right lung base and left upper zone lung."
    assert sorted(plan.mask_unions[global_pair.mask_key]) == ["d1_atelectasis_0", "d1_atelectasis_1"]
    assert len(_positives(plan, "basic")) == 2


def test_an_ungrounded_finding_of_the_type_blocks_the_global():
    plan = _plan(
        FindingOutcome("atelectasis", "definitive", ("right lung base",), ("right lung base",), "k0"),
        FindingOutcome("atelectasis", "definitive", ("left upper zone lung",)),
    )
    assert not _positives(plan, "global") and len(_positives(plan, "basic")) == 1


def test_cardiomegaly_is_global_only():
    plan = _plan(FindingOutcome("cardiomegaly", "definitive", ("heart",), ("heart",), "d1_cardiomegaly_0"))
    [pair] = [p for p in plan.pairs if p.lesion == "cardiomegaly"]
    assert (pair.question_type, pair.instruction, pair.answer, pair.locations) == (
        "global",
        "Segment the cardiomegaly.",
        "[SEG] It is located in the heart.",
        ("heart",),
    )


def test_tentative_cardiomegaly_is_still_the_global_positive_on_the_heart():
    # decided (docs/pairs_rules.md): cardiomegaly is global only, so a hedged one keeps its global positive,
    # with certainty "tentative", and never gets a negative in that study
    plan = _plan(FindingOutcome("cardiomegaly", "tentative", ("heart",), ("heart",), "d1_cardiomegaly_0"))
    pairs = [p for p in plan.pairs if p.lesion == "cardiomegaly"]
    assert [(p.question_type, p.polarity, p.certainty, p.answer) for p in pairs] == [
        ("global", "positive", "tentative", "[SEG] It is located in the heart.")]


def test_cardiomegaly_negative_follows_the_ctr_rule():
    allowed = _plan()
    assert [(p.question_type, p.answer) for p in allowed.pairs if p.lesion == "cardiomegaly"] == [
        ("global", "[SEG] There is no cardiomegaly.")
    ]
    blocked = _plan(ctr_reason="cardiothoracic ratio 0.500 > 0.45")
    assert not [p for p in blocked.pairs if p.lesion == "cardiomegaly"]
    assert ("cardiomegaly negative", "cardiothoracic ratio 0.500 > 0.45") in blocked.skipped
    ungrounded = _plan(FindingOutcome("cardiomegaly", "definitive", ("heart",)))  # reported, heart mask missing
    assert not [p for p in ungrounded.pairs if p.lesion == "cardiomegaly"]


def test_unmentioned_types_get_one_basic_negative_in_a_random_region():
    forms = Counter()
    for study in range(12):
        plan = _plan(study_id=f"s{study}")
        assert Counter(p.lesion for p in _negatives(plan)) == Counter(LESION_TYPES)
        for pair in _negatives(plan):
            assert pair.mask_key is None and pair.certainty is None and pair.target == pair.lesion
            forms[pair.lesion, pair.question_type] += 1
            if pair.lesion == "cardiomegaly":
                assert pair.answer == "[SEG] There is no cardiomegaly." and pair.locations == ()
            elif pair.question_type == "basic":
                assert pair.answer == f"[SEG] There is no {pair.lesion} in the {pair.locations[0]}."
                assert pair.locations[0] in LUNG_REGIONS
            else:  # the lesion-inference form of an opacity negative
                assert pair.lesion == "opacity" and pair.question_type == "lesion_inference"
                assert pair.instruction == f"Segment the opacity in the {pair.locations[0]} and predict its type."
                assert pair.answer == f"[SEG] There is no opacity in the {pair.locations[0]}."
    assert {form for _lesion, form in forms} == {"basic", "global", "lesion_inference"}
    assert forms["opacity", "basic"] and forms["opacity", "lesion_inference"]
    assert not [form for (lesion, form) in forms if form == "global" and lesion != "cardiomegaly"]


@pytest.mark.parametrize(
    ("denied", "question_type", "instruction", "answer"),
    [
        (
            ("left lung base",),
            "basic",
            "Segment the effusion in the left lung base.",
            "[SEG] There is no effusion in the left lung base.",
        ),
        (
            ("left lung", "right lung"),
            "basic",
            "Segment the effusion in the left lung and right lung.",
            "[SEG] There is no effusion in the left lung and right lung.",
        ),
    ],
)
def test_explicitly_negated_types_are_denied_where_the_report_denies_them(denied, question_type, instruction, answer):
    negated = FindingOutcome("effusion", "definitive", denied, presence="negative")
    [negative] = [p for p in _negatives(_plan(negated)) if p.lesion == "effusion"]
    assert (negative.question_type, negative.instruction, negative.answer) == (question_type, instruction, answer)
    assert negative.locations == denied


def test_a_denial_without_a_place_is_basic_in_the_image_and_may_turn_global_in_the_split():
    negated = FindingOutcome("effusion", "definitive", (), presence="negative")
    [negative] = [p for p in _negatives(_plan(negated)) if p.lesion == "effusion"]
    assert negative.question_type == "basic" and negative.locations[0] in LUNG_REGIONS
    [row] = P.choose_global_negatives([_row(negative)], {"effusion": 1.0})
    assert (row["question_type"], row["instruction"], row["answer"], row["locations"]) == (
        "global", "Segment the effusion.", "[SEG] There is no effusion.", [])


def test_negation_of_a_contradicted_type_falls_back_to_an_empty_location():
    pneumonia = FindingOutcome("pneumonia", "definitive", ("right lung base",))
    for denied in [(), ("right lung base",)]:
        negated = FindingOutcome("opacity", "definitive", denied, presence="negative")
        [negative] = [p for p in _negatives(_plan(pneumonia, negated)) if p.lesion == "opacity"]
        assert negative.locations[0] in EMPTY and negative.question_type != "global"
    allowed = FindingOutcome("opacity", "definitive", ("left upper zone lung",), presence="negative")
    [negative] = [p for p in _negatives(_plan(pneumonia, allowed)) if p.lesion == "opacity"]
    assert negative.locations == ("left upper zone lung",)


def test_a_negated_finding_does_not_block_a_positive_of_its_type():
    plan = _plan(
        FindingOutcome("effusion", "definitive", ("right lung base",), ("right lung base",), "k0"),
        FindingOutcome("effusion", "definitive", ("left lung base",), presence="negative"),
    )
    assert [p.answer for p in _positives(plan, "global")] == ["[SEG] It is located in the right lung base."]
    [negative] = [p for p in _negatives(plan) if p.lesion == "effusion"]
    assert negative.locations[0] in EMPTY  # substitution into the positive, not the denial


def test_substitution_negative_uses_an_empty_location():
    definitive = FindingOutcome("atelectasis", "definitive", ("right lung base",), ("right lung base",), "k0")
    [negative] = [p for p in _negatives(_plan(definitive)) if p.lesion == "atelectasis"]
    assert negative.locations[0] in EMPTY and negative.target == "atelectasis"
    positive = FindingOutcome("atelectasis", "tentative", ("right lung base",), ("right lung base",), "k0")
    seen = set()
    for study in range(20):
        plan = _plan(positive, study_id=f"s{study}")
        # the tentative finding's positive targets "opacity": one negative of that target, at an empty place
        [negative] = [p for p in _negatives(plan) if p.target == "opacity"]
        assert negative.locations[0] in EMPTY
        location = negative.locations[0]
        expected = {
            "basic": (f"Segment the opacity in the {location}.", f"[SEG] There is no opacity in the {location}."),
            "lesion_inference": (
                f"Segment the opacity in the {location} and predict its type.",
                f"[SEG] There is no opacity in the {location}.",
            ),
        }[negative.question_type]
        assert (negative.instruction, negative.answer) == expected
        seen.add(negative.question_type)
    assert seen == {"basic", "lesion_inference"}  # the choice is random per study, both forms occur


def test_no_empty_location_no_substitution_negative():
    plan = _plan(FindingOutcome("effusion", "definitive", ("right lung base",), ("right lung base",), "k0"), empty=())
    assert not [p for p in _negatives(plan) if p.lesion == "effusion"]
    assert ("effusion negative", "no empty location to substitute") in plan.skipped


def test_opacity_negative_is_only_in_empty_places_when_another_opacity_is_reported():
    plan_ids = [f"s{i}" for i in range(10)]
    for study_id in plan_ids:
        plan = _plan(FindingOutcome("pneumonia", "definitive", ("right lung base",)), study_id=study_id)
        [negative] = [p for p in _negatives(plan) if p.lesion == "opacity"]
        assert negative.question_type in ("basic", "lesion_inference") and negative.locations[0] in EMPTY
    untyped = _plan(FindingOutcome(None, "definitive", ("left lung base",)), empty=())
    assert not [p for p in _negatives(untyped) if p.lesion == "opacity"]
    assert any(what == "opacity negative" for what, _ in untyped.skipped)


def test_at_most_one_negative_per_type():
    plan = _plan(
        FindingOutcome("atelectasis", "definitive", ("right lung base",), ("right lung base",), "k0"),
        FindingOutcome("atelectasis", "tentative", ("left lung base",), ("left lung base",), "k1"),
        FindingOutcome("effusion", "definitive", ("right lung base",), ("right lung base",), "k2"),
    )
    counts = Counter(p.lesion for p in _negatives(plan))
    assert max(counts.values()) == 1 and set(counts) == set(LESION_TYPES)


def test_pairs_carry_ids_and_are_order_independent():
    outcomes = [
        FindingOutcome("atelectasis", "definitive", ("right lung base",), ("right lung base",), "k0"),
        FindingOutcome("edema", "tentative", ("right lung", "left lung"), ("left lung",), "k1"),
        FindingOutcome("cardiomegaly", "definitive", ("heart",), ("heart",), "k2"),
    ]
    reference = _plan(*outcomes, study_id="s42").pairs
    assert all(p.study_id == "s42" and p.dicom_id == "d1" for p in reference)
    for permutation in itertools.permutations(outcomes):
        assert _plan(*permutation, study_id="s42").pairs == reference


def test_randomness_is_seeded_by_the_study_id_not_python_hash():
    code = (
        "from mimic_ils.pairs import generate_pairs; "
        "print([(p.instruction, p.answer) for p in generate_pairs([], study_id='s7', dicom_id='d', "
        "empty_locations=('left lung',), cardiomegaly_negative_reason=None).pairs])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    forms = {tuple(p.question_type for p in _plan(study_id=f"s{i}").pairs) for i in range(30)}
    assert len(forms) > 1  # different studies draw different negatives


def test_limit_study_negatives_across_images():
    def pair(dicom_id, lesion, polarity):
        return Pair("i", "a", lesion, lesion, "global", polarity, (), None, None, "s1", dicom_id)

    pairs = [pair("b", "edema", "negative"), pair("a", "edema", "negative"), pair("b", "edema", "positive")]
    assert P.limit_study_negatives(pairs) == [pairs[1], pairs[2]]


def test_custom_inference_types():
    config = PairConfig(opacity_inference_types=("consolidation",))
    plan = _plan(FindingOutcome("consolidation", "definitive", ("left lung",), ("left lung",), "k0"), config=config)
    assert _positives(plan, "lesion_inference")[0].answer == "[SEG] It is highly suggestive of consolidation."


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_split_locations_inverts_join_and_the_build_parser_reads_every_length(count):
    from mimic_ils.orchestration.templates import parse_pair

    labels = list(ZONE_LABELS[:count])
    assert split_locations(join_locations(labels)) == tuple(labels)
    instruction = f"Segment the opacity in the {join_locations(labels)} and predict its type."
    parsed = parse_pair(instruction, "[SEG] It is highly suggestive of edema.")
    assert parsed.locations == tuple(labels) and parsed.lesion == "edema" and parsed.certainty == "definitive"
