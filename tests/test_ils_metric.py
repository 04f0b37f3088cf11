"""The ILS metric module (metrics/ils): figures on hand-built masks, agreement with a per-pixel loop, text parser."""

from __future__ import annotations

import doctest
import math
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
from PIL import Image

from mimic_ils import schema

REPO = Path(__file__).resolve().parents[1]
METRIC_DIR = REPO / "metrics" / "ils"


@pytest.fixture(scope="module")
def ils():
    return evaluate.load(str(METRIC_DIR))


@pytest.fixture(scope="module")
def module(ils):
    return sys.modules[type(ils).__module__]


@pytest.fixture(scope="module")
def answers(module):
    from rosalia_hf import table2

    assert module.summarize.__module__ == "rosalia_hf.ils_scores"  # the metric forwards to the public core
    return table2


def box(shape: tuple[int, int], rows: slice, cols: slice, value=True, dtype=bool) -> np.ndarray:
    mask = np.zeros(shape, dtype=dtype)
    mask[rows, cols] = value
    return mask


def head(results: dict) -> dict:
    return {key: results[key] for key in ("giou", "ciou", "n_acc", "num_positive", "num_negative")}


def assert_figures(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=1e-12), key


def test_doctest_example_runs(module, monkeypatch):
    monkeypatch.chdir(REPO)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8
    assert result.failed == 0


def test_constants_mirror_the_schema(module):
    assert module.LESION_TYPES == schema.LESION_TYPES
    assert module.QUESTION_TYPES == schema.QUESTION_TYPES


S = (4, 4)
REF_TL = box(S, slice(0, 2), slice(0, 2))  # 4 pixels
EMPTY = np.zeros(S, dtype=bool)

FIGURE_CASES = {
    "perfect": ([REF_TL], [REF_TL], {"giou": 1.0, "ciou": 1.0, "n_acc": math.nan, "num_positive": 1}),
    "half": ([box(S, slice(0, 2), slice(0, 4))], [REF_TL], {"giou": 0.5, "ciou": 0.5, "num_negative": 0}),
    "positive_empty_prediction_scores_zero": ([EMPTY], [REF_TL], {"giou": 0.0, "ciou": 0.0, "num_positive": 1}),
    "positive_none_prediction_scores_zero": ([None], [REF_TL], {"giou": 0.0, "ciou": 0.0}),
    "disjoint": ([box(S, slice(2, 4), slice(2, 4))], [REF_TL], {"giou": 0.0, "ciou": 0.0}),
    "giou_vs_ciou": (
        [box(S, slice(0, 2), slice(0, 4)), box(S, slice(0, 1), slice(0, 1))],
        [REF_TL, box(S, slice(0, 2), slice(0, 2))],
        {"giou": (4 / 8 + 1 / 4) / 2, "ciou": 5 / 12, "num_positive": 2},
    ),
    "negative_empty_prediction": ([EMPTY], [EMPTY], {"n_acc": 1.0, "giou": math.nan, "ciou": math.nan}),
    "negative_none_none": ([None], [None], {"n_acc": 1.0, "num_negative": 1, "num_positive": 0}),
    "negative_one_pixel_fails": ([box(S, slice(3, 4), slice(3, 4))], [None], {"n_acc": 0.0, "num_negative": 1}),
    "mixed": (
        [REF_TL, EMPTY, box(S, slice(0, 1), slice(0, 1))],
        [REF_TL, None, EMPTY],
        {"giou": 1.0, "ciou": 1.0, "n_acc": 0.5, "num_positive": 1, "num_negative": 2},
    ),
    "different_frames": (
        [box((3, 5), slice(0, 3), slice(0, 2)), box((6, 2), slice(0, 6), slice(0, 1))],
        [box((3, 5), slice(0, 3), slice(0, 1)), box((6, 2), slice(0, 3), slice(0, 2))],
        {"giou": (3 / 6 + 3 / 9) / 2, "ciou": 6 / 15, "num_positive": 2},
    ),
    "uint8_0_255_equals_bool": (
        [box(S, slice(0, 2), slice(0, 4), 255, np.uint8)],
        [box(S, slice(0, 2), slice(0, 2), 255, np.uint8)],
        {"giou": 0.5, "ciou": 0.5},
    ),
    "float_0_1_and_int_0_1": (
        [box(S, slice(0, 2), slice(0, 4), 1.0, np.float32)],
        [box(S, slice(0, 2), slice(0, 2), 1, np.int64)],
        {"giou": 0.5},
    ),
    "channel_axes": (
        [box(S, slice(0, 2), slice(0, 4))[None]],
        [np.repeat(box(S, slice(0, 2), slice(0, 2), 255, np.uint8)[..., None], 3, axis=2)],
        {"giou": 0.5},
    ),
}


@pytest.mark.parametrize("name", list(FIGURE_CASES))
def test_figures_on_hand_built_masks(ils, name):
    predictions, references, expected = FIGURE_CASES[name]
    assert_figures(ils.compute(predictions=predictions, references=references), expected)


def test_pil_images_paths_and_image_dicts_give_the_same_figures(ils, tmp_path):
    pred = box((5, 7), slice(1, 4), slice(0, 5), 255, np.uint8)
    ref = box((5, 7), slice(0, 3), slice(2, 7), 255, np.uint8)
    expected = head(ils.compute(predictions=[pred], references=[ref]))
    assert expected["giou"] == pytest.approx(6 / (15 + 15 - 6))
    Image.fromarray(pred).save(tmp_path / "pred.png")
    Image.fromarray(ref).convert("1").save(tmp_path / "ref.png")
    as_pil = ils.compute(predictions=[Image.fromarray(pred)], references=[Image.fromarray(ref).convert("1")])
    as_path = ils.compute(predictions=[str(tmp_path / "pred.png")], references=[tmp_path / "ref.png"])
    as_dict = ils.compute(
        predictions=[{"bytes": (tmp_path / "pred.png").read_bytes(), "path": None}],
        references=[{"bytes": None, "path": str(tmp_path / "ref.png")}],
    )
    assert head(as_pil) == head(as_path) == head(as_dict) == expected


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        ([np.zeros((4, 4), bool), np.zeros((4, 5), bool)], [None, np.ones((5, 4), bool)], "sample 1: .* is 4x5"),
        ([np.full((2, 2), 0.5)], [np.ones((2, 2), bool)], "float masks must hold only 0 and 1"),
        ([np.zeros((2, 2, 2, 2))], [None], "a mask must be HxW"),
        ([None], [None, None], "1 predictions but 2 references"),
    ],
)
def test_bad_masks_raise_one_line_reasons(ils, predictions, references, message):
    with pytest.raises(ValueError, match=message):
        ils.compute(predictions=predictions, references=references)


def test_polarity_is_checked_against_the_reference(ils):
    with pytest.raises(ValueError, match="sample 0: polarity 'positive' but the reference mask is negative"):
        ils.compute(predictions=[None], references=[None], polarities=["positive"])
    results = ils.compute(predictions=[None], references=[REF_TL], polarities=["positive"])
    assert results["num_positive"] == 1


def test_breakdowns_by_lesion_and_question_type(ils):
    results = ils.compute(
        predictions=[REF_TL, box(S, slice(0, 2), slice(0, 4)), EMPTY, REF_TL],
        references=[REF_TL, REF_TL, None, None],
        lesions=["edema", "effusion", "edema", "effusion"],
        question_types=["basic", "global", "lesion inference", "basic"],
    )
    assert list(results["per_lesion"]) == ["edema", "effusion"]  # the paper's order, not insertion order
    assert_figures(results["per_lesion"]["edema"], {"giou": 1.0, "n_acc": 1.0, "num_positive": 1, "num_negative": 1})
    assert_figures(results["per_lesion"]["effusion"], {"giou": 0.5, "n_acc": 0.0, "num_negative": 1})
    assert list(results["per_question_type"]) == ["basic", "global", "lesion_inference"]
    assert_figures(results["per_question_type"]["basic"], {"giou": 1.0, "n_acc": 0.0, "num_positive": 1})
    assert_figures(results["per_question_type"]["lesion_inference"], {"giou": math.nan, "n_acc": 1.0})
    assert "text_accuracy" not in results


def test_streaming_add_batch_and_add_equal_one_compute(ils):
    rng = np.random.default_rng(3)
    preds = [rng.random((9, 11)) > 0.6 for _ in range(10)]
    refs = [rng.random((9, 11)) > 0.7 if i % 3 else None for i in range(10)]
    lesions = [schema.LESION_TYPES[i % 7] for i in range(10)]
    at_once = ils.compute(predictions=preds, references=refs, lesions=lesions)
    for start in range(0, 8, 4):
        sl = slice(start, start + 4)
        ils.add_batch(predictions=preds[sl], references=refs[sl], lesions=lesions[sl])
    for i in (8, 9):
        ils.add(prediction=preds[i], reference=refs[i], lesion=lesions[i])
    assert ils.compute() == at_once


def test_nothing_added_gives_nan_and_zero_counts(ils):
    results = ils.compute()
    assert math.isnan(results["giou"]) and math.isnan(results["n_acc"])
    assert results["num_positive"] == results["num_negative"] == 0


def test_stacked_batch_path_equals_the_list_path(module):
    rng = np.random.default_rng(5)
    preds = (rng.random((6, 8, 8)) > 0.5).astype(np.uint8) * 255
    refs = rng.random((6, 8, 8)) > 0.5
    refs[2] = False
    stacked = module.batch_statistics(preds, refs)
    listed = module.batch_statistics(list(preds), list(refs))
    np.testing.assert_array_equal(stacked, listed)


# ---------------------------------------------------------------------------------------------------------------
# Agreement with a straightforward per-pixel implementation


def loop_figures(predictions, references, lesions):
    """Independent reference: per-pixel Python loops, then the paper's definitions."""
    rows = []
    for pred, ref, lesion in zip(predictions, references, lesions, strict=True):
        inter = union = pred_area = ref_area = 0
        for y in range(ref.shape[0]):
            for x in range(ref.shape[1]):
                p, r = bool(pred[y][x]), bool(ref[y][x])
                inter += p and r
                union += p or r
                pred_area += p
                ref_area += r
        rows.append((inter, union, pred_area, ref_area, lesion))

    def figures(selected):
        positives = [row for row in selected if row[3] > 0]
        negatives = [row for row in selected if row[3] == 0]
        giou = sum(row[0] / row[1] for row in positives) / len(positives) if positives else math.nan
        ciou = sum(row[0] for row in positives) / sum(row[1] for row in positives) if positives else math.nan
        n_acc = sum(row[2] == 0 for row in negatives) / len(negatives) if negatives else math.nan
        counts = {"num_positive": len(positives), "num_negative": len(negatives)}
        return {"giou": giou, "ciou": ciou, "n_acc": n_acc, **counts}

    per_lesion = {lesion: figures([row for row in rows if row[4] == lesion]) for lesion in set(lesions)}
    return figures(rows), per_lesion


def test_agrees_with_a_per_pixel_loop_on_random_masks(ils):
    rng = np.random.default_rng(0)
    preds, refs, lesions = [], [], []
    for i in range(120):
        shape = tuple(rng.integers(3, 17, size=2))
        ref = rng.random(shape) < rng.uniform(0.0, 0.6) if i % 4 else np.zeros(shape, bool)
        pred = rng.random(shape) < rng.uniform(0.0, 0.6) if i % 5 else np.zeros(shape, bool)
        preds.append(pred.astype(np.uint8) * 255 if i % 2 else pred)
        refs.append(ref)
        lesions.append(schema.LESION_TYPES[int(rng.integers(7))])
    overall, per_lesion = loop_figures(preds, refs, lesions)
    results = ils.compute(predictions=preds, references=refs, lesions=lesions)
    for key, value in overall.items():
        assert results[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    for lesion, expected in per_lesion.items():
        for key, value in expected.items():
            assert results["per_lesion"][lesion][key] == pytest.approx(value, abs=1e-9, nan_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# Text answers (Table 2)

LOC2 = "right lung base and left lung base"
# (question type, polarity, reference answer, structured variables, correct, wrong variable, paraphrases)
TEXT_CASES = {
    "basic_positive": (
        "basic", "positive", "[SEG]", {"target": "edema", "locations": ["right lung base"]},
        "[SEG]", "[SEG] There is no edema in the right lung base.",
        ["Sure, [SEG].", "[SEG] Here it is.", "[SEG]."],
    ),
    "basic_negative": (
        "basic", "negative", f"[SEG] There is no effusion in the {LOC2}.",
        {"target": "effusion", "locations": ["right lung base", "left lung base"]},
        f"[SEG] There is no effusion in the {LOC2}.", "[SEG] There is no effusion in the left lung base.",
        [f"[SEG] There's no effusion in the {LOC2}.", f"[SEG] No effusion in the {LOC2}.",
         f"[SEG] there is no effusion in the {LOC2}.", f"[SEG] There is no effusion in {LOC2}."],
    ),
    "global_positive": (
        "global", "positive", "[SEG] It is located in the left upper zone lung.",
        {"target": "pneumonia", "locations": ["left upper zone lung"]},
        "[SEG] It is located in the left upper zone lung.", "[SEG] It is located in the right upper zone lung.",
        ["[SEG] It is in the left upper zone lung.", "[SEG] It is located at the left upper zone lung.",
         "[SEG] It is located in the left upper zone lung"],
    ),
    "global_negative": (
        "global", "negative", "[SEG] There is no cardiomegaly.", {"target": "cardiomegaly"},
        "[SEG] There is no cardiomegaly.", "[SEG] There is no edema.",
        ["[SEG] There is not any cardiomegaly.", "[SEG] No cardiomegaly.", "There is no cardiomegaly."],
    ),
    "lesion_inference_definitive": (
        "lesion_inference", "positive", "[SEG] It is highly suggestive of pneumonia.",
        {"target": "opacity", "locations": ["right mid zone lung"], "lesion": "pneumonia", "certainty": "definitive"},
        "[SEG] It is highly suggestive of pneumonia.", "[SEG] It is highly suggestive of atelectasis.",
        ["[SEG] It is suggestive of pneumonia.", "[SEG] It is highly suggestive of a pneumonia."],
    ),
    "lesion_inference_tentative": (
        "lesion_inference", "positive", "[SEG] It possibly reflects atelectasis.",
        {"target": "opacity", "locations": ["left lung"], "lesion": "atelectasis", "certainty": "tentative"},
        "[SEG] It possibly reflects atelectasis.", "[SEG] It possibly reflects consolidation.",
        ["[SEG] It may reflect atelectasis.", "[SEG] It possibly reflects atelectasis!"],
    ),
    "lesion_inference_negative": (
        "lesion_inference", "negative", "[SEG] There is no opacity in the right lung.",
        {"target": "opacity", "locations": ["right lung"], "lesion": "opacity"},
        "[SEG] There is no opacity in the right lung.", "[SEG] There is no opacity in the left lung.",
        ["[SEG] There is no opacity.", "[SEG] The right lung shows no opacity."],
    ),
}


@pytest.mark.parametrize("name", list(TEXT_CASES))
def test_parser_reads_every_template_back(answers, name):
    question_type, polarity, reference, variables, correct, wrong, paraphrases = TEXT_CASES[name]
    parsed = answers.parse_answer(reference)
    assert parsed is not None
    assert answers.TEMPLATES[parsed.template].startswith("[SEG]")
    assert answers.parse_answer("  " + correct.replace(" ", "\n ", 1) + "\n") == parsed
    assert answers.parse_answer(wrong) not in (None, parsed)
    for paraphrase in paraphrases:
        assert answers.parse_answer(paraphrase) != parsed, paraphrase
    rendered = answers.render_answer(question_type, polarity, **{k: v for k, v in variables.items() if k != "x"})
    assert rendered == reference


@pytest.mark.parametrize("name", list(TEXT_CASES))
@pytest.mark.parametrize("reference_source", ["text", "structured"])
def test_text_accuracy_correct_wrong_and_paraphrased(ils, name, reference_source):
    question_type, polarity, reference, variables, correct, wrong, paraphrases = TEXT_CASES[name]
    answers = [correct, wrong, *paraphrases, None]
    n = len(answers)
    mask = REF_TL if polarity == "positive" else None
    inputs = {"question_types": [question_type] * n, "polarities": [polarity] * n, "predicted_answers": answers}
    if reference_source == "text":
        inputs["reference_answers"] = [reference] * n
        inputs["lesions"] = [variables.get("lesion", variables["target"])] * n
    else:
        inputs["targets"] = [variables["target"]] * n
        inputs["locations"] = [variables.get("locations", [])] * n
        inputs["lesions"] = [variables.get("lesion", variables["target"])] * n
        inputs["certainties"] = [variables.get("certainty")] * n
    results = ils.compute(predictions=[mask] * n, references=[mask] * n, **inputs)
    assert results["num_text"] == n - 1  # the None answer is not scored
    assert results["text_accuracy"] == pytest.approx(1 / (n - 1))
    by_type = results["text_accuracy_per_question_type"][question_type]
    assert by_type[polarity] == pytest.approx(1 / (n - 1))
    other = "negative" if polarity == "positive" else "positive"
    assert math.isnan(by_type[other])


def test_lesion_inference_certainty_is_strict_but_reported_leniently_too(ils):
    results = ils.compute(
        predictions=[REF_TL, REF_TL],
        references=[REF_TL, REF_TL],
        question_types=["lesion_inference"] * 2,
        lesions=["pneumonia", "edema"],
        predicted_answers=["[SEG] It possibly reflects pneumonia.", "[SEG] It is highly suggestive of effusion."],
        reference_answers=["[SEG] It is highly suggestive of pneumonia.", "[SEG] It is highly suggestive of edema."],
    )
    assert results["text_accuracy"] == 0.0
    assert results["text_accuracy_lesion_inference_ignoring_certainty"] == 0.5
    assert results["text_accuracy_per_lesion"] == {"pneumonia": 0.0, "edema": 0.0}


def test_unparsable_reference_answer_is_an_error(ils):
    with pytest.raises(ValueError, match="sample 0: reference answer 'Yes.' matches no answer template"):
        ils.compute(predictions=[None], references=[None], predicted_answers=["Yes."], reference_answers=["Yes."])


def test_location_lists_split_on_and_and_commas(answers):
    three = ("right upper zone lung", "right mid zone lung", "right lung base")
    assert answers.split_locations("right upper zone lung, right mid zone lung and right lung base") == three
    assert answers.split_locations(answers.join_locations(three)) == three
    located = answers.parse_answer(f"[SEG] It is located in the {LOC2}.")
    assert located.locations == ("right lung base", "left lung base")
    swapped = answers.parse_answer("[SEG] It is located in the left lung base and right lung base.")
    assert swapped != answers.parse_answer(f"[SEG] It is located in the {LOC2}.")  # order is part of the answer


def test_loads_offline_from_another_directory(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "import evaluate, sys; m = evaluate.load(sys.argv[1]); "
        "print(m.compute(predictions=[[[1, 0]]], references=[[[1, 1]]])['giou'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(METRIC_DIR)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0.5"
    cached = list((tmp_path / "hf").rglob("ils.py"))
    assert cached and "from rosalia_hf.ils_scores import" in cached[0].read_text(), "the cached module is not ours"


def test_round_trips_the_answers_mimic_ils_pairs_generates(answers):
    pairs = pytest.importorskip("mimic_ils.pairs")
    three = ("right upper zone lung", "right mid zone lung", "left upper zone lung")
    outcomes = [
        pairs.FindingOutcome("pneumonia", "definitive", ("right lung base", "left lung base"),
                             ("right lung base", "left lung base"), "k1"),
        pairs.FindingOutcome("atelectasis", "tentative", ("left mid zone lung",), ("left mid zone lung",), "k2"),
        pairs.FindingOutcome("edema", "definitive", three, three, "k3"),
        pairs.FindingOutcome("cardiomegaly", "definitive", ("heart",), ("heart",), "k4"),
    ]
    plan = pairs.generate_pairs(outcomes, study_id="s1", dicom_id="d1", cardiomegaly_negative_reason=None,
                                empty_locations=("left apical zone lung", "right apical zone lung"))
    templates_seen = set()
    for pair in plan.pairs:
        variables = {"target": pair.target, "locations": pair.locations, "lesion": pair.lesion,
                     "certainty": pair.certainty}
        assert answers.render_answer(pair.question_type, pair.polarity, **variables) == pair.answer
        parsed = answers.parse_answer(pair.answer)
        assert parsed == answers.parsed_reference(pair.question_type, pair.polarity, **variables)
        if parsed.locations:
            assert parsed.locations == tuple(pair.locations)
        templates_seen.add(parsed.template)
    assert templates_seen >= {"seg", "located_in", "definitive", "tentative", "absent_in_location"}
    for labels in (("right lung",), ("right lung base", "left lung base"), three):
        assert answers.join_locations(labels) == pairs.join_locations(labels)
