"""Anatomy labels with a re-implementation of CXAS ``UNet_ResNet50_default`` (Seibold et al.), backend ``cxas``.

The ``cxas`` package itself cannot be a dependency (its pins force ``numpy<2``, which breaks ``pyarrow``), so this
module rebuilds its network and reads its checkpoint ``UNet_ResNet50_default.pth`` from a local path.

Network (input ``(B, 3, 512, 512)`` ImageNet-normalised RGB, output ``(B, 159, 512, 512)`` logits):

* encoder: a ResNet-50 (torchvision ``Bottleneck`` blocks) split into ``layer0`` (conv 7x7/2, BN, ReLU, max-pool)
  and ``layer1`` ... ``layer4``; feature maps of all five levels (strides 4, 4, 8, 16, 32) feed the decoder;
* decoder: ``up1`` = conv 3x3 (2048 -> 1024, BN, ReLU), bilinear resize to ``layer3``, concatenate, double conv
  (2048 -> 1024 -> 512); ``up2`` ... ``up4`` = bilinear resize, concatenate with ``layer2`` / ``layer1`` /
  ``layer0``, double conv (1024 -> 512 -> 256, 512 -> 256 -> 64, 128 -> 64 -> 128); bilinear resize to the input
  size and a 1x1 conv to the 159 classes. The reference passes an ``instance`` norm option to its head but never
  uses it: every decoder norm is a ``BatchNorm2d`` (with running statistics in the checkpoint), as here.

Checkpoint: a dict whose ``"model"`` entry is the state dict, keys possibly prefixed ``module.``, read with
``torch.load(weights_only=True)`` and no fallback (a pickle that needs other globals, e.g. optimizer objects, is
refused naming the first one), or the state dict alone as a ``.safetensors`` file; key names are
``backbone.backbone.layer{0..4}.*`` (torchvision ResNet names; ``layer0.0`` = conv1, ``layer0.1`` = bn1) and
``head.up1.conv1.conv.{0,1}.*``, ``head.up1.conv2.double_conv.{0,1,3,4}.*``, ``head.up{2,3,4}.conv.double_conv.
{0,1,3,4}.*``, ``head.out.conv.{weight,bias}`` (``tests/fixtures/cxas_unet_resnet50_keys.json`` lists all 383 with
their shapes). Loading (:func:`~mimic_ils.vision._networks.load_tolerant`) accepts what the reference's
``load_state_dict(strict=False)`` accepts harmlessly: extra keys (ignored) and absent BatchNorm ``num_batches_tracked``
counters (unused in eval mode), named in one warning line; it refuses a missing weight or statistic and a wrong shape
(which ``strict=False`` would leave at random initialisation or fail on), naming the keys.

Preprocessing follows CXAS: RGB in [0, 1], ImageNet mean/std, nearest resize to 512x512 (no aspect padding);
masks are ``sigmoid > 0.5`` resized back to the original frame with nearest interpolation. Labels and ids are the
PAX-Ray++ table in ``mimic_ils/data/paxray_labels.json``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from mimic_ils import schema
from mimic_ils.schema import BackendError
from mimic_ils.vision import base
from mimic_ils.vision._networks import image_problem, load_tolerant, read_checkpoint, strip_prefix

CHECKPOINT_NAME = "UNet_ResNet50_default.pth"
INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ANATOMY_LABELS = (*schema.LUNG_LABELS, schema.HEART_LABEL)


@lru_cache(maxsize=1)
def paxray_labels() -> dict[int, str]:
    """The 159 PAX-Ray++ labels of CXAS: output channel id -> label name (e.g. 121 -> "heart")."""
    text = resources.files("mimic_ils").joinpath("data", "paxray_labels.json").read_text(encoding="utf-8")
    return {int(key): name for key, name in json.loads(text)["label_dict"].items()}


def label_ids(names: Sequence[str] = ANATOMY_LABELS) -> list[int]:
    """Channel ids of ``names`` in the PAX-Ray++ table (KeyError naming the unknown label)."""
    by_name = {name: index for index, name in paxray_labels().items()}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise KeyError(f"not PAX-Ray++ labels: {missing}")
    return [by_name[name] for name in names]


@dataclass(frozen=True)
class CxasUNetConfig:
    """Size of the network. The defaults are ``UNet_ResNet50_default``; smaller ones exist for tests only.

    ``width`` is the ResNet stem width (64 for ResNet-50; every encoder and decoder width scales with it) and
    ``blocks`` the bottleneck blocks per ResNet stage ((3, 4, 6, 3) for ResNet-50).
    """

    width: int = 64
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    num_classes: int = 159


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class CxasConvBlock(nn.Module):
    """Conv 3x3 -> BN -> ReLU (key prefix ``conv.``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*_conv_bn_relu(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CxasDoubleConv(nn.Module):
    """(Conv 3x3 -> BN -> ReLU) twice (key prefix ``double_conv.``, convs at 0 and 3)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            *_conv_bn_relu(in_channels, mid_channels), *_conv_bn_relu(mid_channels, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


def _resize_cat(skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
    """Bilinear-resize ``deep`` to ``skip``'s size and concatenate ``[skip, deep]`` on channels."""
    return torch.cat([skip, F.interpolate(deep, skip.shape[2:], mode="bilinear")], dim=1)


class CxasFirstUp(nn.Module):
    """Decoder stage 1: reduce the deepest map, upsample, concatenate the skip, double conv."""

    def __init__(self, reduced_channels: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = CxasConvBlock(in_channels, reduced_channels)
        self.conv2 = CxasDoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv2(_resize_cat(skip, self.conv1(deep)))


class CxasUp(nn.Module):
    """Decoder stages 2-4: upsample, concatenate the skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = CxasDoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(_resize_cat(skip, deep))


class CxasOutConv(nn.Module):
    """1x1 classifier (key prefix ``conv.``); ``channels`` selects output classes (same result, less work)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        if channels is None:
            return self.conv(x)
        index = torch.as_tensor(list(channels), device=x.device)
        return F.conv2d(x, self.conv.weight[index], self.conv.bias[index])


class CxasHead(nn.Module):
    """UNet decoder over the five ResNet levels; ``in_channels`` is the deepest width (2048 for ResNet-50)."""

    def __init__(self, in_channels: int, ngf: int, num_classes: int) -> None:
        super().__init__()
        self.up1 = CxasFirstUp(in_channels // 2, in_channels, in_channels // 4)
        self.up2 = CxasUp(in_channels // 4 * 2, in_channels // 8)
        self.up3 = CxasUp(in_channels // 8 * 2, in_channels // 32)
        self.up4 = CxasUp(in_channels // 32 * 2, ngf)
        self.out = CxasOutConv(ngf, num_classes)


class CxasResNetEncoder(nn.Module):
    """ResNet-50-style encoder whose ``backbone`` is ``Sequential(layer0, layer1, ..., layer4)``."""

    def __init__(self, width: int, blocks: Sequence[int]) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        layers: list[tuple[str, nn.Module]] = [("layer0", stem)]
        in_channels = width
        for stage, count in enumerate(blocks):
            planes, stride = width * 2**stage, 1 if stage == 0 else 2
            layers.append((f"layer{stage + 1}", self._stage(in_channels, planes, count, stride)))
            in_channels = planes * Bottleneck.expansion
        self.backbone = nn.Sequential(OrderedDict(layers))
        self.out_channels = in_channels

    @staticmethod
    def _stage(in_channels: int, planes: int, count: int, stride: int) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        blocks = [Bottleneck(in_channels, planes, stride, downsample)]
        blocks += [Bottleneck(out_channels, planes) for _ in range(count - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of ``layer0`` ... ``layer4``."""
        features = []
        for layer in self.backbone:
            x = layer(x)
            features.append(x)
        return features


class CxasUNet(nn.Module):
    """CXAS ``UNet_ResNet50_default``: ``forward(x)`` maps ``(B, 3, H, W)`` to ``(B, num_classes, H, W)`` logits."""

    def __init__(self, config: CxasUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or CxasUNetConfig()
        self.backbone = CxasResNetEncoder(self.config.width, self.config.blocks)
        self.head = CxasHead(self.backbone.out_channels, 2 * self.config.width, self.config.num_classes)

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        """Logits of all classes, or of ``channels`` only (in that order)."""
        down1, down2, down3, down4, down5 = self.backbone(x)
        up = self.head.up1(down5, down4)
        up = self.head.up2(up, down3)
        up = self.head.up3(up, down2)
        up = self.head.up4(up, down1)
        up = F.interpolate(up, x.shape[2:], mode="bilinear")
        return self.head.out(up, channels)


def load_cxas_unet(path: str | Path, config: CxasUNetConfig | None = None) -> CxasUNet:
    """Build the network and load ``UNet_ResNet50_default.pth`` (``{"model": state_dict}``), in eval mode.

    Extra keys and absent ``num_batches_tracked`` buffers are accepted with one warning line naming them; a missing
    weight or a wrong shape is a BackendError naming the keys (see the module docstring)."""
    checkpoint = read_checkpoint(path, CHECKPOINT_NAME)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if isinstance(state_dict, dict):
        state_dict = strip_prefix(state_dict, "module.")
    model = CxasUNet(config)
    load_tolerant(model, state_dict, path, f"CXAS {CHECKPOINT_NAME}")
    return model.eval()


def preprocess(image: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """``HxW`` or ``HxWx3`` uint8 -> ``(3, size, size)`` float: RGB in [0, 1], ImageNet-normalised, nearest resize."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return F.interpolate(((tensor - mean) / std)[None], size)[0]


@base.register("anatomy", "cxas")
class CxasAnatomy:
    """Anatomy backend: masks of the 15 lung labels of ``schema.LUNG_LABELS`` and ``"heart"``, original frame.

    ``weights`` is the local ``UNet_ResNet50_default.pth``; ``config`` changes the network size (tests only).
    The paper runs it on the pseudo-normal image, because CXAS degrades on dense opacities.
    """

    name = "cxas"

    def __init__(
        self,
        weights: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        threshold: float = 0.5,
        input_size: int = INPUT_SIZE,
        config: CxasUNetConfig | None = None,
    ) -> None:
        if batch_size < 1:
            raise BackendError(f"cxas batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.threshold = threshold
        self.input_size = input_size
        self.model = load_cxas_unet(weights, config).to(self.device)
        self.channels = label_ids(ANATOMY_LABELS)

    def segment(
        self, images: Sequence[np.ndarray], dicom_ids: Sequence[str]
    ) -> list[dict[str, np.ndarray] | BackendError]:
        """Per image, ``{label: HxW bool}`` for each of ``schema.LUNG_LABELS`` and ``"heart"``, or a BackendError."""
        if len(images) != len(dicom_ids):
            raise ValueError(f"{len(images)} images but {len(dicom_ids)} dicom ids")
        results: list[dict[str, np.ndarray] | BackendError] = [BackendError("not run")] * len(images)
        valid = []
        for index, (image, dicom_id) in enumerate(zip(images, dicom_ids, strict=True)):
            problem = image_problem(image)
            if problem:
                results[index] = BackendError(f"cxas, {dicom_id}: {problem}")
            else:
                valid.append(index)
        for start in range(0, len(valid), self.batch_size):
            chunk = valid[start : start + self.batch_size]
            for index, masks in zip(chunk, self._segment_batch([images[i] for i in chunk]), strict=True):
                results[index] = masks
        return results

    @torch.inference_mode()
    def _segment_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        batch = torch.stack([preprocess(image, self.input_size) for image in images]).to(self.device)
        probabilities = self.model(batch, self.channels).float().sigmoid()
        predicted = (probabilities > self.threshold).float()
        out = []
        for image, prediction in zip(images, predicted, strict=True):
            original = F.interpolate(prediction[None], image.shape[:2], mode="nearest")[0].bool().cpu().numpy()
            out.append({label: original[i] for i, label in enumerate(ANATOMY_LABELS)})
        return out
