"""RosaliaProcessor: LLaVA-v1 conversation, labels, [SEG] handling, SAM/CLIP pixels, histogram equalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from rosalia_hf import RosaliaProcessor
from rosalia_hf.processing_rosalia import (
    IGNORE_INDEX,
    LLAVA_V1_SYSTEM,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    add_rosalia_tokens,
    equalize_histogram,
    resize_longest_shape,
    sam_pixel_values,
    to_rgb_uint8,
)
from rosalia_hf.testing import tiny_processor, tiny_tokenizer


@pytest.fixture(scope="module")
def processor() -> RosaliaProcessor:
    return tiny_processor()


def _image(h=40, w=80, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def test_conversation_follows_llava_v1(processor):
    batch = processor([_image()], ["Segment the heart."], answers=["Sure, it is [SEG]."])
    text = processor.decode(batch["input_ids"][0], skip_special_tokens=False)
    image = "<im_start>" + "<image>" * processor.image_seq_length + "<im_end>"
    # LISA's prompt, with the whitespace around [SEG], <im_start> and <im_end> eaten by those tokens (4.31 rules)
    assert text == f"<s>{LLAVA_V1_SYSTEM} USER:{image}Segment the heart. ASSISTANT: Sure, it is[SEG].</s>"
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == processor.image_seq_length == 16


def test_added_tokens_strip_whitespace_as_lisa_does(processor):
    tok = processor.tokenizer
    for spaced, tight in [("is [SEG] .", "is[SEG]."), ("a  [SEG]\nb", "a[SEG]b"), ("x <im_end>\n y", "x<im_end>y")]:
        assert tok(spaced)["input_ids"] == tok(tight)["input_ids"], spaced
    # </s> and <image> keep their neighbours' whitespace
    assert tok("a </s>")["input_ids"] != tok("a</s>")["input_ids"]
    assert tok("a <image>")["input_ids"] != tok("a<image>")["input_ids"]


def test_labels_keep_answer_tokens_only(processor):
    answers = ["Sure, it is [SEG].", "There is no effusion. [SEG]", "[SEG] There is no edema in the left lung base."]
    batch = processor([_image()] * 3, ["Segment the heart.", "Where is the effusion?", "Segment the edema."],
                      answers=answers)
    for row, answer in enumerate(answers):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert int(kept[-1]) == processor.tokenizer.eos_token_id
        assert processor.decode_answer(kept) == answer.replace("[SEG].", "[SEG] .")
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        prompt = processor.decode(batch["input_ids"][row, :first], skip_special_tokens=False)
        assert prompt.endswith("ASSISTANT:")
        assert int((kept == processor.seg_token_id).sum()) == 1
    # padding (right side by default) is neither attended nor supervised
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][:, 0] == 1).all()


def test_decode_answer_sets_seg_apart_and_drops_special_tokens(processor):
    tok = processor.tokenizer
    ids = tok("[SEG] It is located in the right lung base.</s>", add_special_tokens=False)["input_ids"]
    assert processor.decode_answer(ids) == "[SEG] It is located in the right lung base."
    two = tok("Sure, [SEG] and [SEG].", add_special_tokens=False)["input_ids"]
    assert processor.decode_answer(two) == "Sure, [SEG] and [SEG] ."
    assert processor.decode_answer([processor.image_token_id, tok.eos_token_id]) == ""


def test_generation_prompt_is_left_padded(processor):
    batch = processor([_image(), _image()], ["Segment the heart.", "Where is the effusion in the left lung base?"],
                      padding_side="left")
    assert "labels" not in batch
    assert (batch["attention_mask"][:, -1] == 1).all() and (batch["attention_mask"][:, 0] == 0).any()
    for row in range(2):
        text = processor.decode(batch["input_ids"][row], skip_special_tokens=False)
        assert text.endswith("ASSISTANT:") and not text.endswith("</s>")


def test_seg_token_added_once_and_read_back():
    tok = tiny_tokenizer()
    first = add_rosalia_tokens(tok)
    size = len(tok)
    second = add_rosalia_tokens(tok)
    assert first == second and len(tok) == size
    assert tok.convert_ids_to_tokens(first["[SEG]"]) == "[SEG]"
    assert tok("it is [SEG].", add_special_tokens=False)["input_ids"].count(first["[SEG]"]) == 1
    processor = tiny_processor()
    again = RosaliaProcessor(processor.image_processor, processor.tokenizer, image_seq_length=16, sam_image_size=64)
    assert len(again.tokenizer) == len(processor.tokenizer) and again.seg_token_id == processor.seg_token_id


@pytest.mark.parametrize(
    ("h", "w", "target", "expected"),
    [(40, 80, 64, (32, 64)), (72, 48, 64, (64, 43)), (1024, 1024, 1024, (1024, 1024)),
     (2544, 3056, 1024, (852, 1024)), (3056, 2544, 1024, (1024, 852))],
)
def test_resize_longest_shape(h, w, target, expected):
    assert resize_longest_shape(h, w, target) == expected


def test_sam_pixels_are_normalised_and_padded_bottom_right():
    rgb = to_rgb_uint8(_image(40, 80))
    pixels = sam_pixel_values(rgb, 64)
    assert pixels.shape == (3, 64, 64)
    assert (pixels[:, 32:, :] == 0).all()  # padding rows below the 32x64 resized image
    resized = np.asarray(Image.fromarray(rgb).resize((64, 32), Image.BILINEAR), dtype=np.float32)
    manual = (resized - np.array(SAM_PIXEL_MEAN)) / np.array(SAM_PIXEL_STD)
    torch.testing.assert_close(pixels[:, :32, :], torch.from_numpy(manual).permute(2, 0, 1).float())


def test_images_are_per_image_and_indexed(processor):
    images = [_image(40, 80), _image(72, 48, seed=1)]
    batch = processor(images, ["a", "b", "c"], image_index=[0, 1, 0])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["sam_pixel_values"].shape == (2, 3, 64, 64)
    assert batch["original_sizes"].tolist() == [[40, 80], [72, 48]]
    assert batch["image_index"].tolist() == [0, 1, 0]


def test_bad_inputs_give_clear_errors(processor):
    with pytest.raises(ValueError, match="image 0: images must be integer or float pixels, got dtype bool"):
        processor([np.zeros((8, 8), bool)], ["x"])
    with pytest.raises(ValueError, match="image 1: image is 1x300 pixels: each side needs at least 8"):
        processor([_image(), np.zeros((1, 300), np.uint8)], ["x", "y"])
    with pytest.raises(ValueError, match="pass image_index"):
        processor([_image()], ["x", "y"])
    with pytest.raises(ValueError, match="2 answers for 1 instructions"):
        processor([_image()], ["x"], answers=["a", "b"])
    with pytest.raises(ValueError, match="HxW or HxWx3"):
        to_rgb_uint8(np.zeros((4, 4, 2), np.uint8))


def test_equalize_histogram_hand_case():
    gray = np.array([[10, 10], [20, 30]], np.uint8)
    # cdf over the levels present: 2, 3, 4 -> (cdf - 2) / (4 - 2) * 255
    np.testing.assert_array_equal(equalize_histogram(gray), np.array([[0, 0], [128, 255]], np.uint8))
    flat = np.full((3, 3), 7, np.uint8)
    np.testing.assert_array_equal(equalize_histogram(flat), flat)


def test_equalisation_flag_and_probability():
    low_contrast = (np.random.default_rng(0).integers(100, 120, (40, 40))).astype(np.uint8)
    plain = tiny_processor()
    always = tiny_processor()
    always.equalize_histogram = True
    never = tiny_processor()
    never.equalize_histogram, never.equalize_probability = True, 0.0
    sam_plain = plain.prepare_images([low_contrast])["sam_pixel_values"]
    sam_eq = always.prepare_images([low_contrast])["sam_pixel_values"]
    assert sam_eq.std() > 2 * sam_plain.std()
    torch.testing.assert_close(never.prepare_images([low_contrast])["sam_pixel_values"], sam_plain)
    half = tiny_processor()
    half.equalize_histogram, half.equalize_probability = True, 0.5
    draws = [half.prepare_images([low_contrast], rng=np.random.default_rng(s))["sam_pixel_values"].std().item()
             for s in range(12)]
    assert min(draws) == pytest.approx(sam_plain.std().item()) and max(draws) == pytest.approx(sam_eq.std().item())


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    for loaded in (RosaliaProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is RosaliaProcessor
        assert (loaded.seg_token_id, loaded.image_token_id) == (processor.seg_token_id, processor.image_token_id)
        assert (loaded.sam_image_size, loaded.image_seq_length) == (64, 16)
        a = processor([_image()], ["Segment the heart."], answers=["[SEG]"])
        b = loaded([_image()], ["Segment the heart."], answers=["[SEG]"])
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_the_collator_equalises_through_the_processor_with_its_own_draws():
    """One equalisation path: the collator's augmentation is the processor's, drawn from the collator's seed."""
    from rosalia_hf.data import RosaliaCollator
    from rosalia_hf.processing_rosalia import equalize_histogram
    from rosalia_hf.testing import tiny_processor

    processor = tiny_processor()
    image = (np.arange(40 * 60) % 97).astype(np.uint8).reshape(40, 60) // 2
    item = {"image_key": "a", "image": image, "instruction": "Segment the edema.", "answer": "[SEG]",
            "mask": np.zeros((40, 60), bool), "positive": False}
    always = RosaliaCollator(processor, histogram_equalization_prob=1.0)([item])
    never = RosaliaCollator(processor, histogram_equalization_prob=0.0)([item])
    expected = processor.prepare_images([equalize_histogram(image)])
    plain = processor.prepare_images([image])
    assert torch.equal(always["sam_pixel_values"], expected["sam_pixel_values"])
    assert torch.equal(never["sam_pixel_values"], plain["sam_pixel_values"])
    assert not torch.equal(expected["sam_pixel_values"], plain["sam_pixel_values"])
    half = [RosaliaCollator(processor, histogram_equalization_prob=0.5, seed=seed)([item]) for seed in range(12)]
    flags = {torch.equal(batch["sam_pixel_values"], expected["sam_pixel_values"]) for batch in half}
    assert flags == {True, False}  # both outcomes occur over seeds, and each is reproducible per seed
    again = RosaliaCollator(processor, histogram_equalization_prob=0.5, seed=3)([item])
    assert torch.equal(again["sam_pixel_values"], half[3]["sam_pixel_values"])


def test_model_max_length_bounds_a_pair_and_names_it():
    from rosalia_hf.data import RosaliaCollator
    from rosalia_hf.testing import tiny_processor

    processor = tiny_processor()
    item = {"image_key": "s1/d1", "image": np.zeros((40, 60), np.uint8), "instruction": "Segment the edema.",
            "answer": "[SEG] There is no edema.", "mask": np.zeros((40, 60), bool), "positive": False}
    length = int(RosaliaCollator(processor)([item])["attention_mask"].sum())
    assert RosaliaCollator(processor, max_length=length)([item])["input_ids"].shape[1] == length
    with pytest.raises(ValueError, match=rf"pair 's1/d1' .* is {length} tokens with the image; model_max_length is "
                                         rf"{length - 1}"):
        RosaliaCollator(processor, max_length=length - 1)([item])
