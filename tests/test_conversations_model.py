"""ROSALIA on multi-turn conversations: the LLaVA-v1 prompt and its labels, the collator's masks (one per [SEG]),
the paper's loss per turn, teacher-forced prediction, the metric's per-turn and reasoning rows, and the evaluation
of a conversations split."""

from __future__ import annotations

import json
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from _training_helpers import conversation_rows, tiny_conversations_dataset, write_built_folder, write_dataset_folder

from rosalia_hf.data import RosaliaCollator, RosaliaConversations, RosaliaPairs, dataset_view
from rosalia_hf.evaluation import evaluate_model
from rosalia_hf.evaluation_report import write_report
from rosalia_hf.losses import mask_bce, mask_dice, rosalia_mask_losses
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.processing_rosalia import IGNORE_INDEX, LLAVA_V1_SYSTEM, RosaliaProcessor
from rosalia_hf.sampler import BalancedPolarityBatchSampler, ShuffledBatchSampler
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


LISA_FIXTURE = Path(__file__).parent / "fixtures" / "lisa_reference"
REFERENCE_IMAGE_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX


def _lisa_ids(text: str, tokenizer) -> list[int]:
    """LLaVA's ``tokenizer_image_token``: each ``<image>``-separated chunk tokenised alone, one -200 between."""
    chunks = [tokenizer(chunk)["input_ids"] for chunk in text.split("<image>")]
    return [*chunks[0], *(i for chunk in chunks[1:] for i in [REFERENCE_IMAGE_ID, *chunk[1:]])]


def _lisa_targets(text: str, tokenizer) -> list[int]:
    """LISA's ``collate_fn`` masking of a ``llava_v1`` conversation (utils/dataset.py), restated: split into rounds
    on ``</s>``, skip the ``<s>``, per round mask ``len(ids(instruction + " ASSISTANT: ")) - 2`` tokens and advance
    by ``len(ids(round))`` (its ``<s>`` standing for the ``</s>`` the split removed)."""
    target, cursor, sep = _lisa_ids(text, tokenizer), 1, " ASSISTANT: "
    target[:1] = [IGNORE_INDEX]
    for round_text in text.split("</s>"):
        if not round_text:
            break
        instruction, _ = round_text.split(sep)
        masked = len(_lisa_ids(instruction + sep, tokenizer)) - 2
        target[cursor:cursor + masked] = [IGNORE_INDEX] * masked
        cursor += len(_lisa_ids(round_text, tokenizer))
    target[cursor:] = [IGNORE_INDEX] * (len(target) - cursor)
    return target


def test_multi_turn_ids_and_labels_are_lisas_on_the_lisa_tokenizer():
    """On the reference fixture's LLaMA sentencepiece tokenizer (legacy), a 3-turn conversation encodes to the ids
    LISA builds for it (``conv_llava_v1``, image in the first turn) and to the targets LISA's masking gives."""
    from transformers import CLIPImageProcessor

    from rosalia_hf.convert_lisa import load_lisa_tokenizer

    tokenizer = load_lisa_tokenizer(LISA_FIXTURE / "lisa")
    processor = RosaliaProcessor(CLIPImageProcessor.from_pretrained(LISA_FIXTURE / "clip"), tokenizer,
                                 use_im_start_end=True, image_seq_length=256, sam_image_size=64, clip_backend="pil")
    text = f"{LLAVA_V1_SYSTEM} " + "".join(
        f"USER: {'<im_start><image><im_end>' + chr(10) if number == 0 else ''}{question} ASSISTANT: {answer}</s>"
        for number, (question, answer) in enumerate(TURNS))
    reference, targets = _lisa_ids(text, tokenizer), _lisa_targets(text, tokenizer)
    image = processor.image_token_id
    ids, labels = processor.encode_conversation(*TURNS[2], history=TURNS[:2])
    assert ids == [t for i in reference for t in ([image] * 256 if i == REFERENCE_IMAGE_ID else [i])]
    assert labels == [t for i, label in zip(reference, targets, strict=True)
                      for t in ([IGNORE_INDEX] * 256 if i == REFERENCE_IMAGE_ID else [label])]
    decoded = [tokenizer.decode(ids[a:b]) for a, b in _labelled_spans(labels)]
    assert decoded == [answer + "</s>" for _, answer in TURNS]


def test_the_conversation_view_and_the_collator_give_one_mask_per_seg(tiny):
    _, processor = tiny
    dataset = RosaliaConversations(tiny_conversations_dataset(4, seed=3))
    assert len(dataset) == 4 and dataset.positive == [True, False, True, False]
    assert dataset.turn_positive[0] == [True, True, False] and dataset.turn_positive[1] == [False, False, False]
    assert dataset.num_pairs == 12  # the model card counts the turns as training pairs
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
        targets = [mask.float() for row in batch["masks"] for mask in row]
        flags, config = batch["mask_positive"].tolist(), model.config
        dice = torch.stack([mask_dice(p, t, config.dice_scale, config.dice_eps)
                            for p, t, flag in zip(out.pred_masks, targets, flags, strict=True) if flag]).mean()
        bce = torch.stack([mask_bce(p, t) for p, t in zip(out.pred_masks, targets, strict=True)]).mean()
        torch.testing.assert_close(out.mask_dice_loss, config.dice_loss_weight * dice)  # the 2 positive turns
        torch.testing.assert_close(out.mask_bce_loss, config.bce_loss_weight * bce)  # all 6 turns
        out.loss.backward()
        assert next(model.text_hidden_fcs.parameters()).grad.abs().sum() > 0
        with pytest.raises(ValueError, match=r"mask_positive has 2 flags for 6 \[SEG\] masks"):
            model(**{**batch, "mask_positive": torch.tensor([True, False])})
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


def test_reasoning_text_accuracy_from_structured_variables():
    """No reference_answers: the reference is rendered from the variables (table2.parsed_reference); the reason
    sentence is not scored, the location and the certainty are."""
    ils = evaluate.load("metrics/ils")
    reference = np.zeros((4, 4), bool)
    reference[:2, :2] = True
    results = ils.compute(
        predictions=[reference, np.zeros((4, 4), bool), reference], references=[reference, None, reference],
        question_types=["reasoning"] * 3, polarities=["positive", "negative", "positive"],
        targets=["edema", "effusion", "edema"], lesions=["edema", "effusion", "edema"],
        locations=[["right lung"], ["left lung"], ["right lung"]], certainties=["definitive", None, "tentative"],
        predicted_answers=["[SEG] It is consistent with edema, located in the right lung. Any reason at all.",
                           "[SEG] There is no such finding: no effusion is seen in the left lung.",
                           "[SEG] It is consistent with edema, located in the right lung. Wrong certainty."])
    assert results["text_accuracy_per_question_type"] == {"reasoning": {"all": 2 / 3, "positive": 0.5,
                                                                        "negative": 1.0}}
    assert list(results["per_question_type"]) == ["reasoning"] and results["num_text"] == 3


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


def test_a_built_folder_of_two_to_four_turns_is_evaluated_per_turn(tiny, tmp_path):
    """The build's imagefolder layout (``<split>/images/conversations.parquet``, ``metadata_filenames``), read with
    no project code; conversations of 3, 4 and 2 turns give the rows of turns 1 to 4."""
    from datasets import load_dataset

    model, processor = tiny
    folder = write_built_folder(tmp_path / "ils", 4, 4)
    split = load_dataset(folder, "conversations", split="validation")
    assert [len(row["turns"]) for row in split] == [3, 4, 2, 3]
    view = RosaliaConversations(split)
    assert view.turn_positive == [[True, True, False], [False] * 4, [True, False], [False] * 3]
    assert view[0]["masks"].shape == (3, 48, 64) and view[0]["masks"][1].sum() == view[0]["masks"][0].sum() > 0
    evaluation = evaluate_model(RosaliaPredictor(model, processor), split, batch_size=4, segment_only=True,
                                progress=False)
    per_turn = evaluation["metrics"]["per_turn"]
    assert evaluation["num_samples"] == 12 and list(per_turn) == ["1", "2", "3", "4"]
    assert [(per_turn[t]["num_positive"], per_turn[t]["num_negative"]) for t in per_turn] == [(2, 2), (1, 3), (0, 3),
                                                                                            (0, 1)]
    report = write_report(evaluation, tmp_path / "eval", model_name="tiny").read_text()
    assert "| Turn 4 |" in report and "| Reasoning |" in report
    assert "Turn 5" not in report


def test_the_trainer_takes_a_conversations_split(tiny, tmp_path):
    from datasets import load_dataset

    folder = write_dataset_folder(tmp_path / "ils", 4, 2)
    split = load_dataset(folder, "conversations", split="train")
    assert isinstance(dataset_view(split), RosaliaConversations)
    assert isinstance(dataset_view(load_dataset(folder, "pairs", split="train")), RosaliaPairs)


def _trainer(tmp_path, dataset, batch_size: int):
    from rosalia_hf.trainer import RosaliaTrainer
    from rosalia_hf.trainer_config import RosaliaTrainingArguments

    model, processor = tiny_rosalia(seed=1)  # the trainer wraps its model in peft: not the shared one
    args = RosaliaTrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=batch_size,
                                    report_to="none", use_cpu=True, max_steps=1)
    return RosaliaTrainer(model, args, processor, train_dataset=dataset)


def test_conversations_are_balanced_when_they_can_be_and_shuffled_otherwise(tmp_path):
    balanced = _trainer(tmp_path, tiny_conversations_dataset(4, seed=1), 2)
    sampler = balanced._batch_sampler(balanced.train_dataset)
    assert isinstance(sampler, BalancedPolarityBatchSampler)
    assert [[balanced.train_dataset.positive[i] for i in batch] for batch in sampler] == [[True, False]] * 2
    odd = _trainer(tmp_path, tiny_conversations_dataset(4, seed=1), 1)  # one conversation per device
    shuffled = odd._batch_sampler(odd.train_dataset)
    assert isinstance(shuffled, ShuffledBatchSampler) and sorted(i for b in shuffled for i in b) == [0, 1, 2, 3]
    positives_only = tiny_conversations_dataset(6, seed=1).select([0, 2, 4])
    loader = _trainer(tmp_path, positives_only, 2).get_train_dataloader()
    batch = next(iter(loader))
    assert len(loader) == 1 and batch["mask_positive"].tolist()[0::3] == [True, True]
    with pytest.raises(ValueError, match="need at least 1 positive and 1 negative pairs"):
        _trainer(tmp_path, tiny_pairs_only_negative(), 2).get_train_dataloader()


def tiny_pairs_only_negative():
    from _training_helpers import tiny_pairs_dataset

    return tiny_pairs_dataset(2, seed=1).select([1, 3])  # pairs keep their exact 1:1 refusal


def test_the_shuffled_sampler_is_seeded_and_deals_batches_to_ranks():
    whole = list(ShuffledBatchSampler(10, 2, num_replicas=2, rank=0, seed=3, shard=False))
    assert len(whole) == 4 and len({i for b in whole for i in b}) == 8  # 5 batches of 2 cut to 4: 2 per rank
    ranks = [list(ShuffledBatchSampler(10, 2, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert ranks == [whole[0::2], whole[1::2]]
    sampler = ShuffledBatchSampler(10, 2, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and list(ShuffledBatchSampler(10, 2, seed=3)) == first
    with pytest.raises(ValueError, match="3 items make no batch of 4"):
        ShuffledBatchSampler(3, 4)
