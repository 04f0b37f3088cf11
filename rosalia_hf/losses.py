"""ROSALIA mask losses as pure functions (paper Sec. 5, after LISA).

Masks may differ in size from one image to the next, so every function takes a *sequence* of per-mask tensors:
``logits[i]`` is an ``HxW`` float tensor of mask logits in the original image frame and ``targets[i]`` the
``HxW`` ground truth in the same frame (bool or {0, 1} float).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def mask_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel sigmoid binary cross-entropy of one ``HxW`` mask, averaged over its pixels (a scalar)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.to(torch.float32), reduction="mean")


def mask_dice(logits: torch.Tensor, target: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """Dice loss of one ``HxW`` mask: ``1 - (2 sum(p t)/s + eps) / (sum(p)/s + sum(t)/s + eps)``, ``p = sigmoid``.

    ``scale`` divides the sums so that ``eps`` stays meaningful on megapixel masks (LISA uses 1000 and 1e-6).
    """
    prob = logits.float().sigmoid().flatten()
    tgt = target.to(torch.float32).flatten()
    numerator = 2 * (prob / scale * tgt).sum()
    denominator = (prob / scale).sum() + (tgt / scale).sum()
    return 1 - (numerator + eps) / (denominator + eps)


def rosalia_mask_losses(
    logits: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    positive: Sequence[bool] | torch.Tensor | None = None,
    scale: float = 1000.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted ``(bce, dice)`` over a set of masks.

    ``bce`` is the mean over *all* masks of each mask's pixel-mean BCE; ``dice`` is the mean over the *positive*
    masks only (negatives, whose ground truth is empty, contribute BCE only). ``positive`` defaults to "the target
    has at least one foreground pixel". With no positive mask the dice term is a zero that keeps the graph.
    """
    if len(logits) != len(targets):
        raise ValueError(f"got {len(logits)} predicted masks for {len(targets)} target masks")
    if len(logits) == 0:
        raise ValueError("no masks to compute a mask loss on")
    if positive is None:
        positive = [bool(t.any()) for t in targets]
    positive = [bool(p) for p in positive]
    bce = torch.stack([mask_bce(lg, t) for lg, t in zip(logits, targets, strict=True)]).mean()
    dice_terms = [mask_dice(lg, t, scale, eps) for lg, t, p in zip(logits, targets, positive, strict=True) if p]
    dice = torch.stack(dice_terms).mean() if dice_terms else bce * 0.0
    return bce, dice


__all__ = ["mask_bce", "mask_dice", "rosalia_mask_losses"]
