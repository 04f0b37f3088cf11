"""RosaliaTrainer: trainable set, a real 2-step run through Trainer with accumulation, evaluation, saving."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from _training_helpers import tiny_images_dataset, tiny_pairs_dataset

from rosalia_hf import RosaliaForSegmentation
from rosalia_hf.losses import rosalia_mask_losses
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.testing import tiny_rosalia
from rosalia_hf.trainer import RosaliaTrainer, describe_trainable, prepare_model_for_training
from rosalia_hf.trainer_config import RosaliaTrainingArguments


def _args(tmp_path, **overrides) -> RosaliaTrainingArguments:
    values = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                  global_train_batch_size=None, max_steps=2, learning_rate=1e-2, warmup_steps=0, bf16=False,
                  use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", lora_r=4, lora_alpha=8,
                  per_device_eval_batch_size=4, dataloader_num_workers=0, seed=0)
    values.update(overrides)
    return RosaliaTrainingArguments(**values)


def _trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_trainable_set_is_lora_mask_decoder_text_fcs_and_added_rows(tmp_path):
    model, processor = tiny_rosalia(seed=0)
    peft_model = prepare_model_for_training(model, _args(tmp_path), processor)
    names = _trainable_names(peft_model)
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    assert any("mask_decoder" in n for n in names) and any("text_hidden_fcs" in n for n in names)
    assert any("trainable_tokens" in n and "embed_tokens" in n for n in names)
    assert any("trainable_tokens" in n and "lm_head" in n for n in names)
    allowed = re.compile(r"lora_|mask_decoder|text_hidden_fcs|trainable_tokens")
    assert [n for n in names if not allowed.search(n)] == []
    frozen_parts = ("vision_tower", "vision_encoder", "prompt_encoder", "multi_modal_projector")
    assert not [n for n in names if any(part in n for part in frozen_parts)]
    summary = describe_trainable(peft_model)
    assert summary[-1].startswith("total") and any(line.startswith("lora adapters") for line in summary)


@pytest.mark.parametrize("dataset_factory", [tiny_pairs_dataset, tiny_images_dataset])
def test_two_steps_with_accumulation_update_exactly_the_trainable_set(tmp_path, dataset_factory):
    model, processor = tiny_rosalia(seed=0)
    trainer = RosaliaTrainer(model, _args(tmp_path), processor, train_dataset=dataset_factory(12, seed=1))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    trainable = set(_trainable_names(trainer.model))
    assert changed <= trainable
    for part in ("lora_B", "mask_decoder", "text_hidden_fcs", "trainable_tokens"):
        assert any(part in n for n in changed), f"no {part} parameter changed"
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss", "ce_loss", "mask_bce_loss", "mask_dice_loss"} <= logged
    assert trainer.state.global_step == 2


def test_model_max_length_of_the_arguments_bounds_the_training_batches(tmp_path):
    """The argument reaches the collator the trainer builds: a pair longer than it is refused, naming the limit."""
    model, processor = tiny_rosalia(seed=0)
    trainer = RosaliaTrainer(model, _args(tmp_path, model_max_length=8), processor,
                             train_dataset=tiny_pairs_dataset(4, seed=1))
    assert trainer.data_collator.max_length == 8
    with pytest.raises(ValueError, match=r"tokens with the image; model_max_length is 8$"):
        next(iter(trainer.get_train_dataloader()))


def test_evaluate_reports_ils_figures_and_saves_load_back(tmp_path):
    model, processor = tiny_rosalia(seed=0)
    eval_pairs = tiny_pairs_dataset(4, seed=7, split="validate")
    trainer = RosaliaTrainer(model, _args(tmp_path, max_steps=1), processor,
                             train_dataset=tiny_pairs_dataset(8, seed=1), eval_dataset=eval_pairs)
    trainer.train()
    metrics = trainer.evaluate()
    assert set(metrics) == {"eval_giou", "eval_ciou", "eval_n_acc"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())

    image = np.asarray(eval_pairs[0]["image"])
    expected = RosaliaPredictor(trainer.model, processor).predict([image], [eval_pairs[0]["instruction"]],
                                     segment_only=True)[0]["mask"]
    adapters = trainer.save_adapters(tmp_path / "adapters")
    assert (adapters / "adapter_model.safetensors").is_file()
    merged_dir = trainer.save_merged(tmp_path / "merged")
    merged = RosaliaForSegmentation.from_pretrained(merged_dir).eval()
    mask = RosaliaPredictor(merged, processor).predict(
        [image], [eval_pairs[0]["instruction"]], segment_only=True)[0]["mask"]
    assert mask.shape == image.shape and np.array_equal(mask, expected)


def test_an_image_encoder_the_config_unfreezes_is_trained_fully(tmp_path):
    """The demo's tiny model trains its random SAM encoder: peft must not freeze it silently; CLIP stays frozen."""
    model, processor = tiny_rosalia(seed=0, sam_image_size=32, sam_patch_size=8, freeze_sam_image_encoder=False)
    assert model.config.sam_config.prompt_encoder_config.image_embedding_size == 4
    trainer = RosaliaTrainer(model, _args(tmp_path), processor, train_dataset=tiny_pairs_dataset(12, seed=1))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any("vision_encoder" in n and "modules_to_save" in n for n in changed)
    assert not any("vision_tower" in n for n in changed)
    assert any(line.startswith("sam image encoder") and " trainable            0 " not in line
               for line in describe_trainable(trainer.model))
    key = next(n for n in changed if "vision_encoder" in n)
    trained = dict(trainer.model.named_parameters())[key].detach().clone()
    merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()  # what save_merged writes
    plain = key.replace("base_model.model.", "").replace(".modules_to_save.default", "")
    assert torch.equal(dict(merged.named_parameters())[plain], trained)


def test_the_test_models_sam_encoder_stays_frozen(tmp_path):
    model, processor = tiny_rosalia(seed=0)
    names = _trainable_names(prepare_model_for_training(model, _args(tmp_path), processor))
    assert not [n for n in names if "vision_encoder" in n]


def test_loss_weights_default_to_the_papers_and_the_arguments_may_change_them(tmp_path):
    model, processor = tiny_rosalia(seed=0)
    trainer = RosaliaTrainer(model, _args(tmp_path), processor, train_dataset=tiny_pairs_dataset(4, seed=1))
    config = trainer.model.get_base_model().config
    assert (config.ce_loss_weight, config.bce_loss_weight, config.dice_loss_weight) == (0.5, 5.0, 1.0)
    model, processor = tiny_rosalia(seed=0)
    trainer = RosaliaTrainer(model, _args(tmp_path, bce_loss_weight=20.0), processor,
                             train_dataset=tiny_pairs_dataset(4, seed=1))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    out = trainer.model(**batch)
    assert trainer.model.get_base_model().config.bce_loss_weight == 20.0
    unweighted_bce, _ = rosalia_mask_losses(out.pred_masks, [m.float() for m in batch["masks"]],
                                            batch["mask_positive"])
    torch.testing.assert_close(out.mask_bce_loss, 20.0 * unweighted_bce)
    assert RosaliaTrainingArguments(output_dir=str(tmp_path), use_cpu=True).bce_loss_weight is None
