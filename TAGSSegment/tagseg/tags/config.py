"""Network presets. `tags-b` is the paper's network (TAGS_SPEC.md §2-3); `tags-tiny` is the same code with
small dimensions so that CPU tests build, train and run it in seconds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..errors import ModelError


@dataclass(frozen=True)
class TagsConfig:
    name: str
    # fmt: off
    crop_size: int = 128                 # P: crop side in voxels
    spacing_mm: float = 1.0              # isotropic voxel size of the crop
    upsample: int = 4                    # crop is upsampled x4 to 512 before the 2D patch embedding
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    sam_window_size: int = 14            # SAM's 2D window: sizes rel_pos_h/w of windowed blocks (2*14-1)
    sam_img_size: int = 1024             # SAM's input size: sizes pos_embed and the global blocks' rel_pos
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    cubic_window: int = 8                # every block attends in cubic windows of this side
    neck_dim: int = 256
    prompt_heads: int = 8
    prompt_mlp_dim: int = 2048
    prompt_depth: int = 2
    prompt_global_queries: int = 10
    decoder_channels: int = 128
    text_dim: int = 768                  # width of the CLIP text embedding; must equal embed_dim
    text_encoder: str = "open_clip:ViT-L-14:openai"
    point_labels: bool = False           # extension: a learned +/- label embedding on point tokens
    alignment_weight: float = 0.2        # x <- (1-w) x + w a_s (paper: 0.8 / 0.2)
    logit_scale: float = 100.0
    # fmt: on

    @property
    def token_grid(self) -> int:
        return self.crop_size * self.upsample // self.patch_size

    @property
    def alignment_blocks(self) -> tuple[int, ...]:
        """1-based block numbers followed by an alignment adapter and a neck (3, 6, 9, 12 for depth 12)."""
        step = self.depth // 4
        return tuple(step * (s + 1) for s in range(4))

    def validate(self) -> TagsConfig:
        limits = {
            "crop_size": 1024,
            "upsample": 16,
            "patch_size": 64,
            "embed_dim": 4096,
            "depth": 96,
            "num_heads": 64,
            "sam_window_size": 256,
            "sam_img_size": 4096,
            "cubic_window": 64,
            "neck_dim": 4096,
            "prompt_heads": 64,
            "prompt_mlp_dim": 16384,
            "prompt_depth": 16,
            "prompt_global_queries": 256,
            "decoder_channels": 4096,
            "text_dim": 4096,
        }
        for name, upper in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
                raise ModelError(f"preset {self.name}: {name} must be an integer in 1..{upper}, got {value!r}")
        for name in ("spacing_mm", "mlp_ratio", "logit_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e4:
                raise ModelError(f"preset {self.name}: {name} must be a positive number, got {value!r}")
        if not isinstance(self.alignment_weight, (int, float)) or not 0 <= self.alignment_weight <= 1:
            raise ModelError(f"preset {self.name}: alignment_weight must be within 0..1")
        if self.embed_dim % self.num_heads or self.neck_dim % (2 * self.prompt_heads):
            raise ModelError(f"preset {self.name}: widths must divide evenly by the number of heads")
        grid = self.token_grid
        if self.crop_size * self.upsample % self.patch_size:
            raise ModelError(f"preset {self.name}: crop*upsample must be a multiple of the patch size")
        if grid % self.cubic_window:
            raise ModelError(
                f"preset {self.name}: token grid {grid} is not a multiple of the window {self.cubic_window}"
            )
        if self.depth % 4:
            raise ModelError(f"preset {self.name}: depth must be a multiple of 4 (four alignment stages)")
        if (self.sam_img_size // self.patch_size) % grid:
            raise ModelError(f"preset {self.name}: SAM's position grid must pool evenly onto the token grid")
        if self.crop_size % 2 or (self.crop_size // 2) % grid:
            raise ModelError(f"preset {self.name}: crop/2 must be a multiple of the token grid")
        if self.text_dim != self.embed_dim:
            raise ModelError(
                f"preset {self.name}: text width {self.text_dim} must equal the ViT width {self.embed_dim}"
            )
        return self

    def to_dict(self) -> dict:
        data = asdict(self)
        data["global_attn_indexes"] = list(self.global_attn_indexes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TagsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"network config has unknown fields {unknown} (written by a newer tagseg?)")
        values = dict(data)
        try:
            if "global_attn_indexes" in values:
                values["global_attn_indexes"] = tuple(int(i) for i in values["global_attn_indexes"])
            config = cls(**values)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"network config is malformed ({exc})") from None
        return config.validate()


TAGS_B = TagsConfig(name="tags-b")

# tags-tiny: tags-b's checks (validate) at toy sizes, one part of the network a line.
# fmt: off
TAGS_TINY = replace(
    TAGS_B,
    name="tags-tiny",
    crop_size=32, spacing_mm=1.5, upsample=2, patch_size=8,             # the crop: a token grid of 32 x 2 / 8 = 8
    embed_dim=64, depth=4, num_heads=4, text_dim=64,                     # the ViT; the text width is its width
    sam_window_size=7, sam_img_size=128, global_attn_indexes=(1, 3),     # SAM's: 128 / 8 = 16 positions pool onto 8
    cubic_window=4,                                                      # 3D windows that tile the token grid
    neck_dim=32, prompt_heads=4, prompt_mlp_dim=64, decoder_channels=16,  # neck, prompt encoder, decoder
    text_encoder="open_clip-random:tagseg-tiny-clip:0",                  # a random CLIP: no download
    point_labels=True,                                                   # the +/- click extension, tested
)
# fmt: on

PRESETS: dict[str, TagsConfig] = {c.name: c for c in (TAGS_B, TAGS_TINY)}


def get_preset(name: str) -> TagsConfig:
    try:
        return PRESETS[name].validate()
    except KeyError:
        raise ModelError(f"unknown TAGS preset '{name}' (known: {', '.join(sorted(PRESETS))})") from None
