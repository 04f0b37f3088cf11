"""Lungs and heart with a pure-PyTorch re-implementation of CheXmask's HybridGNet (``HybridGNet2IGSC``).

Gaggion et al., "CheXmask" (Sci. Data 2024) and "Improving anatomical plausibility ... HybridGNet" (IEEE TMI 2023).
No ``torch_geometric``: graph convolutions are dense products with the fixed ring graphs below.

Network, for ``input_size`` S (1024 in CheXmask):

* encoder: six residual blocks (BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 3x3, plus a 1x1 conv + BN shortcut
  when the width changes) of widths 8, 16, 32, 64, 128, 128 with 2x2 max-pooling between them; ``fc_mu`` and
  ``fc_logvar`` map the last map (128 x S/32 x S/32) to a 64-d latent; μ is used at inference. Its BatchNorms keep
  no running statistics (``track_running_stats=False``), so they normalise with the statistics of the current
  image; here that is done per image (instance statistics, affine weights of the BN), which is what the reference
  computes at batch size 1 and makes results independent of how images are batched;
* decoder: ``dec_lin`` (64 -> 60 nodes x 16) + ReLU, then Chebyshev convolutions (K = 6, L̂ = −D^{-1/2} A D^{-1/2},
  i.e. the symmetric Laplacian scaled with λ_max = 2; T₀ = x, T₁ = L̂x, Tₖ = 2L̂Tₖ₋₁ − Tₖ₋₂) each followed by a
  per-node normalisation over features and ReLU: ``graphConv_up6`` 16->16 and ``graphConv_up5`` 16->16 on the 60-node
  graph; skip ``SC_1`` (a K=1 ChebConv predicts 2-d positions, ``roi_align`` samples the 1/32 feature map in a 3x3
  window around each, features, sample and position are concatenated) and ``graphConv_up4`` 146->32; unpooling to
  120 nodes (each odd node the mean of its two ring neighbours); ``graphConv_up3`` 32->32; skip ``SC_2`` on the 1/16
  map and ``graphConv_up2`` 162->32; ``graphConv_up1`` 32->2 (K=1, no bias) gives 120 (x, y) points in [0, 1].
* graphs: one ring per organ, in this order: right lung 44, left lung 50, heart 26 landmarks (22, 25, 13 after
  downsampling). "Right lung" is the patient's right, on the image's left.

Checkpoint: CheXmask ``bestMSE.pt`` / ``weights.pt``, a plain state dict (keys possibly prefixed ``module.``),
read with ``torch.load(weights_only=True)`` and no fallback (a pickle that needs other globals is refused), or
the same state dict as a ``.safetensors`` file:

* ``encoder.dconv_down{1..6}.block.{0,3}.{weight,bias}`` (BN), ``encoder.dconv_down{1..6}.block.{2,5}.{weight,
  bias}`` (conv), ``encoder.dconv_down{1..5}.skip.0.weight`` (1x1 conv), ``encoder.dconv_down{1..5}.skip.1.{weight,
  bias}`` (BN; block 6 keeps its width and has no shortcut), ``encoder.fc_mu.{weight,bias}``,
  ``encoder.fc_logvar.{weight,bias}``;
* ``dec_lin.{weight,bias}``;
* ``graphConv_up{2..6}.lins.{0..5}.weight`` (``(out, in)``, no bias per order) and ``graphConv_up{2..6}.bias``;
  ``graphConv_up1.lins.0.weight``, ``SC_1.graphConv_pre.lins.0.weight``, ``SC_2.graphConv_pre.lins.0.weight``.

Loading is strict (:func:`load_hybridgnet`). Checkpoints saved by torch_geometric 1.x, whose ChebConv held one
``weight`` of shape ``(K, in, out)``, are converted to the ``lins`` layout first.

Preprocessing as CheXmask's: grey, borders of pixels ≤ 1 cropped, zero-padded to a centred square, resized to S
(bilinear), divided by 255. Landmarks are mapped back through the same steps (and returned as floats); each organ's
ring is filled in the original frame as CheXmask draws it: vertices truncated to integers (``astype("int")``), then
``cv2.fillPoly``, which includes the outline pixels (the same pixels as CheXmask's ``cv2.drawContours(...,
thickness=-1)``; see ``docs/vision_reference.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from mimic_ils.schema import BackendError
from mimic_ils.vision import base
from mimic_ils.vision._networks import image_problem, load_strict, read_checkpoint, strip_prefix, to_grey

CHECKPOINT_NAME = "CheXmask HybridGNet bestMSE.pt / weights.pt"
ORGAN_RINGS = (("lung_right", 44), ("lung_left", 50), ("heart", 26))
BORDER_LEVEL = 1  # CheXmask's preparation treats pixels <= 1 as padding


@dataclass(frozen=True)
class HybridGNetConfig:
    """Network size; the defaults are CheXmask's. A smaller ``input_size`` (multiple of 32) is for tests."""

    input_size: int = 1024
    latents: int = 64
    encoder_widths: tuple[int, ...] = (8, 16, 32, 64, 128, 128)
    graph_filters: tuple[int, ...] = (2, 32, 32, 32, 16, 16, 16)
    cheb_order: int = 6
    window: int = 3


# ----------------------------------------------------------------------------------------------- graphs


def ring_adjacency(sizes: Sequence[int]) -> np.ndarray:
    """Block-diagonal adjacency (N x N, N = sum(sizes)) of one closed ring per organ."""
    total = sum(sizes)
    adjacency = np.zeros((total, total), dtype=np.float32)
    start = 0
    for size in sizes:
        for i in range(size):
            adjacency[start + i, start + (i + 1) % size] = adjacency[start + (i + 1) % size, start + i] = 1
        start += size
    return adjacency


def ring_upsampling(sizes: Sequence[int]) -> np.ndarray:
    """``(sum(sizes), sum(ceil(sizes/2)))``: even nodes copy a coarse node, odd nodes average two ring neighbours."""
    coarse_sizes = [-(-size // 2) for size in sizes]
    matrix = np.zeros((sum(sizes), sum(coarse_sizes)), dtype=np.float32)
    row0 = col0 = 0
    for size, coarse in zip(sizes, coarse_sizes, strict=True):
        for i in range(size):
            if i % 2 == 0:
                matrix[row0 + i, col0 + i // 2] = 1
            else:
                matrix[row0 + i, col0 + i // 2] = matrix[row0 + i, col0 + (i // 2 + 1) % coarse] = 0.5
        row0, col0 = row0 + size, col0 + coarse
    return matrix


def scaled_laplacian(adjacency: np.ndarray) -> np.ndarray:
    """L̂ = 2L/λ_max − I with L = I − D^{-1/2} A D^{-1/2} and λ_max = 2, i.e. −D^{-1/2} A D^{-1/2} (self-loops off)."""
    adjacency = adjacency * (1 - np.eye(len(adjacency), dtype=adjacency.dtype))
    degree = adjacency.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0).astype(adjacency.dtype)
    return -(inv_sqrt[:, None] * adjacency * inv_sqrt[None, :])


# ----------------------------------------------------------------------------------------------- layers


class HybridGNetChebConv(nn.Module):
    """Chebyshev graph convolution on ``(B, N, in)`` node features with a fixed scaled Laplacian ``(N, N)``."""

    def __init__(self, in_channels: int, out_channels: int, order: int, bias: bool = True) -> None:
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(in_channels, out_channels, bias=False) for _ in range(order))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
        previous, current = x, x
        out = self.lins[0](x)
        for k, lin in enumerate(self.lins[1:], start=1):
            propagated = torch.matmul(laplacian, current)
            previous, current = current, propagated if k == 1 else 2 * propagated - previous
            out = out + lin(current)
        return out if self.bias is None else out + self.bias


class HybridGNetImageNorm(nn.BatchNorm2d):
    """BatchNorm without running statistics, normalising each image with its own statistics (see module doc)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


class HybridGNetResidualBlock(nn.Module):
    """Pre-activation residual block; ``skip`` (1x1 conv + norm) only when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            HybridGNetImageNorm(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            HybridGNetImageNorm(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = None
        if in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), HybridGNetImageNorm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.skip is None else self.skip(x)
        return F.relu(self.block(x) + identity)


class HybridGNetEncoder(nn.Module):
    """Six residual blocks; returns (μ, log σ², 1/32 map, 1/16 map)."""

    def __init__(self, config: HybridGNetConfig) -> None:
        super().__init__()
        widths = (1, *config.encoder_widths)
        for level in range(1, 7):
            self.add_module(f"dconv_down{level}", HybridGNetResidualBlock(widths[level - 1], widths[level]))
        flat = widths[-1] * (config.input_size // 32) ** 2
        self.fc_mu = nn.Linear(flat, config.latents)
        self.fc_logvar = nn.Linear(flat, config.latents)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        for level in (1, 2, 3, 4):
            x = F.max_pool2d(getattr(self, f"dconv_down{level}")(x), 2)
        conv5 = self.dconv_down5(x)
        conv6 = self.dconv_down6(F.max_pool2d(conv5, 2))
        flat = conv6.flatten(1)
        return self.fc_mu(flat), self.fc_logvar(flat), conv6, conv5


class HybridGNetSkipBlock(nn.Module):
    """Image-to-graph skip: predict a position per node, sample the feature map there, concatenate."""

    def __init__(self, in_channels: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.graphConv_pre = HybridGNetChebConv(in_channels, 2, 1, bias=False)

    def sample(self, positions: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``roi_align`` (aligned, 1x1 output) of a window x window box at each ``(B, N, 2)`` position in [0, 1]."""
        batch, nodes = positions.shape[:2]
        centres = positions * features.shape[-1]
        low, high = float(self.window // 2), float(self.window // 2 + 1)  # CheXmask's box: [p - 1, p + 2] for 3x3
        boxes = torch.cat([centres - low, centres + high], dim=2).reshape(-1, 4)
        batch_index = torch.arange(batch, device=positions.device, dtype=boxes.dtype).repeat_interleave(nodes)
        rois = torch.cat([batch_index[:, None], boxes], dim=1)
        return roi_align(features, rois, output_size=(1, 1), aligned=True).reshape(batch, nodes, -1)

    def forward(self, x: torch.Tensor, laplacian: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        positions = self.graphConv_pre(x, laplacian)
        return torch.cat([x, self.sample(positions, features), positions], dim=2)


def _node_norm_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU of each node's features normalised to zero mean and unit variance (InstanceNorm1d on (B, N, F))."""
    return F.relu(F.instance_norm(x, eps=1e-5))


class HybridGNet(nn.Module):
    """CheXmask ``HybridGNet2IGSC``: ``(B, 1, S, S)`` image in [0, 1] -> ``(B, 120, 2)`` landmarks (x, y) in [0, 1]."""

    def __init__(self, config: HybridGNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HybridGNetConfig()
        if config.input_size % 32:
            raise ValueError(f"HybridGNet input_size must be a multiple of 32, got {config.input_size}")
        f, order, sizes = config.graph_filters, config.cheb_order, [size for _, size in ORGAN_RINGS]
        coarse = [-(-size // 2) for size in sizes]
        self.encoder = HybridGNetEncoder(config)
        self.dec_lin = nn.Linear(config.latents, f[-1] * sum(coarse))
        skip_width = config.encoder_widths[-1]
        self.graphConv_up6 = HybridGNetChebConv(f[6], f[5], order)
        self.graphConv_up5 = HybridGNetChebConv(f[5], f[4], order)
        self.SC_1 = HybridGNetSkipBlock(f[4], config.window)
        self.graphConv_up4 = HybridGNetChebConv(f[4] + skip_width + 2, f[3], order)
        self.graphConv_up3 = HybridGNetChebConv(f[3], f[2], order)
        self.SC_2 = HybridGNetSkipBlock(f[2], config.window)
        self.graphConv_up2 = HybridGNetChebConv(f[2] + skip_width + 2, f[1], order)
        self.graphConv_up1 = HybridGNetChebConv(f[1], f[0], 1, bias=False)
        self.register_buffer("laplacian_fine", torch.from_numpy(scaled_laplacian(ring_adjacency(sizes))), False)
        self.register_buffer("laplacian_coarse", torch.from_numpy(scaled_laplacian(ring_adjacency(coarse))), False)
        self.register_buffer("upsample", torch.from_numpy(ring_upsampling(sizes)), False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mu, _, conv6, conv5 = self.encoder(image)
        x = F.relu(self.dec_lin(mu)).reshape(len(image), -1, self.config.graph_filters[-1])
        coarse, fine = self.laplacian_coarse, self.laplacian_fine
        x = _node_norm_relu(self.graphConv_up6(x, coarse))
        x = _node_norm_relu(self.graphConv_up5(x, coarse))
        x = _node_norm_relu(self.graphConv_up4(self.SC_1(x, coarse, conv6), coarse))
        x = torch.matmul(self.upsample, x)
        x = _node_norm_relu(self.graphConv_up3(x, fine))
        x = _node_norm_relu(self.graphConv_up2(self.SC_2(x, fine, conv5), fine))
        return self.graphConv_up1(x, fine)


# ----------------------------------------------------------------------------------------------- loading


def _convert_legacy_cheb(state_dict: dict[str, torch.Tensor], model: HybridGNet) -> dict[str, torch.Tensor]:
    """torch_geometric 1.x ChebConv ``<conv>.weight`` ``(K, in, out)`` -> ``<conv>.lins.{k}.weight`` ``(out, in)``."""
    converted = dict(state_dict)
    for name, module in model.named_modules():
        key = f"{name}.weight"
        if isinstance(module, HybridGNetChebConv) and key in converted and converted[key].dim() == 3:
            weight = converted.pop(key)
            converted.update({f"{name}.lins.{k}.weight": weight[k].t().contiguous() for k in range(len(weight))})
    return converted


def load_hybridgnet(path: str | Path, config: HybridGNetConfig | None = None) -> HybridGNet:
    """Build HybridGNet and load CheXmask's ``bestMSE.pt`` / ``weights.pt`` strictly, in eval mode."""
    state_dict = read_checkpoint(path, CHECKPOINT_NAME)
    model = HybridGNet(config)
    if isinstance(state_dict, dict):
        state_dict = _convert_legacy_cheb(strip_prefix(state_dict, "module."), model)
    load_strict(model, state_dict, path, CHECKPOINT_NAME)
    return model.eval()


# ----------------------------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class SquareFrame:
    """How a network input was cut from the original image: crop offset, crop size, square side and pads."""

    crop_top: int
    crop_left: int
    side: int
    pad_top: int
    pad_left: int

    def to_original(self, points01: np.ndarray) -> np.ndarray:
        """``(N, 2)`` xy in [0, 1] of the network square -> xy in original-frame pixels."""
        xy = np.asarray(points01, dtype=np.float64) * self.side
        return xy - [self.pad_left, self.pad_top] + [self.crop_left, self.crop_top]


def to_network_input(grey: np.ndarray, size: int) -> tuple[np.ndarray, SquareFrame] | None:
    """``HxW uint8`` -> (``size x size`` float32 in [0, 1], frame); None when the image is all border."""
    rows, cols = np.nonzero(grey > BORDER_LEVEL)
    if rows.size == 0:
        return None
    top, left = int(rows.min()), int(cols.min())
    crop = grey[top : rows.max() + 1, left : cols.max() + 1]
    side = max(crop.shape)
    pad_top, pad_left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square = np.zeros((side, side), dtype=np.uint8)
    square[pad_top : pad_top + crop.shape[0], pad_left : pad_left + crop.shape[1]] = crop
    resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.float32) / 255, SquareFrame(top, left, side, pad_top, pad_left)


def ring_vertices(ring: np.ndarray) -> np.ndarray:
    """``(N, 2)`` float xy -> ``(N, 1, 2)`` int32 polygon vertices as CheXmask makes them: ``ring.astype("int")``,
    i.e. truncation towards zero (clamped to ±2**30 first so that a wild prediction cannot overflow int32)."""
    limit = float(2**30)
    return np.clip(np.asarray(ring, dtype=np.float64), -limit, limit).astype(np.int32).reshape(-1, 1, 2)


def fill_ring(ring: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``HxW bool`` of one organ's ring filled as the reference draws it: ``cv2.fillPoly`` on the truncated vertices,
    outline pixels included (CheXmask's ``cv2.drawContours(..., thickness=-1)`` gives the same pixels). A ring with
    a non-finite coordinate fills nothing."""
    mask = np.zeros(shape, dtype=np.uint8)
    ring = np.asarray(ring, dtype=np.float64)
    if len(ring) and np.isfinite(ring).all():
        cv2.fillPoly(mask, [ring_vertices(ring)], 1)
    return mask.astype(bool)


def rings_to_masks(landmarks: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """``(120, 2)`` original-frame xy -> ``{"lung_right", "lung_left", "heart": HxW bool}``, each ring filled with
    :func:`fill_ring` (truncated vertices, boundary included, as CheXmask's masks)."""
    masks, start = {}, 0
    for organ, size in ORGAN_RINGS:
        masks[organ], start = fill_ring(landmarks[start : start + size], shape), start + size
    return masks


# ----------------------------------------------------------------------------------------------- backend


@base.register("lungs_heart", "hybridgnet")
class HybridGNetLungsHeart:
    """Lungs/heart backend running HybridGNet on each frontal image (``weights``: local bestMSE.pt / weights.pt).

    The network runs one image at a time, as CheXmask's inference does. Its skip connections call ``roi_align``
    with an adaptive sample count, ``ceil((p + 2) - (p - 1))``, which is 3 or 4 depending on the rounding of the
    predicted position ``p``; so a 1e-6 change in the encoder (which batched convolutions cause) can move landmarks
    by pixels. Batch-of-one forwards keep the results identical whatever ``batch_size`` (which only sets how many
    prepared inputs are held at once) and however the images are grouped.
    """

    name = "hybridgnet"

    def __init__(
        self,
        weights: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        input_size: int = 1024,
        config: HybridGNetConfig | None = None,
    ) -> None:
        if batch_size < 1:
            raise BackendError(f"hybridgnet batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_hybridgnet(weights, config or HybridGNetConfig(input_size=input_size)).to(self.device)

    def segment(self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]) -> list[base.LungsHeart | BackendError]:
        """Per image, lungs and heart (``HxW bool``, original frame) with the 120 landmarks, or a BackendError."""
        if len(images) != len(dicom_ids):
            raise ValueError(f"{len(images)} images but {len(dicom_ids)} dicom ids")
        results: list[base.LungsHeart | BackendError] = []
        prepared: list[tuple[int, np.ndarray, SquareFrame]] = []
        for index, (image, dicom_id) in enumerate(zip(images, dicom_ids, strict=True)):
            problem = image_problem(image)
            network_input = None if problem else to_network_input(to_grey(image), self.model.config.input_size)
            if network_input is None:
                problem = problem or "image is blank (nothing above the border level)"
            results.append(BackendError(f"hybridgnet, {dicom_id}: {problem}") if problem else None)
            if network_input is not None:
                prepared.append((index, *network_input))
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            for (index, _, frame), points in zip(chunk, self._predict([item[1] for item in chunk]), strict=True):
                landmarks = frame.to_original(points)
                masks = rings_to_masks(landmarks, images[index].shape[:2])
                results[index] = base.LungsHeart(landmarks=landmarks.astype(np.float32), **masks)
        return results

    @torch.inference_mode()
    def _predict(self, inputs: list[np.ndarray]) -> np.ndarray:
        """``(B, 120, 2)`` landmarks in [0, 1], one forward per image (see the class docstring)."""
        batch = torch.from_numpy(np.stack(inputs)[:, None]).to(self.device)
        return torch.cat([self.model(image[None]) for image in batch]).float().cpu().numpy()
