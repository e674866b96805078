"""Training losses of TAGS (TAGS_SPEC.md §5.2), written out so they need no MONAI at run time.

Main: MONAI-style DiceCE (Dice on the tumour channel only, CE on both, 0.5 each).
Alignment: per stage 1/2 [focal(P_s) + soft Dice(P_s[:, 1])]. The focal term applies softmax to the
already-softmaxed P_s, a quirk of the authors' code kept on purpose (§10 #8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per batch item, averaged; prob and target [B, ...] in 0..1."""
    dims = tuple(range(1, prob.dim()))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + SMOOTH) / (denom + SMOOTH)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits [B, 2, ...]; target [B, ...] with values {0, 1}."""
    target = target.float()
    dice = soft_dice_loss(torch.softmax(logits, dim=1)[:, 1], target)
    ce = F.cross_entropy(logits, target.long())
    return 0.5 * dice + 0.5 * ce


def focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss with label-smoothing clamp, alpha 1, on softmax(prob) (the double softmax of the recipe)."""
    p = torch.softmax(prob, dim=1)
    onehot = torch.stack([1.0 - target.float(), target.float()], dim=1).clamp(SMOOTH, 1.0 - SMOOTH)
    pt = (onehot * p).sum(1) + SMOOTH
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def alignment_loss(maps: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum over the four stages of 1/2 [focal + soft Dice on the tumour channel]; maps [B, 2, ...]."""
    target = target.float()
    total = torch.zeros((), device=target.device)
    for m in maps:
        total = total + 0.5 * (focal_loss(m, target) + soft_dice_loss(m[:, 1], target))
    return total
