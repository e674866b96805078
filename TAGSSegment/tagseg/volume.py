"""`Volume`: a voxel array plus the 4x4 matrix that maps voxel indices to RAS millimetres.

The array is stored in KJI order (slice, row, column), the order of Slicer's `arrayFromVolume`
and SimpleITK's `GetArrayFromImage`; the matrix maps (i, j, k, 1) column vectors to (R, A, S, 1),
as Slicer's `GetIJKToRASMatrix`. Arrays are read-only so no step can modify a caller's volume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast, overload

import numpy as np

from .geometry import BOUNDS_SLACK_VOXELS, Grid, _frozen, make_ijk_to_ras  # noqa: F401  (re-exported)

T = TypeVar("T")


class _OfGrid(Generic[T]):
    """A read-only Volume attribute that is its grid's, declared in one line rather than a property each."""

    def __init__(self, read: Callable[[Grid], T]) -> None:
        self._read = read

    @overload
    def __get__(self, volume: None, owner: type) -> _OfGrid[T]: ...

    @overload
    def __get__(self, volume: Volume, owner: type | None = None) -> T: ...

    def __get__(self, volume: Volume | None, owner: type | None = None) -> T | _OfGrid[T]:
        return self if volume is None else self._read(volume._grid)


@dataclass(frozen=True)
class Volume:
    """A `Grid` plus its voxels: `grid` holds the geometry, and the geometry methods here are its own."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict, compare=False)
    _grid: Grid = field(init=False, repr=False, compare=False)  # set by __post_init__ from array and ijk_to_ras

    def __repr__(self) -> str:
        """One line a person can read (the dataclass default would print the voxels)."""
        spacing = "x".join(f"{s:.4g}" for s in self.spacing_ijk)
        origin = ", ".join(f"{c:.4g}" for c in self.ijk_to_ras[:3, 3])
        extra = f", {self.array.shape[3]} components" if self.array.ndim > 3 else ""
        name = f"{self.name!r}, " if self.name else ""
        return (
            f"Volume({name}{'x'.join(str(n) for n in self.shape_kji[::-1])} voxels (IJK){extra}, "
            f"{self.array.dtype}, spacing {spacing} mm, origin RAS ({origin}))"
        )

    def __post_init__(self) -> None:
        array = _frozen(self.array)
        grid = Grid(self.ijk_to_ras, cast("tuple[int, int, int]", tuple(int(n) for n in array.shape[:3])))
        object.__setattr__(self, "ijk_to_ras", grid.ijk_to_ras)
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "_grid", grid)

    @property
    def grid(self) -> Grid:
        """The voxel grid (IJK->RAS matrix and KJI shape) without the voxels."""
        return self._grid

    # geometry: the grid's (see `tagseg.geometry.Grid`)
    shape_kji = _OfGrid(lambda grid: grid.shape_kji)
    spacing_ijk = _OfGrid(lambda grid: grid.spacing_ijk)  # voxel size in mm along i, j, k
    spacing_kji = _OfGrid(lambda grid: grid.spacing_kji)
    directions_ijk = _OfGrid(lambda grid: grid.directions_ijk)  # columns: unit RAS directions of i, j, k
    ras_to_ijk = _OfGrid(lambda grid: grid.ras_to_ijk)

    def ras_to_kji(self, points_ras) -> np.ndarray:
        """Continuous KJI indices of RAS points, shape (N, 3)."""
        return self._grid.ras_to_kji(points_ras)

    def kji_to_ras(self, points_kji) -> np.ndarray:
        return self._grid.kji_to_ras(points_kji)

    def contains_kji(self, points_kji, tolerance: float = 0.5) -> np.ndarray:
        """True where a continuous index lies inside the voxel grid (voxel centres +- half a voxel, the outer
        faces included, plus floating-point slack so a click typed at a printed bound is inside)."""
        return self._grid.contains_kji(points_kji, tolerance)

    def bounds_ras(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS bounds of the voxel grid (outer voxel faces), as (min, max)."""
        return self._grid.bounds_ras()

    def describe_bounds(self) -> str:
        """The bounds as printed in messages, rounded inwards to 0.1 mm: every point within them is inside."""
        return self._grid.describe_bounds()

    def same_grid(self, other: Volume | Grid, atol: float = 1e-3) -> bool:
        return self._grid.same_grid(other.grid if isinstance(other, Volume) else other, atol)

    # voxels
    def with_array(self, array: np.ndarray, name: str | None = None) -> Volume:
        """A new volume on this volume's grid."""
        if tuple(array.shape) != self.shape_kji:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape_kji}")
        return Volume(array, self.ijk_to_ras, self.name if name is None else name, dict(self.meta))

    def content_key(self) -> str:
        """A hash of voxels and geometry; caches key on it so an edited volume is never served stale results.

        Asked on every click: the hash is remembered with a CRC-32 of the voxels, and recomputed only when
        the CRC changes (the array may be a view of a buffer its owner edits in place, e.g. Slicer's). On a
        36 MB glioma the CRC costs ~5 ms, the hash ~40 ms."""
        import hashlib
        import zlib

        # an ndarray is a buffer; numpy's stubs declare it only for Python >= 3.12
        voxels = memoryview(np.ascontiguousarray(self.array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        check = zlib.crc32(voxels)
        remembered = getattr(self, "_content", None)
        if remembered is not None and remembered[0] == check:
            return remembered[1]
        digest = hashlib.blake2b(digest_size=16)
        digest.update(str(self.array.dtype).encode() + str(self.array.shape).encode())
        digest.update(voxels)
        digest.update(np.ascontiguousarray(self.ijk_to_ras).tobytes())
        key = digest.hexdigest()
        object.__setattr__(self, "_content", (check, key))  # frozen dataclass: a cache, not state
        return key


def check_volume(volume: Volume, scan_voxels: bool = True) -> None:
    """Refuse volumes no backend can use, with a message naming the problem. `scan_voxels=False` checks shape,
    voxel type and geometry only (no pass over the voxels: the Slicer main thread leaves that to the engine)."""
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
    if (
        not np.all(np.isfinite(volume.ijk_to_ras))
        or np.any(spacing <= 1e-6)
        or abs(np.linalg.det(volume.ijk_to_ras[:3, :3])) < 1e-12
    ):
        shown = ", ".join(f"{float(v):.3g}" for v in spacing)
        raise InputError(f"{label}: invalid geometry (spacing {shown} mm); check the header")
    directions = volume.ijk_to_ras[:3, :3] / spacing[None, :]
    if np.max(np.abs(directions.T @ directions - np.eye(3))) > 1e-3:
        raise InputError(
            f"{label}: the voxel axes are not perpendicular (a sheared grid); resample it to an orthogonal grid first"
        )
    if scan_voxels and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).any():
        raise InputError(f"{label}: every voxel is NaN or infinite")
