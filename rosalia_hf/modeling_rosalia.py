"""ROSALIA: LLaVA + SAM with a ``[SEG]`` token, as a ``transformers`` model (paper Sec. 5, after LISA).

The post-norm last-layer hidden state at the position *before* each ``[SEG]`` token (the one that predicts it)
goes through ``text_hidden_fcs`` to a 256-d sparse prompt for SAM's mask decoder (single-mask output, no-mask
dense embedding). SAM's image encoder runs once per image, without gradients, and its embedding is reused by
every instruction on that image. Masks come back in each image's original frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, LlavaForConditionalGeneration, SamModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from rosalia_hf.configuration_rosalia import RosaliaConfig
from rosalia_hf.losses import rosalia_mask_losses
from rosalia_hf.mask_geometry import masks_to_original

IGNORE_INDEX = -100
# Arguments that Trainer, peft or generation utilities may pass and that change nothing here.
_IGNORED_FORWARD_KWARGS = frozenset({"return_dict", "output_attentions", "output_hidden_states", "use_cache",
                                     "num_items_in_batch"})


@dataclass
class RosaliaOutput(ModelOutput):
    r"""
    Output of [`RosaliaForSegmentation`]. The loss parts are already weighted: ``loss = ce_loss + mask_bce_loss +
    mask_dice_loss`` (each present only when its inputs were given).

    loss (`torch.FloatTensor` of shape `()`): the training loss.
    ce_loss (`torch.FloatTensor` of shape `()`): ``ce_loss_weight`` x token cross-entropy over answer tokens.
    mask_bce_loss (`torch.FloatTensor` of shape `()`): ``bce_loss_weight`` x per-mask BCE averaged over all masks.
    mask_dice_loss (`torch.FloatTensor` of shape `()`): ``dice_loss_weight`` x Dice averaged over positive masks.
    pred_masks (`tuple[torch.FloatTensor]`): one ``HxW`` logit map per ``[SEG]`` (row-major over the batch), each
        in the original frame of its image (``original_sizes[seg_image_index[k]]``).
    logits (`torch.FloatTensor` of shape `(num_instructions, sequence_length, vocab_size)`): language-model logits.
    low_res_masks (`torch.FloatTensor` of shape `(num_seg, 1, 4*e, 4*e)`): SAM decoder logits, padded SAM frame.
    seg_row_index, seg_image_index (`torch.LongTensor` of shape `(num_seg,)`): the instruction row and the image of
        each ``[SEG]``.
    """

    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    mask_bce_loss: torch.Tensor | None = None
    mask_dice_loss: torch.Tensor | None = None
    pred_masks: tuple[torch.Tensor, ...] | None = None
    logits: torch.Tensor | None = None
    low_res_masks: torch.Tensor | None = None
    seg_row_index: torch.Tensor | None = None
    seg_image_index: torch.Tensor | None = None


class RosaliaLinearProjector(nn.Module):
    """LISA-7B-v1's multimodal projector: one ``Linear(vision_hidden, text_hidden)``."""

    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(vision_hidden, text_hidden, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)


class RosaliaPreTrainedModel(PreTrainedModel):
    config: RosaliaConfig
    config_class = RosaliaConfig
    base_model_prefix = "rosalia"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "SamVisionLayer", "SamTwoWayAttentionBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # The loss is already a per-batch mean over masks and answer tokens; Trainer must not rescale it.
    accepts_loss_kwargs = False


class RosaliaForSegmentation(RosaliaPreTrainedModel):
    """LLaVA (CLIP + projector + LLaMA) and SAM, joined by ``text_hidden_fcs`` at the ``[SEG]`` token."""

    def __init__(self, config: RosaliaConfig):
        super().__init__(config)
        config.validate_architecture()
        self.llava = LlavaForConditionalGeneration(config.llava_config)
        if config.projector_type == "linear":
            llava_cfg = config.llava_config
            self.llava.model.multi_modal_projector = RosaliaLinearProjector(
                llava_cfg.vision_config.hidden_size, llava_cfg.text_config.hidden_size,
                bias=llava_cfg.multimodal_projector_bias,
            )
        self.sam = SamModel(config.sam_config)
        hidden = config.text_hidden_size
        self.text_hidden_fcs = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.out_dim))
        self.post_init()
        self._apply_freezing()

    def _apply_freezing(self) -> None:
        if self.config.freeze_vision_tower:
            self.llava.model.vision_tower.requires_grad_(False)
        if self.config.freeze_sam_image_encoder:
            self.sam.vision_encoder.requires_grad_(False)

    # --- embeddings plumbing (so resize_token_embeddings, peft and generate work) ---
    def get_input_embeddings(self) -> nn.Module:
        return self.llava.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llava.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llava.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.llava.lm_head = value

    @property
    def seg_token_index(self) -> int:
        if self.config.seg_token_index is None:
            raise ValueError("config.seg_token_index is unset; set it from the tokenizer (processor.seg_token_id)")
        return int(self.config.seg_token_index)

    # --- image towers ---
    def get_clip_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP patch features projected to the text width, ``(num_images, num_patches, text_hidden)``."""
        llava_cfg = self.config.llava_config
        tower = self.llava.model.vision_tower
        param = next(tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_tower):
            out = tower(pixel_values.to(device=param.device, dtype=param.dtype), output_hidden_states=True,
                        return_dict=True)
            feats = out.hidden_states[llava_cfg.vision_feature_layer]
            if llava_cfg.vision_feature_select_strategy == "default":
                feats = feats[:, 1:]
        return self.llava.model.multi_modal_projector(feats)

    def get_sam_image_embeddings(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM image embeddings ``(num_images, 256, e, e)``; no gradients when the encoder is frozen."""
        encoder = self.sam.vision_encoder
        param = next(encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_sam_image_encoder):
            pixels = sam_pixel_values.to(device=param.device, dtype=param.dtype)
            return encoder(pixels, return_dict=True).last_hidden_state

    # --- language model ---
    def _language_forward(self, input_ids, attention_mask, image_features, image_index):
        """Runs LLaVA with the per-image CLIP features placed at each row's image tokens."""
        per_row = [image_features[i] for i in image_index.tolist()]
        position_ids = None
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.llava.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=per_row)},
            use_cache=False,
            return_dict=True,
        )
        hidden = out.last_hidden_state  # post-norm last layer
        return hidden, self.llava.lm_head(hidden)

    def _seg_prompt_positions(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, position) of the hidden state that *predicts* each ``[SEG]``, row-major order."""
        seg = input_ids == self.seg_token_index
        predicting = torch.zeros_like(seg)
        predicting[:, :-1] = seg[:, 1:]
        rows, cols = predicting.nonzero(as_tuple=True)
        return rows, cols

    # --- SAM decoding ---
    def decode_masks(self, image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor,
                     seg_image_index: torch.Tensor) -> torch.Tensor:
        """SAM mask decoder, single-mask output: ``(num_seg, 1, 4e, 4e)`` logits in the padded SAM frame.

        ``prompt_embeddings`` is ``(num_seg, 256)``; each becomes a sparse prompt ``(1, 1, 1, 256)`` next to the
        no-mask dense embedding and the image-wide positional embedding of its image.
        """
        decoder = self.sam.mask_decoder
        dtype = decoder.iou_token.weight.dtype
        n = prompt_embeddings.shape[0]
        device = decoder.iou_token.weight.device  # towers may sit on different devices (device_map="auto")
        emb = image_embeddings.to(device)[seg_image_index.to(device)].to(dtype)
        sparse = prompt_embeddings.to(device=device, dtype=dtype).reshape(n, 1, 1, -1)
        size = emb.shape[-1]
        no_mask = self.sam.prompt_encoder.no_mask_embed.weight.to(device=device, dtype=dtype)
        dense = no_mask.reshape(1, -1, 1, 1).expand(n, -1, size, size)
        pos = self.sam.get_image_wide_positional_embeddings().to(device=device, dtype=dtype).repeat(n, 1, 1, 1)
        low_res, _ = decoder(image_embeddings=emb, image_positional_embeddings=pos, sparse_prompt_embeddings=sparse,
                             dense_prompt_embeddings=dense, multimask_output=False)
        return low_res[:, 0]

    # --- forward ---
    def forward(
        self,
        pixel_values: torch.Tensor,
        sam_pixel_values: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        masks: Sequence[torch.Tensor] | torch.Tensor | None = None,
        mask_positive: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        **kwargs,
    ) -> RosaliaOutput:
        r"""
        Batch contract (``n`` instructions on ``m`` unique images; ``S`` = SAM image size, ``C`` = CLIP size):

        pixel_values (`torch.FloatTensor` of shape `(m, 3, C, C)`): CLIP pixels, one row per *unique* image.
        sam_pixel_values (`torch.FloatTensor` of shape `(m, 3, S, S)`): SAM pixels (longest side resized to ``S``,
            SAM mean/std, zero-padded bottom/right), one row per unique image.
        input_ids, attention_mask (`torch.LongTensor` of shape `(n, L)`): conversations from
            [`RosaliaProcessor`] (image tokens already expanded, any padding side).
        labels (`torch.LongTensor` of shape `(n, L)`, *optional*): ``input_ids`` with everything but the answer
            tokens set to -100. Gives ``ce_loss``.
        masks (*optional*): ground truth, one entry per instruction row, in the original frame of the row's image:
            a list of ``n`` tensors, each ``HxW`` (one ``[SEG]``) or ``(k, H, W)`` (``k`` = number of ``[SEG]`` in
            the row), bool or {0, 1}; or a padded tensor ``(n, H_max, W_max)`` whose top-left ``(H, W)`` block
            (from ``original_sizes``) is used. Empty masks are negatives. Gives ``mask_bce_loss``/``mask_dice_loss``.
        mask_positive (`torch.BoolTensor` of shape `(num_seg,)`, *optional*): which masks are positives (Dice
            applies to those only), one flag per ``[SEG]`` in row-major order (a multi-turn row: one per turn);
            default: the mask has a foreground pixel.
        original_sizes (`torch.LongTensor` of shape `(m, 2)`, *optional*): ``(H, W)`` of each image; default
            ``(S, S)``.
        image_index (`torch.LongTensor` of shape `(n,)`, *optional*): the image row of each instruction; default
            ``arange(n)`` (requires ``m == n``). Both towers run once per image, not once per instruction.
        """
        # None-valued extras (peft's CAUSAL_LM wrapper passes inputs_embeds=None, task_ids=None) change nothing.
        unexpected = {k for k, v in kwargs.items() if v is not None} - _IGNORED_FORWARD_KWARGS
        if unexpected:
            raise TypeError(f"RosaliaForSegmentation.forward got unexpected arguments {sorted(unexpected)}")
        device = input_ids.device
        n_images = pixel_values.shape[0]
        image_index = self._check_image_index(image_index, input_ids.shape[0], n_images, device)
        sizes = self._original_sizes(original_sizes, n_images)

        image_features = self.get_clip_features(pixel_values)
        hidden, logits = self._language_forward(input_ids, attention_mask, image_features, image_index)
        rows, cols = self._seg_prompt_positions(input_ids)
        seg_image_index = image_index[rows]

        pred_masks = low_res = None
        if rows.numel() > 0:
            fcs_weight = next(self.text_hidden_fcs.parameters())  # also under peft modules_to_save
            selected = hidden[rows.to(hidden.device), cols.to(hidden.device)]
            prompts = self.text_hidden_fcs(selected.to(device=fcs_weight.device, dtype=fcs_weight.dtype))
            image_embeddings = self.get_sam_image_embeddings(sam_pixel_values)
            low_res = self.decode_masks(image_embeddings, prompts, seg_image_index)
            pred_masks = masks_to_original(low_res, [sizes[i] for i in seg_image_index.tolist()],
                                           self.config.sam_image_size)

        out = RosaliaOutput(logits=logits, pred_masks=pred_masks, low_res_masks=low_res, seg_row_index=rows,
                            seg_image_index=seg_image_index)
        self._add_losses(out, labels, masks, mask_positive, rows, seg_image_index, sizes)
        return out

    def _check_image_index(self, image_index, n_rows: int, n_images: int, device) -> torch.Tensor:
        if image_index is None:
            if n_images != n_rows:
                raise ValueError(f"{n_rows} instructions on {n_images} images: pass image_index")
            return torch.arange(n_rows, device=device)
        image_index = torch.as_tensor(image_index, device=device).long()
        if image_index.shape != (n_rows,) or (n_rows and (image_index.min() < 0 or image_index.max() >= n_images)):
            raise ValueError(f"image_index must be ({n_rows},) with values in [0, {n_images}), got {image_index}")
        return image_index

    def _original_sizes(self, original_sizes, n_images: int) -> list[tuple[int, int]]:
        if original_sizes is None:
            return [(self.config.sam_image_size, self.config.sam_image_size)] * n_images
        sizes = [tuple(int(v) for v in s) for s in torch.as_tensor(original_sizes).tolist()]
        if len(sizes) != n_images:
            raise ValueError(f"original_sizes has {len(sizes)} rows for {n_images} images")
        return sizes

    def _text_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy over the supervised (answer) positions, with the softmax taken over the vocabulary
        without the ``<image>`` placeholder: LISA has no such token, so the loss is the reference's, and generation
        never produces it either. Only the supervised rows are gathered (a few dozen per answer, not the sequence)."""
        shift_labels = labels[:, 1:].to(logits.device)
        supervised = shift_labels != IGNORE_INDEX
        selected = logits[:, :-1][supervised].float()
        image_token = self.config.llava_config.image_token_index
        if image_token is not None and 0 <= image_token < selected.shape[-1]:
            column = torch.tensor([image_token], device=selected.device)
            selected = selected.index_fill(-1, column, float("-inf"))
        return F.cross_entropy(selected, shift_labels[supervised])

    def _add_losses(self, out: RosaliaOutput, labels, masks, mask_positive, rows, seg_image_index, sizes) -> None:
        cfg = self.config
        total = None
        if labels is not None:
            out.ce_loss = cfg.ce_loss_weight * self._text_loss(out.logits, labels)
            total = out.ce_loss
        if masks is not None:
            targets = _targets_per_seg(masks, rows, seg_image_index, sizes)
            if out.pred_masks is None or len(targets) != len(out.pred_masks):
                found = 0 if out.pred_masks is None else len(out.pred_masks)
                raise ValueError(f"{len(targets)} ground-truth masks for {found} [SEG] tokens in input_ids")
            targets = [t.to(p.device) for t, p in zip(targets, out.pred_masks, strict=True)]
            positive = None if mask_positive is None else torch.as_tensor(mask_positive).bool().reshape(-1).tolist()
            if positive is not None and len(positive) != len(targets):  # one flag per [SEG], not per row
                raise ValueError(f"mask_positive has {len(positive)} flags for {len(targets)} [SEG] masks (one per "
                                 f"[SEG], row-major: a multi-turn row has one per turn)")
            bce, dice = rosalia_mask_losses(out.pred_masks, targets, positive, cfg.dice_scale, cfg.dice_eps)
            out.mask_bce_loss = cfg.bce_loss_weight * bce
            out.mask_dice_loss = cfg.dice_loss_weight * dice
            mask_total = out.mask_bce_loss + out.mask_dice_loss
            total = mask_total if total is None else total + mask_total
        out.loss = total

def _targets_per_seg(masks, rows: torch.Tensor, seg_image_index: torch.Tensor, sizes) -> list[torch.Tensor]:
    """Flattens per-row ground truth to one ``HxW`` target per ``[SEG]`` (row-major)."""
    n_per_row = np.bincount(rows.cpu().numpy(), minlength=len(masks)) if rows.numel() else np.zeros(len(masks), int)
    image_of_row = {}
    for r, i in zip(rows.tolist(), seg_image_index.tolist(), strict=True):
        image_of_row[r] = i
    targets = []
    for row, mask in enumerate(masks):
        k = int(n_per_row[row])
        if k == 0:
            if mask is not None and not isinstance(masks, torch.Tensor):
                raise ValueError(f"row {row} has a ground-truth mask but no [SEG] token")
            continue
        mask = torch.as_tensor(mask)
        if isinstance(masks, torch.Tensor):  # padded (n, H_max, W_max): crop to the image's original frame
            height, width = sizes[image_of_row[row]]
            mask = mask[:height, :width]
        mask = mask.reshape(-1, *mask.shape[-2:])
        if mask.shape[0] != k:
            raise ValueError(f"row {row}: {mask.shape[0]} masks for {k} [SEG] tokens")
        expected = tuple(sizes[image_of_row[row]])
        if tuple(mask.shape[-2:]) != expected:
            raise ValueError(f"row {row}: mask is {tuple(mask.shape[-2:])}, its image is {expected} (H, W)")
        targets.extend(mask.float())
    return targets


AutoModel.register(RosaliaConfig, RosaliaForSegmentation, exist_ok=True)

__all__ = ["RosaliaForSegmentation", "RosaliaPreTrainedModel", "RosaliaOutput", "RosaliaLinearProjector"]
