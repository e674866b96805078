"""TAGS (Li et al., ICCV-W 2025): SAM ViT-B adapted to 3D, guided by CLIP text semantics and an organ-mask
prompt, fused with point prompts. See TAGS_SPEC.md; `tagseg.backends.tags` runs it in a session.

The network names load on first use (PEP 562): `tagseg.tags.model` imports torch and segment_anything
(with torchvision), seconds of start-up that a run of the default model, which only asks
`tagseg.tags.installed` whether a checkpoint is installed, should not pay."""

from .config import PRESETS, TagsConfig, get_preset

_MODEL_NAMES = ("TagsNet", "EncodedCrop", "build_tags")


def __getattr__(name: str):
    if name in _MODEL_NAMES:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "TagsConfig", "get_preset", "TagsNet", "EncodedCrop", "build_tags"]
