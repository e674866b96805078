"""`Volume`: a voxel array plus the 4x4 matrix that maps voxel indices to RAS millimetres.

The array is stored in KJI order (slice, row, column), the order of Slicer's `arrayFromVolume`
and SimpleITK's `GetArrayFromImage`; the matrix maps (i, j, k, 1) column vectors to (R, A, S, 1),
as Slicer's `GetIJKToRASMatrix`. Arrays are read-only so no step can modify a caller's volume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


# a point this far (in voxels) outside an outer face still counts as inside: floating-point slack for clicks
# typed at the printed bounds (describe_bounds rounds inwards, this covers the last digit)
BOUNDS_SLACK_VOXELS = 1e-9


def _frozen(array: np.ndarray) -> np.ndarray:
    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class Volume:
    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        """One line a person can read (the dataclass default would print the voxels)."""
        spacing = "x".join(f"{s:.4g}" for s in self.spacing_ijk)
        origin = ", ".join(f"{c:.4g}" for c in self.ijk_to_ras[:3, 3])
        extra = f", {self.array.shape[3]} components" if self.array.ndim > 3 else ""
        name = f"{self.name!r}, " if self.name else ""
        return (f"Volume({name}{'x'.join(str(n) for n in self.shape_kji[::-1])} voxels (IJK){extra}, "
                f"{self.array.dtype}, spacing {spacing} mm, origin RAS ({origin}))")

    def __post_init__(self) -> None:
        matrix = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if matrix.shape != (4, 4):
            raise ValueError(f"ijk_to_ras must be 4x4, got {matrix.shape}")
        object.__setattr__(self, "ijk_to_ras", _frozen(matrix.copy()))
        object.__setattr__(self, "array", _frozen(self.array))

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[:3])

    @property
    def spacing_ijk(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (the lengths of the matrix columns)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def spacing_kji(self) -> np.ndarray:
        return self.spacing_ijk[::-1]

    @property
    def directions_ijk(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing_ijk

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    def ras_to_kji(self, points_ras) -> np.ndarray:
        """Continuous KJI indices of RAS points, shape (N, 3)."""
        pts = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
        homog = np.c_[pts, np.ones(len(pts))]
        ijk = (self.ras_to_ijk @ homog.T).T[:, :3]
        return ijk[:, ::-1]

    def kji_to_ras(self, points_kji) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(points_kji, dtype=np.float64))
        homog = np.c_[pts[:, ::-1], np.ones(len(pts))]
        return (self.ijk_to_ras @ homog.T).T[:, :3]

    def contains_kji(self, points_kji, tolerance: float = 0.5) -> np.ndarray:
        """True where a continuous index lies inside the voxel grid (voxel centres +- half a voxel, the outer
        faces included, plus floating-point slack so a click typed at a printed bound is inside)."""
        pts = np.atleast_2d(points_kji)
        slack = tolerance + BOUNDS_SLACK_VOXELS
        upper = np.array(self.shape_kji) - 1 + slack
        return np.all((pts >= -slack) & (pts <= upper), axis=1)

    def bounds_ras(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS bounds of the voxel grid (outer voxel faces), as (min, max)."""
        k, j, i = self.shape_kji
        corners = np.array([[a, b, c] for a in (-0.5, k - 0.5) for b in (-0.5, j - 0.5) for c in (-0.5, i - 0.5)])
        ras = self.kji_to_ras(corners)
        return ras.min(0), ras.max(0)

    def describe_bounds(self) -> str:
        """The bounds as printed in messages, rounded inwards to 0.1 mm: every point within them is inside."""
        lo, hi = self.bounds_ras()
        lo = np.ceil(np.round(lo * 10, 6)) / 10
        hi = np.floor(np.round(hi * 10, 6)) / 10
        return "R {:.1f}..{:.1f}, A {:.1f}..{:.1f}, S {:.1f}..{:.1f} mm".format(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])

    def with_array(self, array: np.ndarray, name: str | None = None) -> "Volume":
        """A new volume on this volume's grid."""
        if tuple(array.shape) != self.shape_kji:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape_kji}")
        return Volume(array, self.ijk_to_ras, self.name if name is None else name, dict(self.meta))

    def same_grid(self, other: "Volume", atol: float = 1e-3) -> bool:
        return self.shape_kji == other.shape_kji and np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=atol)

    def content_key(self) -> str:
        """A hash of voxels and geometry; caches key on it so an edited volume is never served stale results."""
        import hashlib

        digest = hashlib.blake2b(digest_size=16)
        digest.update(str(self.array.dtype).encode() + str(self.array.shape).encode())
        digest.update(np.ascontiguousarray(self.array).tobytes())
        digest.update(np.ascontiguousarray(self.ijk_to_ras).tobytes())
        return digest.hexdigest()


def make_ijk_to_ras(spacing_ijk, origin_ras, directions=None) -> np.ndarray:
    """The 4x4 index-to-RAS matrix from spacing, origin and a 3x3 direction matrix (columns = axes)."""
    matrix = np.eye(4)
    dirs = np.eye(3) if directions is None else np.asarray(directions, dtype=np.float64)
    matrix[:3, :3] = dirs * np.asarray(spacing_ijk, dtype=np.float64)[None, :]
    matrix[:3, 3] = origin_ras
    return matrix


def check_volume(volume: Volume) -> None:
    """Refuse volumes no backend can use, with a message naming the problem."""
    from .errors import InputError

    array = volume.array
    label = volume.name or "volume"
    if array.ndim != 3:
        raise InputError(f"{label}: a 3D volume is needed, got an array with {array.ndim} dimension(s) {array.shape}")
    if array.size == 0:
        raise InputError(f"{label}: the volume is empty (shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InputError(f"{label}: unsupported voxel type {array.dtype}; a real-valued scalar volume is needed")
    spacing = volume.spacing_ijk
    if not np.all(np.isfinite(volume.ijk_to_ras)) or np.any(spacing <= 1e-6) or abs(np.linalg.det(volume.ijk_to_ras[:3, :3])) < 1e-12:
        shown = ", ".join(f"{float(v):.3g}" for v in spacing)
        raise InputError(f"{label}: invalid geometry (spacing {shown} mm); check the header")
    directions = volume.ijk_to_ras[:3, :3] / spacing[None, :]
    if np.max(np.abs(directions.T @ directions - np.eye(3))) > 1e-3:
        raise InputError(f"{label}: the voxel axes are not perpendicular (a sheared grid); resample it to an "
                         "orthogonal grid first")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).any():
        raise InputError(f"{label}: every voxel is NaN or infinite")
