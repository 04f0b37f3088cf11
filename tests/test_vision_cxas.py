"""CXAS anatomy backend: the re-implemented UNet_ResNet50_default, loaded strictly from an original checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimic_ils import schema
from mimic_ils.schema import BackendError
from mimic_ils.vision import base
from mimic_ils.vision.cxas import (
    ANATOMY_LABELS,
    CxasAnatomy,
    CxasUNet,
    CxasUNetConfig,
    label_ids,
    paxray_labels,
    preprocess,
)

FIXTURE = Path(__file__).parent / "fixtures" / "cxas_unet_resnet50_keys.json"
TINY = CxasUNetConfig(width=4, blocks=(1, 1, 1, 1))


def _random_unet(seed: int = 0) -> CxasUNet:
    torch.manual_seed(seed)
    model = CxasUNet(TINY)
    with torch.no_grad():  # non-trivial BN statistics so that eval-mode normalisation matters
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
    return model.eval()


def _save(model: CxasUNet, path: Path, prefix: str = "module.") -> Path:
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()}, "epoch": 7}, path)
    return path


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return _save(_random_unet(), tmp_path / "UNet_ResNet50_default.pth")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (90, 70), dtype=np.uint8), rng.integers(0, 256, (64, 120, 3), dtype=np.uint8)]


def test_full_size_keys_and_shapes_match_the_reference_network() -> None:
    reference = json.loads(FIXTURE.read_text())["keys"]
    with torch.device("meta"):
        model = CxasUNet()
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(ours) == list(reference)
    assert ours == reference
    assert ours["head.out.conv.weight"] == [159, 128, 1, 1]


def test_label_table_has_the_ids_the_paper_uses() -> None:
    labels = paxray_labels()
    assert len(labels) == 159
    assert (labels[121], labels[135], labels[136]) == ("heart", "right lung", "left lung")
    assert label_ids(schema.LUNG_LABELS[:13]) == list(range(141, 154))
    with pytest.raises(KeyError, match="no such organ"):
        label_ids(["no such organ"])


def test_preprocess_is_imagenet_normalised_rgb_at_512() -> None:
    image = np.zeros((40, 30), dtype=np.uint8)
    image[:, 15:] = 255
    tensor = preprocess(image)
    assert tensor.shape == (3, 512, 512)
    torch.testing.assert_close(tensor[0, 0, 0], torch.tensor((0 - 0.485) / 0.229))
    torch.testing.assert_close(tensor[2, 0, -1], torch.tensor((1 - 0.406) / 0.225))
    assert not torch.equal(tensor[0], tensor[1])  # per-channel mean/std


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_checkpoint_in_original_layout_loads_strictly_and_segments(tmp_path: Path, prefix: str) -> None:
    model = _random_unet()
    path = _save(model, tmp_path / "UNet_ResNet50_default.pth", prefix)
    backend = base.create("anatomy", "cxas", weights=path, config=TINY, input_size=64, batch_size=2)
    assert isinstance(backend, base.AnatomyBackend)
    for key, value in model.state_dict().items():
        assert torch.equal(backend.model.state_dict()[key], value)
    images = _images()
    results = backend.segment(images, ["a", "b"])
    for image, masks in zip(images, results, strict=True):
        assert set(masks) == set(schema.LUNG_LABELS) | {"heart"}
        for mask in masks.values():
            assert mask.dtype == bool and mask.shape == image.shape[:2]
    # same as running the network by hand: logits at 64 px, sigmoid > 0.5, nearest back to the original frame
    with torch.no_grad():
        logits = model(preprocess(images[0], 64)[None])[0, label_ids(ANATOMY_LABELS)]
    expected = F.interpolate((logits.sigmoid() > 0.5).float()[None], images[0].shape, mode="nearest")[0].bool()
    for index, label in enumerate(ANATOMY_LABELS):
        np.testing.assert_array_equal(results[0][label], expected[index].numpy())
    assert any(0 < masks.mean() < 1 for masks in results[0].values())


def test_outputs_are_deterministic_and_independent_of_batching(checkpoint: Path) -> None:
    images = _images() + [_images()[0][::-1].copy()]
    batched = CxasAnatomy(checkpoint, config=TINY, input_size=64, batch_size=3).segment(images, ["a", "b", "c"])
    single = CxasAnatomy(checkpoint, config=TINY, input_size=64, batch_size=1).segment(images, ["a", "b", "c"])
    for one, other in zip(batched, single, strict=True):
        for label in ANATOMY_LABELS:
            np.testing.assert_array_equal(one[label], other[label])


def test_masks_come_from_the_labelled_channels(tmp_path: Path) -> None:
    model = _random_unet()
    with torch.no_grad():
        model.head.out.conv.weight.zero_()
        model.head.out.conv.bias.fill_(-10.0)
        model.head.out.conv.bias[[121, 135]] = 10.0  # heart, right lung
    backend = CxasAnatomy(_save(model, tmp_path / "m.pth"), config=TINY, input_size=64)
    masks = backend.segment([np.full((50, 80), 128, np.uint8)], ["x"])[0]
    assert masks["heart"].all() and masks["right lung"].all()
    assert not any(masks[label].any() for label in ANATOMY_LABELS if label not in ("heart", "right lung"))


def test_bad_images_get_a_reason_and_do_not_stop_the_batch(checkpoint: Path) -> None:
    backend = CxasAnatomy(checkpoint, config=TINY, input_size=64)
    good = _images()[0]
    bad = [good.astype(np.float32), np.zeros((40, 40, 4), np.uint8), np.zeros((8, 300), np.uint8)]
    results = backend.segment([bad[0], good, bad[1], bad[2]], ["f", "ok", "c4", "small"])
    assert isinstance(results[1], dict)
    reasons = [results[i] for i in (0, 2, 3)]
    assert all(isinstance(reason, BackendError) for reason in reasons)
    assert "float32" in str(reasons[0]) and "4 channels" in str(reasons[1]) and "too small" in str(reasons[2])
    assert "f" in str(reasons[0])


def test_missing_weight_file_names_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="UNet_ResNet50_default.pth"):
        CxasAnatomy(tmp_path / "nowhere.pth", config=TINY)


def _state() -> dict[str, torch.Tensor]:
    return dict(_random_unet().state_dict())


def _save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"model": {"module." + key: value for key, value in state.items()}, "epoch": 3}, path)
    return path


def _loads_like(backend: CxasAnatomy, state: dict[str, torch.Tensor]) -> None:
    loaded = backend.model.state_dict()
    for key, value in state.items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_extra_key_loads_with_one_warning_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = _state()
    extra = {**state, "head.aux.weight": torch.zeros(3), "criterion.pos_weight": torch.ones(159)}
    with caplog.at_level(logging.WARNING):
        backend = CxasAnatomy(_save_state(extra, tmp_path / "UNet_ResNet50_default.pth"), config=TINY)
    _loads_like(backend, state)
    (warning,) = _warnings(caplog)
    assert "\n" not in warning
    assert "head.aux.weight" in warning and "criterion.pos_weight" in warning and "UNet_ResNet50_default" in warning


def test_missing_num_batches_tracked_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = _state()
    old = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    absent = sorted(set(state) - set(old))
    assert len(absent) > 10  # every BatchNorm of the network
    path = _save_state({**old, "extra.key": torch.zeros(1)}, tmp_path / "old_torch.pth")
    with caplog.at_level(logging.WARNING):
        backend = CxasAnatomy(path, config=TINY, input_size=64)
    _loads_like(backend, old)
    (warning,) = _warnings(caplog)  # extra keys and absent buffers together in one line
    assert "\n" not in warning and "extra.key" in warning
    assert all(key in warning for key in absent)
    # same masks as the complete checkpoint: the counters play no part in eval mode
    full = CxasAnatomy(_save_state(state, tmp_path / "full.pth"), config=TINY, input_size=64)
    image = _images()[0]
    for label, mask in full.segment([image], ["a"])[0].items():
        np.testing.assert_array_equal(backend.segment([image], ["a"])[0][label], mask)


@pytest.mark.parametrize("key", ["backbone.backbone.layer1.0.conv2.weight", "head.out.conv.bias",
                                 "backbone.backbone.layer0.1.running_var"])
def test_missing_weight_is_refused_naming_it(tmp_path: Path, key: str) -> None:
    state = _state()
    del state[key]
    with pytest.raises(BackendError) as error:
        CxasAnatomy(_save_state(state, tmp_path / "UNet_ResNet50_default.pth"), config=TINY)
    message = str(error.value)
    assert "\n" not in message and f"missing keys: {key}" in message and "UNet_ResNet50_default.pth" in message


def test_shape_mismatch_is_refused_naming_the_key(tmp_path: Path) -> None:
    state = _state()
    state["head.up4.conv.double_conv.0.bias"] = torch.zeros(5)
    del state["backbone.backbone.layer0.1.num_batches_tracked"]  # tolerated alone, but not a reason to load
    with pytest.raises(BackendError) as error:
        CxasAnatomy(_save_state(state, tmp_path / "UNet_ResNet50_default.pth"), config=TINY)
    message = str(error.value)
    assert "\n" not in message and "wrong shapes: head.up4.conv.double_conv.0.bias (5,) != (4,)" in message
    assert "num_batches_tracked" not in message
    # the full-size network refuses a tiny checkpoint by shape
    with pytest.raises(BackendError, match="wrong shapes"):
        CxasAnatomy(_save(_random_unet(), tmp_path / "tiny.pth"), config=CxasUNetConfig(width=8, blocks=(1, 1, 1, 1)))


def test_checkpoint_is_read_with_weights_only(tmp_path: Path, monkeypatch) -> None:
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    CxasAnatomy(_save(_random_unet(), tmp_path / "UNet_ResNet50_default.pth"), config=TINY)
    assert calls and calls[0]["weights_only"] is True and len(calls) == 1


def test_non_checkpoint_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "UNet_ResNet50_default.pth"
    path.write_text("<html>quota exceeded</html>")
    with pytest.raises(BackendError, match="not a torch checkpoint"):
        CxasAnatomy(path, config=TINY)


@pytest.mark.slow
def test_full_size_network_runs_at_512(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CxasUNet().eval()
    path = tmp_path / "UNet_ResNet50_default.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    backend = CxasAnatomy(path)
    masks = backend.segment([np.random.default_rng(0).integers(0, 256, (700, 600), dtype=np.uint8)], ["full"])[0]
    assert masks["heart"].shape == (700, 600)
