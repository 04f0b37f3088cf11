"""predict survives a model that would generate image placeholders (untrained or drifting language models do)."""

from __future__ import annotations

import numpy as np
import torch

from rosalia_hf.testing import tiny_rosalia


def test_generated_text_never_contains_image_placeholders():
    model, processor = tiny_rosalia(seed=0)
    with torch.no_grad():  # make <image> the most likely next token everywhere
        model.llava.lm_head.weight[processor.image_token_id] += 50.0
    images = [np.zeros((40, 50), np.uint8), np.full((30, 60), 90, np.uint8)]
    out = model.predict(images, ["Segment the edema.", "Segment the effusion in the left lung base."],
                        processor=processor, max_new_tokens=4)
    assert [o["mask"].shape for o in out] == [(40, 50), (30, 60)]
    assert all("<image>" not in o["text"] for o in out)


def test_tiny_sam_image_encoder_is_alive():
    # transformers' SamVisionConfig defaults to initializer_range=1e-10: a random encoder would then map every
    # image to ~0 and no tiny model could learn to segment
    model, _ = tiny_rosalia(seed=0)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    embeddings = model.get_sam_image_embeddings(pixels)
    assert embeddings.std() > 0.1 and (embeddings[0] - embeddings[1]).abs().mean() > 0.1
