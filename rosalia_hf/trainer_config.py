"""Training arguments of ROSALIA with the paper's defaults (Sec. 6.1, Appendix F)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

# LoRA goes on the language model's linear layers only. The pattern is anchored on ``language_model`` so it can
# never match the CLIP tower (``vision_tower...self_attn.q_proj``) or SAM (``sam...``), whose layers share names.
LANGUAGE_MODEL_LORA_REGEX = r".*\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


@dataclass
class RosaliaTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with ROSALIA's defaults: 15 epochs, lr 3e-4, AdamW (0.9, 0.95), no weight decay,
    global batch 256, 100 warm-up steps then linear decay to 0, gradient clipping 1.0, bf16, LoRA r=128 α=256."""

    num_train_epochs: float = field(default=15.0, metadata={"help": "Epochs over the 1:1-balanced pairs (paper: 15)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate of AdamW (paper: 3e-4)."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (paper: 0.95)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (paper: 0)."})
    warmup_steps: float = field(default=100, metadata={"help": "Linear warm-up steps before the linear decay to 0."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Decay after warm-up (paper: linear to 0)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (paper: 1.0)."})
    bf16: bool = field(default=True, metadata={"help": "bf16 mixed precision (paper: bf16). Turn off on old GPUs."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every column: the collator needs images, masks and texts."}
    )
    global_train_batch_size: int | None = field(
        default=256,
        metadata={
            "help": "Pairs per optimiser step over all processes (paper: 256). When set, gradient_accumulation_steps "
            "is derived from it, per_device_train_batch_size and the world size. None keeps the given accumulation."
        },
    )
    lora_r: int = field(default=128, metadata={"help": "LoRA rank on the language model (paper: 128)."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha (paper: 256)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (paper: 0.05)."})
    lora_target_regex: str = field(
        default=LANGUAGE_MODEL_LORA_REGEX,
        metadata={"help": "Full-name regex of the modules that get LoRA; must not match CLIP or SAM modules."},
    )
    histogram_equalization_prob: float = field(
        default=0.5, metadata={"help": "Probability of histogram equalisation of a training image (never in eval)."}
    )
    model_max_length: int = field(default=512, metadata={
        "help": "Maximum tokens of prompt + image tokens + answer; the collator refuses a longer pair, naming it."})
    group_by_image: bool = field(
        default=True,
        metadata={"help": "Keep pairs of one image in the same batch so the image encoders run once per image."},
    )
    eval_max_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many validation pairs (None: all)."}
    )
    ce_loss_weight: float | None = field(default=None, metadata={
        "help": "Weight of the text cross-entropy; None keeps the model config's (paper: 0.5)."})
    bce_loss_weight: float | None = field(default=None, metadata={
        "help": "Weight of the mask BCE over all pairs; None keeps the model config's (paper: 5.0). The tiny CPU demo "
                "raises it: a few hundred steps on a small set otherwise settle on masks for every instruction."})
    dice_loss_weight: float | None = field(default=None, metadata={
        "help": "Weight of the mask Dice over positive pairs; None keeps the model config's (paper: 1.0)."})

    def __post_init__(self) -> None:
        if self.global_train_batch_size is not None:
            self.gradient_accumulation_steps = accumulation_steps(
                self.global_train_batch_size, self.per_device_train_batch_size, int(os.environ.get("WORLD_SIZE", 1))
            )
        super().__post_init__()


def accumulation_steps(global_batch: int, per_device_batch: int, world_size: int) -> int:
    """Gradient-accumulation steps so that ``per_device × world × steps`` reaches ``global_batch`` (rounded up).

    >>> accumulation_steps(256, 2, 8)
    16
    >>> accumulation_steps(10, 4, 1)
    3
    """
    return max(1, math.ceil(global_batch / (per_device_batch * world_size)))
