"""SAM's ViT-B image encoder made 3D with light adapters (TAGS_SPEC.md §3.2-3.3).

SAM's patch embedding, positional embedding, attention projections, MLPs and in-plane relative
positions stay frozen; the 3D parts (slice and depth embeddings, pre-block adapters, depth relative
positions, norms, necks) and the four alignment adapters train. Parameter names follow the
authors' `ImageEncoderViT_3d`, so SAM's `image_encoder.*` weights and TAGS checkpoints map onto
them one to one. Tokens are laid out [B, H, W, D, C] throughout, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import PatchEmbed
from torch import nn

from .config import TagsConfig


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W, D] map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None, None] + self.bias[:, None, None, None]


class Adapter(nn.Module):
    """Pre-block 3D adapter: x + ReLU(W2 ReLU(DWConv3d(ReLU(W1 x))))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.linear1(x))
        # fp32 even under autocast: cuDNN's bf16 depthwise 3D weight gradient runs one kernel per channel
        # (a tags-b training step took 3.2 s instead of 0.36 s on an H200, measured 2026-11-27)
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = self.conv(h.float().permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return x + F.relu(self.linear2(F.relu(h)))


class AlignmentAdapter(nn.Module):
    """a_s = LeakyReLU(W_s x): the features the CLIP alignment loss pulls towards the text embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(x)


def window_partition_3d(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, W, D, C] -> [B * windows, size, size, size, C]; the grid must divide evenly."""
    b, h, w, d, c = x.shape
    x = x.view(b, h // size, size, w // size, size, d // size, size, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, size, size, size, c)


def window_unpartition_3d(windows: torch.Tensor, size: int, grid: Sequence[int]) -> torch.Tensor:
    h, w, d = grid
    b = windows.shape[0] // ((h // size) * (w // size) * (d // size))
    x = windows.view(b, h // size, w // size, d // size, size, size, size, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, h, w, d, -1)


def shifted_window_mask(grid: int, window: int, shift: int) -> torch.Tensor:
    """Swin's cross-region mask for a cyclic shift: 0 within a region, -100 across regions.
    Shape [windows, window^3, window^3]."""
    labels = torch.zeros(1, grid, grid, grid, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    region = 0
    for hs in bands:
        for ws in bands:
            for ds in bands:
                labels[:, hs, ws, ds, :] = region
                region += 1
    flat = window_partition_3d(labels, window).view(-1, window**3)
    diff = flat.unsqueeze(1) - flat.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def relative_positions(size: int, table: torch.Tensor) -> torch.Tensor:
    """Rows of a relative-position table for every (query, key) pair along one axis: [size, size, C].
    A table learnt for another length is linearly resized, as SAM does."""
    length = 2 * size - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    coords = torch.arange(size, device=table.device)
    return table[(coords[:, None] - coords[None, :]) + size - 1]


class Attention3d(nn.Module):
    """Multi-head self-attention in a cubic window with decomposed 3D relative positions."""

    def __init__(self, dim: int, num_heads: int, rel_pos_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.lr = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, h, w, d, c = x.shape
        n = h * w * d
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, hd]
        rq = q.reshape(b, self.num_heads, h, w, d, -1)
        rel_h = torch.einsum("bnhwdc,hkc->bnhwdk", rq, relative_positions(h, self.rel_pos_h))
        rel_w = torch.einsum("bnhwdc,wkc->bnhwdk", rq, relative_positions(w, self.rel_pos_w))
        rel_d = torch.einsum("bnhwdc,dkc->bnhwdk", rq, relative_positions(d, self.rel_pos_d))
        bias = self.lr * (rel_h[..., :, None, None] + rel_w[..., None, :, None] + rel_d[..., None, None, :])
        bias = bias.reshape(b, self.num_heads, n, n)
        if mask is not None:
            windows = mask.shape[0]
            bias = (bias.view(b // windows, windows, self.num_heads, n, n) + mask[None, :, None]).view(
                b, self.num_heads, n, n
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.view(b, self.num_heads, h, w, d, -1).permute(0, 2, 3, 4, 1, 5).reshape(b, h, w, d, c)
        return self.proj(out)


class Block3d(nn.Module):
    """adapter -> LN -> (shifted) cubic-window attention -> residual -> MLP residual."""

    def __init__(self, config: TagsConfig, rel_pos_size: int, shift: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window = config.cubic_window
        self.shift = shift
        self.adapter = Adapter(dim, dim // 2)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention3d(dim, config.num_heads, rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * config.mlp_ratio), act=nn.GELU)
        mask = shifted_window_mask(config.token_grid, self.window, shift) if shift else None
        # rebuilt from the config, so not stored in checkpoints (the authors' files carry it; the converter drops it)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter(x)
        shortcut = x
        x = self.norm1(x)
        grid = x.shape[1:4]
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        x = window_partition_3d(x, self.window)
        x = self.attn(x, self.attn_mask)
        x = window_unpartition_3d(x, self.window, grid)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def _neck(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_dim, out_dim, 1, bias=False),
        LayerNorm3d(out_dim),
        nn.Conv3d(out_dim, out_dim, 3, padding=1, bias=False),
        LayerNorm3d(out_dim),
    )


class ImageEncoder3d(nn.Module):
    """[B, 3, P, P, P] crop (D, H, W) -> four neck features [B, neck, g, g, g] (H, W, D) and the four
    alignment features [B, g, g, g, C]."""

    def __init__(self, config: TagsConfig) -> None:
        super().__init__()
        self.config = config
        dim, grid = config.embed_dim, config.token_grid
        self.patch_embed = PatchEmbed(
            kernel_size=(config.patch_size,) * 2, stride=(config.patch_size,) * 2, in_chans=3, embed_dim=dim
        )
        self.slice_embed = nn.Conv3d(
            dim, dim, kernel_size=(1, 1, config.patch_size), stride=(1, 1, config.patch_size), groups=dim
        )
        sam_grid = config.sam_img_size // config.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, sam_grid, sam_grid, dim))
        self.depth_embed = nn.Parameter(torch.ones(1, grid, dim))
        self.pos_pool = sam_grid // grid
        self.blocks = nn.ModuleList(
            Block3d(
                config,
                rel_pos_size=sam_grid if i in config.global_attn_indexes else config.sam_window_size,
                shift=config.cubic_window // 2 if i % 2 == 0 else 0,
            )
            for i in range(config.depth)
        )
        self.neck_3d = nn.ModuleList(_neck(dim, config.neck_dim) for _ in range(4))
        self.alignment_adapters = nn.ModuleList(AlignmentAdapter(dim) for _ in range(4))

    def tokens(self, crop: torch.Tensor) -> torch.Tensor:
        """One crop [3, P, P, P] -> tokens [1, g, g, g, C] with positions added."""
        up = F.interpolate(crop[None].float(), scale_factor=self.config.upsample, mode="trilinear")
        slices = up[0].transpose(0, 1)  # [D', 3, H', W']
        with torch.no_grad():
            x = self.patch_embed(slices)  # [D', g, g, C], SAM stays frozen
        x = self.slice_embed(x.permute(3, 1, 2, 0).unsqueeze(0)).permute(0, 2, 3, 4, 1)
        pos = F.avg_pool2d(self.pos_embed.permute(0, 3, 1, 2), kernel_size=self.pos_pool)
        pos = pos.permute(0, 2, 3, 1).unsqueeze(3) + self.depth_embed[:, None, None]
        return x + pos

    def forward(self, crops: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        per_crop = [self._forward_one(c) for c in crops]
        features = [torch.cat([p[0][s] for p in per_crop]) for s in range(4)]
        aligned = [torch.cat([p[1][s] for p in per_crop]) for s in range(4)]
        return features, aligned

    def _forward_one(self, crop: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.tokens(crop)
        w = self.config.alignment_weight
        stages = set(self.config.alignment_blocks)
        features: list[torch.Tensor] = []
        aligned: list[torch.Tensor] = []
        for number, block in enumerate(self.blocks, start=1):
            x = block(x)
            if number in stages:
                s = len(aligned)
                a = self.alignment_adapters[s](x)
                x = (1.0 - w) * x + w * a
                aligned.append(a)
                features.append(self.neck_3d[s](x.permute(0, 4, 1, 2, 3)))
        return features, aligned

    def frozen_parameter_names(self) -> list[str]:
        """SAM's own weights, which TAGS keeps frozen (TAGS_SPEC.md §3.8)."""
        frozen = []
        for name, _ in self.named_parameters():
            if name.startswith(("patch_embed.", "pos_embed")) or any(
                part in name
                for part in (".attn.qkv.", ".attn.proj.", ".mlp.", ".attn.rel_pos_h", ".attn.rel_pos_w", ".attn.lr")
            ):
                frozen.append(name)
        return frozen
