"""Tiny random ROSALIA models for tests, examples and sanity checks: no download, a few seconds on CPU.

``tiny_rosalia(seed)`` builds a real (byte-level BPE) tokenizer trained in-process on a fixed text that covers
the LLaVA-v1 conversation and the MIMIC-ILS instruction/answer vocabulary, so any string tokenizes and decodes
exactly. Weights are random but deterministic for a given seed.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

from rosalia_hf.configuration_rosalia import RosaliaConfig
from rosalia_hf.modeling_rosalia import RosaliaForSegmentation
from rosalia_hf.processing_rosalia import LLAVA_V1_SYSTEM, RosaliaProcessor

TINY_CLIP_SIZE = 32
TINY_CLIP_PATCH = 8
TINY_SAM_SIZE = 64
TINY_SAM_PATCH = 16
TINY_HIDDEN = 32
TINY_BPE_VOCAB = 400
TINY_INIT = 0.02  # transformers' default initializer_range

_CORPUS_WORDS = """
USER: ASSISTANT: Sure, it is the segmentation result. There is no lesion here. Please segment the
cardiomegaly pneumonia atelectasis opacity consolidation edema effusion heart lung lungs zone base apical
right upper zone lung right mid zone lung right lung base right apical zone lung left upper zone lung left mid
zone lung left lung base left apical zone lung lung lower lobe left lung upper lobe left lung lower lobe right
lung middle lobe right lung upper lobe right right lung left lung. Where is the finding? Segment the region of
possible probable likely suspected mild moderate severe small large bilateral located in on at of and or with
a an this that which shows show find identify locate highlight mask chest x-ray image radiograph abnormal area
no evidence of could be may represent consistent with, answer: yes no . ? , : ; ' " ( ) - / 0 1 2 3 4 5 6 7 8 9
"""


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A LLaMA-like byte-level BPE tokenizer (``<s>`` prepended, ``</s>`` eos, ``<unk>`` pad) built offline."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_BPE_VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([LLAVA_V1_SYSTEM, _CORPUS_WORDS] * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[
        ("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", model_max_length=4096)


def tiny_processor(sam_image_size: int = TINY_SAM_SIZE) -> RosaliaProcessor:
    """Processor with the tiny tokenizer, CLIP at 32 px and SAM at ``sam_image_size``."""
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_CLIP_SIZE},
                                         crop_size={"height": TINY_CLIP_SIZE, "width": TINY_CLIP_SIZE})
    n_patches = (TINY_CLIP_SIZE // TINY_CLIP_PATCH) ** 2
    return RosaliaProcessor(image_processor, tiny_tokenizer(), image_seq_length=n_patches,
                            sam_image_size=sam_image_size)


def tiny_config(processor: RosaliaProcessor, projector_type: str = "linear", hidden: int = TINY_HIDDEN, *,
                sam_patch_size: int = TINY_SAM_PATCH, freeze_sam_image_encoder: bool = True,
                text_initializer_range: float = TINY_INIT) -> RosaliaConfig:
    """Hidden 32, two layers everywhere; token ids read from ``processor``'s tokenizer. SAM's image embedding is
    ``(sam_image_size / sam_patch_size)`` squared; ``freeze_sam_image_encoder=False`` lets it be trained.

    ``text_initializer_range`` is the std of the language model's random weights. At the default 0.02 a 32-wide
    LLaMA attends almost uniformly, its attention output is ~1e-3 of the residual stream (so the ``[SEG]`` state
    hardly depends on the instruction) and the frozen ``lm_head`` can reach logits of ~0.6 at most (so the text
    loss cannot fall); 0.2 gives attention, instruction-dependent ``[SEG]`` states and learnable answers."""
    if processor.sam_image_size % sam_patch_size:
        raise ValueError(f"sam_patch_size {sam_patch_size} must divide the SAM input side {processor.sam_image_size}")
    sam_width = hidden
    llava = {
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                          "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": TINY_CLIP_PATCH,
                          "image_size": TINY_CLIP_SIZE, "projection_dim": hidden},
        "text_config": {"model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                        "vocab_size": len(processor.tokenizer), "max_position_embeddings": 512,
                        "initializer_range": text_initializer_range,
                        "pad_token_id": processor.tokenizer.pad_token_id,
                        "bos_token_id": processor.tokenizer.bos_token_id,
                        "eos_token_id": processor.tokenizer.eos_token_id},
        "image_token_index": processor.image_token_id,
        "image_seq_length": processor.image_seq_length,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }
    sam = {
        "vision_config": {"hidden_size": hidden, "output_channels": sam_width, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": processor.sam_image_size,
                          "patch_size": sam_patch_size,
                          "window_size": 2, "global_attn_indexes": [1], "num_pos_feats": sam_width // 2,
                          "mlp_dim": 2 * hidden, "initializer_range": 0.02},
        "prompt_encoder_config": {"hidden_size": sam_width, "image_size": processor.sam_image_size,
                                  "patch_size": sam_patch_size},
        "mask_decoder_config": {"hidden_size": sam_width, "mlp_dim": 2 * sam_width, "num_attention_heads": 2,
                                "iou_head_hidden_dim": sam_width},
    }
    return RosaliaConfig(llava_config=llava, sam_config=sam, seg_token=processor.seg_token,
                         seg_token_index=processor.seg_token_id, out_dim=sam_width, projector_type=projector_type,
                         freeze_sam_image_encoder=freeze_sam_image_encoder)


def tiny_rosalia(seed: int = 0, projector_type: str = "linear", sam_image_size: int = TINY_SAM_SIZE, *,
                 sam_patch_size: int = TINY_SAM_PATCH, freeze_sam_image_encoder: bool = True,
                 text_initializer_range: float = TINY_INIT,
                 hidden: int = TINY_HIDDEN) -> tuple[RosaliaForSegmentation, RosaliaProcessor]:
    """A tiny random ``(model, processor)`` pair, deterministic for ``seed``; the model is in eval mode.

    The defaults are the test model (SAM 64 px, patch 16, frozen encoder, width 32, LM init 0.02). The demo's model
    that learns on the phantom cohort (``examples/configs/tiny_cpu.yaml``) uses a finer SAM (``sam_image_size=128``,
    ``sam_patch_size=8``: a 16x16 embedding) whose random image encoder is trained
    (``freeze_sam_image_encoder=False``: a frozen *random* encoder gives the mask decoder little to segment from),
    ``text_initializer_range=0.2`` (see :func:`tiny_config`) and ``hidden=64``."""
    processor = tiny_processor(sam_image_size)
    config = tiny_config(processor, projector_type, hidden, sam_patch_size=sam_patch_size,
                         freeze_sam_image_encoder=freeze_sam_image_encoder,
                         text_initializer_range=text_initializer_range)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RosaliaForSegmentation(config)
    return model.eval(), processor


__all__ = ["tiny_rosalia", "tiny_processor", "tiny_tokenizer", "tiny_config", "TINY_SAM_SIZE", "TINY_SAM_PATCH"]
