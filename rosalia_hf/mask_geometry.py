"""SAM's frame geometry: the longest-side resize the processor applies, and its inverse for the decoded masks.

The processor resizes an ``HxW`` image so its longest side is ``S`` (``sam_image_size``, 1024 for SAM-H) and pads
bottom/right to ``SxS``; the mask decoder answers ``(n, 1, S/4, S/4)`` logits. :func:`masks_to_original` undoes it:
upsample to ``SxS``, crop the padding, resize to ``(H, W)``. ``RosaliaProcessor.post_process_masks`` is the public
face of it; the model's forward uses it too, because the paper's mask losses are taken in the original frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_longest_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """``(h, w)`` after resizing the longest side to ``target`` (SAM's ``ResizeLongestSide`` rounding)."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def masks_to_original(low_res_masks: torch.Tensor, original_sizes: Sequence[tuple[int, int]],
                      sam_image_size: int) -> tuple[torch.Tensor, ...]:
    """Low-res logits ``(n, 1, h, w)`` → one ``HxW`` float logit map per mask, in its original frame.

    Upsample to the SAM input size, crop the resized image (the bottom/right padding goes), then resize to the
    original ``(H, W)``. Correct for non-square images.
    """
    up = F.interpolate(low_res_masks.float(), (sam_image_size, sam_image_size), mode="bilinear", align_corners=False)
    result = []
    for mask, (height, width) in zip(up, original_sizes, strict=True):
        new_h, new_w = resize_longest_shape(int(height), int(width), sam_image_size)
        cropped = mask[None, :, :new_h, :new_w]
        full = F.interpolate(cropped, (int(height), int(width)), mode="bilinear", align_corners=False)
        result.append(full[0, 0])
    return tuple(result)
