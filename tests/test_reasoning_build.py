"""A phantom build of the synthetic cohort, checked for the reasoning question type and the conversations config:
every grounded lesion type has reasoning positives, there are reasoning negatives, no reasoning instruction names its
target, and ``load_dataset(folder, "conversations")`` works with no project code, every pair dealt once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from mimic_ils.conversations import conversation_sizes, image_conversations, mixed_order, positive_first
from mimic_ils.features import conversations_features
from mimic_ils.orchestration import BuildConfig, build
from mimic_ils.reasoning import named_term, reasoning_kind
from mimic_ils.rows import PairRow
from mimic_ils.schema import LESION_TYPES

N_COHORT = 30


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from _cohort import make_cohort

    cohort = make_cohort(tmp_path_factory, n_studies=N_COHORT, seed=0)
    out = tmp_path_factory.mktemp("reasoning") / "out"
    build(cohort, out, config=BuildConfig(vision="phantom"), progress=False)
    return out


def _rows(built: Path) -> list[dict]:
    return [row for path in sorted(built.glob("*/metadata.parquet")) for row in pq.read_table(path).to_pylist()]


def test_every_grounded_lesion_type_has_reasoning_positives_and_there_are_negatives(built):
    rows = _rows(built)
    reasoning = [row for row in rows if row["question_type"] == "reasoning"]
    grounded = {(row["dicom_id"], row["lesion"]) for row in rows
                if row["polarity"] == "positive" and row["question_type"] in ("basic", "global")}
    explained = {(row["dicom_id"], row["lesion"]) for row in reasoning if row["polarity"] == "positive"}
    assert grounded and explained == grounded  # per image, every grounded type, and nothing else
    assert {lesion for _, lesion in grounded} == set(LESION_TYPES)
    kinds = Counter((row["polarity"], reasoning_kind(row["instruction"])) for row in reasoning)
    assert kinds[("positive", "indication")] and kinds[("positive", "description")]
    assert kinds[("negative", "indication")] and kinds[("negative", "description")]
    negatives = [row for row in reasoning if row["polarity"] == "negative"]
    assert len({row["lesion"] for row in negatives}) >= 5 and all(row["mask_file_name"] is None for row in negatives)


def test_no_reasoning_instruction_names_its_target_or_a_synonym(built):
    reasoning = [row for row in _rows(built) if row["question_type"] == "reasoning"]
    assert len(reasoning) > 50
    for row in reasoning:
        assert row["target"] == row["lesion"]
        assert named_term(row["instruction"], row["lesion"]) is None, row["instruction"]
        assert "[SEG]" not in row["instruction"] and row["answer"].count("[SEG]") == 1


def test_reasoning_negatives_stand_beside_the_table2_negative_they_ask_again(built):
    rows = _rows(built)
    table2 = {(row["dicom_id"], row["target"]) for row in rows
              if row["polarity"] == "negative" and row["question_type"] in ("basic", "global")}
    implicit = [row for row in rows if row["question_type"] == "reasoning" and row["polarity"] == "negative"]
    assert implicit and all((row["dicom_id"], row["target"]) in table2 for row in implicit)
    with_table2 = {row["dicom_id"] for row in rows if row["question_type"] != "reasoning"}
    assert {row["dicom_id"] for row in rows} == with_table2  # no image holds reasoning pairs only


def test_reasoning_positives_reuse_a_table2_mask_of_their_image(built):
    rows = _rows(built)
    table2 = {(row["dicom_id"], row["lesion"], row["mask_file_name"]) for row in rows
              if row["polarity"] == "positive" and row["question_type"] != "reasoning"}
    for row in rows:
        if row["question_type"] == "reasoning" and row["polarity"] == "positive":
            assert (row["dicom_id"], row["lesion"], row["mask_file_name"]) in table2


def test_the_ledger_names_each_reasoning_candidate_not_made(built):
    ledger = pq.read_table(built / "ledger.parquet").to_pylist()
    reasons = [row["reason"] for row in ledger if row["kind"] == "reasoning"]
    assert reasons and all(row["fate"] == "dropped" for row in ledger if row["kind"] == "reasoning")
    assert all(reason.startswith("reasoning positive ") for reason in reasons)
    assert any(reason.endswith("the report has no indication or history") for reason in reasons)
    info = json.loads((built / "build_info.json").read_text())
    assert info["ledger"]["fates"]["reasoning:dropped"] == len(reasons)
    assert sum(info["counts"][split]["question_types"].get("reasoning", 0) for split in info["counts"]) == sum(
        row["question_type"] == "reasoning" for row in _rows(built))


def test_conversations_load_with_no_project_code(built, tmp_path):
    script = ("import datasets, json, sys\n"
              f"d = datasets.load_dataset({str(built)!r}, 'conversations', cache_dir={str(tmp_path / 'c')!r})\n"
              "row = d['train'][0]\n"
              "print(json.dumps({'splits': {k: v.num_rows for k, v in d.items()}, 'project': "
              "any(m.startswith(('mimic_ils', 'rosalia_hf')) for m in sys.modules), "
              "'turns': len(row['turns']), 'size': list(row['image'].size)}))\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["project"] is False and set(report["splits"]) == {"train", "validation", "test"}
    assert 2 <= report["turns"] <= 4


def test_conversations_deal_every_pair_once_with_its_mask(built):
    conversations = datasets.load_dataset(str(built), "conversations")
    pairs = datasets.load_dataset(str(built), "pairs")
    assert conversations["train"].features == conversations_features()
    assert conversations["train"].num_rows > 100  # more than one batch of the datasets writer (see the module doc)
    for split in ("train", "validation", "test"):
        by_image = defaultdict(list)
        for row in pairs[split]:
            by_image[row["dicom_id"]].append(row)
        dealt = Counter()
        for conversation in conversations[split]:
            turns = conversation["turns"]
            assert 2 <= len(turns) <= 4 and conversation["id"].startswith(conversation["dicom_id"] + "-c")
            positives = [turn["polarity"] == "positive" for turn in turns]
            assert not any(positives) or positives[0]
            for turn in turns:
                dealt[turn["id"]] += 1
                reference = next(row for row in by_image[conversation["dicom_id"]] if row["id"] == turn["id"])
                assert turn["answer"] == reference["answer"] and turn["answer"].count("[SEG]") == 1
                if turn["polarity"] == "positive":  # decoded, and the very mask of the pair
                    assert np.array_equal(np.asarray(turn["mask"]), np.asarray(reference["mask"]))
                else:
                    assert turn["mask"] is None
        expected = {row["id"] for rows in by_image.values() if len(rows) >= 2 for row in rows}
        assert set(dealt) == expected and set(dealt.values()) == {1}


def test_conversations_mix_question_types():
    pairs = [_row(i, question_type) for i, question_type in enumerate(["basic"] * 4 + ["reasoning"] * 4)]
    ordered = mixed_order(pairs, np.random.default_rng(0))
    types = [pair.question_type for pair in ordered]
    assert all(a != b for a, b in zip(types, types[1:], strict=False))
    dealt = image_conversations(pairs)
    assert sum(len(row.turns) for row in dealt) == 8 and all(2 <= len(row.turns) <= 4 for row in dealt)
    assert all(len({turn.question_type for turn in row.turns}) == 2 for row in dealt)
    assert image_conversations(pairs) == dealt and image_conversations(pairs[:1]) == []


@pytest.mark.parametrize("count", range(0, 30))
def test_conversation_sizes_use_every_pair(count):
    sizes = conversation_sizes(count, np.random.default_rng(count))
    assert sum(sizes) == (count if count >= 2 else 0) and all(2 <= size <= 4 for size in sizes)


def test_a_conversation_opens_with_its_first_positive():
    turns = (_row(0, "basic", mask=None), _row(1, "global", mask="masks/a.png"), _row(2, "basic", mask="masks/b.png"))
    assert [turn.id for turn in positive_first(turns)] == ["d-001", "d-000", "d-002"]
    negatives = (_row(0, "basic", mask=None), _row(1, "basic", mask=None))
    assert positive_first(negatives) == negatives


def _row(index: int, question_type: str, mask: str | None = "masks/m.png") -> PairRow:
    return PairRow(id=f"d-{index:03d}", image_file_name="d.png", mask_file_name=mask, instruction=f"i{index}",
                   answer="[SEG]", target="effusion", lesion="effusion", question_type=question_type,
                   polarity="positive" if mask else "negative", locations=("left lung",), certainty=None,
                   study_id="s", dicom_id="d", split="train")


def test_a_build_with_the_llm_backend_keeps_checked_paraphrases_and_ledgers_the_rest(tmp_path_factory, tmp_path):
    """The llm backend through the real build path, against an OpenAI-compatible server on 127.0.0.1: a paraphrase
    that names its target, and one that is not JSON (after its retry), are dropped with their reasons."""
    import re

    from _cohort import make_cohort
    from _llm_helpers import FakeChatServer

    def answer(body: dict) -> str:
        instruction = body["messages"][1]["content"]
        lesion = re.search(r"Do not name .*?\((.*?)\)", body["messages"][0]["content"]).group(1).split(", ")[-1]
        if "Show " in instruction:
            return "no JSON here"
        if instruction.startswith("Segment "):
            return json.dumps({"instruction": f"Please outline the {lesion}."})  # names a term of its target
        place = re.search(r" in the ((?:right|left) [a-z ]+?)(?: could| if|,|\.)", instruction)
        where = f" in the {place.group(1)}" if place else ""
        return json.dumps({"instruction": f"Outline what the clinical picture suggests{where}."})

    server = FakeChatServer(answer)
    try:
        cohort = make_cohort(tmp_path_factory, n_studies=12, seed=1)
        out = tmp_path / "out"
        build(cohort, out, config=BuildConfig(vision="phantom", reasoning={
            "backend": "llm", "options": {"url": server.url, "cache_dir": str(tmp_path / "llm")}}), progress=False)
    finally:
        server.close()
    rows = [row for row in _rows(out) if row["question_type"] == "reasoning"]
    assert rows and all(row["instruction"].startswith("Outline what the clinical picture suggests") for row in rows)
    for row in rows:
        assert named_term(row["instruction"], row["lesion"]) is None
        assert not row["locations"] or row["polarity"] == "positive" or " in the " in row["instruction"]
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    reasons = [row["reason"] for row in ledger if row["kind"] == "reasoning"]
    assert any("the instruction names its target" in reason or "paraphrase names its target" in reason
               for reason in reasons)
    assert any("LLM paraphrase unusable" in reason for reason in reasons)
    assert len(server.requests) > len(rows)


def test_the_images_config_decodes_every_positive_mask(built):
    """The images config's pairs open with the image's positives (as the conversations do), so ``datasets`` decodes
    every mask of the list, reasoning pairs included."""
    images = datasets.load_dataset(str(built), "images", split="train")
    positives = [pair for row in images for pair in row["pairs"] if pair["polarity"] == "positive"]
    assert positives and all(hasattr(pair["mask"], "size") for pair in positives)
    assert any(pair["question_type"] == "reasoning" for pair in positives)
