"""``RosaliaTrainer``: the paper's loss, exact 1:1 batches, LoRA through ``peft``, ILS metrics during evaluation.

Trainable set (paper Sec. 5): LoRA adapters on the language model's linear layers, the SAM mask decoder,
``text_hidden_fcs``, and the embedding and output rows of the added tokens (``[SEG]``, image tokens) through
``peft``'s ``trainable_token_indices``. CLIP, the projector, the SAM image and prompt encoders and every other
language-model weight stay frozen, unless the model's config unfreezes an image tower
(``freeze_sam_image_encoder=False`` / ``freeze_vision_tower=False``, as the demo's tiny random model does): that
tower is then trained fully too, rather than silently frozen by ``peft``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.data import DataLoader
from transformers import Trainer

from rosalia_hf.data import RosaliaCollator, RosaliaConversations, RosaliaPairs, dataset_view
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.sampler import BalancedPolarityBatchSampler, ShuffledBatchSampler, balanced_batches_possible
from rosalia_hf.trainer_config import RosaliaTrainingArguments

logger = logging.getLogger(__name__)

LOSS_PARTS = ("ce_loss", "mask_bce_loss", "mask_dice_loss")
LOSS_WEIGHTS = ("ce_loss_weight", "bce_loss_weight", "dice_loss_weight")
FULLY_TRAINED_MODULES = ["mask_decoder", "text_hidden_fcs"]
# image towers a config may unfreeze: (config flag, module name as peft's modules_to_save matches it)
UNFREEZABLE_TOWERS = (("freeze_sam_image_encoder", "sam.vision_encoder"), ("freeze_vision_tower", "vision_tower"))


def fully_trained_modules(model_config=None) -> list[str]:
    """The mask decoder and ``text_hidden_fcs``, plus each image tower that ``model_config`` does not freeze.

    >>> from types import SimpleNamespace
    >>> fully_trained_modules(SimpleNamespace(freeze_sam_image_encoder=False, freeze_vision_tower=True))
    ['mask_decoder', 'text_hidden_fcs', 'sam.vision_encoder']
    """
    unfrozen = [name for flag, name in UNFREEZABLE_TOWERS if not getattr(model_config, flag, True)]
    return [*FULLY_TRAINED_MODULES, *unfrozen]


def lora_config(args: RosaliaTrainingArguments, processor, model_config=None) -> LoraConfig:
    """LoRA on the language model (``args.lora_*``), mask decoder and ``text_hidden_fcs`` fully trained (and any
    image tower ``model_config`` unfreezes), and the rows of the tokens the processor added (``[SEG]`` and the
    image tokens) trainable in the embeddings."""
    added = sorted(set(processor.tokenizer.get_added_vocab().values()))
    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_regex, modules_to_save=fully_trained_modules(model_config),
        trainable_token_indices={"embed_tokens": added, "lm_head": added}, bias="none",
    )


def apply_loss_weights(config, args: RosaliaTrainingArguments) -> dict[str, float]:
    """Sets the loss weights ``args`` gives (not None) on the model ``config``; returns the weights in force.

    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(ce_loss_weight=0.5, bce_loss_weight=5.0, dice_loss_weight=1.0)
    >>> apply_loss_weights(config, SimpleNamespace(ce_loss_weight=None, bce_loss_weight=20.0, dice_loss_weight=None))
    {'ce_loss_weight': 0.5, 'bce_loss_weight': 20.0, 'dice_loss_weight': 1.0}
    """
    for name in LOSS_WEIGHTS:
        if getattr(args, name, None) is not None:
            setattr(config, name, float(getattr(args, name)))
    return {name: getattr(config, name) for name in LOSS_WEIGHTS}


def prepare_model_for_training(model, args: RosaliaTrainingArguments, processor) -> PeftModel:
    """Wraps ``model`` with LoRA as configured (and the loss weights ``args`` sets); logs the trainable parameters
    per top-level part."""
    weights = apply_loss_weights(model.get_base_model().config if isinstance(model, PeftModel) else model.config,
                                 args)
    logger.info("loss weights: %s", ", ".join(f"{name} {value:g}" for name, value in weights.items()))
    if isinstance(model, PeftModel):
        return model
    peft_model = get_peft_model(model, lora_config(args, processor, model.config))
    for line in describe_trainable(peft_model):
        logger.info(line)
    return peft_model


def describe_trainable(model: torch.nn.Module) -> list[str]:
    """One line per group of parameters (LoRA, mask decoder, ...) with counts, then the total, for the start log."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, parameter in model.named_parameters():
        group = _parameter_group(name)
        groups[group][0] += parameter.numel()
        groups[group][1] += parameter.numel() if parameter.requires_grad else 0
    lines = [f"{group:<28} trainable {train:>12,} of {total:>14,}" for group, (total, train) in sorted(groups.items())]
    total = sum(v[0] for v in groups.values())
    trainable = sum(v[1] for v in groups.values())
    lines.append(f"{'total':<28} trainable {trainable:>12,} of {total:>14,} ({100 * trainable / max(total, 1):.2f}%)")
    return lines


def _parameter_group(name: str) -> str:
    for marker, group in (("lora_", "lora adapters"), ("trainable_tokens", "added token rows"),
                          ("mask_decoder", "sam mask decoder"), ("text_hidden_fcs", "text_hidden_fcs"),
                          ("vision_encoder", "sam image encoder"), ("prompt_encoder", "sam prompt encoder"),
                          ("vision_tower", "clip vision tower"), ("multi_modal_projector", "projector"),
                          ("language_model", "language model"), ("lm_head", "language model")):
        if marker in name:
            return group
    return "other"


class RosaliaTrainer(Trainer):
    """``Trainer`` with ROSALIA's data pipeline, loss logging and ILS evaluation.

    ``train_dataset`` / ``eval_dataset``: ``datasets.Dataset`` splits of a built MIMIC-ILS folder, either
    configuration (``pairs``, ``images`` or ``conversations``); training pairs (conversations: with or without a
    positive turn, when the split allows it; shuffled otherwise) are drawn in exact 1:1 batches. Evaluation runs
    ``predict`` in segment-only mode and reports ``giou``, ``ciou`` and ``n_acc`` through ``metrics/ils``.
    """

    def __init__(self, model, args: RosaliaTrainingArguments, processor, train_dataset=None, eval_dataset=None,
                 data_collator=None, **kwargs) -> None:
        model = prepare_model_for_training(model, args, processor)
        self.processor = processor
        self.raw_eval_dataset = eval_dataset
        collator = data_collator or RosaliaCollator(processor, args.histogram_equalization_prob,
                                                    args.group_by_image, args.seed, args.model_max_length)
        train_pairs = dataset_view(train_dataset) if train_dataset is not None else None
        super().__init__(model=model, args=args, train_dataset=train_pairs, eval_dataset=eval_dataset,
                         data_collator=collator, processing_class=processor, **kwargs)
        self._loss_parts: dict[str, list[float]] = defaultdict(list)
        self.last_eval_metrics: dict[str, float] = {}

    # --- data ---
    def get_train_dataloader(self) -> DataLoader:
        dataset: RosaliaPairs | RosaliaConversations = self.train_dataset
        loader = DataLoader(dataset, batch_sampler=self._batch_sampler(dataset), collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def _batch_sampler(self, dataset: RosaliaPairs | RosaliaConversations):
        """Exact 1:1 batches of pairs; conversations 1:1 on "has a positive turn" when that can make a batch (even
        batch size, enough of each), else shuffled: their turns mix polarities anyway."""
        size, replicas = self._train_batch_size, self.accelerator.num_processes
        if isinstance(dataset, RosaliaConversations) and not balanced_batches_possible(dataset.positive, size):
            logger.warning("conversations: %d of %d have a positive turn; batches of %d are shuffled, not 1:1",
                           sum(dataset.positive), len(dataset), size)
            return ShuffledBatchSampler(len(dataset), size, num_replicas=replicas, seed=self.args.seed, shard=False)
        return BalancedPolarityBatchSampler(
            dataset.positive, size, image_ids=dataset.image_keys, group_by_image=self.args.group_by_image,
            num_replicas=replicas, seed=self.args.seed, shard=False,
        )

    # --- loss ---
    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        outputs = model(**inputs)
        with torch.no_grad():
            parts = torch.stack([_scalar(getattr(outputs, name), outputs.loss) for name in LOSS_PARTS])
            parts = self.accelerator.gather_for_metrics(parts[None]).mean(dim=0)
            for name, value in zip(LOSS_PARTS, parts.tolist(), strict=True):
                self._loss_parts[name].append(value)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            for name, values in self._loss_parts.items():
                if values:
                    logs[name] = round(sum(values) / len(values), 6)
            self._loss_parts.clear()
        super().log(logs, *args, **kwargs)

    # --- evaluation ---
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """gIoU / cIoU / N-Acc of segment-only prediction on the evaluation pairs (main process; others wait)."""
        dataset = eval_dataset if eval_dataset is not None else self.raw_eval_dataset
        if dataset is None:
            raise ValueError("RosaliaTrainer.evaluate needs an eval_dataset (a `pairs` split)")
        metrics: dict[str, float] = {}
        if self.accelerator.is_main_process:
            metrics = self.ils_metrics(dataset, metric_key_prefix)
        self.accelerator.wait_for_everyone()
        if metrics:
            self.log(dict(metrics))
        self.last_eval_metrics = metrics
        return metrics

    def ils_metrics(self, dataset, prefix: str = "eval") -> dict[str, float]:
        from rosalia_hf.evaluation import evaluate_model

        if self.args.eval_max_samples is not None:
            dataset = dataset.select(range(min(len(dataset), self.args.eval_max_samples)))
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            result = evaluate_model(RosaliaPredictor(model, self.processor), dataset, segment_only=True,
                                    batch_size=self.args.per_device_eval_batch_size, progress=False, num_cases=0)
        finally:
            model.train(was_training)
        figures = result["metrics"]
        return {f"{prefix}_{key}": float(figures[key]) for key in ("giou", "ciou", "n_acc")}

    # --- saving ---
    def save_adapters(self, output_dir: str | Path) -> Path:
        """LoRA adapters + fully trained modules + added token rows only (``PeftModel.save_pretrained``)."""
        output_dir = Path(output_dir)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        return output_dir

    def save_merged(self, output_dir: str | Path) -> Path:
        """The full model with LoRA merged into the language model, loadable by ``RosaliaForSegmentation``."""
        output_dir = Path(output_dir)
        peft_model = self.accelerator.unwrap_model(self.model)
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        return output_dir


def _scalar(value: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return value.detach().float().reshape(()) if value is not None else torch.zeros((), device=like.device)
