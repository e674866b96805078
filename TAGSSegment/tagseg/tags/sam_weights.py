"""SAM ViT-B weights (`sam_vit_b_01ec64.pth`, a plain state dict) into the TAGS image encoder.

SAM's `image_encoder.*` tensors keep their names in the 3D encoder (patch embedding, positions,
norms, attention projections, in-plane relative positions, MLPs); SAM's 2D neck has no place in
TAGS and is skipped. After loading, the depth relative positions start as the mean of the
in-plane ones (TAGS_SPEC.md §3.2.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from ..errors import ModelError
from .checkpoint import safe_torch_load
from .image_encoder import Block3d
from .model import TagsNet

SAM_PREFIX = "image_encoder."


def sam_image_encoder_tensors(state: object) -> dict[str, torch.Tensor]:
    """The image-encoder tensors of a SAM checkpoint, with or without the `image_encoder.` prefix."""
    if not isinstance(state, dict) or not state:
        raise ModelError("not a SAM checkpoint: expected a state dict of tensors")
    if any(k.startswith(SAM_PREFIX) for k in state):
        state = {k[len(SAM_PREFIX) :]: v for k, v in state.items() if k.startswith(SAM_PREFIX)}
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not k.startswith("neck.")}
    if "patch_embed.proj.weight" not in tensors:
        raise ModelError("not a SAM checkpoint: it has no image_encoder.patch_embed.proj.weight")
    return tensors


def load_sam_weights(model: TagsNet, source: str | Path | dict) -> dict[str, list[str]]:
    """Copy SAM's image-encoder weights into `model`; returns {"loaded": [...], "not_in_sam": [...]}.
    A tensor whose shape differs (e.g. a ViT-L/H checkpoint into tags-b) is refused by name."""
    state = safe_torch_load(Path(source)) if not isinstance(source, dict) else source
    tensors = sam_image_encoder_tensors(state)
    own = model.image_encoder.state_dict()
    for name, value in tensors.items():
        if name not in own:
            raise ModelError(
                f"SAM tensor image_encoder.{name} has no place in preset {model.config.name} "
                "(is this a SAM ViT-B checkpoint?)"
            )
        if tuple(own[name].shape) != tuple(value.shape):
            raise ModelError(
                f"SAM tensor image_encoder.{name} has shape {tuple(value.shape)} but preset "
                f"{model.config.name} needs {tuple(own[name].shape)} (is this a SAM ViT-B checkpoint?)"
            )
    missing_frozen = sorted(
        set(model.image_encoder.frozen_parameter_names()) - set(tensors) - {n for n in own if n.endswith(".attn.lr")}
    )
    if missing_frozen:
        raise ModelError(
            f"SAM checkpoint lacks {missing_frozen[0]} (and {len(missing_frozen) - 1} more frozen tensors)"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value.to(own[name].dtype))
        for block in model.image_encoder.blocks:
            attn = cast(Block3d, block).attn
            attn.rel_pos_d.copy_(0.5 * (attn.rel_pos_h + attn.rel_pos_w))
    return {"loaded": sorted(tensors), "not_in_sam": sorted(set(own) - set(tensors))}
