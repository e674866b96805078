"""TAGS (Li et al., ICCV-W 2025): SAM ViT-B adapted to 3D, guided by CLIP text semantics and an organ-mask
prompt, fused with point prompts. See TAGS_SPEC.md; `tagseg.backends.tags` runs it in a session."""
from .config import PRESETS, TagsConfig, get_preset
from .model import EncodedCrop, TagsNet, build_tags

__all__ = ["PRESETS", "TagsConfig", "get_preset", "TagsNet", "EncodedCrop", "build_tags"]
