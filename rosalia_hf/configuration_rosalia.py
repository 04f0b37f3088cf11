"""ROSALIA configuration: a LLaVA config and a SAM config nested under one ``rosalia`` model type.

The defaults describe the LISA-7B-v1 / ROSALIA-7B-v1 checkpoints: a LLaMA-7B language model, CLIP ViT-L/14 at
224 px (feature layer -2, CLS dropped, so 256 patch tokens per image), a *single* ``Linear(1024, 4096)``
multimodal projector, and SAM ViT-H at 1024 px.
"""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlavaConfig, SamConfig
from transformers.configuration_utils import PreTrainedConfig

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")

# CLIP ViT-L/14 at 224 px, as LISA loads it from ``openai/clip-vit-large-patch14``.
LISA_CLIP_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
LISA_LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "vocab_size": 32004, "max_position_embeddings": 4096,
                 "rms_norm_eps": 1e-6}
SAM_VIT_H = {"vision_config": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                               "global_attn_indexes": [7, 15, 23, 31]}}


def default_llava_config() -> dict:
    """The LISA-7B-v1 LLaVA layout: 256 image tokens, feature layer -2, CLS dropped."""
    return {
        "vision_config": dict(LISA_CLIP_VISION),
        "text_config": dict(LISA_LLAMA_7B),
        "image_token_index": 32003,
        "image_seq_length": 256,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }


@strict
class RosaliaConfig(PreTrainedConfig):
    r"""
    Configuration of [`RosaliaForSegmentation`].

    Args:
        llava_config (`dict` or `LlavaConfig`, *optional*):
            The LLaVA part (CLIP vision tower + projector + LLaMA). Defaults to the LISA-7B-v1 layout.
        sam_config (`dict` or `SamConfig`, *optional*):
            The SAM part. Defaults to SAM ViT-H (1024 px).
        seg_token (`str`, defaults to `"[SEG]"`):
            The token whose predicting hidden state becomes the SAM prompt.
        seg_token_index (`int`, *optional*):
            Its id in the tokenizer. Always read from the tokenizer by the converters, never assumed.
        out_dim (`int`, defaults to 256):
            Output width of `text_hidden_fcs`; must equal the SAM prompt width.
        projector_type (`str`, defaults to `"linear"`):
            `"linear"`: one `Linear(vision, text)` (LISA-7B-v1); `"mlp2x_gelu"`: LLaVA-1.5's two-layer MLP.
        ce_loss_weight, bce_loss_weight, dice_loss_weight (`float`):
            Loss weights of the paper: 0.5 CE(text) + 5.0 BCE(mask) + 1.0 Dice(mask, positives only).
        freeze_vision_tower, freeze_sam_image_encoder (`bool`):
            Run those towers without gradients and mark their parameters frozen.
    """

    model_type = "rosalia"
    sub_configs_defaults = {"llava_config": LlavaConfig, "sam_config": SamConfig}

    llava_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None
    seg_token: str = "[SEG]"
    seg_token_index: int | None = None
    out_dim: int = 256
    projector_type: Literal["linear", "mlp2x_gelu"] = "linear"
    ce_loss_weight: float = 0.5
    bce_loss_weight: float = 5.0
    dice_loss_weight: float = 1.0
    dice_scale: float = 1000.0
    dice_eps: float = 1e-6
    freeze_vision_tower: bool = True
    freeze_sam_image_encoder: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.llava_config is None:
            self.llava_config = default_llava_config()
        if self.sam_config is None:
            self.sam_config = {k: dict(v) for k, v in SAM_VIT_H.items()}
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks that the nested configs fit together (SAM prompt width, projector type)."""
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}")
        sam_width = self.sam_config.prompt_encoder_config.hidden_size
        if self.out_dim != sam_width:
            raise ValueError(f"out_dim {self.out_dim} must equal the SAM prompt width {sam_width}")

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The LLaMA config, so that ``resize_token_embeddings``, generation and peft find the language model."""
        return self.llava_config.get_text_config(decoder=decoder, encoder=encoder)

    @property
    def text_hidden_size(self) -> int:
        return self.llava_config.text_config.hidden_size

    @property
    def sam_image_size(self) -> int:
        return self.sam_config.vision_config.image_size


AutoConfig.register("rosalia", RosaliaConfig, exist_ok=True)

__all__ = ["RosaliaConfig", "PROJECTOR_TYPES", "default_llava_config"]
