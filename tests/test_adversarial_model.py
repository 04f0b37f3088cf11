"""Hostile but fair inputs to ROSALIA and the ILS metric (issue 15, W7-W9 and the degenerate-image crashes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rosalia_hf.evaluation import load_ils_metric
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.processing_rosalia import to_rgb_uint8
from rosalia_hf.testing import tiny_rosalia


@pytest.fixture(scope="module")
def tiny():
    return tiny_rosalia(0)


def test_w7_a_16_bit_pil_image_keeps_its_contrast():
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    assert np.unique(np.asarray(image.convert("RGB"))).size < 20  # what PIL's own conversion leaves
    rgb = to_rgb_uint8(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 64, 3)
    assert np.unique(rgb[..., 0]).size == 256 and rgb.min() == 0 and rgb.max() == 255
    np.testing.assert_array_equal(to_rgb_uint8(ramp), rgb)  # the same array path


def test_w7_float_and_wide_integer_arrays_are_scaled_not_clipped():
    floats = np.linspace(-3.0, 5.0, 40 * 40).reshape(40, 40)
    assert to_rgb_uint8(floats)[..., 0].min() == 0 and to_rgb_uint8(floats)[..., 0].max() == 255
    assert not to_rgb_uint8(np.full((40, 40), 7000, np.int32)).any()  # a flat image stays flat (zeros)
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_rgb_uint8(np.full((40, 40), np.nan))


def test_w8_an_instruction_past_the_context_is_refused_with_the_limit(tiny):
    model, processor = tiny
    limit = model.config.get_text_config().max_position_embeddings
    with pytest.raises(ValueError, match=rf"instruction 1 is \d+ tokens with the image; the model takes at most "
                                         rf"{limit} positions"):
        RosaliaPredictor(model, processor).predict(
            [np.zeros((40, 40), np.uint8)] * 2, ["Segment the edema.", "edema " * 5000])


def test_w8_generation_stops_at_the_context(tiny):
    model, processor = tiny
    limit = model.config.get_text_config().max_position_embeddings
    prompt = processor([np.zeros((40, 40), np.uint8)], ["edema " * 60])["input_ids"].shape[1]
    assert prompt < limit
    (out,) = RosaliaPredictor(model, processor).predict([np.zeros((40, 40), np.uint8)], ["edema " * 60],
                           max_new_tokens=10_000, generate_kwargs={"min_new_tokens": 10_000})
    assert prompt + len(out["answer_ids"]) <= limit


@pytest.mark.parametrize("shape", [(0, 0), (1, 300), (300, 1), (7, 7)])
def test_degenerate_images_are_refused_clearly(tiny, shape):
    model, processor = tiny
    with pytest.raises(ValueError, match=rf"image 0: image is {shape[0]}x{shape[1]} pixels"):
        RosaliaPredictor(model, processor).predict(
            [np.zeros(shape, np.uint8)], ["Segment the edema."], segment_only=True)


def test_small_but_valid_images_still_segment(tiny):
    model, processor = tiny
    out = RosaliaPredictor(model, processor).predict(
        [np.zeros((8, 300), np.uint8), np.zeros((300, 9), np.uint8)], ["a", "b"],
                        segment_only=True)
    assert [o["mask"].shape for o in out] == [(8, 300), (300, 9)]


def test_w9_the_metric_refuses_an_ambiguous_array():
    metric = load_ils_metric()
    rgb_mask = np.zeros((8, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"one \(8, 10, 3\) array: a batch of 8 masks of width 3, or one mask with "
                                         r"3 channels\?"):
        metric.add_batch(predictions=rgb_mask, references=rgb_mask)
    with pytest.raises(ValueError, match="one .* mask, not a batch"):
        metric.add_batch(predictions=np.zeros((8, 10), bool), references=np.zeros((8, 10), bool))
    metric.add_batch(predictions=[rgb_mask], references=[rgb_mask])  # a list of one RGB mask is one sample
    result = metric.compute()
    assert (result["num_positive"], result["num_negative"]) == (0, 1)
