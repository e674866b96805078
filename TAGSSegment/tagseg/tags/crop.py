"""From a source `Volume` to a TAGS input crop and back (TAGS_SPEC.md §4.2, §6).

The crop is a cube of P voxels at the checkpoint's isotropic spacing, axis-aligned in patient
space, in the layout the published datasets have after their transpose: array axes (D, H, W) =
(inferior->superior, anterior->posterior, right->left), i.e. the common LPS-stored axial CT read as
K, J, I. Sampling goes straight from the source grid to the crop (one interpolation), so a crop
equals "resample to 1 mm, then cut [c - P/2, c + P/2)" without resampling the whole volume.
Out-of-volume voxels become 0 after z-scoring (the dataset mean), as the authors' zero padding did.
Training and inference both build crops here, so they cannot drift apart.

Each step has a numpy/scipy form (the reference, used on CPU) and a `*_tensor` twin that does the same
arithmetic in torch on the model's device (`geometry.resample_tensor`), so a GPU run does not ship
the crop through the CPU; `test_tags_crop_device.py` holds the two to equality.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..geometry import Grid, resample, resample_tensor
from ..volume import Volume

# RAS direction of the crop's i (W), j (H), k (D) axes: columns of the direction matrix
CROP_DIRECTIONS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Intensity:
    """Clip window and z-score statistics a checkpoint was trained with (§4.3)."""

    window: tuple[float, float]
    mean: float
    std: float

    @classmethod
    def from_metadata(cls, meta: Mapping) -> Intensity:
        lo, hi = meta["window"]
        return cls((float(lo), float(hi)), float(meta["mean"]), float(meta["std"]))


@dataclass(frozen=True, eq=False, repr=False)
class CropGrid(Grid):
    """A P^3 crop: a cubic `Grid` along `CROP_DIRECTIONS`. Crop voxel P/2 (per axis) sits on `centre_ras`."""

    @classmethod
    def centred(cls, centre_ras, size: int, spacing_mm: float) -> CropGrid:
        matrix = np.eye(4)
        matrix[:3, :3] = CROP_DIRECTIONS * spacing_mm
        matrix[:3, 3] = np.asarray(centre_ras, float) - matrix[:3, :3] @ np.full(3, size // 2)
        return cls(matrix, (size,) * 3)

    @property
    def size(self) -> int:
        return self.shape_kji[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.shape_kji

    @property
    def spacing_mm(self) -> float:
        return float(np.linalg.norm(self.ijk_to_ras[:3, 0]))

    def well_inside(self, points_kji, margin: float = 0.0) -> np.ndarray:
        """True where a continuous index lies at least `margin` voxels inside the crop's outer faces (exact)."""
        return self.contains_kji(points_kji, tolerance=0.5 - margin, slack=0.0)


def floored_centre_ras(volume: Volume, points_ras, spacing_mm: float) -> np.ndarray:
    """Centre of the crop the authors' test.py cuts around `points_ras` (TAGS_SPEC.md §6 step 4).

    They resample the volume to `spacing_mm` with `F.interpolate(scale_factor=s / spacing_mm)`, whose
    voxel n sits (n + 0.5) * spacing_mm from the volume's outer edge along each axis, take the clicks as
    voxels of that grid, and crop [c - P/2, c + P/2) with c = floor((min + max) / 2) per axis. Here each
    point is mapped to the resampled voxel that holds it, c is floored the same way, and the returned
    RAS point is voxel c, moved by one voxel along the axes where the crop runs opposite to the
    volume so the crop covers the same voxels. A volume that is not axis-aligned with the crop falls
    back to flooring the midpoint on a `spacing_mm` lattice in patient space.
    """
    pts = np.atleast_2d(np.asarray(points_ras, float))
    # crop axis a (i, j, k) against volume axis b: a signed permutation when the grids are aligned
    alignment = CROP_DIRECTIONS.T @ volume.directions_ijk
    nearest = np.round(alignment)
    aligned = (
        np.allclose(alignment, nearest, atol=1e-3)
        and np.all(np.abs(nearest).sum(0) == 1)
        and np.all(np.abs(nearest).sum(1) == 1)
    )
    if not aligned:
        mid = (pts.min(0) + pts.max(0)) / 2
        return np.floor(mid / spacing_mm) * spacing_mm
    spacing = np.asarray(volume.spacing_kji, float)
    index = np.floor((volume.ras_to_kji(pts) + 0.5) * spacing / spacing_mm)
    centre = np.floor((index.min(0) + index.max(0)) / 2)
    sign_ijk = nearest.sum(0)  # +1 where the crop runs along the volume axis, -1 against
    centre -= sign_ijk[::-1] < 0
    return volume.kji_to_ras((centre + 0.5) * spacing_mm / spacing - 0.5)[0]


def ct_channel(volume: Volume, grid: CropGrid, intensity: Intensity) -> np.ndarray:
    """Clip to the window, z-score, out-of-volume = 0; float32 [P, P, P] in (D, H, W)."""
    sampled = np.asarray(resample(volume, grid, order=1, fill=np.nan).array, np.float32)
    lo, hi = intensity.window
    out = (np.clip(sampled, lo, hi) - intensity.mean) / intensity.std
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)


def mask_channel(mask: Volume, grid: CropGrid) -> np.ndarray:
    """A binary mask on any grid -> {0, 1} float32 on the crop (linear, then > 0.5, as published)."""
    binary = mask.with_array((np.asarray(mask.array) > 0).astype(np.float32))
    sampled = np.asarray(resample(binary, grid, order=1, fill=0.0).array)
    return (sampled > 0.5).astype(np.float32)


def ct_channel_tensor(data, volume: Volume, grid: CropGrid, intensity: Intensity):
    """`ct_channel` for `volume`'s array already on a device as the tensor `data`; float32 [P, P, P] tensor."""
    import torch

    sampled = resample_tensor(data, volume.grid, grid, order=1, fill=float("nan"))
    lo, hi = intensity.window
    out = (torch.clamp(sampled, lo, hi) - intensity.mean) / intensity.std
    return torch.where(torch.isfinite(out), out, torch.zeros((), dtype=out.dtype, device=out.device))


def mask_channel_tensor(data, mask: Volume, grid: CropGrid):
    """`mask_channel` for a mask whose array is on a device as the tensor `data` (only `mask`'s grid is read)."""
    import torch

    binary = (data > 0).to(torch.float32)
    sampled = resample_tensor(binary, mask.grid, grid, order=1, fill=0.0)
    return (sampled > 0.5).to(torch.float32)


def crop_to_source(
    prob_crop: np.ndarray, grid: CropGrid, source: Volume
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """A crop-grid probability map -> the block of the source grid the crop covers (linear, 0 outside
    the crop). Returns (KJI slices, float32 block), or None when the crop misses the volume."""
    block = source.grid.block_covering(grid)
    if block is None:
        return None
    lo, hi = block
    crop_volume = Volume(np.asarray(prob_crop, np.float32), grid.ijk_to_ras, "crop", {})
    out = resample(crop_volume, source.grid.sub_grid(lo, hi), order=1, fill=0.0).array
    slices = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return slices, np.asarray(out, np.float32)


def crop_to_source_tensor(prob_crop, grid: CropGrid, source: Volume):
    """`crop_to_source` for a probability tensor on a device: (KJI slices, float32 block tensor) or None."""
    import torch

    block = source.grid.block_covering(grid)
    if block is None:
        return None
    lo, hi = block
    out = resample_tensor(prob_crop.to(torch.float32), grid, source.grid.sub_grid(lo, hi), order=1, fill=0.0)
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=False)), out
