"""The TAGS network: 3D image encoder, four prompt encoders (only the 4th is applied), MLA decoder,
and the text-vision alignment head (TAGS_SPEC.md §3).

`encode` and `decode` are split so an interactive session encodes a crop once and re-runs only the
prompt encoder and decoder for each new click.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import TagsConfig, get_preset
from .image_encoder import ImageEncoder3d
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


@dataclass
class EncodedCrop:
    """Everything the decoder needs from one crop, so a new click skips the image encoder."""

    features: list[torch.Tensor]  # F1..F4, [B, neck, g, g, g] (H, W, D)
    aligned: list[torch.Tensor]  # a1..a4, [B, g, g, g, C]
    ct: torch.Tensor  # CT channel of the crop, [B, P, P, P] (D, H, W)


class TagsNet(nn.Module):
    def __init__(self, config: TagsConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.image_encoder = ImageEncoder3d(config)
        # four are built, trained and saved as in the authors' code; only the last is applied (§3.6, §10 #7)
        self.prompt_encoders = nn.ModuleList(PromptEncoder(config) for _ in range(4))
        self.mask_decoder = MaskDecoder(config)
        self.point_label_embed = nn.Embedding(2, config.neck_dim) if config.point_labels else None
        if self.point_label_embed is not None:
            nn.init.normal_(self.point_label_embed.weight, std=0.02)
        self.apply_freeze()

    # -- freezing -----------------------------------------------------------------------------
    def apply_freeze(self) -> None:
        """SAM's weights stay frozen; everything the paper trains gets gradients (§3.8)."""
        frozen = {f"image_encoder.{n}" for n in self.image_encoder.frozen_parameter_names()}
        for name, param in self.named_parameters():
            param.requires_grad_(name not in frozen)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The three optimiser groups of the recipe (§5.3): encoder, prompt encoders, decoder."""
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "prompt": [], "decoder": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("image_encoder."):
                groups["encoder"].append(param)
            elif name.startswith(("prompt_encoders.", "point_label_embed.")):
                groups["prompt"].append(param)
            else:
                groups["decoder"].append(param)
        return groups

    def parameter_counts(self) -> dict[str, int]:
        counts = {"total": 0, "trainable": 0, "frozen": 0}
        for param in self.parameters():
            counts["total"] += param.numel()
            counts["trainable" if param.requires_grad else "frozen"] += param.numel()
        by_part: dict[str, int] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            part = _trainable_part(name)
            by_part[part] = by_part.get(part, 0) + param.numel()
        counts.update({f"trainable_{k}": v for k, v in sorted(by_part.items())})
        return counts

    # -- forward ------------------------------------------------------------------------------
    def encode(self, crops: torch.Tensor) -> EncodedCrop:
        """crops [B, 3, P, P, P] = (CT, CT, organ mask), D-H-W order."""
        features, aligned = self.image_encoder(crops)
        return EncodedCrop(features=features, aligned=aligned, ct=crops[:, 0])

    def decode(
        self, encoded: EncodedCrop, points_dwh: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Two-class logits [B, 2, P, P, P] (D-H-W) for crop-voxel points [B, N, 3] in (d, w, h) order.
        `labels` [B, N] (1 include, 0 exclude) is used only by checkpoints with a label embedding."""
        embedding = None
        if self.point_label_embed is not None:
            if labels is None:
                labels = torch.ones(points_dwh.shape[:2], dtype=torch.long, device=points_dwh.device)
            embedding = self.point_label_embed(labels.long())
        levels = list(encoded.features)
        levels[3] = self.prompt_encoders[3](levels[3], points_dwh, embedding)
        return self.mask_decoder(levels, encoded.ct)

    def forward(
        self, crops: torch.Tensor, points_dwh: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, EncodedCrop]:
        encoded = self.encode(crops)
        return self.decode(encoded, points_dwh, labels), encoded

    def alignment_maps(self, encoded: EncodedCrop, class_embeddings: torch.Tensor) -> list[torch.Tensor]:
        """P_s (§3.5): softmax over (normal, tumour) of 100 * cos(a_s, T), upsampled to the crop.
        Returns four [B, 2, P, P, P] maps in D-H-W order. `class_embeddings` is T, [C, 2]."""
        t = class_embeddings.to(encoded.aligned[0].dtype)
        size = self.config.crop_size
        maps = []
        for a in encoded.aligned:
            b, g = a.shape[0], a.shape[1]
            tokens = a.permute(0, 3, 1, 2, 4).reshape(b, -1, a.shape[-1])  # D-H-W token order
            tokens = tokens / tokens.norm(dim=-1, keepdim=True)
            logits = (self.config.logit_scale * tokens @ t).transpose(1, 2).reshape(b, 2, g, g, g)
            logits = F.interpolate(logits, size=(size,) * 3, mode="trilinear", align_corners=True)
            maps.append(torch.softmax(logits, dim=1))
        return maps


def _trainable_part(name: str) -> str:
    if name.startswith("image_encoder.blocks.") and ".adapter." in name:
        return "adapters_3d"
    if name.startswith("image_encoder.neck_3d."):
        return "necks"
    if name.startswith("image_encoder.alignment_adapters."):
        return "alignment_adapters"
    if name.startswith("image_encoder."):
        return "norms_and_embeddings"
    if name.startswith("prompt_encoders."):
        return "prompt_encoders"
    if name.startswith("point_label_embed."):
        return "point_label_embedding"
    return "mask_decoder"


def build_tags(preset: str | TagsConfig = "tags-b", *, seed: int | None = None) -> TagsNet:
    """A TAGS network with random weights (load SAM or a TAGS checkpoint into it afterwards)."""
    config = get_preset(preset) if isinstance(preset, str) else preset.validate()
    if seed is None:
        return TagsNet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TagsNet(config)
