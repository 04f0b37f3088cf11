"""RosaliaForSegmentation: shapes, the paper's loss, [SEG] hidden-state selection, gradients, frames, round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rosalia_hf import RosaliaForSegmentation
from rosalia_hf.losses import mask_bce, mask_dice, rosalia_mask_losses
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.testing import tiny_config, tiny_processor, tiny_rosalia


class RosaliaModelTester:
    """Tiny configs (hidden 32, 2 layers, CLIP 32 px, SAM 64 px) and a batch of 3 instructions on 2 images."""

    def __init__(self, seed: int = 0, sizes=((40, 80), (72, 48))):
        self.seed = seed
        self.sizes = sizes
        self.instructions = ["Segment the opacity in the right lung.", "Where is the effusion?", "Segment the heart."]
        self.answers = ["Sure, it is [SEG].", "There is no effusion. [SEG]", "[SEG]"]
        self.image_index = [0, 1, 0]

    def get_config(self):
        return tiny_config(tiny_processor())

    def images(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.integers(0, 256, size, dtype=np.uint8) for size in self.sizes]

    def masks(self) -> list[torch.Tensor]:
        """Row 0 positive, row 1 negative (empty), row 2 positive; each in its image's original frame."""
        out = []
        for row, image in enumerate(self.image_index):
            mask = torch.zeros(self.sizes[image])
            if row != 1:
                mask[5 + 3 * row: 25, 10: 30 + row] = 1
            out.append(mask)
        return out

    def prepare_config_and_inputs(self):
        model, processor = tiny_rosalia(self.seed)
        batch = processor(self.images(), self.instructions, answers=self.answers, image_index=self.image_index)
        return model, processor, dict(batch)

    def create_and_check_forward_shapes(self, model, batch):
        with torch.no_grad():
            out = model(**batch, masks=self.masks())
        n, length = batch["input_ids"].shape
        assert out.logits.shape == (n, length, model.config.llava_config.text_config.vocab_size)
        assert [tuple(m.shape) for m in out.pred_masks] == [self.sizes[i] for i in self.image_index]
        assert out.low_res_masks.shape == (3, 1, 16, 16)
        assert out.seg_image_index.tolist() == self.image_index
        assert torch.isclose(out.loss, out.ce_loss + out.mask_bce_loss + out.mask_dice_loss)
        return out


@pytest.fixture(scope="module")
def tester():
    return RosaliaModelTester()


@pytest.fixture(scope="module")
def prepared(tester):
    return tester.prepare_config_and_inputs()


def test_forward_shapes(tester, prepared):
    model, _, batch = prepared
    tester.create_and_check_forward_shapes(model, batch)


def test_config_defaults_describe_lisa_7b():
    from rosalia_hf import RosaliaConfig

    cfg = RosaliaConfig()
    assert (cfg.ce_loss_weight, cfg.bce_loss_weight, cfg.dice_loss_weight, cfg.out_dim) == (0.5, 5.0, 1.0, 256)
    assert cfg.projector_type == "linear" and cfg.seg_token == "[SEG]"
    vision = cfg.llava_config.vision_config
    assert (vision.hidden_size, vision.image_size, vision.patch_size) == (1024, 224, 14)
    assert cfg.llava_config.vision_feature_layer == -2 and cfg.llava_config.image_seq_length == 256
    assert (vision.image_size // vision.patch_size) ** 2 == 256
    assert cfg.llava_config.text_config.hidden_size == 4096 and cfg.sam_image_size == 1024


def _independent_losses(out, batch, masks, image_token: int, weights=(0.5, 5.0, 1.0)):
    """The paper's loss written out by hand from the model's own logits; the softmax leaves out the ``<image>``
    placeholder's column, which LISA's vocabulary does not have."""
    logits, labels = out.logits[:, :-1].double(), batch["labels"][:, 1:]
    columns = [c for c in range(logits.shape[-1]) if c != image_token]
    logp = torch.full_like(logits, float("-inf"))
    logp[..., columns] = logits[..., columns].log_softmax(-1)
    keep = labels != -100
    ce = -(logp[keep].gather(-1, labels[keep][:, None])).mean()
    bces, dices = [], []
    for pred, gt in zip(out.pred_masks, masks, strict=True):
        p, t = torch.sigmoid(pred.double()), gt.double()
        bces.append(-(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean())
        if t.sum() > 0:
            dices.append(1 - (2 * (p * t).sum() / 1000 + 1e-6) / (p.sum() / 1000 + t.sum() / 1000 + 1e-6))
    bce, dice = torch.stack(bces).mean(), torch.stack(dices).mean()
    return weights[0] * ce, weights[1] * bce, weights[2] * dice


def test_loss_equals_independent_formula(tester, prepared):
    model, _, batch = prepared
    masks = tester.masks()
    with torch.no_grad():
        out = model(**batch, masks=masks)
    ce, bce, dice = _independent_losses(out, batch, masks, model.config.llava_config.image_token_index)
    torch.testing.assert_close(out.ce_loss.double(), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.mask_bce_loss.double(), bce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.mask_dice_loss.double(), dice, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), ce + bce + dice, rtol=1e-5, atol=1e-6)


def test_negatives_contribute_bce_only(tester, prepared):
    model, _, batch = prepared
    masks = tester.masks()
    with torch.no_grad():
        out = model(**batch, masks=masks)
        flagged = model(**batch, masks=masks, mask_positive=torch.tensor([True, False, False]))
    dice_row0 = mask_dice(out.pred_masks[0], masks[0])
    torch.testing.assert_close(flagged.mask_dice_loss, dice_row0)  # only row 0 counts as positive
    torch.testing.assert_close(flagged.mask_bce_loss, out.mask_bce_loss)  # BCE still over all three


def test_padded_mask_tensor_equals_list(tester, prepared):
    model, _, batch = prepared
    masks = tester.masks()
    padded = torch.zeros(3, 72, 80)
    for row, mask in enumerate(masks):
        padded[row, : mask.shape[0], : mask.shape[1]] = mask
    with torch.no_grad():
        a = model(**batch, masks=masks)
        b = model(**batch, masks=padded)
    torch.testing.assert_close(a.loss, b.loss)


@pytest.mark.parametrize(
    ("logit", "target", "bce", "dice"),
    [
        (0.0, 1.0, math.log(2), 1 / 3),  # p = 0.5 everywhere: dice = 1 - 2*0.5/(0.5+1)
        (0.0, 0.0, math.log(2), None),
        (20.0, 1.0, 0.0, 0.0),
    ],
)
def test_loss_functions_hand_computed(logit, target, bce, dice):
    logits, targets = torch.full((4, 5), logit), torch.full((4, 5), target)
    assert mask_bce(logits, targets).item() == pytest.approx(bce, abs=1e-6)
    if dice is not None:
        assert mask_dice(logits, targets).item() == pytest.approx(dice, abs=1e-4)
    total_bce, total_dice = rosalia_mask_losses([logits], [targets])
    assert total_bce.item() == pytest.approx(bce, abs=1e-6)
    assert total_dice.item() == pytest.approx(0.0 if dice is None else dice, abs=1e-4)


def test_mask_losses_reject_mismatched_counts():
    with pytest.raises(ValueError, match="2 predicted masks for 1 target"):
        rosalia_mask_losses([torch.zeros(2, 2)] * 2, [torch.zeros(2, 2)])


def test_seg_prompt_is_post_norm_hidden_state_before_seg(prepared):
    model, processor, batch = prepared
    captured = {}
    language_model = model.llava.model.language_model
    hooks = [model.text_hidden_fcs.register_forward_hook(lambda mod, args, out: captured.setdefault("x", args[0])),
             language_model.layers[-1].register_forward_hook(
                 lambda mod, args, out: captured.setdefault("pre_norm", out[0] if isinstance(out, tuple) else out))]
    with torch.no_grad():
        model(**batch)
        for hook in hooks:
            hook.remove()
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        ref = model.llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          pixel_values=batch["pixel_values"][batch["image_index"]], position_ids=position_ids,
                          output_hidden_states=True)
    rows, cols = (batch["input_ids"] == processor.seg_token_id).nonzero(as_tuple=True)
    expected = ref.hidden_states[-1][rows, cols - 1]
    torch.testing.assert_close(captured["x"], expected, rtol=1e-4, atol=1e-5)
    # post-norm: the final RMSNorm applied to the last decoder layer's output, not that output itself
    pre_norm = captured["pre_norm"][rows, cols - 1]
    with torch.no_grad():
        torch.testing.assert_close(captured["x"], language_model.norm(pre_norm), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(captured["x"], pre_norm, atol=1e-2)


def test_image_towers_run_once_per_image(prepared):
    model, _, batch = prepared
    calls = {"sam": [], "clip": []}
    hooks = [model.sam.vision_encoder.register_forward_hook(lambda m, a, o: calls["sam"].append(a[0].shape[0])),
             model.llava.model.vision_tower.register_forward_hook(lambda m, a, o: calls["clip"].append(a[0].shape[0]))]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    assert calls == {"sam": [2], "clip": [2]}


def test_batched_rows_equal_single_rows(tester, prepared):
    model, processor, batch = prepared
    images = tester.images()
    with torch.no_grad():
        together = model(**batch)
        for row, image in enumerate(tester.image_index):
            alone = processor([images[image]], [tester.instructions[row]], answers=[tester.answers[row]])
            single = model(**alone)
            torch.testing.assert_close(single.pred_masks[0], together.pred_masks[row], rtol=1e-4, atol=1e-4)


def test_gradients_reach_trainable_parts_not_sam_encoder(tester):
    model, processor = tiny_rosalia(1)
    model.train()
    batch = processor(tester.images(), tester.instructions, answers=tester.answers, image_index=tester.image_index)
    out = model(**batch, masks=tester.masks())
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("llava.model.language_model.layers.0.self_attn.q_proj.weight",
                 "llava.model.language_model.layers.1.self_attn.v_proj.weight", "text_hidden_fcs.0.weight",
                 "text_hidden_fcs.2.weight", "sam.mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
                 "sam.mask_decoder.transformer.layers.0.mlp.lin1.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    sam_encoder = [n for n in grads if n.startswith("sam.vision_encoder.")]
    assert sam_encoder and all(grads[n] is None for n in sam_encoder)
    assert not any(p.requires_grad for p in model.sam.vision_encoder.parameters())


def test_lora_adapters_receive_gradients(tester):
    """LoRA without a task type (the CAUSAL_LM wrapper expects a GenerationMixin model)."""
    peft = pytest.importorskip("peft")
    model, processor = tiny_rosalia(2)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    lora = peft.get_peft_model(model, config)
    lora.train()
    batch = processor(tester.images(), tester.instructions, answers=tester.answers, image_index=tester.image_index)
    lora(**batch, masks=tester.masks()).loss.backward()
    lora_b = [p for n, p in lora.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_gradient_checkpointing_gives_same_loss(tester):
    model, processor = tiny_rosalia(3)
    batch = processor(tester.images(), tester.instructions, answers=tester.answers, image_index=tester.image_index)
    model.train()
    plain = model(**batch, masks=tester.masks()).loss
    model.gradient_checkpointing_enable()
    layers = model.llava.model.language_model.layers
    assert all(getattr(layer, "gradient_checkpointing", False) for layer in layers)
    checkpointed = model(**batch, masks=tester.masks())
    checkpointed.loss.backward()
    torch.testing.assert_close(plain, checkpointed.loss)
    assert model.text_hidden_fcs[0].weight.grad is not None


def test_postprocess_crops_padding_for_non_square():
    """Low-res logits positive on the left half of the resized image (and in the padding) → left half only."""
    model, processor = tiny_rosalia(0)
    assert processor.sam_image_size == model.config.sam_image_size
    low = torch.full((1, 1, 16, 16), -10.0)
    low[..., 0:8, 0:8] = 10.0  # padded frame rows 0-31 = the whole 40x80 image resized to 32x64; cols 0-31 = left half
    low[..., 8:16, :] = 10.0  # padding rows: must vanish
    (mask,) = processor.post_process_masks(low, [(40, 80)])
    assert mask.shape == (40, 80)
    binary = mask > 0
    assert binary[:, :38].all() and not binary[:, 42:].any()


def test_non_square_masks_follow_image_frame(tester, prepared):
    model, _, batch = prepared
    with torch.no_grad():
        out = model(**batch)
    for k, image in enumerate(out.seg_image_index.tolist()):
        assert tuple(out.pred_masks[k].shape) == tuple(batch["original_sizes"][image].tolist())


def test_mask_count_mismatch_is_reported(tester, prepared):
    model, _, batch = prepared
    with pytest.raises(ValueError, match="row 0: mask is"):
        model(**batch, masks=[torch.zeros(3, 3)] + tester.masks()[1:])
    with pytest.raises(ValueError, match="image_index"):
        model(**{**batch, "image_index": torch.tensor([0, 1, 2])})
    with pytest.raises(TypeError, match="mask_valid"):
        model(**batch, mask_valid=torch.ones(3))
    assert model(**batch, inputs_embeds=None, return_dict=True).logits is not None  # None extras are harmless


def test_save_load_and_automodel_round_trip(tmp_path, prepared):
    from transformers import AutoConfig, AutoModel

    model, processor, batch = prepared
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "rosalia"
    reloaded = [RosaliaForSegmentation.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)]
    with torch.no_grad():
        ref = model(**batch)
        for other in reloaded:
            assert type(other) is RosaliaForSegmentation
            out = other.eval()(**batch)
            torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
            for a, b in zip(out.pred_masks, ref.pred_masks, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_predict_generate_and_segment_only(tester):
    model, processor = tiny_rosalia(0)
    images = tester.images()
    for kwargs in ({"max_new_tokens": 4}, {"segment_only": True}):
        results = RosaliaPredictor(model, processor).predict(images, tester.instructions[:2], **kwargs)
        assert len(results) == 2
        for result, size in zip(results, tester.sizes, strict=True):
            assert result["mask"].shape == size and result["mask"].dtype == np.bool_
            assert result["empty"] == (not result["mask"].any())
            assert isinstance(result["text"], str)
    assert results[0]["text"] == "[SEG]"


def test_predict_without_seg_gives_empty_mask(tester):
    model, processor = tiny_rosalia(0)
    with torch.no_grad():  # make the LM always answer </s>: no [SEG] at all
        model.llava.lm_head.weight.zero_()
        model.llava.lm_head.weight[processor.tokenizer.eos_token_id] = 1.0
    (result,) = RosaliaPredictor(model, processor).predict(
        tester.images()[:1], ["Segment the heart."], max_new_tokens=3)
    assert result["empty"] and not result["mask"].any() and result["text"] == ""


def test_predict_bfloat16_on_cpu(tester):
    model, processor = tiny_rosalia(0)
    (result,) = RosaliaPredictor(model, processor).predict(
        tester.images()[:1], ["Segment the heart."], segment_only=True,
                              dtype=torch.bfloat16)
    assert result["mask"].shape == tester.sizes[0]


def test_decoder_uses_no_mask_dense_embedding(prepared):
    """Changing SAM's no-mask embedding changes the masks: it is the dense prompt."""
    model, _, batch = prepared
    with torch.no_grad():
        before = model(**batch).low_res_masks.clone()
        saved = model.sam.prompt_encoder.no_mask_embed.weight.clone()
        model.sam.prompt_encoder.no_mask_embed.weight.add_(1.0)
        after = model(**batch).low_res_masks
        model.sam.prompt_encoder.no_mask_embed.weight.copy_(saved)
    assert not torch.allclose(before, after)
    assert F.mse_loss(before, model(**batch).low_res_masks) == 0


def test_resize_token_embeddings_updates_nested_config(tmp_path):
    model, _ = tiny_rosalia(0)
    model.resize_token_embeddings(410)
    assert model.config.llava_config.text_config.vocab_size == 410
    model.save_pretrained(tmp_path)
    assert RosaliaForSegmentation.from_pretrained(tmp_path).llava.lm_head.weight.shape[0] == 410


def test_predict_shares_images_through_image_index(tester):
    model, processor = tiny_rosalia(0)
    image = tester.images()[0]
    instructions = ["Segment the heart.", "Where is the effusion?"]
    shared = RosaliaPredictor(model, processor).predict([image], instructions, image_index=[0, 0], segment_only=True)
    separate = RosaliaPredictor(model, processor).predict([image, image], instructions, segment_only=True)
    for a, b in zip(shared, separate, strict=True):
        np.testing.assert_array_equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="pass image_index"):
        RosaliaPredictor(model, processor).predict([image], instructions)
