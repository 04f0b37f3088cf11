"""Converters: original SAM → SamModel (equivalence against ``segment_anything``), LISA layout → ROSALIA.

Fixtures are tiny and random. The SAM side is an official ``segment_anything`` ``Sam`` (ViT with 32 channels, two
blocks, 64 px) whose zero-initialised parameters are perturbed so that every weight matters. The LISA side is
described in ``write_lisa_fixture``.
"""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, CLIPVisionModel, SamModel

from rosalia_hf import RosaliaForSegmentation, RosaliaProcessor
from rosalia_hf.convert_lisa import convert_lisa_checkpoint
from rosalia_hf.convert_sam import (
    CheckpointConversionError,
    convert_sam_checkpoint,
    convert_sam_state_dict,
    expected_state_shapes,
    infer_sam_config,
)
from rosalia_hf.predictor import RosaliaPredictor
from rosalia_hf.processing_rosalia import IM_END_TOKEN, IM_START_TOKEN, SEG_TOKEN, sam_pixel_values
from rosalia_hf.testing import tiny_processor, tiny_rosalia, tiny_tokenizer

segment_anything = pytest.importorskip("segment_anything")
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

SAM_SIZE, SAM_WIDTH = 64, 32


def official_tiny_sam(seed: int = 0) -> Sam:
    """An official SAM with the tiny ROSALIA SAM dimensions; every parameter randomised."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(img_size=SAM_SIZE, patch_size=16, embed_dim=SAM_WIDTH, depth=2, num_heads=2,
                              mlp_ratio=2.0, out_chans=SAM_WIDTH, qkv_bias=True,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), use_abs_pos=True, use_rel_pos=True,
                              window_size=2, global_attn_indexes=(1,))
    prompt = PromptEncoder(embed_dim=SAM_WIDTH, image_embedding_size=(4, 4), input_image_size=(SAM_SIZE, SAM_SIZE),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=SAM_WIDTH, iou_head_depth=3,
                          iou_head_hidden_dim=SAM_WIDTH,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=SAM_WIDTH, mlp_dim=64, num_heads=2))
    sam = Sam(encoder, prompt, decoder).eval()
    with torch.no_grad():
        for param in sam.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return sam


@pytest.fixture(scope="module")
def official():
    return official_tiny_sam()


@pytest.fixture(scope="module")
def converted_sam_dir(official, tmp_path_factory):
    root = tmp_path_factory.mktemp("sam")
    torch.save(official.state_dict(), root / "sam_tiny.pth")
    return convert_sam_checkpoint(root / "sam_tiny.pth", root / "hf", decoder_heads=2)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 80, 3), dtype=np.uint8), rng.integers(0, 256, (72, 48, 3), dtype=np.uint8)]


def _official_pixels(sam: Sam, rgb: np.ndarray, size: int = SAM_SIZE) -> torch.Tensor:
    resized = ResizeLongestSide(size).apply_image(rgb)
    return sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1).float())


def test_sam_preprocessing_matches_official(official):
    for rgb in _images():
        torch.testing.assert_close(sam_pixel_values(rgb, SAM_SIZE), _official_pixels(official, rgb))


def test_sam_image_embeddings_match_official(official, converted_sam_dir):
    hf = SamModel.from_pretrained(converted_sam_dir).eval()
    pixels = torch.stack([_official_pixels(official, rgb) for rgb in _images()])
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_embeddings(pixels), official.image_encoder(pixels),
                                   rtol=1e-4, atol=1e-4)


def test_rosalia_sam_path_gives_official_masks(official, converted_sam_dir):
    """Same prompt embeddings → same masks in the original frame, through ROSALIA's decode + post-processing."""
    model, processor = tiny_rosalia(0)
    model.sam.load_state_dict(SamModel.from_pretrained(converted_sam_dir).state_dict())
    images = _images()
    pixels = torch.stack([_official_pixels(official, rgb) for rgb in images])
    prompts = torch.randn(3, SAM_WIDTH, generator=torch.Generator().manual_seed(1))
    image_of_prompt = torch.tensor([0, 1, 0])
    with torch.no_grad():
        embeddings = official.image_encoder(pixels)
        ours = processor.post_process_masks(model.decode_masks(model.get_sam_image_embeddings(pixels), prompts,
                                                               image_of_prompt),
                                            [images[i].shape[:2] for i in image_of_prompt.tolist()])
        for k, i in enumerate(image_of_prompt.tolist()):
            dense = official.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 4, 4)
            low, _ = official.mask_decoder(image_embeddings=embeddings[i: i + 1],
                                           image_pe=official.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=prompts[k].reshape(1, 1, -1),
                                           dense_prompt_embeddings=dense, multimask_output=False)
            height, width = images[i].shape[:2]
            input_size = ResizeLongestSide.get_preprocess_shape(height, width, SAM_SIZE)
            expected = official.postprocess_masks(low, input_size, (height, width))[0, 0]
            assert ours[k].shape == (height, width)
            torch.testing.assert_close(ours[k], expected, rtol=1e-3, atol=1e-4)
            assert torch.equal(ours[k] > 0, expected > 0)


def test_sam_converter_reports_unknown_and_missing_keys(official, tmp_path):
    state = dict(official.state_dict())
    state["image_encoder.extra.weight"] = torch.zeros(1)
    del state["prompt_encoder.not_a_point_embed.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointConversionError) as err:
        convert_sam_checkpoint(tmp_path / "bad.pth", tmp_path / "out", decoder_heads=2)
    message = str(err.value)
    assert "image_encoder.extra.weight" in message and "prompt_encoder.not_a_point_embed.weight" in message
    assert not (tmp_path / "out").exists()


def test_sam_converter_maps_every_official_key(official):
    converted, unknown, _ = convert_sam_state_dict(official.state_dict())
    assert unknown == []
    expected = expected_state_shapes(SamModel, infer_sam_config(official.state_dict(), decoder_heads=2))
    assert set(converted) == set(expected)
    assert all(tuple(converted[k].shape) == shape for k, shape in expected.items())


# ---------------------------------------------------------------- LISA

LISA_VOCAB = 403  # tiny vocabulary with [SEG], <im_start>, <im_end>; LISA has no <image> row


def _lisa_name(key: str, projector: str) -> str | None:
    """Our key → LISA's, written independently of the converter (None: not in a LISA checkpoint)."""
    lm = "llava.model.language_model."
    if key.startswith(lm):
        return "model." + key[len(lm):]
    if key == "llava.lm_head.weight":
        return "lm_head.weight"
    if key.startswith("text_hidden_fcs."):
        return "model.text_hidden_fcs.0." + key[len("text_hidden_fcs."):]
    proj = "llava.model.multi_modal_projector."
    if key.startswith(proj):
        rest = key[len(proj):]
        names = {"linear": "", "linear_1": "0.", "linear_2": "2."}
        layer, param = rest.split(".")
        return f"model.mm_projector.{names[layer]}{param}"
    return None


def lisa_tokenizer(order=(SEG_TOKEN, IM_START_TOKEN, IM_END_TOKEN)):
    tok = tiny_tokenizer()
    for token in order:
        tok.add_tokens([token], special_tokens=token != SEG_TOKEN)
    return tok


def write_lisa_fixture(root, reference: RosaliaForSegmentation, official: Sam, projector: str, tokenizer=None):
    """A LISA-layout checkpoint folder and a CLIP folder, from a tiny ROSALIA model and an official tiny SAM.

    * ``lisa/``: ``config.json`` with LISA's fields (``mm_vision_select_layer``, ``mm_use_im_start_end``, LLaMA
      sizes, ``vocab_size`` 403); the tokenizer (tiny BPE + ``[SEG]``, ``<im_start>``, ``<im_end>``, no
      ``<image>``); weights in two ``pytorch_model-*.bin`` shards: the reference model's language model,
      projector and ``text_hidden_fcs`` renamed by ``_lisa_name`` (embedding and ``lm_head`` cut to 403 rows),
      the official SAM state dict under ``model.visual_model.``, and a ``rotary_emb.inv_freq`` buffer as
      transformers 4.31 saved it.
    * ``clip/``: the reference CLIP tower (``CLIPVisionModel.save_pretrained``) and the CLIP image processor.
    """
    lisa, clip = root / "lisa", root / "clip"
    state = {}
    for key, tensor in reference.state_dict().items():
        name = _lisa_name(key, projector)
        if name is not None:
            state[name] = tensor[:LISA_VOCAB].clone() if name in ("model.embed_tokens.weight",
                                                                  "lm_head.weight") else tensor.clone()
    state.update({"model.visual_model." + k: v.clone() for k, v in official.state_dict().items()})
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    keys = sorted(state)
    lisa.mkdir(parents=True)
    torch.save({k: state[k] for k in keys[::2]}, lisa / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in keys[1::2]}, lisa / "pytorch_model-00002-of-00002.bin")
    text = reference.config.llava_config.text_config
    (lisa / "config.json").write_text(json.dumps({
        "architectures": ["LISAForCausalLM"], "model_type": "llava", "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "rms_norm_eps": text.rms_norm_eps, "max_position_embeddings": text.max_position_embeddings,
        "vocab_size": LISA_VOCAB, "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True, "out_dim": SAM_WIDTH}))
    (tokenizer or lisa_tokenizer()).save_pretrained(lisa)
    tower = CLIPVisionModel(reference.config.llava_config.vision_config)
    tower.load_state_dict(reference.llava.model.vision_tower.state_dict())
    tower.save_pretrained(clip)
    tiny_processor().image_processor.save_pretrained(clip)
    return lisa, clip


@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
def test_lisa_conversion_reproduces_reference(projector, official, tmp_path):
    reference, processor = tiny_rosalia(5, projector_type=projector)
    reference.sam.load_state_dict(convert_sam_state_dict(official.state_dict())[0])
    lisa, clip = write_lisa_fixture(tmp_path, reference, official, projector)
    out = convert_lisa_checkpoint(lisa, clip, tmp_path / "out", sam_decoder_heads=2)

    model = RosaliaForSegmentation.from_pretrained(out).eval()
    loaded = RosaliaProcessor.from_pretrained(out)
    assert model.config.projector_type == projector
    assert model.config.seg_token_index == loaded.seg_token_id == processor.seg_token_id
    assert model.config.llava_config.image_token_index == loaded.image_token_id
    images = [rgb[..., 0] for rgb in _images()]
    args = (images, ["Segment the heart.", "Where is the opacity?"], ["Sure, it is [SEG].", "[SEG]"])
    batch, expected_batch = loaded(*args), processor(*args)
    assert loaded.clip_backend == "pil" and processor.clip_backend == "torchvision"
    for key in expected_batch:
        if key == "pixel_values":  # PIL (LISA's) vs torchvision bicubic: at most one 8-bit level apart here
            assert float((batch[key] - expected_batch[key]).abs().max()) <= 1 / 255 / 0.26130258 + 1e-6
        else:
            torch.testing.assert_close(batch[key], expected_batch[key])
    with torch.no_grad():
        got, want = model(**batch), reference(**batch)
    torch.testing.assert_close(got.logits[..., :LISA_VOCAB], want.logits[..., :LISA_VOCAB], rtol=1e-5, atol=1e-5)
    for a, b in zip(got.pred_masks, want.pred_masks, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_lisa_seg_id_is_read_from_tokenizer(official, tmp_path):
    reference, _ = tiny_rosalia(6)
    tokenizer = lisa_tokenizer(order=(IM_START_TOKEN, IM_END_TOKEN, SEG_TOKEN))
    lisa, clip = write_lisa_fixture(tmp_path, reference, official, "linear", tokenizer=tokenizer)
    out = convert_lisa_checkpoint(lisa, clip, tmp_path / "out", sam_decoder_heads=2)
    config = RosaliaForSegmentation.config_class.from_pretrained(out)
    seg_id = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(SEG_TOKEN)
    assert config.seg_token_index == seg_id == 402


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"),
         "llava.model.language_model.layers.1.mlp.up_proj.weight"),
        (lambda s: s.pop("model.embed_tokens.weight"), "llava.model.language_model.embed_tokens.weight"),
        (lambda s: s.__setitem__("model.extra_head.weight", torch.zeros(2)), "model.extra_head.weight"),
        (lambda s: s.__setitem__("model.visual_model.mask_decoder.extra", torch.zeros(2)),
         "model.visual_model.mask_decoder.extra"),
    ],
)
def test_lisa_converter_refuses_partial_models(edit, named, official, tmp_path):
    reference, _ = tiny_rosalia(7)
    lisa, clip = write_lisa_fixture(tmp_path, reference, official, "linear")
    shards = sorted(lisa.glob("*.bin"))
    merged = {}
    for shard in shards:
        merged.update(torch.load(shard, weights_only=True))
        shard.unlink()
    edit(merged)
    torch.save(merged, lisa / "pytorch_model.bin")
    with pytest.raises(CheckpointConversionError, match="refusing to write a partial model") as err:
        convert_lisa_checkpoint(lisa, clip, tmp_path / "out", sam_decoder_heads=2)
    assert named in str(err.value)
    assert not (tmp_path / "out").exists()


def test_lisa_converter_rejects_foreign_tokenizer(official, tmp_path):
    reference, _ = tiny_rosalia(8)
    foreign = tiny_tokenizer()
    foreign.add_tokens([f"extra{i}" for i in range(5)])  # [SEG] would land at 405, past the 403 trained rows
    lisa, clip = write_lisa_fixture(tmp_path, reference, official, "linear", tokenizer=foreign)
    with pytest.raises(CheckpointConversionError, match="does not belong to this checkpoint"):
        convert_lisa_checkpoint(lisa, clip, tmp_path / "out", sam_decoder_heads=2)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- real checkpoints (slow, opt-in by path)


@pytest.mark.slow
def test_real_sam_vit_h_conversion_matches_official(tmp_path):
    """Set ROSALIA_SAM_CHECKPOINT to a local sam_vit_h_4b8939.pth."""
    path = os.environ.get("ROSALIA_SAM_CHECKPOINT")
    if not path:
        pytest.skip("ROSALIA_SAM_CHECKPOINT not set")
    from segment_anything import sam_model_registry

    official = sam_model_registry["vit_h"](checkpoint=path).eval()
    hf = SamModel.from_pretrained(convert_sam_checkpoint(path, tmp_path / "hf")).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    pixels = _official_pixels(official, rgb, 1024)[None]
    with torch.no_grad():
        ours, theirs = hf.get_image_embeddings(pixels), official.image_encoder(pixels)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_real_lisa_conversion_predicts(tmp_path):
    """Set ROSALIA_LISA_CHECKPOINT (LISA-7B-v1 or ROSALIA-7B-v1 folder) and ROSALIA_CLIP (clip-vit-large-patch14)."""
    lisa, clip = os.environ.get("ROSALIA_LISA_CHECKPOINT"), os.environ.get("ROSALIA_CLIP")
    if not (lisa and clip):
        pytest.skip("ROSALIA_LISA_CHECKPOINT / ROSALIA_CLIP not set")
    out = convert_lisa_checkpoint(lisa, clip, tmp_path / "rosalia", dtype=torch.bfloat16)
    model = RosaliaForSegmentation.from_pretrained(out, dtype=torch.bfloat16).eval()
    processor = RosaliaProcessor.from_pretrained(out)
    assert model.config.seg_token_index == processor.tokenizer.convert_tokens_to_ids("[SEG]")
    image = np.random.default_rng(0).integers(0, 256, (512, 600), dtype=np.uint8)
    (result,) = RosaliaPredictor(model, processor).predict([image], ["Segment the lungs."], max_new_tokens=16)
    assert result["mask"].shape == (512, 600)


def test_convert_sam_command_line(official, tmp_path, capsys):
    from rosalia_hf.convert_sam import main

    torch.save({"model": official.state_dict()}, tmp_path / "wrapped.pth")  # checkpoints wrapped in {"model": ...}
    main(["--checkpoint", str(tmp_path / "wrapped.pth"), "--output", str(tmp_path / "hf"), "--decoder-heads", "2",
          "--dtype", "bfloat16"])
    assert "wrote" in capsys.readouterr().out
    assert SamModel.from_pretrained(tmp_path / "hf").mask_decoder.iou_token.weight.dtype == torch.bfloat16
    with pytest.raises(SystemExit, match="convert_sam: .*no such checkpoint"):
        main(["--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "x")])
