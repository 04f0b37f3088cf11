"""ROSALIA on multi-turn conversations: the LLaVA-v1 prompt and its labels, the collator's masks (one per [SEG]),
the paper's loss per turn, teacher-forced prediction, the metric's per-turn and reasoning rows, and the evaluation
of a conversations split."""

from __future__ import annotations

import json

import evaluate
import numpy as np
import pytest
import torch
from _training_helpers import conversation_rows, tiny_conversations_dataset, write_dataset_folder

from rosalia_hf.data import RosaliaCollator, RosaliaConversations, RosaliaPairs, dataset_view
from rosalia_hf.evaluation import evaluate_model
from rosalia_hf.evaluation_report import write_report
from rosalia_hf.losses import rosalia_mask_losses
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.processing_rosalia import IGNORE_INDEX, LLAVA_V1_SYSTEM
from rosalia_hf.testing import tiny_rosalia

TURNS = [("Segment the edema.", "[SEG] It is located in the right lung."),
         ("Segment the effusion in the left lung.", "[SEG] There is no effusion in the left lung."),
         ("The patient presents with fever. Segment the finding that could explain it.",
          "[SEG] It is consistent with edema, located in the right lung. Edema can explain fever.")]


@pytest.fixture(scope="module")
def tiny():
    return tiny_rosalia(seed=0)


def _labelled_spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for index, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, index))
            start = None
    return spans


def test_a_three_turn_prompt_is_llava_v1_and_labels_only_the_answers(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    ids, labels = processor.encode_conversation(*TURNS[2], history=TURNS[:2])
    text = tokenizer.decode(ids)
    assert text.count("<image>") == processor.image_seq_length  # the image in the first turn only
    body = text.split("<im_end>", 1)[1]
    assert text.removeprefix(tokenizer.bos_token).startswith(f"{LLAVA_V1_SYSTEM} USER:")  # <im_start> eats spaces
    assert body.count("USER:") == 2 and body.count("ASSISTANT:") == 3 and body.count("</s>") == 3
    spans = _labelled_spans(labels)
    assert len(spans) == 3  # one span per answer, nothing else labelled
    for (start, stop), (_, answer) in zip(spans, TURNS, strict=True):
        assert labels[start:stop] == ids[start:stop]
        assert tokenizer.decode(ids[start:stop]).replace(" ", "") == (answer + "</s>").replace(" ", "")
        assert ids[stop - 1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[:start]).rstrip().endswith("ASSISTANT:")
    assert ids.count(processor.seg_token_id) == 3


def test_without_history_the_encoding_is_the_single_turn_one(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    instruction, answer = TURNS[0]
    ids, labels = processor.encode_conversation(instruction, answer)
    from rosalia_hf.processing_rosalia import build_prompt

    prompt = build_prompt(instruction, processor.image_seq_length, processor.use_im_start_end)
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert ids == tokenizer(f"{prompt} {answer}{tokenizer.eos_token}")["input_ids"]
    shared = next(i for i, (a, b) in enumerate(zip(ids, prompt_ids, strict=False)) if a != b) \
        if ids[:len(prompt_ids)] != prompt_ids else len(prompt_ids)
    assert labels == [IGNORE_INDEX] * shared + ids[shared:]
    assert processor.encode_conversation(instruction, None) == (prompt_ids, [IGNORE_INDEX] * len(prompt_ids))
    with pytest.raises(ValueError, match="turn 1 of the history has no answer"):
        processor.encode_conversation(instruction, answer, history=[("Segment the edema.", None)])


def test_the_conversation_view_and_the_collator_give_one_mask_per_seg(tiny):
    _, processor = tiny
    dataset = RosaliaConversations(tiny_conversations_dataset(4, seed=3))
    assert len(dataset) == 4 and dataset.positive == [True, False, True, False]
    assert dataset.turn_positive[0] == [True, True, False] and dataset.turn_positive[1] == [False, False, False]
    assert isinstance(dataset_view(tiny_conversations_dataset(2)), RosaliaConversations)
    items = [dataset[0], dataset[1]]
    assert items[0]["masks"].shape == (3, 48, 64) and items[0]["masks"][0].any() and not items[1]["masks"].any()
    assert np.array_equal(items[0]["masks"][0], items[0]["masks"][1])  # the reasoning turn reuses the pair's mask
    batch = RosaliaCollator(processor)(items)
    assert [tuple(mask.shape) for mask in batch["masks"]] == [(3, 48, 64), (3, 48, 64)]
    assert batch["mask_positive"].tolist() == [True, True, False, False, False, False]
    assert (batch["input_ids"] == processor.seg_token_id).sum(dim=1).tolist() == [3, 3]
    assert [len(_labelled_spans(row.tolist())) for row in batch["labels"]] == [3, 3]  # every turn's answer
    with pytest.raises(ValueError, match="mixes pairs and conversations"):
        RosaliaCollator(processor)([items[0], _pair_item(items[1])])
    with pytest.raises(ValueError, match=r"conversation '.*-c00' \(3 turns\) is \d+ tokens"):
        RosaliaCollator(processor, max_length=20)(items)


def _pair_item(conversation: dict) -> dict:
    return {"image_key": conversation["image_key"], "image": conversation["image"],
            "instruction": conversation["turns"][0]["instruction"], "answer": conversation["turns"][0]["answer"],
            "mask": conversation["masks"][0], "positive": conversation["positives"][0]}


def test_the_loss_applies_per_turn_and_dice_only_to_positive_turns(tiny):
    model, processor = tiny
    dataset = RosaliaConversations(tiny_conversations_dataset(2, seed=5))
    batch = RosaliaCollator(processor)([dataset[0], dataset[1]])
    model.train()
    try:
        out = model(**batch)
        assert len(out.pred_masks) == 6 and out.seg_row_index.tolist() == [0, 0, 0, 1, 1, 1]
        assert all(torch.isfinite(value) for value in (out.loss, out.ce_loss, out.mask_bce_loss, out.mask_dice_loss))
        out.loss.backward()
        assert next(model.text_hidden_fcs.parameters()).grad.abs().sum() > 0
    finally:
        model.zero_grad()
        model.eval()
    targets = [mask.float() for row in batch["masks"] for mask in row]
    logits = [torch.randn(48, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    positive = batch["mask_positive"].tolist()
    bce, dice = rosalia_mask_losses(logits, targets, positive)
    changed = list(logits)
    changed[2] = changed[2] + 5.0  # turn 3 of conversation 1 is a negative
    bce2, dice2 = rosalia_mask_losses(changed, targets, positive)
    assert dice2 == pytest.approx(float(dice)) and float(bce2) > float(bce)
    changed[0] = changed[0] - 5.0  # a positive turn moves the Dice term
    assert float(rosalia_mask_losses(changed, targets, positive)[1]) != pytest.approx(float(dice))


def test_teacher_forced_prediction_returns_this_turns_mask_only(tiny):
    model, processor = tiny
    predictor = RosaliaPredictor(model, processor)
    rows = conversation_rows(1, seed=2)
    image = np.asarray(rows[0]["image"])
    history = [(turn["instruction"], turn["answer"]) for turn in rows[0]["turns"][:2]]
    third = rows[0]["turns"][2]["instruction"]
    with_history = predictor.predict([image], [third], history=[history], segment_only=True)[0]
    alone = predictor.predict([image], [third], segment_only=True)[0]
    assert len(with_history["masks"]) == 1 and with_history["mask"].shape == image.shape
    assert not np.array_equal(with_history["mask_logits"][0], alone["mask_logits"][0])  # the history is seen
    generated = predictor.predict([image], [third], history=[history], max_new_tokens=4)[0]
    assert len(generated["masks"]) == generated["text"].count("[SEG]") or generated["masks"] == []


def test_the_metric_reports_each_turn_and_the_reasoning_type():
    ils = evaluate.load("metrics/ils")
    reference = np.zeros((4, 4), np.uint8)
    reference[:2, :2] = 255
    full = np.zeros((4, 4), bool)
    full[:2, :2] = True
    results = ils.compute(
        predictions=[full, np.zeros((4, 4), bool), np.ones((4, 4), bool), full],
        references=[reference, None, None, reference],
        lesions=["edema", "edema", "effusion", "edema"],
        question_types=["global", "reasoning", "reasoning", "reasoning"],
        turn_indices=[1, 2, 1, 2],
        predicted_answers=["[SEG] It is located in the right lung.",
                           "[SEG] There is no such finding: no edema is seen.",
                           "[SEG] There is no such finding: no effusion is seen.",
                           "[SEG] It is consistent with edema, located in the left lung. Fluid has leaked."],
        reference_answers=["[SEG] It is located in the right lung.",
                           "[SEG] There is no such finding: no edema is seen.",
                           "[SEG] There is no such finding: no effusion is seen.",
                           "[SEG] It is consistent with edema, located in the right lung. Fluid has leaked."],
    )
    assert results["per_turn"]["1"]["giou"] == 1.0 and results["per_turn"]["1"]["n_acc"] == 0.0
    assert results["per_turn"]["2"]["n_acc"] == 1.0 and results["per_turn"]["2"]["text_accuracy"] == 0.5
    assert results["per_question_type"]["reasoning"]["num_positive"] == 1
    assert results["text_accuracy_per_question_type"]["reasoning"] == {"all": 2 / 3, "positive": 0.0,
                                                                       "negative": 1.0}
    with pytest.raises(ValueError, match="turn index 0"):
        ils.compute(predictions=[full], references=[reference], turn_indices=[0])


def test_evaluation_of_a_conversations_split_prints_reasoning_and_turn_rows(tiny, tmp_path):
    model, processor = tiny
    dataset = tiny_conversations_dataset(4, seed=9)
    evaluation = evaluate_model(RosaliaPredictor(model, processor), dataset, batch_size=5, max_new_tokens=4,
                                progress=False)
    metrics = evaluation["metrics"]
    assert evaluation["num_samples"] == 12 and metrics["num_positive"] + metrics["num_negative"] == 12
    assert set(metrics["per_turn"]) == {"1", "2", "3"}
    assert metrics["per_turn"]["1"]["num_positive"] == 2 and metrics["per_turn"]["3"]["num_positive"] == 0
    assert metrics["per_question_type"]["reasoning"]["num_positive"] == 2
    report = write_report(evaluation, tmp_path / "eval", model_name="tiny").read_text()
    assert "| Reasoning |" in report and "## By turn (conversations)" in report and "| Turn 3 |" in report
    assert json.dumps(metrics, default=str)


def test_the_trainer_takes_a_conversations_split(tiny, tmp_path):
    from datasets import load_dataset

    folder = write_dataset_folder(tmp_path / "ils", 4, 2)
    split = load_dataset(folder, "conversations", split="train")
    assert isinstance(dataset_view(split), RosaliaConversations)
    assert isinstance(dataset_view(load_dataset(folder, "pairs", split="train")), RosaliaPairs)
