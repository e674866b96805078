"""The two tools a 3D Slicer user reaches for today, re-run the way ../shared/docs/BASELINES.md ran them.

* `GrowFromSeeds`: Slicer's "Grow from seeds" effect, i.e. `vtkImageGrowCutSegment` (slicer-core) on the
  raw intensities with a seed label map: 1 = a small ball at each include click, 2 = exclude clicks plus a
  background shell on the faces of a box around the prompts. The filter keeps its distance map between
  updates (the effect re-uses one filter instance), so a refine click is Slicer's incremental update.
* `PerSliceLiteMedSAM`: MedSAM's own Slicer plugin: LiteMedSAM on every slice of a 3D box with the same
  2D box, each slice encoded again at every run (the plugin keeps no embedding cache), slices as Slicer
  displays them, CT soft-tissue window or MR percentiles, area downsampling to 256 x 256.

Both take prompts in RAS mm and return a uint8 KJI mask on the image's grid, like `tagseg.Session`.
The constants are BASELINES.md's. Two details it leaves open are fixed here: the include seed is a ball of
radius 1 voxel and the shell is rounded outward (never inside the margin). Grow from seeds is sensitive to
them (seed radius 0 / 1 / 2 voxels moved single dev cases by up to 0.2 Dice), so reproduced means differ
from BASELINES.md's by a few hundredths; the per-slice numbers reproduce its 3D-box row (0.823 vs 0.822).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagseg import intensity
from tagseg.geometry import AxisReorientation
from tagseg.volume import Volume

Point = tuple[float, float, float]
Box = tuple[Point, Point]

CLICK_SHELL_MARGIN_MM = 30.0  # BASELINES.md: background on the faces of the clicks' box + 30 mm
BOX_SHELL_MARGIN_MM = 5.0  # BASELINES.md: background on the faces of the lesion box + 5 mm
SEED_BALL_RADIUS_VOX = 1  # include seed: a ball of this radius (voxels) around each click
CLICK_BOX_MM = 30.0  # BASELINES.md: per-slice LiteMedSAM gets a 30 mm box around the clicks
CT_WINDOW_HU = (-160.0, 240.0)  # BASELINES.md: soft-tissue window for CT ...
MR_PERCENTILES = (0.5, 99.5)  # ... and percentiles for MR


def ras_box_to_kji(volume: Volume, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Continuous KJI bounds of an RAS box (all 8 corners mapped, so flipped/permuted axes work)."""
    lo, hi = np.asarray(box[0], float), np.asarray(box[1], float)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    kji = volume.ras_to_kji(corners)
    return kji.min(0), kji.max(0)


def points_box(points: list[Point], margin_mm: float) -> Box:
    """The RAS box around some points, grown by a margin on every side."""
    p = np.asarray(points, float)
    return tuple(p.min(0) - margin_mm), tuple(p.max(0) + margin_mm)


def grow_box(box: Box, margin_mm: float) -> Box:
    return tuple(np.asarray(box[0], float) - margin_mm), tuple(np.asarray(box[1], float) + margin_mm)


# ---- Grow from seeds ------------------------------------------------------------------------------
class GrowFromSeeds:
    """One Grow-from-seeds session on one image: `run` the first time, `run` again to refine.

    The shell of background seeds must sit at least one voxel inside the region handed to the
    filter: GrowCut never grows from the outermost voxel layer (BASELINES.md), so the region is the
    shell's box plus one voxel on every side, clipped to the image.
    """

    def __init__(self, volume: Volume, ball_radius_vox: int = SEED_BALL_RADIUS_VOX) -> None:
        import slicer  # slicer-core: the same compiled filter Slicer's effect runs

        self.volume = volume
        self.ball_radius = ball_radius_vox
        self._filter = slicer.vtkImageGrowCutSegment()
        self._region: tuple[slice, ...] | None = None
        self._intensity = None
        self._keep: list = []  # VTK arrays wrap numpy buffers: keep them alive while used

    def run(self, include: list[Point], shell: Box, exclude: list[Point] = ()) -> np.ndarray:
        """Mask (uint8 KJI) from include clicks, exclude clicks and a background shell on `shell`'s faces."""
        shape = np.array(self.volume.shape_kji)
        lo, hi = ras_box_to_kji(self.volume, shell)
        # shell faces: the voxels at or just outside the box (never inside its margin), >= 1 voxel inside
        # the image; the region handed to the filter is the shell's box + 1 voxel
        shell_lo = np.clip(np.floor(lo + 1e-6).astype(int), 1, shape - 2)
        shell_hi = np.clip(np.ceil(hi - 1e-6).astype(int), 1, shape - 2)
        region_lo, region_hi = shell_lo - 1, shell_hi + 1
        region = tuple(slice(int(a), int(b) + 1) for a, b in zip(region_lo, region_hi, strict=False))
        seeds = np.zeros([s.stop - s.start for s in region], dtype=np.uint8)
        a, b = shell_lo - region_lo, shell_hi - region_lo
        inner = seeds[a[0] : b[0] + 1, a[1] : b[1] + 1, a[2] : b[2] + 1]
        inner[[0, -1], :, :] = 2
        inner[:, [0, -1], :] = 2
        inner[:, :, [0, -1]] = 2
        for points, value in ((exclude, 2), (include, 1)):  # include last: it wins where both touch
            for p in points:
                self._paint_ball(seeds, self.volume.ras_to_kji([p])[0] - region_lo, value)
        if region != self._region:
            self._region = region
            self._intensity = self._image(np.ascontiguousarray(self.volume.array[region]))
            self._filter.SetIntensityVolume(self._intensity)
        self._filter.SetSeedLabelVolume(self._image(seeds))
        self._filter.Update()
        from vtkmodules.util.numpy_support import vtk_to_numpy

        out = vtk_to_numpy(self._filter.GetOutput().GetPointData().GetScalars()).reshape(seeds.shape)
        mask = np.zeros(self.volume.shape_kji, np.uint8)
        mask[region] = out == 1
        return mask

    def _paint_ball(self, seeds: np.ndarray, centre_kji: np.ndarray, value: int) -> None:
        c = np.round(centre_kji).astype(int)
        r = self.ball_radius
        kk, jj, ii = np.ogrid[-r : r + 1, -r : r + 1, -r : r + 1]
        ball = kk**2 + jj**2 + ii**2 <= r * r
        for dk, dj, di in np.argwhere(ball) - r:
            k, j, i = c + (dk, dj, di)
            if 0 < k < seeds.shape[0] - 1 and 0 < j < seeds.shape[1] - 1 and 0 < i < seeds.shape[2] - 1:
                seeds[k, j, i] = value

    def _image(self, array: np.ndarray):
        """A vtkImageData over a KJI numpy array (VTK's x = i varies fastest, as in C order)."""
        import vtk
        from vtkmodules.util.numpy_support import numpy_to_vtk

        data = np.ascontiguousarray(array)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        scalars = numpy_to_vtk(data.ravel(), deep=False)
        self._keep.append(data)
        image = vtk.vtkImageData()
        image.SetDimensions(data.shape[2], data.shape[1], data.shape[0])
        image.GetPointData().SetScalars(scalars)
        return image


# ---- per-slice LiteMedSAM ------------------------------------------------------------------------
@dataclass
class SliceBox:
    z: int  # working (display) slice index
    box_rc: np.ndarray  # (row0, col0, row1, col1) in continuous working pixel indices


class PerSliceLiteMedSAM:
    """LiteMedSAM run slice by slice with a 2D box per slice and no embedding cache, as the MedSAM plugin does.

    `encoder="torch"` is what the plugin runs; "onnxruntime" is offered to separate the network's
    speed from the workflow's (our backend encodes with ONNX Runtime).
    """

    def __init__(self, encoder: str = "torch") -> None:
        import torch

        from tagseg.backends.litemedsam_net import LiteMedSAM

        self.torch = torch
        # size 0: every slice is re-encoded
        self.net = LiteMedSAM(device="cpu", embedding_cache_size=0, runtime=encoder)
        self.encoder = self.net.runtime
        self.slices_encoded = 0

    def set_image(self, volume: Volume) -> None:
        """Slices in Slicer's axial display order, intensities to 0..1 (CT window or MR percentiles)."""
        self.volume = volume
        self.reorientation = AxisReorientation.to_axial(volume)
        work = np.asarray(self.reorientation.apply(np.asarray(volume.array)), dtype=np.float32)
        self.is_ct = intensity.looks_like_ct(volume.array)
        preset = (
            intensity.IntensityPreset("ct-soft-tissue", window_hu=CT_WINDOW_HU)
            if self.is_ct
            else intensity.IntensityPreset("percentile", percentiles=MR_PERCENTILES)
        )
        self.work = intensity.normalise(work, preset)

    # prompts -> slice boxes
    def _to_work(self, ras_points) -> np.ndarray:
        return self.reorientation.index_to_target(self.volume.ras_to_kji(ras_points))

    def boxes_for_3d_box(self, box: Box) -> list[SliceBox]:
        """The same 2D box on every slice whose centre lies inside the 3D box."""
        lo, hi = ras_box_to_kji(self.volume, box)
        corners = self._to_work(self.volume.kji_to_ras(np.array([lo, hi])))
        wlo, whi = corners.min(0), corners.max(0)
        n = self.work.shape[0]
        z0, z1 = max(0, int(np.ceil(wlo[0] - 1e-6))), min(n - 1, int(np.floor(whi[0] + 1e-6)))
        rc = np.array([wlo[1], wlo[2], whi[1], whi[2]])
        return [SliceBox(z, rc) for z in range(z0, z1 + 1)]

    def boxes_for_clicks(self, points: list[Point], size_mm: float = CLICK_BOX_MM) -> list[SliceBox]:
        """A box of `size_mm` around the clicks, on each clicked slice only (the click-only variant)."""
        work = self._to_work(points)
        sp = self._work_spacing()
        half = np.array([size_mm / 2 / sp[1], size_mm / 2 / sp[2]])
        out = []
        for z in sorted(set(np.round(work[:, 0]).astype(int).tolist())):
            if not 0 <= z < self.work.shape[0]:
                continue
            rc = work[np.round(work[:, 0]).astype(int) == z][:, 1:]
            out.append(SliceBox(z, np.concatenate([rc.min(0) - half, rc.max(0) + half])))
        return out

    def _work_spacing(self) -> np.ndarray:
        spacing_kji = self.volume.spacing_kji
        return np.array([spacing_kji[s] for s in self.reorientation.source_axis])

    # network
    def _model_input(self, z: int) -> tuple[np.ndarray, float, tuple[int, int]]:
        """3x256x256 image: longest side scaled to 256 (area averaging when shrinking), padded bottom/right."""
        import torch.nn.functional as F

        from tagseg.backends.litemedsam_net import INPUT_SIZE

        sl = self.work[z]
        h, w = sl.shape
        scale = INPUT_SIZE / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        t = self.torch.from_numpy(np.ascontiguousarray(sl))[None, None]
        if scale < 1:
            t = F.interpolate(t, size=(nh, nw), mode="area")
        else:
            t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)
        small = t[0, 0].numpy()
        lo, hi = float(small.min()), float(small.max())
        small = (small - lo) / max(hi - lo, 1e-8)  # LiteMedSAM's own per-slice min-max step
        image = np.zeros((INPUT_SIZE, INPUT_SIZE), np.float32)
        image[:nh, :nw] = small
        return np.repeat(image[None], 3, axis=0), scale, (nh, nw)

    def segment(self, slice_boxes: list[SliceBox]) -> np.ndarray:
        """Encode each slice (no cache), decode its box, paste the mask; uint8 KJI on the source grid."""
        import torch
        import torch.nn.functional as F

        mask = np.zeros(self.work.shape, bool)
        for sb in slice_boxes:
            image, scale, (nh, nw) = self._model_input(sb.z)
            emb = self.net.embedding(("slice", sb.z), lambda img=image: img)
            self.slices_encoded += 1
            r0, c0, r1, c1 = sb.box_rc
            box = np.array([[(c0 + 0.5) * scale, (r0 + 0.5) * scale, (c1 + 0.5) * scale, (r1 + 0.5) * scale]])
            logits, _ = self.net.decode(emb, np.clip(box, 0, 255))
            valid = torch.from_numpy(logits[:, :nh, :nw])[:, None]
            h, w = self.work.shape[1:]
            up = F.interpolate(valid, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
            mask[sb.z] = up > 0
        return np.ascontiguousarray(self.reorientation.invert(mask.astype(np.uint8)))
