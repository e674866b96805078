"""The point prompt encoder ("visual sampler" + two-way transformer), TAGS_SPEC.md §3.6.

A point becomes a token by sampling the image feature map at its location; learnable global
queries attend to the point tokens, and the image tokens then attend to those queries. As in
the authors' code, positional encodings are built but never enter the attention, so they are not
computed here; the Gaussian matrix is kept as a buffer so checkpoints load strictly.

Extension (switchable, `TagsConfig.point_labels`): a learned embedding per point label
(0 = exclude, 1 = include) added to the point tokens. Off = the paper, where points carry no label.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.transformer import Attention
from torch import nn

from .config import TagsConfig


class QueryBlock(nn.Module):
    """Global queries + point tokens -> self-attention -> MLP on the queries -> image attends to queries."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, queries: int) -> None:
        super().__init__()
        self.queries = queries
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        # present in the authors' block but unused; kept so their checkpoints load strictly
        self.cross_attn_token_to_image = Attention(dim, heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, downsample_rate=2)
        self.global_query = nn.Parameter(0.1 * torch.randn(1, queries, dim))

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.cat([self.global_query.expand(points.shape[0], -1, -1), points], dim=1)
        q = self.norm2(q + self.norm1(self.self_attn(q=q, k=q, v=q)))
        points, queries = q[:, self.queries :], q[:, : self.queries]
        queries = self.norm3(queries + self.mlp(queries))
        image = self.norm4(image + self.cross_attn_image_to_token(q=image, k=queries, v=queries))
        return image, points


class QueryTransformer(nn.Module):
    def __init__(self, config: TagsConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            QueryBlock(config.neck_dim, config.prompt_heads, config.prompt_mlp_dim, config.prompt_global_queries)
            for _ in range(config.prompt_depth)
        )

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            image, points = layer(image, points)
        return image


class PromptEncoder(nn.Module):
    """Feature map [B, C, H, W, D] + crop-voxel points (d, w, h) -> prompted feature map, same shape."""

    def __init__(self, config: TagsConfig) -> None:
        super().__init__()
        self.crop_size = config.crop_size
        self.transformer = QueryTransformer(config)
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, config.neck_dim // 2))

    def sample_points(self, features: torch.Tensor, points_dwh: torch.Tensor) -> torch.Tensor:
        """Point tokens [B, N, C]: the features at each point (trilinear, align_corners=False)."""
        grid = (points_dwh.float() + 0.5) * 2.0 / self.crop_size - 1.0
        # grid_sample's x/y/z index the last/middle/first spatial axis: (d, w, h) against [H, W, D] features
        sampled = nn.functional.grid_sample(features, grid[:, None, None], align_corners=False)
        return sampled[:, :, 0, 0].transpose(1, 2)

    def forward(
        self, features: torch.Tensor, points_dwh: torch.Tensor, label_embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        tokens = self.sample_points(features, points_dwh)
        if label_embedding is not None:
            tokens = tokens + label_embedding
        b, c = features.shape[:2]
        image = features.flatten(2).transpose(1, 2)
        image = self.transformer(image, tokens)
        return image.transpose(1, 2).reshape(b, c, *features.shape[2:])
