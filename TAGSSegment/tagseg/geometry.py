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


def _kji_index_map(source_ijk_to_ras: np.ndarray, target_ijk_to_ras: np.ndarray) -> np.ndarray:
    """4x4 map from a target KJI index to the source KJI index it samples (both grids' IJK->RAS)."""
    target = np.asarray(target_ijk_to_ras, dtype=np.float64)
    src_from_tgt = np.linalg.inv(np.asarray(source_ijk_to_ras, dtype=np.float64)) @ target
    swap = np.eye(4)[[2, 1, 0, 3]]
    return swap @ src_from_tgt @ swap


def resample(volume: Volume, ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int], order: int = 1,
             fill: float = 0.0) -> Volume:
    """Resample `volume` onto another grid (any orientation). order 0 = nearest, 1 = linear.

    Each source voxel covers +-half a voxel around its centre ("grid-constant"): with scipy's plain
    "constant" mode a target voxel landing on an edge voxel centre plus rounding noise (1e-15) got `fill`.
    `resample_tensor` is the same mapping in torch, for arrays already on a GPU.
    """
    from scipy import ndimage

    target = np.asarray(ijk_to_ras, dtype=np.float64)
    kji_from_kji = _kji_index_map(volume.ijk_to_ras, target)
    data = np.asarray(volume.array)
    if order > 0 and not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    out = ndimage.affine_transform(data, kji_from_kji[:3, :3], offset=kji_from_kji[:3, 3],
                                   output_shape=tuple(int(n) for n in shape_kji), order=order,
                                   mode="grid-constant", cval=fill, prefilter=False)
    return Volume(out, target, volume.name, dict(volume.meta))


def resample_tensor(data, source_ijk_to_ras: np.ndarray, ijk_to_ras: np.ndarray, shape_kji: tuple[int, int, int],
                    order: int = 1, fill: float = 0.0):
    """`resample` for a KJI torch tensor on any device (the TAGS crops on the GPU): same grid, same values.

    It reproduces scipy's `affine_transform(order, mode="grid-constant", prefilter=False)` operation by
    operation rather than calling `grid_sample`: source indices in float64, summed in scipy's order
    (k, j, i terms, then the offset; separate kernels, so no fused multiply-add), `floor` and weights
    1 - t, t per axis, out-of-volume corners read as `fill` (NaN * 0 stays NaN, as in scipy: with
    fill NaN, a sample on the last voxel centre is NaN), nearest = floor(x + 0.5). `grid_sample`
    rebuilds the index in float32 from normalised coordinates, about 1e-5 voxel off: a 1 mm crop of
    a 1 mm volume then reads the neighbour voxel's 1e-5 share, which flips the edge rule above and
    moves 0.5 samples of a binary mask across the > 0.5 threshold. Float inputs come back in their
    dtype, others as float32 for order 1 (as `resample`).
    """
    import itertools

    import torch

    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    device = data.device
    if order > 0 and not data.is_floating_point():
        data = data.to(torch.float32)
    index_map = torch.as_tensor(_kji_index_map(source_ijk_to_ras, ijk_to_ras), dtype=torch.float64, device=device)
    shape = tuple(int(n) for n in shape_kji)
    k, j, i = (torch.arange(n, dtype=torch.float64, device=device) for n in shape)
    k, j, i = k[:, None, None], j[None, :, None], i[None, None, :]
    coords = []
    for axis in range(3):       # scipy: ((m0 * k + m1 * j) + m2 * i) + offset
        row = index_map[axis]
        coords.append(((row[0] * k + row[1] * j) + row[2] * i) + row[3])
    size = data.shape
    flat = data.reshape(-1)
    fill_value = torch.tensor(fill, dtype=data.dtype if data.is_floating_point() else torch.float64, device=device)

    def read(indices):
        inside = torch.ones(shape, dtype=torch.bool, device=device)
        linear = torch.zeros(shape, dtype=torch.int64, device=device)
        for axis, index in enumerate(indices):
            inside = inside & (index >= 0) & (index < size[axis])
            linear = linear * size[axis] + index.clamp(0, size[axis] - 1)
        values = flat[linear.reshape(-1)].reshape(shape)
        return torch.where(inside, values.to(fill_value.dtype), fill_value)

    if order == 0:
        out = read([torch.floor(c + 0.5).to(torch.int64) for c in coords])
        return out.to(data.dtype) if not data.is_floating_point() and fill == int(fill) else out
    starts = [torch.floor(c) for c in coords]
    weights = [(1.0 - (c - s), c - s) for c, s in zip(coords, starts)]
    starts = [s.to(torch.int64) for s in starts]
    total = torch.zeros(shape, dtype=torch.float64, device=device)
    for corner in itertools.product((0, 1), repeat=3):
        term = read([s + c for s, c in zip(starts, corner)]).to(torch.float64)
        for axis, c in enumerate(corner):
            term = term * weights[axis][c]
        total = total + term
    return total.to(data.dtype)


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
