"""The `tags` backend: a TAGS checkpoint behind the session interface.

Faithful path (TAGS_SPEC.md §6): one P^3 crop at the checkpoint's spacing centred on the include
prompts, (CT, CT, organ mask) input z-scored with the checkpoint's statistics, softmax > 0.5, result
resampled back to the source grid. The crop's encoding is cached, so a click that stays inside the
current crop re-runs only the prompt encoder and the decoder.

Extensions over the paper, each switchable in `TagsOptions` (§10 #13-16):
- `text_fusion` > 0 mixes the alignment head's text-conditioned tumour map (stage 4, with the class
  embeddings of the user's description) into the decoder's probability; 0 = the paper.
- `propose_point` gives a first click at that map's peak inside the organ mask (text-only start).
- exclude clicks: label tokens for checkpoints with a label embedding, and post-hoc constraints
  for every checkpoint (the component holding an exclude click and no include click is removed;
  otherwise a small ball around the click is erased).
- boxes: crop centred on the box, include points at its centre and interior, output kept inside the
  box plus a margin.
- `sliding_window`: prompts wider than one crop are covered by overlapping crops (averaged).
- `autocast` "auto" runs bf16 on CUDA (the paper: fp32, `autocast="off"`).
- `anatomy_fallback` "prompt-box": a box around the prompts when the organ mask is absent or misses
  the crop (the paper: zeros, `anatomy_fallback="zeros"`).

`resample` "auto" builds the crop and maps the result back in torch on the model's device when that
is CUDA (the same arithmetic as the scipy path, `tags/crop.py`), so the volume goes to the GPU once
per image and only the source block under the crop comes back; elsewhere scipy does it.

Prompts wider than one crop are refused by default (`wide_prompts="refuse"`, for the app);
`wide_prompts="one-crop"` is the paper: one crop at the floored midpoint whatever the spread, every
include click going to the prompt encoder, those outside the crop included. After each `predict`,
`last_run` says what ran (crops, precision, organ channel, text fusion).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..checks import Crop
from ..devices import is_out_of_memory
from ..errors import DeviceError, InputError, ModelError, PromptError
from ..text import parse_description
from ..volume import Volume
from .base import PROPOSE_POINT, Backend, GridPrompts

if TYPE_CHECKING:  # the crop module imports torch: loaded when a model is
    from ..tags.crop import CropGrid

ANATOMY_FALLBACKS = ("prompt-box", "zeros", "ct", "ones")
WIDE_PROMPTS = ("refuse", "one-crop")


@dataclass(frozen=True)
class TagsOptions:
    """The `tags` kind's options: the registry (`backends.TAGS`) takes exactly these names."""

    # fmt: off
    text_fusion: float = 0.0            # weight of the text map in the probability; 0 = the paper
    negatives: str = "auto"             # "auto" (tokens if the checkpoint has label embeddings), "constraint"
    sliding_window: bool = False        # cover prompts wider than one crop with several crops
    anatomy_fallback: str = "prompt-box"  # organ channel without a mask: box around the prompts + 20 mm,
                                          # "zeros" (the paper), "ct" (the authors' use_mask=False), "ones"
    wide_prompts: str = "refuse"        # prompts wider than a crop without sliding window: "refuse", "one-crop" (paper)
    box_margin_mm: float = 5.0
    negative_radius_mm: float = 3.0
    autocast: str = "auto"              # "auto" (bf16 on CUDA), "bf16", "fp16", "off"
    allow_download: bool = False        # may the text encoder fetch CLIP weights (explicit user request only)
    resample: str = "auto"              # crop in/out: "auto" (torch on CUDA, else scipy), "scipy", "torch"
    # fmt: on

    def validate(self) -> TagsOptions:
        if not 0.0 <= self.text_fusion <= 1.0:
            raise ModelError(f"text fusion weight must be within 0..1, got {self.text_fusion}")
        if self.negatives not in ("auto", "constraint"):
            raise ModelError(f"negatives must be 'auto' or 'constraint', got '{self.negatives}'")
        if self.anatomy_fallback not in ANATOMY_FALLBACKS:
            raise ModelError(f"anatomy fallback must be one of {', '.join(ANATOMY_FALLBACKS)}")
        if self.wide_prompts not in WIDE_PROMPTS:
            raise ModelError(f"wide_prompts must be one of {', '.join(WIDE_PROMPTS)}")
        if self.autocast not in ("auto", "bf16", "fp16", "off"):
            raise ModelError(f"autocast must be auto, bf16, fp16 or off, got '{self.autocast}'")
        if self.resample not in ("auto", "scipy", "torch"):
            raise ModelError(f"resample must be auto, scipy or torch, got '{self.resample}'")
        return self


@dataclass
class _Prompts:
    """Prompts in RAS mm, ready for any crop."""

    include: np.ndarray  # (N, 3) include points (clicks + points derived from boxes)
    exclude: np.ndarray  # (M, 3)
    extent_lo: np.ndarray  # bounding box of everything that must be inside the crop
    extent_hi: np.ndarray


class TagsBackend(Backend):
    name = "tags"
    capabilities = Backend.capabilities | {PROPOSE_POINT}  # the text branch: a text-only start

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        *,
        model=None,
        metadata: dict | None = None,
        class_embeddings=None,
        options: TagsOptions | None = None,
        encoding_cache_size: int = 2,
    ) -> None:
        super().__init__()
        if checkpoint is not None:
            from .. import budget

            try:
                budget.check_checkpoint_config(checkpoint)
            except InputError as exc:
                raise ModelError(f"{Path(checkpoint).name}: {exc}") from None
        import torch

        from ..tags.config import TagsConfig
        from ..tags.model import TagsNet

        self.options = (options or TagsOptions()).validate()
        self.device = device
        self._torch = torch
        if checkpoint is not None:
            model, metadata, class_embeddings, self.sha256 = _load(Path(checkpoint))
            self.source = str(checkpoint)
        else:
            if model is None or metadata is None:
                raise ModelError("TagsBackend needs a checkpoint file, or a model with its metadata")
            self.sha256, self.source = None, "in-memory model"
        if not isinstance(model, TagsNet):
            model = TagsNet(TagsConfig.from_dict(metadata["config"]))
        self.model = model.to(device).eval()
        self.config = model.config
        self.metadata = metadata
        from ..tags.crop import Intensity

        self.intensity = Intensity.from_metadata(metadata["intensity"])
        self._stored_embeddings = class_embeddings
        self._embeddings: dict[str, object] = {}
        self._encodings: OrderedDict = OrderedDict()
        self._cache_size = encoding_cache_size
        self._volume: Volume | None = None
        self._float_volume: Volume | None = None
        self._volume_tensor = None  # _float_volume's array on the device (torch resampling)
        self._grid: CropGrid | None = None
        self._extents: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.trace: list[str] = []
        self.last_run: dict = {}
        self._organ_sources: dict[tuple, str] = {}
        self._run_organ: list[str] = []

    # -- Backend interface --------------------------------------------------------------------
    def set_image(self, volume: Volume) -> None:
        if self._volume is not None and self._volume.content_key() == volume.content_key():
            return
        from ..intensity import finite_or_floor

        self._volume = volume
        # NaN/inf voxels count as the lowest finite value (the documented rule), before any resampling spreads them
        self._float_volume = volume.with_array(finite_or_floor(np.asarray(volume.array)))
        self._volume_tensor = None
        self._encodings.clear()
        self._extents.clear()
        self._organ_sources.clear()
        self._grid = None

    def info(self) -> dict:
        counts = self.model.parameter_counts()
        return {
            "name": self.name,
            "preset": self.config.name,
            "source": self.source,
            "sha256": self.sha256,
            "task": self.metadata.get("task"),
            "anatomy": self.metadata.get("anatomy"),
            "parameters": counts,
            "options": self.options.__dict__,
        }

    def predict(self, prompts: GridPrompts) -> np.ndarray:
        self.timings = {}
        self.trace = []
        self._run_organ = []
        volume = self._need_volume()
        ras = self._prompts_in_ras(prompts)
        if len(ras.include) == 0:
            raise PromptError("TAGS needs at least one include point or a box")
        grids = self._grids_for(ras)
        self.crops = tuple(Crop(grid.ijk_to_ras, grid.shape) for grid in grids)  # for the result checks
        prob = np.zeros(volume.shape_kji, np.float32)
        weight = np.zeros(volume.shape_kji, np.float32) if len(grids) > 1 else None
        from ..tags.crop import crop_to_source, crop_to_source_tensor

        on_device = self._resample_on_device()
        self.report_progress("crops", 0, len(grids))
        for done, grid in enumerate(grids, 1):
            crop_prob = self._crop_probability(grid, ras, prompts, keep_outside=len(grids) == 1)
            start = time.perf_counter()
            if on_device:
                placed = crop_to_source_tensor(crop_prob, grid, volume)
                if placed is not None:
                    placed = placed[0], placed[1].cpu().numpy()
            else:
                placed = crop_to_source(crop_prob.cpu().numpy(), grid, volume)
            if placed is not None:
                where, block = placed
                if weight is None:
                    prob[where] = block
                elif on_device:
                    prob[where] += block
                    weight[where] += (
                        crop_to_source_tensor(self._torch.ones_like(crop_prob), grid, volume)[1].cpu().numpy()
                    )
                else:
                    prob[where] += block
                    ones = crop_to_source(np.ones(grid.shape, np.float32), grid, volume)
                    assert ones is not None  # the block `placed` covers
                    weight[where] += ones[1]
            self._tick("resample_back", start)
            self.report_progress("crops", done, len(grids))
        start = time.perf_counter()
        if weight is not None:
            np.divide(prob, weight, out=prob, where=weight > 0)
        mask = (prob > 0.5).astype(np.uint8)
        mask = self._apply_constraints(mask, prompts)
        self._tick("postprocess", start)
        self.last_run = {
            "crops": len(grids),
            "precision": self._precision(),
            "organ_channel": "/".join(sorted(set(self._run_organ))) or "none",
            "text_fusion": float(self.options.text_fusion),
        }
        return mask

    # -- text ---------------------------------------------------------------------------------
    def class_embeddings_for(self, text: str):
        """T for the user's description: the checkpoint's own embeddings when the object word matches,
        else computed with the checkpoint's text encoder (falls back to the stored ones offline)."""
        from ..tags import text_encoder as te

        desc = parse_description(text)
        text_meta = self.metadata.get("text", {})
        mode = text_meta.get("object_word_mode", "anatomy")
        stored_word = text_meta.get("object_word")
        anatomy = desc.anatomy or self.metadata.get("anatomy")
        word = te.object_word(anatomy, mode=mode, task=self.metadata.get("task") if mode == "dataset-key" else None)
        if word in self._embeddings:
            return self._embeddings[word]
        if self._stored_embeddings is not None and (word == stored_word or not text.strip()):
            self._embeddings[word] = self._stored_embeddings
            return self._stored_embeddings
        try:
            encoder = te.make_text_encoder(
                text_meta.get("encoder", self.config.text_encoder), allow_download=self.options.allow_download
            )
            emb = te.class_embeddings(encoder, word)
        except ModelError as exc:
            if self._stored_embeddings is None:
                raise
            self.trace.append(f"text: cannot embed '{word}' ({exc}); using the checkpoint's '{stored_word}'")
            emb = self._stored_embeddings
        if emb.shape[0] != self.config.embed_dim:
            raise ModelError(
                f"text encoder gives {emb.shape[0]}-d embeddings, the checkpoint needs {self.config.embed_dim}"
            )
        self._embeddings[word] = emb
        return emb

    def text_probability(self, grid, prompts: GridPrompts) -> np.ndarray:
        """The alignment head's tumour probability (stage 4) on a crop, for the description in `prompts`."""
        encoded = self._encoded(grid, prompts)
        emb = self.class_embeddings_for(prompts.text)
        torch = self._torch
        with torch.inference_mode():
            maps = self.model.alignment_maps(encoded, emb.to(self.device))
        return maps[3][0, 1].float().cpu().numpy()

    def propose_point(self, prompts: GridPrompts) -> np.ndarray:
        """Text-only start: the RAS point where the text-conditioned tumour map peaks inside the organ mask."""
        from ..tags.crop import CropGrid

        volume = self._need_volume()
        if prompts.anatomy is None or not prompts.anatomy.any():
            raise PromptError(
                "a text-only start needs an organ mask (the anatomy prompt): the peak is searched inside it"
            )
        kji = np.argwhere(prompts.anatomy)
        corners = volume.kji_to_ras(np.array([kji.min(0), kji.max(0)], float))
        lo, hi = corners.min(0), corners.max(0)
        best, best_ras = -1.0, None
        for centre in self._tile_centres(lo, hi):
            grid = CropGrid.centred(centre, self.config.crop_size, self.config.spacing_mm)
            prob = self.text_probability(grid, prompts)
            organ = np.asarray(self._organ_channel(grid, prompts, None)) > 0
            if not organ.any():
                continue
            masked = np.where(organ, prob, -1.0)
            idx = np.unravel_index(int(np.argmax(masked)), masked.shape)
            if masked[idx] > best:
                best, best_ras = float(masked[idx]), grid.kji_to_ras(np.array(idx, float))[0]
        if best_ras is None:
            raise PromptError("the organ mask does not overlap the image")
        self.trace.append(f"text-only: proposed click at peak probability {best:.2f}")
        return best_ras

    # -- internals ----------------------------------------------------------------------------
    def _need_volume(self) -> Volume:
        if self._volume is None:
            raise ModelError("set_image must be called before predict")
        return self._volume

    def _tick(self, stage: str, start: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def _prompts_in_ras(self, prompts: GridPrompts) -> _Prompts:
        volume = self._need_volume()
        include = [volume.kji_to_ras(prompts.positive_kji)] if len(prompts.positive_kji) else []
        corners = []
        vlo, vhi = volume.bounds_ras()
        for lo, hi in prompts.boxes_kji:
            a, b = volume.kji_to_ras(np.array([lo, hi]))
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
                raise PromptError("a box corner is not a finite coordinate")
            # only the part of a box inside the volume can hold the tumour
            blo, bhi = np.clip(np.minimum(a, b), vlo, vhi), np.clip(np.maximum(a, b), vlo, vhi)
            centre, quarter = (blo + bhi) / 2, (bhi - blo) / 4
            derived = [centre] + [centre + s * quarter * e for e in np.eye(3) for s in (-1, 1)]
            include.append(np.array(derived))
            corners += [blo, bhi]
        include_arr = np.concatenate(include) if include else np.zeros((0, 3))
        exclude = volume.kji_to_ras(prompts.negative_kji) if len(prompts.negative_kji) else np.zeros((0, 3))
        extent = np.concatenate([include_arr] + ([np.array(corners)] if corners else []))
        if len(extent) == 0:
            extent = np.zeros((1, 3))
        return _Prompts(include_arr, exclude, extent.min(0), extent.max(0))

    def _span_mm(self) -> float:
        return (self.config.crop_size - 8) * self.config.spacing_mm

    def _tile_centres(self, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
        span, step = self._span_mm(), self.config.crop_size * self.config.spacing_mm / 2
        axes = []
        for a, b in zip(lo, hi, strict=False):
            if b - a <= span:
                axes.append([(a + b) / 2])
            else:
                n = int(np.ceil((b - a - span) / step)) + 1
                axes.append(list(np.linspace(a + span / 2, b - span / 2, n)))
        return [np.array([x, y, z]) for x in axes[0] for y in axes[1] for z in axes[2]]

    def _grids_for(self, ras: _Prompts) -> list:
        from ..tags.crop import CropGrid

        size, spacing = self.config.crop_size, self.config.spacing_mm
        wide = bool(np.any(ras.extent_hi - ras.extent_lo > self._span_mm()))
        if wide and not self.options.sliding_window and self.options.wide_prompts == "one-crop":
            # the paper: one crop at the midpoint whatever the spread; the prompts outside it still count
            self.trace.append(
                f"one crop: the prompts span {np.max(ras.extent_hi - ras.extent_lo):.0f} mm, "
                "more than the crop (as published)"
            )
            wide = False
        if wide and not self.options.sliding_window:
            raise PromptError(
                f"the prompts span {np.max(ras.extent_hi - ras.extent_lo):.0f} mm, more than one "
                f"{size * spacing:.0f} mm crop of this model; segment one lesion at a time or enable the "
                "sliding window (option sliding_window, an extension beyond the paper)"
            )
        if wide:
            self.trace.append("sliding window: prompts wider than one crop")
            grids = [CropGrid.centred(c, size, spacing) for c in self._tile_centres(ras.extent_lo, ras.extent_hi)]
            for grid in grids:
                self._extents[_grid_key(grid)] = (ras.extent_lo, ras.extent_hi)
            return grids
        # keep the current crop while every prompt stays well inside it: a refinement click is decoder-only
        current = self._grid
        if current is not None:
            margin = size / 8
            points = np.concatenate([ras.include, ras.exclude, [ras.extent_lo, ras.extent_hi]])
            if np.all(current.well_inside(current.ras_to_kji(points), margin)):
                return [current]
        from ..tags.crop import floored_centre_ras

        centre = floored_centre_ras(self._need_volume(), np.array([ras.extent_lo, ras.extent_hi]), spacing)
        self._grid = CropGrid.centred(centre, size, spacing)
        # the fallback organ box is fixed when the crop is made, so later clicks keep the cached encoding
        self._extents[_grid_key(self._grid)] = (ras.extent_lo, ras.extent_hi)
        return [self._grid]

    def _resample_on_device(self) -> bool:
        """Crops built and mapped back in torch on the model's device (`TagsOptions.resample`)."""
        choice = self.options.resample
        return choice == "torch" or (choice == "auto" and self._torch.device(self.device).type == "cuda")

    def _organ_channel(self, grid, prompts: GridPrompts, extent: tuple | None, tensor: bool = False):
        """The organ-mask input channel: float32 [P, P, P] (a device tensor from the mask when `tensor`),
        or None for the "ct" fallback."""
        from ..tags.crop import mask_channel, mask_channel_tensor

        volume = self._need_volume()
        source = self._organ_sources
        key = _grid_key(grid)
        missing = "no mask"
        if prompts.anatomy is not None and prompts.anatomy.any():
            if tensor:
                data = self._torch.from_numpy(np.require(prompts.anatomy, requirements=["C", "W"])).to(self.device)
                organ = mask_channel_tensor(data, volume, grid)
            else:
                organ = mask_channel(volume.with_array(prompts.anatomy.astype(np.uint8)), grid)
            if bool(organ.any()):
                source[key] = "mask"
                return organ
            missing = "mask misses the crop"
            self.trace.append("anatomy: the organ mask does not reach this crop; using the fallback")
        fallback = self.options.anatomy_fallback
        source[key] = f"{fallback} ({missing})"
        if fallback == "zeros":
            return np.zeros(grid.shape, np.float32)  # the paper: the organ mask as it is in the crop, empty
        if fallback == "ones" or extent is None:
            source[key] = f"ones ({missing})"
            return np.ones(grid.shape, np.float32)
        if fallback == "ct":
            return None  # the authors' use_mask=False: the CT goes into the third channel
        lo = grid.ras_to_kji(np.array(extent))
        pad = 20.0 / self.config.spacing_mm
        k0, j0, i0 = np.floor(lo.min(0) - pad).astype(int).clip(0, grid.size)
        k1, j1, i1 = np.ceil(lo.max(0) + pad + 1).astype(int).clip(0, grid.size)
        organ = np.zeros(grid.shape, np.float32)
        organ[k0:k1, j0:j1, i0:i1] = 1.0
        self.trace.append("anatomy: no organ mask, using a box around the prompts (degraded)")
        return organ

    def _input_crop(self, grid, prompts: GridPrompts):
        from ..tags.crop import ct_channel, ct_channel_tensor

        torch = self._torch
        float_volume = self._float_volume
        assert float_volume is not None  # set with the volume by set_image
        extent = self._extents.get(_grid_key(grid))
        if not self._resample_on_device():
            ct = ct_channel(float_volume, grid, self.intensity)
            organ = self._organ_channel(grid, prompts, extent)
            third = ct if organ is None else organ
            return torch.from_numpy(np.stack([ct, ct, third]))[None]
        if self._volume_tensor is None:  # once per image; integers become float32 as in `resample`
            array = np.asarray(float_volume.array)
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float32)
            self._volume_tensor = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(self.device)
        ct = ct_channel_tensor(self._volume_tensor, float_volume, grid, self.intensity)
        organ = self._organ_channel(grid, prompts, extent, tensor=True)
        third = ct if organ is None else torch.as_tensor(organ, device=ct.device)
        return torch.stack([ct, ct, third])[None]

    def _precision(self) -> str:
        """The precision the model runs in: fp32, or bf16/fp16 autocast ("auto" = bf16 on CUDA)."""
        choice = self.options.autocast
        if choice == "off" or (choice == "auto" and self._torch.device(self.device).type != "cuda"):
            return "fp32"
        return "fp16" if choice == "fp16" else "bf16"

    def _autocast(self):
        torch = self._torch
        device_type = torch.device(self.device).type
        precision = self._precision()
        if precision == "fp32":
            return torch.autocast(device_type=device_type, enabled=False)
        return torch.autocast(device_type=device_type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)

    def _encoded(self, grid, prompts: GridPrompts):
        organ_key = None if prompts.anatomy is None else hash(prompts.anatomy.tobytes())
        extent = self._extents.get(_grid_key(grid))
        key = (_grid_key(grid), organ_key, None if extent is None else tuple(np.round(np.ravel(extent), 2)))
        if key in self._encodings:
            self._encodings.move_to_end(key)
            self._run_organ.append(self._organ_sources.get(_grid_key(grid), "unknown"))
            return self._encodings[key]
        start = time.perf_counter()
        crops = self._input_crop(grid, prompts).to(self.device)
        self._tick("preprocess", start)
        start = time.perf_counter()
        torch = self._torch
        try:
            with torch.inference_mode(), self._autocast():
                encoded = self.model.encode(crops)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise DeviceError(
                    f"out of memory on {self.device} while encoding a {self.config.crop_size}^3 crop; try device 'cpu'"
                ) from None
            raise
        self._tick("encode", start)
        self._run_organ.append(self._organ_sources.get(_grid_key(grid), "unknown"))
        self._encodings[key] = encoded
        while len(self._encodings) > self._cache_size:
            self._encodings.popitem(last=False)
        return encoded

    def _crop_probability(self, grid, ras: _Prompts, prompts: GridPrompts, keep_outside: bool = False):
        """Tumour probability on one crop. With `keep_outside` (one crop, as published) include clicks
        outside the crop still go to the prompt encoder (their sampled features are zero); with several
        crops each crop gets only its own clicks."""
        torch = self._torch
        encoded = self._encoded(grid, prompts)
        use_tokens = self.model.point_label_embed is not None and self.options.negatives == "auto"
        include = grid.ras_to_kji(ras.include)
        if not keep_outside:
            include = include[grid.well_inside(include)]
        points, labels = [include], [np.ones(len(include))]
        if use_tokens and len(ras.exclude):
            exclude = grid.ras_to_kji(ras.exclude)
            exclude = exclude[grid.well_inside(exclude)]
            points.append(exclude)
            labels.append(np.zeros(len(exclude)))
        kji = np.concatenate(points)
        if len(kji) == 0:
            return torch.zeros(grid.shape, dtype=torch.float32, device=self.device)
        dwh = torch.from_numpy(kji[:, [0, 2, 1]].astype(np.float32))[None].to(self.device)
        lab = torch.from_numpy(np.concatenate(labels).astype(np.int64))[None].to(self.device)
        start = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            logits = self.model.decode(encoded, dwh, lab)
            prob = torch.softmax(logits.float(), dim=1)[0, 1]
            if self.options.text_fusion > 0:
                emb = self.class_embeddings_for(prompts.text).to(self.device)
                text_prob = self.model.alignment_maps(encoded, emb)[3][0, 1].float()
                prob = (1.0 - self.options.text_fusion) * prob + self.options.text_fusion * text_prob
        self._tick("decode", start)
        return prob

    def _apply_constraints(self, mask: np.ndarray, prompts: GridPrompts) -> np.ndarray:
        from scipy import ndimage

        volume = self._need_volume()
        if prompts.boxes_kji and mask.any():
            keep = np.zeros_like(mask, bool)
            margin = self.options.box_margin_mm / volume.spacing_kji
            inside_any = np.zeros(len(prompts.positive_kji), bool)
            limit = np.array(volume.shape_kji, float)
            for lo, hi in prompts.boxes_kji:
                lo, hi = np.clip(lo, -1.0, limit), np.clip(hi, -1.0, limit)
                a = np.maximum(np.floor(lo - margin).astype(int), 0)
                b = np.minimum(np.ceil(hi + margin).astype(int) + 1, volume.shape_kji)
                keep[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = True
                if len(prompts.positive_kji):
                    inside_any |= np.all(
                        (prompts.positive_kji >= lo - margin) & (prompts.positive_kji <= hi + margin), 1
                    )
            if inside_any.all():
                mask = (mask.astype(bool) & keep).astype(np.uint8)
        if len(prompts.negative_kji) and mask.any():
            labels, _ = ndimage.label(mask)
            from ..geometry import nearest_voxel

            pos_idx = (
                nearest_voxel(prompts.positive_kji, volume.shape_kji)
                if len(prompts.positive_kji)
                else np.zeros((0, 3), int)
            )
            protected = set(labels[tuple(pos_idx.T)].tolist()) if len(pos_idx) else set()
            radius = np.maximum(self.options.negative_radius_mm / volume.spacing_kji, 1.0)
            for point in prompts.negative_kji:
                idx = tuple(nearest_voxel(point, volume.shape_kji)[0])
                component = labels[idx]
                if component and component not in protected:
                    mask[labels == component] = 0
                    continue
                lo = np.maximum(np.floor(point - radius).astype(int), 0)
                hi = np.minimum(np.ceil(point + radius).astype(int) + 1, volume.shape_kji)
                kk, jj, ii = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
                ball = ((kk - point[0]) / radius[0]) ** 2 + ((jj - point[1]) / radius[1]) ** 2 + (
                    (ii - point[2]) / radius[2]
                ) ** 2 <= 1.0
                mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][ball] = 0
        return mask


def _grid_key(grid) -> tuple:
    return tuple(np.round(grid.ijk_to_ras[:3, :].ravel(), 4))


def _load(path: Path):
    """Checkpoint file -> (model, metadata, stored class embeddings or None, file SHA-256)."""
    from ..tags.checkpoint import load_model

    model, ckpt = load_model(path)
    return model, ckpt.metadata, ckpt.extra.get("text.class_embeddings"), ckpt.sha256
