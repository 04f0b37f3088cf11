"""RadEdit pseudo-normal backend: tiny random diffusers/transformers components saved to folders and loaded back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _vision_helpers import HIDDEN, save_tiny_radedit

from mimic_ils.schema import BackendError
from mimic_ils.vision import base

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return save_tiny_radedit(tmp_path_factory.mktemp("radedit"))


def _create(folders: dict[str, str]):
    """The tiny RadEdit backend through the registry, loaded from the saved component folders."""
    return base.create("pseudo_normal", "radedit", **folders, num_inference_steps=4, resolution=64,
                       guidance_scale=3.0, skip_ratio=0.25, batch_size=2)


@pytest.fixture(scope="module")
def backend(folders: dict[str, str]):
    return _create(folders)


def _case(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = np.zeros(shape, bool)
    mask[shape[0] // 4 : 3 * shape[0] // 4, shape[1] // 5 : shape[1] // 2] = True
    return image, mask


def test_loads_through_registry_with_the_paper_scheduler(backend) -> None:
    assert backend.name == "radedit"
    assert isinstance(backend, base.PseudoNormalBackend)
    config = backend.scheduler.config
    assert (config.beta_schedule, config.clip_sample, config.prediction_type) == ("linear", False, "epsilon")
    assert (config.timestep_spacing, config.steps_offset) == ("trailing", 1)
    assert backend.tokenizer.model_max_length == 128
    assert backend.conditional.shape == (1, 128, HIDDEN)
    assert not torch.equal(backend.conditional, backend.unconditional)


@pytest.mark.parametrize("which", ["conditional", "unconditional"])
def test_prompts_are_encoded_as_the_published_pipeline_without_attention_mask(backend, which: str) -> None:
    prompt = "No acute cardiopulmonary process" if which == "conditional" else ""
    ours = getattr(backend, which)
    ids = backend.tokenizer(prompt, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    assert ids.input_ids.shape == (1, 128) and ids.attention_mask.sum() < 128  # there is padding to attend to
    with torch.no_grad():
        direct = backend.text_encoder(ids.input_ids)[0]  # diffusers: text_encoder(input_ids, attention_mask=None)
        masked = backend.text_encoder(ids.input_ids, attention_mask=ids.attention_mask)[0]
    torch.testing.assert_close(ours, direct, rtol=0, atol=0)
    assert (ours - masked).abs().max() > 1e-3  # the old, masked encoding differs, so this test can fail


def test_a_text_encoder_config_asking_for_the_mask_gets_it(folders) -> None:
    from transformers import AutoModel, AutoTokenizer

    text = AutoModel.from_pretrained(folders["text_encoder"])
    text.config.use_attention_mask = True  # diffusers passes the mask only when the config says so
    tokenizer = AutoTokenizer.from_pretrained(folders["text_encoder"])
    reference = _create(folders)
    backend = type(reference).from_components(reference.unet, reference.vae, text, tokenizer, resolution=64)
    ids = tokenizer("", padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    with torch.no_grad():
        masked = text(ids.input_ids, attention_mask=ids.attention_mask)[0]
    torch.testing.assert_close(backend.unconditional, masked, rtol=0, atol=0)


def test_non_square_output_in_original_frame_and_keep_region_untouched(backend) -> None:
    image, mask = _case((90, 70), 1)
    (edited,) = backend.edit([image], [mask], ["d1"])
    assert edited.shape == image.shape and edited.dtype == np.uint8
    np.testing.assert_array_equal(edited[~mask], image[~mask])
    assert np.abs(edited[mask].astype(int) - image[mask]).mean() > 1.0  # random weights change the edited part


def test_rerun_is_byte_identical_and_seed_depends_on_dicom_id(backend, folders) -> None:
    image, mask = _case((64, 80), 2)
    first = backend.edit([image, image], [mask, mask], ["same", "other"])
    fresh = _create(folders)
    again = fresh.edit([image, image], [mask, mask], ["same", "other"])
    assert [out.tobytes() for out in first] == [out.tobytes() for out in again]
    assert first[0].tobytes() != first[1].tobytes()  # the VAE latent sample is seeded per dicom id
    alone = backend.edit([image], [mask], ["same"])[0]  # another batch composition: float noise only
    assert np.abs(alone.astype(int) - first[0]).max() <= 2


def test_guidance_changes_only_the_edit_region(folders) -> None:
    image, mask = _case((64, 64), 3)
    outputs = [
        base.create(
            "pseudo_normal", "radedit", **folders, num_inference_steps=3, resolution=64, guidance_scale=g
        ).edit([image], [mask], ["x"])[0]
        for g in (0.0, 8.0)
    ]
    assert not np.array_equal(outputs[0][mask], outputs[1][mask])
    np.testing.assert_array_equal(outputs[0][~mask], outputs[1][~mask])


def test_bad_images_are_isolated_per_image(backend) -> None:
    image, mask = _case((64, 64), 4)
    results = backend.edit(
        [image, image, np.zeros((64, 64, 3), np.uint8), image],
        [mask, np.zeros_like(mask), mask, mask[:10]],
        ["ok", "empty", "rgb", "frame"],
    )
    assert isinstance(results[0], np.ndarray)
    assert all(isinstance(result, BackendError) for result in results[1:])
    assert "empty" in str(results[1]) and "frame" in str(results[3])


def test_missing_or_mismatched_weights_raise_clear_errors(folders, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="config.json"):
        base.create("pseudo_normal", "radedit", **{**folders, "vae": str(tmp_path)})
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(tmp_path / "wide")
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        source = Path(folders["text_encoder"]) / name
        if source.exists():
            (tmp_path / "wide" / name).write_bytes(source.read_bytes())
    with pytest.raises(BackendError, match="cross_attention_dim"):
        base.create("pseudo_normal", "radedit", **{**folders, "text_encoder": str(tmp_path / "wide")})
