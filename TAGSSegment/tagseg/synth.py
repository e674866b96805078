"""Seeded CT-like phantoms with one tumour of known shape and contrast, for tests and demos.

Every shape lives in RAS millimetres and is evaluated at each voxel's RAS position, so one seed
gives the same physical anatomy whatever the grid's axis order, flips or obliquity; only the
sampling and the noise depend on the grid. The anatomy is fixed around RAS (0, 0, 0), sized to
fit the default 160 x 160 x 100 mm field of view; `origin_ras` moves the grid, not the anatomy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import save_volume
from .volume import Volume, make_ijk_to_ras

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
BONE_HU = 700.0
RADIUS_RANGE_MM = (8.0, 20.0)
CONTRAST_RANGE_HU = (40.0, 80.0)
NOISE_RANGE_HU = (10.0, 15.0)
TUMOUR_EDGE_BLUR_MM = 1.0
PARTIAL_VOLUME_BLUR_MM = 0.5
TUMOUR_WOBBLE = 0.12
TUMOUR_ELONGATION = 0.2
FIT_MARGIN_MM = 1.0
_CYLINDER = 1.0e4  # semi-axis along S of shapes that run through the whole volume


@dataclass(frozen=True)
class _OrganSpec:
    name: str
    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    hu: float
    wobble: float
    host_weight: float
    description: str


# Half-scale abdomen: organs laid out on the patient's sides (R > 0 is the patient's right) and
# chosen not to overlap even at full outline wobble; the spine is a cylinder behind them.
_ORGANS = (
    _OrganSpec("spine", (0.0, -36.0, 0.0), (13.0, 13.0, _CYLINDER), BONE_HU, 0.03, 0.0, "vertebral tumor"),
    _OrganSpec("liver", (26.0, 10.0, 30.0), (36.0, 32.0, 42.0), 60.0, 0.06, 0.55, "liver tumor"),
    _OrganSpec("kidney_right", (35.0, -25.0, -22.0), (18.0, 16.0, 26.0), 150.0, 0.06, 0.15, "right kidney tumor"),
    _OrganSpec("kidney_left", (-35.0, -25.0, -22.0), (18.0, 16.0, 26.0), 150.0, 0.06, 0.15, "left kidney tumor"),
    _OrganSpec("pancreas", (-10.0, -2.0, -15.0), (30.0, 9.0, 10.0), 45.0, 0.06, 0.15, "pancreatic tumor"),
)
_BODY_OUTER = (78.0, 62.0, _CYLINDER)
_BODY_INNER = (70.0, 54.0, _CYLINDER)


@dataclass
class Phantom:
    image: Volume
    label: Volume
    organs: dict[str, Volume]
    description: str
    tumour_organ: str = ""
    contrast_hu: float = 0.0
    radius_mm: float = 0.0
    centre_ras: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Blob:
    """An ellipsoid whose outline is pushed in and out by a few low-frequency waves over its directions."""

    centre: np.ndarray
    semi: np.ndarray
    rotation: np.ndarray  # columns: the blob's axes in RAS
    waves: np.ndarray
    freqs: np.ndarray
    phases: np.ndarray
    amps: np.ndarray

    @property
    def wobble(self) -> float:
        return float(np.abs(self.amps).sum())

    def half_extent(self) -> np.ndarray:
        """Half size of an RAS box that surely holds the blob."""
        return np.abs(self.rotation) @ (self.semi * (1.0 + self.wobble))

    def inside(self, ras: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        rel = [ras[n] - np.float32(self.centre[n]) for n in range(3)]
        u = [sum(rel[n] * np.float32(self.rotation[n, m]) for n in range(3)) / np.float32(self.semi[m])
             for m in range(3)]
        rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
        safe = np.maximum(rho, np.float32(1e-6))
        bump = np.zeros_like(rho)
        for wave, freq, phase, amp in zip(self.waves, self.freqs, self.phases, self.amps):
            along = (u[0] * np.float32(wave[0]) + u[1] * np.float32(wave[1]) + u[2] * np.float32(wave[2])) / safe
            bump += np.float32(amp) * np.sin(np.float32(freq) * along + np.float32(phase))
        return rho <= 1.0 + bump


def _random_waves(rng: np.random.Generator, wobble: float, count: int = 4):
    waves = rng.normal(size=(count, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    freqs = rng.uniform(1.0, 3.0, count)
    phases = rng.uniform(0.0, 2.0 * np.pi, count)
    amps = rng.uniform(0.3, 1.0, count)
    amps *= wobble / amps.sum()
    return waves, freqs, phases, amps


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _organ_blob(rng: np.random.Generator, centre, semi, wobble: float) -> _Blob:
    waves, freqs, phases, amps = _random_waves(rng, wobble)
    return _Blob(np.asarray(centre, float), np.asarray(semi, float), np.eye(3), waves, freqs, phases, amps)


@dataclass(frozen=True)
class _TumourShape:
    """The seeded part of a tumour that does not depend on where it goes or how big it is."""

    ratios: np.ndarray
    rotation: np.ndarray
    waves: tuple
    contrast_hu: float

    @property
    def reach(self) -> float:
        """Largest distance from the centre to the outline, per mm of radius."""
        return float(self.ratios.max() * (1.0 + TUMOUR_WOBBLE))

    def blob(self, centre_ras, radius_mm: float) -> _Blob:
        return _Blob(np.asarray(centre_ras, float), self.ratios * radius_mm, self.rotation, *self.waves)


def _random_tumour_shape(rng: np.random.Generator, contrast_hu: float | None) -> _TumourShape:
    ratios = np.exp(rng.uniform(-TUMOUR_ELONGATION, TUMOUR_ELONGATION, 3))
    ratios /= np.prod(ratios) ** (1.0 / 3.0)
    rotation = _random_rotation(rng)
    waves = _random_waves(rng, TUMOUR_WOBBLE)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    magnitude = rng.uniform(*CONTRAST_RANGE_HU)
    if contrast_hu is None:
        contrast = sign * magnitude
    else:
        contrast = float(contrast_hu)
        if not np.isfinite(contrast):
            raise ValueError(f"contrast_hu must be a finite number of HU, got {contrast_hu!r}")
    return _TumourShape(ratios, rotation, waves, contrast)


def _block(shape_kji, ras_to_ijk: np.ndarray, centre, half) -> tuple[slice, slice, slice] | None:
    """The KJI index block that covers an RAS box, clipped to the grid; None when they miss."""
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
    corners = np.asarray(centre, float)[None, :] + signs * np.asarray(half, float)[None, :]
    ijk = (ras_to_ijk[:3, :3] @ corners.T).T + ras_to_ijk[:3, 3]
    kji = ijk[:, ::-1]
    lo = np.maximum(np.floor(kji.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(kji.max(0)).astype(int) + 1, np.array(shape_kji))
    if np.any(lo >= hi):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _block_ras(ijk_to_ras: np.ndarray, block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = np.arange(block[0].start, block[0].stop, dtype=np.float64)[:, None, None]
    j = np.arange(block[1].start, block[1].stop, dtype=np.float64)[None, :, None]
    i = np.arange(block[2].start, block[2].stop, dtype=np.float64)[None, None, :]
    m = ijk_to_ras
    shape = (len(k), j.shape[1], i.shape[2])
    return tuple(np.broadcast_to(m[r, 0] * i + m[r, 1] * j + m[r, 2] * k + m[r, 3], shape).astype(np.float32)
                 for r in range(3))


def _paint(blob: _Blob, shape_kji, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels whose centres lie inside the blob."""
    out = np.zeros(shape_kji, dtype=bool)
    block = _block(shape_kji, np.linalg.inv(ijk_to_ras), blob.centre, blob.half_extent())
    if block is not None:
        out[block] = blob.inside(_block_ras(ijk_to_ras, block))
    return out


def _grid_box(shape_kji, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RAS bounds of the voxel centres."""
    k, j, i = (n - 1 for n in shape_kji)
    corners = np.array([[a, b, c, 1.0] for a in (0, i) for b in (0, j) for c in (0, k)])
    ras = (ijk_to_ras @ corners.T).T[:, :3]
    return ras.min(0), ras.max(0)


def _centre_region(spec: _OrganSpec, reach_mm: float, box) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Where a tumour centre may go so that the whole tumour stays in the organ and in the grid.

    Returns (ellipsoid semi-axes, box lo, box hi) or None when nothing fits. The organ's smallest
    outline (full inward wobble) shrunk by the tumour's reach bounds the centre.
    """
    centre = np.asarray(spec.centre)
    semi = np.asarray(spec.semi) * (1.0 - spec.wobble) - reach_mm - FIT_MARGIN_MM
    lo, hi = box[0] + reach_mm + FIT_MARGIN_MM, box[1] - reach_mm - FIT_MARGIN_MM
    if np.any(semi < 0.5) or np.any(lo > hi):
        return None
    nearest = np.clip(centre, lo, hi)
    if np.sum(((nearest - centre) / semi) ** 2) > 0.8:
        return None
    return semi, lo, hi


def _fit_radius(spec: _OrganSpec, reach: float, box) -> float:
    """Largest tumour radius (mm) that `_centre_region` accepts for this organ, by bisection."""
    lo, hi = 0.0, 60.0
    if _centre_region(spec, lo, box) is None:
        return 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _centre_region(spec, mid * reach, box) is None:
            hi = mid
        else:
            lo = mid
    return lo


def _draw_centre(rng: np.random.Generator, spec: _OrganSpec, region) -> np.ndarray:
    semi, lo, hi = region
    centre = np.asarray(spec.centre)
    for _ in range(8):
        dirs = rng.normal(size=(2048, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        points = centre + dirs * rng.random((2048, 1)) ** (1.0 / 3.0) * semi
        ok = np.all((points >= lo) & (points <= hi), axis=1)
        if ok.any():
            return points[np.argmax(ok)]
    return np.clip(centre, lo, hi)


def _choose_host(rng: np.random.Generator, reach: float, box, radius_mm: float | None,
                 tumour_organ: str | None = None) -> tuple[_OrganSpec, float]:
    hosts = [spec for spec in _ORGANS if spec.host_weight > 0]
    if tumour_organ is not None:
        # "kidney" means either kidney: a dataset of one tumour type needs its host fixed, the side may vary
        wanted = tumour_organ.strip().lower()
        hosts = [spec for spec in hosts if spec.name == wanted or spec.name.startswith(wanted + "_")]
        if not hosts:
            names = sorted({spec.name for spec in _ORGANS if spec.host_weight > 0})
            raise ValueError(f"tumour_organ {tumour_organ!r} is not a phantom organ (choose from {', '.join(names)})")
    fits = {spec.name: _fit_radius(spec, reach, box) for spec in hosts}
    if radius_mm is not None:
        radius = float(radius_mm)
        if not np.isfinite(radius) or radius <= 0:
            raise ValueError(f"tumour_radius_mm must be a positive number of mm, got {radius_mm!r}")
        candidates = [spec for spec in hosts if fits[spec.name] >= radius]
        if not candidates:
            raise ValueError(f"a {radius:g} mm tumour fits in no organ of this phantom and grid "
                             f"(largest that fits: {max(fits.values()):.1f} mm)")
    else:
        candidates = [spec for spec in hosts if fits[spec.name] >= RADIUS_RANGE_MM[0]]
        if not candidates:
            candidates = [spec for spec in hosts if fits[spec.name] >= 3.0]
        if not candidates:
            raise ValueError("the grid is too small to hold a tumour inside an organ; use the default field of view")
    weights = np.array([spec.host_weight for spec in candidates])
    spec = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
    if radius_mm is None:
        top = min(RADIUS_RANGE_MM[1], fits[spec.name])
        radius = float(rng.uniform(min(RADIUS_RANGE_MM[0], top), top))
    return spec, radius


def _sigma_voxels(sigma_mm: float, spacing_kji: np.ndarray) -> np.ndarray:
    return sigma_mm / np.asarray(spacing_kji, float)


def _default_origin(shape_kji, spacing_ijk, directions) -> np.ndarray:
    """Origin that puts the grid's centre at RAS (0, 0, 0)."""
    linear = make_ijk_to_ras(spacing_ijk, np.zeros(3), directions)[:3, :3]
    centre_ijk = (np.asarray(shape_kji[::-1], float) - 1.0) / 2.0
    return -(linear @ centre_ijk)


def make_phantom(seed: int = 0, shape_kji=(40, 160, 160), spacing_ijk=(1.0, 1.0, 2.5), directions=None,
                 origin_ras=None, tumour_radius_mm: float | None = None,
                 contrast_hu: float | None = None, tumour_organ: str | None = None) -> Phantom:
    """A CT-like abdomen (int16 HU) with one tumour inside an organ, deterministic for `seed`.

    `directions` (3x3, columns = RAS directions of i, j, k) and `origin_ras` only change how the
    fixed RAS anatomy is sampled. `contrast_hu` is signed (negative = hypodense). `tumour_organ`
    forces the host ("pancreas", "liver", "kidney" = either kidney, "kidney_left", ...), so a
    synthetic dataset can hold one tumour type; None keeps the seeded choice.
    """
    shape_kji = tuple(int(n) for n in shape_kji)
    if len(shape_kji) != 3 or min(shape_kji) < 1:
        raise ValueError(f"shape_kji must be three positive sizes, got {shape_kji}")
    dirs = np.eye(3) if directions is None else np.asarray(directions, dtype=np.float64)
    origin = _default_origin(shape_kji, spacing_ijk, dirs) if origin_ras is None else np.asarray(origin_ras, float)
    ijk_to_ras = make_ijk_to_ras(spacing_ijk, origin, dirs)
    if abs(np.linalg.det(ijk_to_ras[:3, :3])) < 1e-9:
        raise ValueError("spacing_ijk and directions give a degenerate grid")
    spacing_kji = np.asarray(spacing_ijk, float)[::-1]

    rng = np.random.default_rng(seed)
    body_outer = _organ_blob(rng, (0.0, 0.0, 0.0), _BODY_OUTER, 0.02)
    body_inner = _organ_blob(rng, (0.0, 0.0, 0.0), _BODY_INNER, 0.02)
    organ_blobs = {spec.name: _organ_blob(rng, spec.centre, spec.semi, spec.wobble) for spec in _ORGANS}
    organ_hu = {spec.name: spec.hu + rng.uniform(-5.0, 5.0) for spec in _ORGANS}
    shape = _random_tumour_shape(rng, contrast_hu)
    noise_hu = rng.uniform(*NOISE_RANGE_HU)
    box = _grid_box(shape_kji, ijk_to_ras)
    host, radius = _choose_host(rng, shape.reach, box, tumour_radius_mm, tumour_organ)
    centre = _draw_centre(rng, host, _centre_region(host, radius * shape.reach, box))
    tumour = shape.blob(centre, radius)

    hu = np.full(shape_kji, AIR_HU, dtype=np.float32)
    hu[_paint(body_outer, shape_kji, ijk_to_ras)] = FAT_HU
    interior = _paint(body_inner, shape_kji, ijk_to_ras)
    hu[interior] = SOFT_TISSUE_HU
    owner = np.zeros(shape_kji, dtype=np.uint8)
    for code, spec in enumerate(_ORGANS, start=1):
        owner[_paint(organ_blobs[spec.name], shape_kji, ijk_to_ras) & interior & (owner == 0)] = code
    label = _paint(tumour, shape_kji, ijk_to_ras)
    if not label.any():
        raise ValueError("the tumour falls between voxel centres; use a finer grid or a larger tumour_radius_mm")
    host_code = 1 + [spec.name for spec in _ORGANS].index(host.name)
    owner[label] = host_code
    for code, spec in enumerate(_ORGANS, start=1):
        hu[owner == code] = organ_hu[spec.name]

    hu += np.float32(shape.contrast_hu) * ndimage.gaussian_filter(
        label.astype(np.float32), _sigma_voxels(TUMOUR_EDGE_BLUR_MM, spacing_kji))
    hu = ndimage.gaussian_filter(hu, _sigma_voxels(PARTIAL_VOLUME_BLUR_MM, spacing_kji))
    noise = np.random.default_rng([int(seed), 1]).standard_normal(shape_kji, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, 0.5)
    hu += noise * np.float32(noise_hu / max(float(noise.std()), 1e-6))
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    organs = {spec.name: Volume((owner == code).astype(np.uint8), ijk_to_ras, name=spec.name)
              for code, spec in enumerate(_ORGANS, start=1)}
    return Phantom(
        image=Volume(image, ijk_to_ras, name=f"phantom_{seed}"),
        label=Volume(label.astype(np.uint8), ijk_to_ras, name="tumor"),
        organs=organs,
        description=host.description,
        tumour_organ=host.name,
        contrast_hu=float(shape.contrast_hu),
        radius_mm=float(radius),
        centre_ras=tuple(float(v) for v in centre),
        seed=int(seed),
        extra={"noise_hu": float(noise_hu), "organ_hu": {k: float(v) for k, v in organ_hu.items()}},
    )


def write_case(phantom: Phantom, folder: str | os.PathLike) -> dict[str, Path]:
    """Write image, label and one mask per organ as NIfTI, the layout of the dev cases in ../shared/data."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volumes = {"image": phantom.image, "label": phantom.label, **phantom.organs}
    paths = {}
    for name, volume in volumes.items():
        paths[name] = folder / f"{name}.nii.gz"
        save_volume(volume, paths[name])
    return paths


def insert_tumour(image: Volume, organ_mask: Volume, seed: int, radius_mm: float | None = None,
                  contrast_hu: float | None = None) -> tuple[Volume, Volume]:
    """Add a synthetic tumour inside a real organ mask (any non-zero voxel); returns (new image, label).

    The tumour shifts the local intensities by `contrast_hu` (seeded 40-80 HU, either sign, when
    None) so the organ's own texture and noise carry through; it stays fully inside the mask and
    the grid, and nothing outside the tumour plus a few voxels of edge blur changes.
    """
    if not image.same_grid(organ_mask):
        raise ValueError("organ_mask must be on the image's voxel grid (same shape and geometry)")
    organ = np.asarray(organ_mask.array) > 0
    if not organ.any():
        raise ValueError("organ_mask is empty")
    rng = np.random.default_rng(seed)
    shape = _random_tumour_shape(rng, contrast_hu)
    spacing = image.spacing_kji
    margin = float(spacing.max())
    depth = ndimage.distance_transform_edt(np.pad(organ, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    fit = (float(depth.max()) - margin) / shape.reach
    if radius_mm is None:
        top = min(RADIUS_RANGE_MM[1], fit)
        if top < max(2.0, 0.5 * float(spacing.min())):
            raise ValueError(f"the organ is too thin for a tumour (largest radius that fits: {max(fit, 0.0):.1f} mm)")
        radius = float(rng.uniform(min(RADIUS_RANGE_MM[0], top), top))
    else:
        radius = float(radius_mm)
        if not np.isfinite(radius) or radius <= 0:
            raise ValueError(f"radius_mm must be a positive number of mm, got {radius_mm!r}")
        if radius > fit:
            raise ValueError(f"a {radius:g} mm tumour does not fit inside the organ "
                             f"(largest that fits: {max(fit, 0.0):.1f} mm)")
    candidates = np.flatnonzero(depth >= radius * shape.reach + margin)
    centre_kji = np.array(np.unravel_index(candidates[rng.integers(len(candidates))], organ.shape))
    tumour = shape.blob(image.kji_to_ras(centre_kji)[0], radius)

    label = _paint(tumour, organ.shape, image.ijk_to_ras) & organ
    label[tuple(centre_kji)] = True
    sigma = _sigma_voxels(TUMOUR_EDGE_BLUR_MM, spacing)
    reach = np.ceil(4.0 * sigma).astype(int) + 1
    found = np.argwhere(label)
    lo = np.maximum(found.min(0) - reach, 0)
    hi = np.minimum(found.max(0) + reach + 1, organ.shape)
    block = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    weight = ndimage.gaussian_filter(label[block].astype(np.float32), sigma)

    source = np.asarray(image.array)
    out = source.astype(np.float64, copy=True)
    out[block] += shape.contrast_hu * weight
    if np.issubdtype(source.dtype, np.integer):
        limits = np.iinfo(source.dtype)
        out = np.clip(np.rint(out), limits.min, limits.max)
    new_image = image.with_array(out.astype(source.dtype), name=f"{image.name or 'image'}+tumor")
    return new_image, image.with_array(label.astype(np.uint8), name="tumor")
