"""Multi-level aggregation decoder (`VIT_MLAHead_h` of 3DSAM-adapter), TAGS_SPEC.md §3.7.

Each of the four feature levels gets two 3x3x3 conv + InstanceNorm + ReLU layers and is upsampled to
half the crop size; the four are concatenated with the half-size CT channel and mapped to two-class
logits, then upsampled x2 to the crop. Names follow the authors' modules so their weights load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TagsConfig


def _level(in_ch: int, ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_ch, ch, 3, padding=1, bias=False),
        nn.InstanceNorm3d(ch),
        nn.ReLU(),
        nn.Conv3d(ch, ch, 3, padding=1, bias=False),
        nn.InstanceNorm3d(ch),
        nn.ReLU(),
    )


class LevelHeads(nn.Module):
    def __init__(self, in_ch: int, ch: int) -> None:
        super().__init__()
        self.head2, self.head3, self.head4, self.head5 = (_level(in_ch, ch) for _ in range(4))

    def forward(self, levels: list[torch.Tensor], scale: float) -> torch.Tensor:
        heads = (self.head2, self.head3, self.head4, self.head5)
        return torch.cat(
            [
                F.interpolate(h(x), scale_factor=scale, mode="trilinear", align_corners=True)
                for h, x in zip(heads, levels, strict=False)
            ],
            dim=1,
        )


class MaskDecoder(nn.Module):
    """[F1, F2, F3, F4'] ([B, neck, g, g, g], H-W-D) + CT crop [B, P, P, P] (D-H-W) -> logits [B, 2, P, P, P] (D-H-W)."""

    def __init__(self, config: TagsConfig) -> None:
        super().__init__()
        ch = config.decoder_channels
        self.stage_scale = (config.crop_size // 2) / config.token_grid
        self.mlahead = LevelHeads(config.neck_dim, ch)
        self.cls = nn.Sequential(
            nn.Conv3d(4 * ch + 1, ch, 3, padding=1, bias=False),
            nn.InstanceNorm3d(ch),
            nn.ReLU(),
            nn.Conv3d(ch, 2, 3, padding=1, bias=False),
        )

    def forward(self, levels: list[torch.Tensor], ct_dhw: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(ct_dhw.permute(0, 2, 3, 1).unsqueeze(1).float(), scale_factor=0.5, mode="trilinear")
        x = torch.cat([self.mlahead(levels, self.stage_scale), small], dim=1)
        x = F.interpolate(self.cls(x), scale_factor=2, mode="trilinear", align_corners=True)
        return x.permute(0, 1, 4, 2, 3)
