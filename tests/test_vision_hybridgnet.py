"""HybridGNet lungs/heart backend: graphs, layers, strict loading of the CheXmask key layout, frames and masks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _vision_helpers import chest_outlines
from scipy import ndimage
from skimage.draw import polygon, polygon_perimeter

from mimic_ils.schema import BackendError
from mimic_ils.vision import base
from mimic_ils.vision.hybridgnet import (
    HybridGNet,
    HybridGNetChebConv,
    HybridGNetConfig,
    HybridGNetLungsHeart,
    HybridGNetSkipBlock,
    SquareFrame,
    fill_ring,
    load_hybridgnet,
    ring_adjacency,
    ring_upsampling,
    rings_to_masks,
    scaled_laplacian,
    to_network_input,
)

SMALL = HybridGNetConfig(input_size=64)
FIXTURE = Path(__file__).parent / "fixtures" / "hybridgnet_chexmask_keys.json"


def _random_state(config: HybridGNetConfig = SMALL, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = HybridGNet(config)
    with torch.no_grad():  # CheXmask initialises graph weights with N(0, 0.1); zeros would hide bias paths
        for name, tensor in model.state_dict().items():
            if "graphConv" in name or name.endswith(".bias"):
                tensor.normal_(0, 0.1)
    return model.state_dict()


def _save(state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> Path:
    torch.save({prefix + key: value for key, value in state.items()}, path)
    return path


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    return _save(_random_state(), tmp_path / "bestMSE.pt")


def _xray(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 230, (height, width), dtype=np.uint8)
    image[:, : width // 10] = 0  # a black border, as in many MIMIC images
    return image


# ------------------------------------------------------------------------------------------ graphs and layers


def test_rings_are_closed_and_block_diagonal() -> None:
    adjacency = ring_adjacency([44, 50, 26])
    assert adjacency.shape == (120, 120)
    np.testing.assert_array_equal(adjacency.sum(axis=1), 2)
    assert adjacency[0, 43] == adjacency[43, 0] == 1  # right lung closes on itself
    assert adjacency[43, 44] == 0 and adjacency[93, 94] == 0  # no edge between organs
    np.testing.assert_allclose(scaled_laplacian(adjacency), -adjacency / 2)


def test_laplacian_uses_symmetric_normalisation() -> None:
    path = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32)  # degrees 1, 2, 1
    expected = -np.array([[0, 1 / np.sqrt(2), 0], [1 / np.sqrt(2), 0, 1 / np.sqrt(2)], [0, 1 / np.sqrt(2), 0]])
    np.testing.assert_allclose(scaled_laplacian(path), expected, rtol=1e-6)


def test_unpooling_copies_even_nodes_and_averages_odd_ones() -> None:
    matrix = ring_upsampling([44, 50, 26])
    assert matrix.shape == (120, 60)
    np.testing.assert_allclose(matrix.sum(axis=1), 1)
    assert matrix[2, 1] == 1 and matrix[3, 1] == matrix[3, 2] == 0.5
    assert matrix[43, 21] == matrix[43, 0] == 0.5  # last odd node of the right lung wraps around its ring
    assert matrix[44, 22] == 1 and matrix[119, 59] == 0.5 and matrix[119, 47] == 0.5


def test_chebyshev_convolution_is_the_polynomial_of_the_laplacian() -> None:
    torch.manual_seed(1)
    conv = HybridGNetChebConv(3, 4, order=3)
    torch.nn.init.normal_(conv.bias)
    laplacian = torch.from_numpy(scaled_laplacian(ring_adjacency([5, 4])))
    x = torch.randn(2, 9, 3)
    t2 = 2 * laplacian @ (laplacian @ x) - x
    expected = conv.lins[0](x) + conv.lins[1](laplacian @ x) + conv.lins[2](t2) + conv.bias
    torch.testing.assert_close(conv(x, laplacian), expected)


def test_skip_sampling_reads_the_feature_map_at_each_position() -> None:
    block = HybridGNetSkipBlock(in_channels=4, window=3)
    width = 16
    columns = torch.arange(width, dtype=torch.float32)
    features = torch.stack([columns.expand(width, width), columns[:, None].expand(width, width)])[None]  # x, y
    positions = torch.tensor([[[0.25, 0.5], [0.5, 0.375]]])
    sampled = block.sample(positions, features)
    # a 3x3 window [p - 1, p + 2] (aligned, half-pixel shift) averages a linear map to its value at p
    torch.testing.assert_close(sampled, positions * width)


# ------------------------------------------------------------------------------------------ checkpoint layout


def test_full_size_key_layout_is_chexmask_hybridgnet2igsc() -> None:
    with torch.device("meta"):
        model = HybridGNet()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes["encoder.fc_mu.weight"] == (64, 128 * 32 * 32)
    assert shapes["encoder.fc_logvar.bias"] == (64,)
    assert shapes["encoder.dconv_down1.skip.0.weight"] == (8, 1, 1, 1)
    assert shapes["encoder.dconv_down1.block.2.weight"] == (8, 1, 3, 3)
    assert shapes["encoder.dconv_down6.block.5.weight"] == (128, 128, 3, 3)
    assert shapes["dec_lin.weight"] == (960, 64)
    assert shapes["graphConv_up6.lins.5.weight"] == (16, 16) and shapes["graphConv_up6.bias"] == (16,)
    assert shapes["graphConv_up4.lins.0.weight"] == (32, 146)
    assert shapes["graphConv_up2.lins.3.weight"] == (32, 162)
    assert shapes["SC_1.graphConv_pre.lins.0.weight"] == (2, 16)
    assert shapes["SC_2.graphConv_pre.lins.0.weight"] == (2, 32)
    assert shapes["graphConv_up1.lins.0.weight"] == (2, 32)
    absent = ("graphConv_up1.bias", "SC_1.graphConv_pre.bias", "encoder.dconv_down6.skip.0.weight")
    assert not any(key in shapes for key in absent)
    assert not any("running" in key or "laplacian" in key or "upsample" in key for key in shapes)
    assert len(shapes) == 6 * 8 + 5 * 3 + 4 + 2 + 5 * 7 + 3
    recorded = json.loads(FIXTURE.read_text())["keys"]  # from the reference network (torch_geometric)
    assert {key: list(shape) for key, shape in shapes.items()} == recorded


@pytest.mark.parametrize("prefix", ["", "module."])
def test_original_state_dict_loads_strictly(tmp_path: Path, prefix: str) -> None:
    state = _random_state()
    model = load_hybridgnet(_save(state, tmp_path / "weights.pt", prefix), SMALL)
    assert not model.training
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)


def test_torch_geometric_1_checkpoints_are_converted(tmp_path: Path, weights: Path) -> None:
    state = torch.load(weights)
    legacy = {}
    for key, value in state.items():
        if ".lins." in key:
            conv, order = key.split(".lins.")[0], int(key.split(".lins.")[1].split(".")[0])
            legacy.setdefault(conv + ".weight", {})[order] = value.t()
        else:
            legacy[key] = value
    legacy = {k: torch.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v for k, v in legacy.items()}
    assert legacy["graphConv_up4.weight"].shape == (6, 146, 32)
    image = [_xray(80, 64)]
    modern = HybridGNetLungsHeart(weights, config=SMALL).segment(image, ["a"])[0]
    old = HybridGNetLungsHeart(_save(legacy, tmp_path / "old.pt"), config=SMALL).segment(image, ["a"])[0]
    np.testing.assert_array_equal(modern.landmarks, old.landmarks)


def test_mismatched_state_dict_names_the_keys(tmp_path: Path) -> None:
    state = _random_state()
    del state["graphConv_up3.lins.2.weight"]
    state["graphConv_up3.lins.6.weight"] = torch.zeros(32, 32)
    with pytest.raises(BackendError) as error:
        load_hybridgnet(_save(state, tmp_path / "bestMSE.pt"), SMALL)
    message = str(error.value)
    assert "bestMSE.pt" in message
    assert "missing keys: graphConv_up3.lins.2.weight" in message
    assert "unexpected keys: graphConv_up3.lins.6.weight" in message
    with pytest.raises(BackendError, match=r"wrong shapes: encoder.fc_mu.weight \(64, 512\) != \(64, 2048\)"):
        load_hybridgnet(_save(_random_state(), tmp_path / "small.pt"), HybridGNetConfig(input_size=128))


def test_missing_weight_file_names_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="bestMSE.pt / weights.pt"):
        base.create("lungs_heart", "hybridgnet", weights=tmp_path / "none.pt")


# ------------------------------------------------------------------------------------------ frames and masks


def test_network_input_crops_borders_and_pads_to_a_centred_square() -> None:
    image = np.zeros((10, 14), dtype=np.uint8)
    image[2:8, 3:7] = 200  # 6 rows x 4 columns of content
    network_input, frame = to_network_input(image, 32)
    assert network_input.shape == (32, 32) and network_input.dtype == np.float32
    assert frame == SquareFrame(crop_top=2, crop_left=3, side=6, pad_top=0, pad_left=1)
    assert network_input[:, :2].max() == 0 and network_input[:, 30:].max() == 0  # side padding only
    assert network_input[16, 16] == pytest.approx(200 / 255)
    # square corners map back to the crop, shifted by the padding
    np.testing.assert_allclose(frame.to_original(np.array([[0, 0], [1, 1]])), [[2, 2], [8, 8]])
    assert to_network_input(np.ones((10, 10), np.uint8), 32) is None


def test_right_lung_is_the_first_ring_and_lies_on_the_image_left() -> None:
    def ring(cx: float, cy: float, r: float, n: int) -> np.ndarray:
        angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([cx + r * np.cos(angle), cy + r * np.sin(angle)], axis=1)

    landmarks = np.concatenate([ring(30, 50, 15, 44), ring(90, 50, 15, 50), ring(60, 80, 10, 26)])
    masks = rings_to_masks(landmarks, (100, 120))
    assert masks["lung_right"][50, 30] and not masks["lung_right"][50, 90]
    assert masks["lung_left"][50, 90] and masks["heart"][80, 60]
    # the boundary pixels are part of the mask, about half a pixel on the radius
    assert masks["lung_right"].sum() == pytest.approx(np.pi * 15.5**2, rel=0.03)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _organ_rings(landmarks: np.ndarray) -> list[np.ndarray]:
    return [landmarks[:44], landmarks[44:94], landmarks[94:]]


def _chexmask_contour(ring: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The reference's mask: ``ring.reshape(-1, 1, 2).astype('int')`` drawn with ``cv2.drawContours(..., -1)``."""
    image = np.zeros(shape, dtype=np.uint8)
    cv2.drawContours(image, [ring.reshape(-1, 1, 2).astype("int").astype(np.int32)], -1, 1, thickness=-1)
    return image.astype(bool)


def _skimage_fill_with_outline(ring: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An independent rasterisation of the same filled contour: interior pixels plus the perimeter's pixels."""
    vertices = np.trunc(ring)
    mask = np.zeros(shape, dtype=bool)
    mask[polygon(vertices[:, 1], vertices[:, 0], shape)] = True
    mask[polygon_perimeter(vertices[:, 1], vertices[:, 0], shape)] = True
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_masks_match_the_reference_filled_contour_at_1024(seed: int) -> None:
    landmarks = chest_outlines(seed, 1024)
    shape = (1024, 1024)
    masks = rings_to_masks(landmarks, shape)
    for organ, ring in zip(("lung_right", "lung_left", "heart"), _organ_rings(landmarks), strict=True):
        assert masks[organ].sum() > 5000
        reference = _chexmask_contour(ring, shape)
        assert _dice(masks[organ], reference) >= 0.999
        np.testing.assert_array_equal(masks[organ], reference)  # the same routine, the same pixels
        assert _dice(masks[organ], _skimage_fill_with_outline(ring, shape)) >= 0.999
        # the old interior-only fill on the float vertices was about 1 px off (Dice ~0.997 at 1024 px)
        interior = np.zeros(shape, dtype=bool)
        interior[polygon(ring[:, 1], ring[:, 0], shape)] = True
        assert _dice(interior, reference) < 0.999


def test_outline_pixels_are_all_inside_the_mask() -> None:
    landmarks = chest_outlines(7, 1024)
    shape = (1024, 1024)
    masks = rings_to_masks(landmarks, shape)
    for organ, ring in zip(("lung_right", "lung_left", "heart"), _organ_rings(landmarks), strict=True):
        vertices = np.trunc(ring)
        # the outline as OpenCV (the reference's library) draws it, 8-connected: every pixel is in the mask
        outline = np.zeros(shape, dtype=np.uint8)
        cv2.polylines(outline, [vertices.astype(np.int32).reshape(-1, 1, 2)], True, 1, 1, cv2.LINE_8)
        assert outline.sum() > 500 and masks[organ][outline.astype(bool)].all()
        assert masks[organ][vertices[:, 1].astype(int), vertices[:, 0].astype(int)].all()  # every landmark pixel
        # skimage's Bresenham perimeter breaks ties differently from OpenCV's edge walker on a few steps (about
        # 1 % of its pixels): those lie one pixel off, so every one touches the mask and almost all are in it
        rows, cols = polygon_perimeter(vertices[:, 1], vertices[:, 0], shape)
        assert masks[organ][rows, cols].mean() > 0.97
        assert ndimage.binary_dilation(masks[organ], np.ones((3, 3), bool))[rows, cols].all()
        # the old interior-only fill missed about half the outline
        interior = np.zeros(shape, dtype=bool)
        interior[polygon(ring[:, 1], ring[:, 0], shape)] = True
        assert interior[rows, cols].mean() < 0.7


def test_fill_truncates_vertices_like_chexmask_and_clips_to_the_image() -> None:
    # a 2.9 x 2.9 square from (1.9, 1.9): truncated to (1, 1)-(4, 4), boundary included -> 4 x 4 pixels
    square = np.array([[1.9, 1.9], [4.9, 1.9], [4.9, 4.9], [1.9, 4.9]])
    expected = np.zeros((8, 8), dtype=bool)
    expected[1:5, 1:5] = True
    np.testing.assert_array_equal(fill_ring(square, (8, 8)), expected)
    beyond = np.array([[-50.0, -50.0], [1e12, -50.0], [1e12, 1e12], [-50.0, 1e12]])
    assert fill_ring(beyond, (8, 8)).all()  # wild predictions neither overflow nor raise
    assert not fill_ring(np.array([[1.0, 1.0], [np.nan, 2.0], [3.0, 3.0]]), (8, 8)).any()


def test_landmarks_are_mapped_to_the_original_frame_of_non_square_images(weights: Path, monkeypatch) -> None:
    backend = HybridGNetLungsHeart(weights, config=SMALL)
    template = np.zeros((1, 120, 2), dtype=np.float32)
    angle = np.linspace(0, 2 * np.pi, 44, endpoint=False)
    template[0, :44] = np.stack([0.3 + 0.1 * np.cos(angle), 0.5 + 0.1 * np.sin(angle)], axis=1)  # image left
    template[0, 44:] = [0.7, 0.5]
    monkeypatch.setattr(backend, "_predict", lambda inputs: np.repeat(template, len(inputs), axis=0))
    image = np.full((300, 200), 100, dtype=np.uint8)
    image[:, :40] = 0  # cropped away: content is 300 x 160, padded to 300 x 300 with 70 columns on each side
    result = backend.segment([image], ["tall"])[0]
    centre = result.landmarks[:44].mean(axis=0)
    np.testing.assert_allclose(centre, [0.3 * 300 - 70 + 40, 150], atol=1e-3)
    assert result.lung_right.shape == (300, 200)
    assert result.lung_right[150, 60] and not result.lung_right[150, 150]
    # degenerate rings (all points at one place) fill only the pixel they sit on, as the reference's fillPoly does
    assert result.lung_left.sum() == 1 and result.heart.sum() == 1


def test_end_to_end_masks_shapes_determinism_and_batching(weights: Path) -> None:
    images = [_xray(96, 64, 0), _xray(64, 100, 1), _xray(70, 70, 2)]
    backend = base.create("lungs_heart", "hybridgnet", weights=weights, input_size=64, batch_size=3)
    assert isinstance(backend, base.LungsHeartBackend)
    first = backend.segment(images, ["a", "b", "c"])
    again = HybridGNetLungsHeart(weights, config=SMALL, batch_size=1).segment(images, ["a", "b", "c"])
    for image, one, other in zip(images, first, again, strict=True):
        assert isinstance(one, base.LungsHeart)
        assert one.landmarks.shape == (120, 2)
        for mask in (one.lung_right, one.lung_left, one.heart):
            assert mask.dtype == bool and mask.shape == image.shape
        np.testing.assert_array_equal(one.landmarks, other.landmarks)
    assert not np.allclose(first[0].landmarks, first[1].landmarks)  # the image matters
    # the same as the network by hand on the prepared input
    network_input, frame = to_network_input(images[1], 64)
    with torch.no_grad():
        raw = backend.model(torch.from_numpy(network_input)[None, None])[0].numpy()
    np.testing.assert_allclose(first[1].landmarks, frame.to_original(raw), atol=1e-4)


def test_bad_images_get_a_reason_and_do_not_stop_the_batch(weights: Path) -> None:
    backend = HybridGNetLungsHeart(weights, config=SMALL)
    good = _xray(80, 60)
    results = backend.segment(
        [np.zeros((50, 50), np.uint8), good, good.astype(float), np.dstack([good] * 3)], ["blank", "ok", "f", "rgb"]
    )
    assert isinstance(results[0], BackendError) and "blank" in str(results[0])
    assert isinstance(results[2], BackendError) and "float64" in str(results[2])
    assert isinstance(results[1], base.LungsHeart) and isinstance(results[3], base.LungsHeart)
    np.testing.assert_allclose(results[1].landmarks, results[3].landmarks, atol=1e-5)  # grey RGB == grey


@pytest.mark.slow
def test_full_size_1024_network(tmp_path: Path) -> None:
    path = _save(_random_state(HybridGNetConfig()), tmp_path / "bestMSE.pt")
    backend = HybridGNetLungsHeart(path)
    result = backend.segment([_xray(1100, 900)], ["full"])[0]
    assert result.lung_right.shape == (1100, 900) and result.landmarks.shape == (120, 2)
