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

from .geometry import Grid
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
        """rho <= 1 + bump, as the sign of the level function (rho - a <= 0 exactly when rho <= a in floats)."""
        return _level(self, ras) <= 0


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
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2]))


def _block_ras(ijk_to_ras: np.ndarray, block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = np.arange(block[0].start, block[0].stop, dtype=np.float64)[:, None, None]
    j = np.arange(block[1].start, block[1].stop, dtype=np.float64)[None, :, None]
    i = np.arange(block[2].start, block[2].stop, dtype=np.float64)[None, None, :]
    m = ijk_to_ras
    shape = (len(k), j.shape[1], i.shape[2])
    r, a, s = (
        np.broadcast_to(m[row, 0] * i + m[row, 1] * j + m[row, 2] * k + m[row, 3], shape).astype(np.float32)
        for row in range(3)
    )
    return r, a, s


def _paint(blob: _Blob, shape_kji, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels whose centres lie inside the blob."""
    out = np.zeros(shape_kji, dtype=bool)
    block = _block(shape_kji, Grid(ijk_to_ras, shape_kji).ras_to_ijk, blob.centre, blob.half_extent())
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


def _choose_host(
    rng: np.random.Generator, reach: float, box, radius_mm: float | None, tumour_organ: str | None = None
) -> tuple[_OrganSpec, float]:
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
            raise ValueError(
                f"a {radius:g} mm tumour fits in no organ of this phantom and grid "
                f"(largest that fits: {max(fits.values()):.1f} mm)"
            )
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


def make_phantom(
    seed: int = 0,
    shape_kji=(40, 160, 160),
    spacing_ijk=(1.0, 1.0, 2.5),
    directions=None,
    origin_ras=None,
    tumour_radius_mm: float | None = None,
    contrast_hu: float | None = None,
    tumour_organ: str | None = None,
) -> Phantom:
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
        label.astype(np.float32), _sigma_voxels(TUMOUR_EDGE_BLUR_MM, spacing_kji)
    )
    hu = ndimage.gaussian_filter(hu, _sigma_voxels(PARTIAL_VOLUME_BLUR_MM, spacing_kji))
    noise = np.random.default_rng([int(seed), 1]).standard_normal(shape_kji, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, 0.5)
    hu += noise * np.float32(noise_hu / max(float(noise.std()), 1e-6))
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    organs = {
        spec.name: Volume((owner == code).astype(np.uint8), ijk_to_ras, name=spec.name)
        for code, spec in enumerate(_ORGANS, start=1)
    }
    return Phantom(
        image=Volume(image, ijk_to_ras, name=f"phantom_{seed}"),
        label=Volume(label.astype(np.uint8), ijk_to_ras, name="tumor"),
        organs=organs,
        description=host.description,
        tumour_organ=host.name,
        contrast_hu=float(shape.contrast_hu),
        radius_mm=float(radius),
        centre_ras=(float(centre[0]), float(centre[1]), float(centre[2])),
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


def insert_tumour(
    image: Volume, organ_mask: Volume, seed: int, radius_mm: float | None = None, contrast_hu: float | None = None
) -> tuple[Volume, Volume]:
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
            raise ValueError(
                f"a {radius:g} mm tumour does not fit inside the organ (largest that fits: {max(fit, 0.0):.1f} mm)"
            )
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
    block = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=False))
    weight = ndimage.gaussian_filter(label[block].astype(np.float32), sigma)

    source = np.asarray(image.array)
    out = source.astype(np.float64, copy=True)
    out[block] += shape.contrast_hu * weight
    if np.issubdtype(source.dtype, np.integer):
        limits = np.iinfo(source.dtype)
        out = np.clip(np.rint(out), limits.min, limits.max)
    new_image = image.with_array(out.astype(source.dtype), name=f"{image.name or 'image'}+tumor")
    return new_image, image.with_array(label.astype(np.uint8), name="tumor")


# ---- lesion phantoms: size, edge, modality and slice geometry ---------------------------------------------
# One lesion in a host tissue, with the four properties the real cases vary and the default model must
# cope with: radius (3-40 mm), edge (sharp, or soft: an irregular infiltrating boundary with a gradual
# intensity ramp), intensity model (CT in HU; raw positive MR; skull-stripped z-scored MR with a constant
# background at the minimum) and slice geometry (5 mm slices with 0.7-0.8 mm pixels, or 1 mm isotropic).
# The label is where the lesion's intensity ramp is at least half way (an annotator's half-contrast
# outline); the grid follows the lesion's size, stored LPS like most scans.
LESION_RADIUS_LIMITS_MM = (3.0, 40.0)
EDGES = ("sharp", "soft")
MODALITIES = ("ct", "mr", "mr-zscored")
SLICE_GEOMETRIES = ("thick", "isotropic")
THICK_SLICE_MM = 5.0
THICK_IN_PLANE_MM = (0.7, 0.8)
ISOTROPIC_MM = 1.0
THICK_SUBSAMPLES = 5  # each 5 mm slice averages the anatomy over its thickness (partial volume)
LESION_ELONGATION = 0.15
LESION_WOBBLE = 0.10  # low-frequency outline waves, both edges
SOFT_IRREGULARITY = 0.12  # extra high-frequency outline waves of a soft (infiltrating) edge
SHARP_RAMP_MM = 1.5  # width of the intensity ramp across the outline
SOFT_RAMP_FRACTION = 0.35  # soft edge: ramp width as a fraction of the radius, clipped to...
SOFT_RAMP_RANGE_MM = (4.0, 12.0)
SOFT_RAMP_VARIATION = 0.5  # ...and varying by +-50% around the outline
LESION_TEXTURE = 0.10  # +-10% of the contrast inside the lesion
MAX_LESION_PHANTOM_VOXELS = 5_000_000
_LPS = np.diag([-1.0, -1.0, 1.0])
_CT_HOST_LUNG_P = 0.35
_MR_FRACTIONS = {"csf": 0.25, "skull": 0.05, "scalp": 0.9}


@dataclass(frozen=True)
class _Field:
    """A smooth random field in [-1, 1]: a few plane waves with seeded directions, wavelengths and phases."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phases: np.ndarray
    amps: np.ndarray

    def __call__(self, ras) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(*(np.shape(a) for a in ras)), np.float32)
        for k, phase, amp in zip(self.k, self.phases, self.amps, strict=False):
            out += np.float32(amp) * np.cos(sum(ras[n] * np.float32(k[n]) for n in range(3)) + np.float32(phase))
        return out


def _random_field(rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float]) -> _Field:
    dirs = rng.normal(size=(count, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = dirs * (2.0 * np.pi / rng.uniform(*wavelength_mm, count))[:, None]
    amps = rng.uniform(0.5, 1.0, count)
    return _Field(k, rng.uniform(0.0, 2.0 * np.pi, count), amps / amps.sum())


def _waves_in(rng: np.random.Generator, wobble: float, count: int, freqs: tuple[float, float]):
    waves = rng.normal(size=(count, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    f = rng.uniform(*freqs, count)
    phases = rng.uniform(0.0, 2.0 * np.pi, count)
    amps = rng.uniform(0.3, 1.0, count)
    return waves, f, phases, amps * (wobble / amps.sum())


def _level(blob: _Blob, ras) -> np.ndarray:
    """rho - (1 + bump): <= 0 inside the blob's outline, about (distance to it) / (semi-axis) outside."""
    rel = [ras[n] - np.float32(blob.centre[n]) for n in range(3)]
    u = [sum(rel[n] * np.float32(blob.rotation[n, m]) for n in range(3)) / np.float32(blob.semi[m]) for m in range(3)]
    rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    safe = np.maximum(rho, np.float32(1e-6))
    bump = np.zeros_like(rho)
    for wave, freq, phase, amp in zip(blob.waves, blob.freqs, blob.phases, blob.amps, strict=False):
        along = (u[0] * np.float32(wave[0]) + u[1] * np.float32(wave[1]) + u[2] * np.float32(wave[2])) / safe
        bump += np.float32(amp) * np.sin(np.float32(freq) * along + np.float32(phase))
    return rho - (np.float32(1.0) + bump)


def _outline_half_extent(rotation: np.ndarray, semi: np.ndarray, waves) -> np.ndarray:
    """Half size of the RAS box around a wavy outline centred at 0, from 4096 directions (+2%)."""
    d = np.random.default_rng(0).normal(size=(4096, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    bump = sum(amp * np.sin(freq * (d @ wave) + phase) for wave, freq, phase, amp in zip(*waves, strict=False))
    ras = (d * (1.0 + bump)[:, None] * np.asarray(semi, float)[None, :]) @ np.asarray(rotation).T
    return 1.02 * np.abs(ras).max(axis=0)


def check_lesion_options(radius_mm, edge: str, modality: str, slices: str) -> float:
    """The radius as a float, or ValueError naming the first option out of range."""
    try:
        radius = float(radius_mm)
    except (TypeError, ValueError):
        raise ValueError(f"radius_mm must be a number of mm, got {radius_mm!r}") from None
    lo, hi = LESION_RADIUS_LIMITS_MM
    if not np.isfinite(radius) or not lo <= radius <= hi:
        raise ValueError(f"lesion radius must be from {lo:g} to {hi:g} mm, got {radius_mm!r}")
    for name, value, allowed in (
        ("edge", edge, EDGES),
        ("modality", modality, MODALITIES),
        ("slices", slices, SLICE_GEOMETRIES),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return radius


def lesion_phantom_name(radius_mm: float, edge: str, modality: str, slices: str, seed: int) -> str:
    return f"phantom_r{float(radius_mm):g}mm_{edge}_{modality}_{slices}_s{int(seed)}"


def make_lesion_phantom(
    seed: int = 0, radius_mm: float = 10.0, edge: str = "sharp", modality: str = "ct", slices: str = "thick"
) -> Phantom:
    """One lesion of `radius_mm` (equivalent radius, 3-40 mm) in a host tissue; deterministic for the arguments.

    modality "ct": int16 HU, air around a body (fat, soft tissue, spine, a kidney) and the lesion in a
    liver-like organ (+-40-80 HU) or, for some seeds, in lung (a soft-tissue nodule in -850 HU air).
    "mr": int16 raw positive FLAIR-like head (scalp, skull, CSF, parenchyma, bias field, Rician noise),
    the lesion mostly hyperintense. "mr-zscored": the same head skull-stripped, float32 z-scored over the
    brain, the background filled with the brain's minimum (negative). slices "thick": 5 mm axial slices
    with 0.7-0.8 mm pixels, each averaging 5 mm of anatomy; "isotropic": 1 mm. edge "soft": irregular
    outline and a ramp as wide as 35% of the radius (4-12 mm, +-50% around the outline); "sharp": 1.5 mm.
    """
    radius = check_lesion_options(radius_mm, edge, modality, slices)
    seed = int(seed)
    rng = np.random.default_rng(
        [seed, 17, EDGES.index(edge), MODALITIES.index(modality), SLICE_GEOMETRIES.index(slices)]
    )
    pixel = float(rng.uniform(*THICK_IN_PLANE_MM)) if slices == "thick" else ISOTROPIC_MM
    slice_mm = THICK_SLICE_MM if slices == "thick" else ISOTROPIC_MM
    soft = edge == "soft"

    # the lesion, centred at RAS (0, 0, ~0) before the in-plane offset below
    ratios = np.exp(rng.uniform(-LESION_ELONGATION, LESION_ELONGATION, 3))
    ratios /= np.prod(ratios) ** (1.0 / 3.0)
    rotation = _random_rotation(rng)
    waves = [np.asarray(a) for a in _waves_in(rng, LESION_WOBBLE, 4, (1.0, 3.0))]
    if soft:
        extra = _waves_in(rng, SOFT_IRREGULARITY, 6, (4.0, 8.0))
        waves = [np.concatenate([a, np.asarray(b)]) for a, b in zip(waves, extra, strict=False)]
    wobble = float(np.abs(waves[3]).sum())
    ramp_mm = float(np.clip(SOFT_RAMP_FRACTION * radius, *SOFT_RAMP_RANGE_MM)) if soft else SHARP_RAMP_MM
    ramp_variation = SOFT_RAMP_VARIATION if soft else 0.0
    ramp_field = _random_field(rng, 6, (15.0, 40.0))
    texture = _random_field(rng, 6, (6.0, 25.0))
    tissue_texture = _random_field(rng, 8, (4.0, 30.0))
    bias = _random_field(rng, 3, (150.0, 300.0))
    outline_semi = ratios * radius * (1.0 + wobble)
    ramp_reach = 0.5 * ramp_mm * (1.0 + ramp_variation) * float(ratios.max())
    visible = _outline_half_extent(rotation, ratios * radius, waves) + ramp_reach
    offset_xy = rng.uniform(-1.0, 1.0, 2) * min(8.0, 0.5 * radius + 2.0)
    margin = max(5.0, 0.1 * radius)
    host_extra = rng.uniform(3.0, 10.0, 3)
    host_shift = rng.uniform(-0.6, 0.6, 3) * host_extra
    host_semi = (outline_semi + ramp_reach + margin + host_extra) / 0.95

    # anatomy sizes (RAS semi-axes, mm) that hold the visible lesion; the host organ may meet the body wall
    if modality == "ct":
        host = "lung" if rng.random() < _CT_HOST_LUNG_P else "liver"
        inner = np.maximum([62.0, 50.0], np.abs(offset_xy) + visible[:2] + 3.0)
        outer = inner + 5.0
        fov_half = outer + 4.0
    else:
        host = "brain"
        brain = np.maximum([52.0, 60.0, 48.0], np.r_[np.abs(offset_xy), 2.0] + visible + 3.0)
        fov_half = brain[:2] + 8.0 + 3.0  # skull 4 mm, scalp 4 mm, 3 mm of air
    z_half = max((100.0 if slices == "thick" else 60.0) / 2.0, float(visible[2]) + 2.0 + max(slice_mm, 6.0))
    n_i, n_j = (int(np.ceil(2.0 * h / pixel)) for h in fov_half)
    n_k = int(np.ceil(2.0 * z_half / slice_mm)) + 1
    shape_kji = (n_k, n_j, n_i)
    if n_k * n_j * n_i > MAX_LESION_PHANTOM_VOXELS:  # cannot happen within the radius limits; a guard
        raise ValueError(f"a {radius:g} mm {modality} phantom would need {shape_kji} voxels")
    spacing_ijk = (pixel, pixel, slice_mm)
    ijk_to_ras = make_ijk_to_ras(spacing_ijk, _default_origin(shape_kji, spacing_ijk, _LPS), _LPS)
    # centre on a slice centre (plus a little) so even a 3 mm lesion crosses a 5 mm slice's centre
    slice_z = (np.arange(n_k) - (n_k - 1) / 2.0) * slice_mm
    centre = np.array(
        [offset_xy[0], offset_xy[1], slice_z[np.argmin(np.abs(slice_z))] + rng.uniform(-0.2, 0.2) * slice_mm]
    )
    lesion = _Blob(centre, ratios * radius, rotation, *waves)
    host_blob = _Blob(centre + rotation @ host_shift, host_semi, rotation, *_waves_in(rng, 0.05, 3, (1.0, 2.5)))

    # intensities: seeded per phantom
    if modality == "ct":
        if host == "lung":
            host_value = float(rng.uniform(-870.0, -820.0))
            contrast = float(rng.uniform(20.0, 50.0)) - host_value
        else:
            host_value = float(rng.uniform(55.0, 65.0))
            contrast = (1.0 if rng.random() < 0.5 else -1.0) * float(rng.uniform(40.0, 80.0))
        noise_sd = float(rng.uniform(*NOISE_RANGE_HU))
        body_outer = _organ_blob(rng, (0.0, 0.0, 0.0), (outer[0], outer[1], _CYLINDER), 0.02)
        body_inner = _organ_blob(rng, (0.0, 0.0, 0.0), (inner[0], inner[1], _CYLINDER), 0.02)
        spine = _organ_blob(rng, (0.0, -inner[1] + 16.0, 0.0), (12.0, 12.0, _CYLINDER), 0.03)
        side = -1.0 if offset_xy[0] >= 0 else 1.0
        kidney = _organ_blob(rng, (side * 0.55 * inner[0], -0.4 * inner[1], centre[2]), (13.0, 11.0, 22.0), 0.05)
        kidney_value = float(rng.uniform(140.0, 160.0))
        scale = 1.0
    else:
        scale = float(rng.uniform(250.0, 1200.0))  # arbitrary scanner units
        host_value = scale
        contrast = (1.0 if rng.random() < 0.8 else -0.6) * float(rng.uniform(0.4, 0.9)) * scale
        noise_sd = float(rng.uniform(0.03, 0.05)) * scale
        brain_blob = _organ_blob(rng, (0.0, 0.0, 0.0), brain / 0.97, 0.03)
        skull_blob = _organ_blob(rng, (0.0, 0.0, 0.0), brain / 0.97 + 4.0, 0.02)
        head_blob = _organ_blob(rng, (0.0, 0.0, 0.0), brain / 0.97 + 8.0, 0.02)
        ventricles = [_organ_blob(rng, (s * 9.0, 6.0, 8.0), (6.0, 18.0, 10.0), 0.1) for s in (-1.0, 1.0)]

    def render(ras):
        """(intensity before noise, label, body-or-brain mask, host mask) at the RAS points."""
        level = _level(lesion, ras) * np.float32(radius)
        width = np.float32(ramp_mm) * (np.float32(1.0) + np.float32(ramp_variation) * ramp_field(ras))
        weight = np.clip(np.float32(0.5) - level / width, 0.0, 1.0)
        weight *= np.float32(1.0) + np.float32(LESION_TEXTURE) * texture(ras)
        in_host = host_blob.inside(ras)
        tissue = tissue_texture(ras)
        in_host &= body_inner.inside(ras) if modality == "ct" else brain_blob.inside(ras)
        if modality == "ct":
            body = body_outer.inside(ras)
            value = np.where(body, np.float32(FAT_HU), np.float32(AIR_HU))
            value = np.where(body_inner.inside(ras), np.float32(SOFT_TISSUE_HU) + 8.0 * tissue, value)
            value = np.where(kidney.inside(ras), np.float32(kidney_value), value)
            value = np.where(spine.inside(ras), np.float32(BONE_HU), value)
            host_tissue = host_value + (30.0 if host == "lung" else 6.0) * tissue
            value = np.where(in_host, host_tissue.astype(np.float32), value)
            value = value + np.float32(contrast) * weight
            region = body
        else:
            region = brain_blob.inside(ras)
            value = np.where(head_blob.inside(ras), np.float32(_MR_FRACTIONS["scalp"] * scale), np.float32(0.0))
            value = np.where(skull_blob.inside(ras), np.float32(_MR_FRACTIONS["skull"] * scale), value)
            value = np.where(region, np.float32(scale) * (1.0 + 0.08 * tissue), value)
            csf = (ventricles[0].inside(ras) | ventricles[1].inside(ras)) & ~in_host
            value = np.where(csf, np.float32(_MR_FRACTIONS["csf"] * scale), value)
            value = value + np.float32(contrast) * weight
            value = value * (np.float32(1.0) + np.float32(0.12) * bias(ras))
        return value.astype(np.float32), level <= 0, region, in_host

    block = tuple(slice(0, n) for n in shape_kji)
    ras = _block_ras(ijk_to_ras, block)
    value, label, region, in_host = render(ras)
    if slices == "thick":
        for dz in np.linspace(-0.5, 0.5, THICK_SUBSAMPLES + 2)[1:-1] * slice_mm:
            if abs(dz) > 1e-9:
                value += render((ras[0], ras[1], ras[2] + np.float32(dz)))[0]
        value /= np.float32(THICK_SUBSAMPLES)
    del ras
    spacing_kji = np.asarray(spacing_ijk, float)[::-1]
    in_plane_blur = np.array([0.0, *(_sigma_voxels(PARTIAL_VOLUME_BLUR_MM, spacing_kji)[1:])])
    value = ndimage.gaussian_filter(
        value, in_plane_blur if slices == "thick" else _sigma_voxels(PARTIAL_VOLUME_BLUR_MM, spacing_kji)
    )
    noise_rng = np.random.default_rng([seed, 18])
    noise = ndimage.gaussian_filter(noise_rng.standard_normal(shape_kji, dtype=np.float32), 0.5)
    noise *= np.float32(noise_sd / max(float(noise.std()), 1e-6))
    label &= in_host
    if not label.any():
        raise ValueError("the lesion falls between voxel centres")  # the centre is on a slice: a guard
    if modality == "ct":
        image = np.clip(np.rint(value + noise), -1024, 3071).astype(np.int16)
        organs = {"body": region, host: in_host}
        units = "HU"
    elif modality == "mr":
        other = ndimage.gaussian_filter(noise_rng.standard_normal(shape_kji, dtype=np.float32), 0.5)
        other *= np.float32(noise_sd / max(float(other.std()), 1e-6))
        magnitude = np.sqrt((value + noise) ** 2 + other**2)  # Rician, positive
        image = np.clip(np.rint(magnitude), 0, 32767).astype(np.int16)
        organs = {"brain": region}
        units = "raw MR units"
    else:
        brain_values = (value + noise)[region]
        mean, sd = float(brain_values.mean()), float(max(brain_values.std(), 1e-6))
        z = ((value + noise - mean) / sd).astype(np.float32)
        image = np.where(region, z, np.float32(z[region].min())).astype(np.float32)
        contrast /= sd
        organs = {"brain": region}
        units = "z"
    description = {"liver": "liver tumor", "lung": "lung tumor", "brain": "brain tumor"}[host]
    return Phantom(
        image=Volume(image, ijk_to_ras, name=lesion_phantom_name(radius, edge, modality, slices, seed)),
        label=Volume(label.astype(np.uint8), ijk_to_ras, name="tumor"),
        organs={name: Volume(mask.astype(np.uint8), ijk_to_ras, name=name) for name, mask in organs.items()},
        description=description,
        tumour_organ=host,
        contrast_hu=float(contrast),
        radius_mm=radius,
        centre_ras=(float(centre[0]), float(centre[1]), float(centre[2])),
        seed=seed,
        extra={
            "edge": edge,
            "modality": modality,
            "slices": slices,
            "ramp_mm": ramp_mm,
            "units": units,
            "noise": float(noise_sd / (1.0 if modality != "mr-zscored" else sd)),
            "host_value": host_value,
        },
    )


def write_lesion_cases(
    out: str | os.PathLike,
    cases: int = 1,
    seed: int = 0,
    radius_mm: float = 10.0,
    edge: str = "sharp",
    modality: str = "ct",
    slices: str = "thick",
) -> list[Path]:
    """`cases` lesion phantoms (seeds seed, seed+1, ...) as one folder per case holding image.nii.gz,
    label.nii.gz and the organ masks: the layout of ../shared/data/lesions_dev."""
    check_lesion_options(radius_mm, edge, modality, slices)
    folders = []
    for n in range(int(cases)):
        phantom = make_lesion_phantom(seed + n, radius_mm, edge, modality, slices)
        folder = Path(out) / lesion_phantom_name(radius_mm, edge, modality, slices, seed + n)
        write_case(phantom, folder)
        folders.append(folder)
    return folders
