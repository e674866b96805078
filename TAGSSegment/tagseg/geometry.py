"""Grid conversions: axis reorientation, resampling to a working grid, crop/pad and paste-back.

Each conversion between the source grid and a model grid lives here, once. Everything works on
`Volume`s (RAS affine) or on plain KJI arrays with explicit index maps, never on a caller's array in place.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .volume import Volume

# Display axial order used by Slicer's axial view and by DICOM: columns run R->L (+L), rows run
# A->P (+P), slices run I->S (+S). In RAS terms the working axes i, j, k point to -R, -A, +S.
AXIAL_DIRECTIONS_RAS = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T


@dataclass(frozen=True)
class AxisReorientation:
    """A lossless permutation/flip of KJI array axes that brings a volume close to axial display order.

    `source_axis[t]` is the source KJI axis that becomes target KJI axis t; `flip[t]` says whether
    it is reversed. Oblique volumes go to the nearest axes: no voxel is interpolated, so a mask
    mapped back lands on exactly the voxels it was predicted on.
    """

    source_axis: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    source_shape: tuple[int, int, int]

    @classmethod
    def to_axial(cls, volume: Volume) -> "AxisReorientation":
        dirs_kji = volume.directions_ijk[:, ::-1]          # columns: RAS direction of source k, j, i
        target_kji = AXIAL_DIRECTIONS_RAS[:, ::-1]          # columns: wanted RAS direction of k, j, i
        score = target_kji.T @ dirs_kji                    # [target, source] cosine
        order, flips, used = [], [], set()
        for t in np.argsort(-np.abs(score).max(axis=1)):  # most decided target axis first
            candidates = [s for s in np.argsort(-np.abs(score[t])) if s not in used]
            s = int(candidates[0])
            used.add(s)
            order.append((int(t), s, bool(score[t, s] < 0)))
        order.sort()
        return cls(tuple(s for _, s, _ in order), tuple(f for _, _, f in order), volume.shape_kji)

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.source_axis + tuple(range(3, array.ndim)))
        for axis, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis=axis)
        return out

    def invert(self, array: np.ndarray) -> np.ndarray:
        out = array
        for axis, flipped in enumerate(self.flip):
            if flipped:
                out = np.flip(out, axis=axis)
        inverse = tuple(int(a) for a in np.argsort(self.source_axis))
        return np.transpose(out, inverse + tuple(range(3, array.ndim)))

    def target_shape(self) -> tuple[int, int, int]:
        return tuple(self.source_shape[s] for s in self.source_axis)

    def index_to_target(self, kji: np.ndarray) -> np.ndarray:
        """Continuous source KJI indices -> working KJI indices."""
        src = np.atleast_2d(kji)
        out = src[:, list(self.source_axis)].astype(np.float64)
        shape = self.target_shape()
        for axis, flipped in enumerate(self.flip):
            if flipped:
                out[:, axis] = shape[axis] - 1 - out[:, axis]
        return out

    def index_to_source(self, kji: np.ndarray) -> np.ndarray:
        tgt = np.atleast_2d(kji).astype(np.float64).copy()
        shape = self.target_shape()
        for axis, flipped in enumerate(self.flip):
            if flipped:
                tgt[:, axis] = shape[axis] - 1 - tgt[:, axis]
        out = np.empty_like(tgt)
        out[:, list(self.source_axis)] = tgt
        return out

    def volume(self, volume: Volume) -> Volume:
        """The reoriented volume, with the matrix that keeps every voxel at its RAS position."""
        shape = self.target_shape()
        # target index t_a = (flip ? n-1-s : s) along source axis source_axis[a]
        src_from_tgt = np.zeros((4, 4))
        src_from_tgt[3, 3] = 1.0
        for a, s in enumerate(self.source_axis):
            if self.flip[a]:
                src_from_tgt[s, a] = -1.0
                src_from_tgt[s, 3] = shape[a] - 1
            else:
                src_from_tgt[s, a] = 1.0
        # matrices act on (k, j, i, 1) here; convert Volume's (i, j, k) convention around it
        swap = np.eye(4)[[2, 1, 0, 3]]
        ijk_to_ras = volume.ijk_to_ras @ swap @ src_from_tgt @ swap
        return Volume(np.ascontiguousarray(self.apply(volume.array)), ijk_to_ras, volume.name, dict(volume.meta))


def resample(volume: Volume, ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int], order: int = 1,
             fill: float = 0.0) -> Volume:
    """Resample `volume` onto another grid (any orientation). order 0 = nearest, 1 = linear.

    Each source voxel covers +-half a voxel around its centre ("grid-constant"): with scipy's plain
    "constant" mode a target voxel landing on an edge voxel centre plus rounding noise (1e-15) got `fill`.
    """
    from scipy import ndimage

    target = np.asarray(ijk_to_ras, dtype=np.float64)
    src_from_tgt = volume.ras_to_ijk @ target                 # ijk(target) -> ijk(source)
    swap = np.eye(4)[[2, 1, 0, 3]]
    kji_from_kji = swap @ src_from_tgt @ swap
    data = np.asarray(volume.array)
    if order > 0 and not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    out = ndimage.affine_transform(data, kji_from_kji[:3, :3], offset=kji_from_kji[:3, 3],
                                   output_shape=tuple(int(n) for n in shape_kji), order=order,
                                   mode="grid-constant", cval=fill, prefilter=False)
    return Volume(out, target, volume.name, dict(volume.meta))


def resample_like(volume: Volume, reference: Volume, order: int = 1, fill: float = 0.0) -> Volume:
    if volume.same_grid(reference):
        return volume
    return resample(volume, reference.ijk_to_ras, reference.shape_kji, order=order, fill=fill)


def isotropic_grid(volume: Volume, spacing_mm: float | tuple[float, float, float]) -> tuple[np.ndarray, tuple]:
    """A grid covering the same RAS extent with the volume's directions and the given spacing (i, j, k)."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    extent_ijk = volume.spacing_ijk * np.array(volume.shape_kji[::-1])
    size_ijk = np.maximum(1, np.round(extent_ijk / spacing)).astype(int)
    matrix = np.eye(4)
    matrix[:3, :3] = volume.directions_ijk * spacing[None, :]
    first_center = volume.ijk_to_ras @ np.array([-0.5, -0.5, -0.5, 1.0])
    matrix[:3, 3] = first_center[:3] + matrix[:3, :3] @ np.array([0.5, 0.5, 0.5])
    return matrix, tuple(int(n) for n in size_ijk[::-1])


def crop_pad(array: np.ndarray, start: tuple[int, ...], size: tuple[int, ...], fill=0) -> np.ndarray:
    """The window [start, start+size) of `array`; parts outside the array are filled with `fill`."""
    out = np.full(tuple(size) + array.shape[len(size):], fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def paste(target: np.ndarray, patch: np.ndarray, start: tuple[int, ...]) -> None:
    """Write `patch` into the window at `start` of `target` (clipped to target). Modifies `target`."""
    src, dst = [], []
    for s, n, dim in zip(start, patch.shape, target.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return
        dst.append(slice(lo, hi))
        src.append(slice(lo - s, hi - s))
    target[tuple(dst)] = patch[tuple(src)]


def nearest_index(continuous, size: int) -> np.ndarray:
    """The voxel index nearest a continuous index along an axis of `size` voxels: halves round up
    (floor(x + 0.5), not numpy's round-half-to-even), and anything within the outer faces
    [-0.5, size - 0.5] lands on a voxel, so a click on the volume's printed bound is the last slice,
    never index `size`. The one place a continuous index becomes a slice/row/column."""
    values = np.floor(np.asarray(continuous, dtype=np.float64) + 0.5)
    return np.clip(values, 0, max(int(size) - 1, 0)).astype(np.int64)


def nearest_voxel(points_kji, shape_kji) -> np.ndarray:
    """`nearest_index` per axis for (N, 3) continuous KJI indices on a grid of `shape_kji`."""
    pts = np.atleast_2d(np.asarray(points_kji, dtype=np.float64))
    return np.stack([nearest_index(pts[:, axis], shape_kji[axis]) for axis in range(pts.shape[1])], axis=1)
