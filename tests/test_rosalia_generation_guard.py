"""predict survives a model that would generate image placeholders (untrained or drifting language models do)."""

from __future__ import annotations

import numpy as np
import torch

from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.testing import tiny_rosalia


def test_generated_text_never_contains_image_placeholders():
    model, processor = tiny_rosalia(seed=0)
    with torch.no_grad():  # make <image> the most likely next token everywhere
        model.llava.lm_head.weight[processor.image_token_id] += 50.0
    images = [np.zeros((40, 50), np.uint8), np.full((30, 60), 90, np.uint8)]
    out = RosaliaPredictor(model, processor).predict(
        images, ["Segment the edema.", "Segment the effusion in the left lung base."],
                        max_new_tokens=4)
    assert [o["mask"].shape for o in out] == [(40, 50), (30, 60)]
    assert all("<image>" not in o["text"] for o in out)


def test_tiny_sam_image_encoder_is_alive():
    # transformers' SamVisionConfig defaults to initializer_range=1e-10: a random encoder would then map every
    # image to ~0 and no tiny model could learn to segment
    model, _ = tiny_rosalia(seed=0)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    embeddings = model.get_sam_image_embeddings(pixels)
    assert embeddings.std() > 0.1 and (embeddings[0] - embeddings[1]).abs().mean() > 0.1


def favour(model, token_id: int) -> None:
    """Makes ``token_id`` the most likely next token everywhere (a logit bias on the language-model head)."""
    def bias(module, args, logits):
        logits[..., token_id] += 1e3
        return logits

    model.llava.lm_head.register_forward_hook(bias)


def test_trained_delimiters_are_not_suppressed():
    # LISA checkpoints have trained <im_start>/<im_end> rows and the reference may generate them: so may we
    model, processor = tiny_rosalia(seed=1)
    im_start = processor.tokenizer.convert_tokens_to_ids("<im_start>")
    favour(model, im_start)
    (out,) = RosaliaPredictor(model, processor).predict([np.zeros((40, 50), np.uint8)], ["Segment the edema."],
                           max_new_tokens=3)
    assert out["answer_ids"] == [im_start] * 3


def test_one_mask_per_generated_seg_in_answer_order():
    model, processor = tiny_rosalia(seed=2)
    seg = processor.seg_token_id
    favour(model, seg)  # every generated token is a [SEG]
    images = [np.full((30, 60), 60, np.uint8), np.full((50, 40), 200, np.uint8)]
    out = RosaliaPredictor(model, processor).predict(images, ["Segment the edema.", "Segment the effusion."],
                        max_new_tokens=3)
    for result, (height, width) in zip(out, [(30, 60), (50, 40)], strict=True):
        assert result["answer_ids"] == [seg] * 3
        assert len(result["masks"]) == len(result["mask_logits"]) == 3
        assert all(m.shape == (height, width) for m in result["masks"])
        np.testing.assert_array_equal(result["mask"], result["masks"][0])
        for mask, logits in zip(result["masks"], result["mask_logits"], strict=True):
            np.testing.assert_array_equal(mask, logits > 0)
        # the three prompts come from three different hidden states, so the maps differ
        assert not np.allclose(result["mask_logits"][0], result["mask_logits"][1])
    assert out[0]["text"] == "[SEG] [SEG] [SEG]"
