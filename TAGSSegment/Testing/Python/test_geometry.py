"""Geometry round trips on synthetic grids.

Every conversion between the source grid and a working grid must keep each voxel at its RAS
position; a mask predicted on the working grid has to land on exactly the voxels it was predicted on.
"""

import itertools

import numpy as np
import pytest

from tagseg.geometry import (
    AXIAL_DIRECTIONS_RAS,
    AxisReorientation,
    crop_pad,
    isotropic_grid,
    paste,
    resample,
    resample_like,
)
from tagseg.volume import Volume, make_ijk_to_ras

SHAPE = (9, 11, 13)  # k, j, i: all different, so a swapped axis cannot go unnoticed
SPACING = (0.7, 0.9, 2.5)  # i, j, k
CENTER_RAS = np.array([-12.0, 31.0, 47.5])
SPHERE_CENTER = CENTER_RAS + [0.41, -0.33, 0.52]
SPHERE_RADIUS = 3.47


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # i -> A, j -> -S, k -> R
DIRECTIONS = {
    "ras": np.eye(3),
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "flipped": np.diag([1.0, -1.0, -1.0]),
    "permuted": SAGITTAL,
    "coronal": np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "oblique": rotation([1.0, 0.3, 0.0], 20) @ np.diag([-1.0, -1.0, 1.0]),
    "oblique_permuted": rotation([0.2, 1.0, 0.5], 25) @ SAGITTAL,
}
OBLIQUE = {"oblique", "oblique_permuted"}


def all_kji(shape) -> np.ndarray:
    return np.indices(shape).reshape(3, -1).T


def centred_matrix(directions, spacing=SPACING, shape=SHAPE, center=CENTER_RAS) -> np.ndarray:
    """Index-to-RAS matrix of a grid whose middle lies at `center`, so all test grids overlap."""
    half_extent = np.asarray(directions) @ (np.asarray(spacing) * (np.array(shape[::-1]) - 1) / 2)
    return make_ijk_to_ras(spacing, center - half_extent, directions)


def grid(name: str, dtype=np.int32) -> Volume:
    values = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(dtype)
    return Volume(values, centred_matrix(DIRECTIONS[name]), name=name)


def sphere(volume: Volume) -> np.ndarray:
    ras = volume.kji_to_ras(all_kji(volume.shape_kji))
    return (np.linalg.norm(ras - SPHERE_CENTER, axis=1) <= SPHERE_RADIUS).reshape(volume.shape_kji)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_ras_kji_round_trip(name):
    vol = grid(name)
    rng = np.random.default_rng(1)
    kji = rng.uniform(-1, 12, size=(50, 3))
    np.testing.assert_allclose(vol.ras_to_kji(vol.kji_to_ras(kji)), kji, atol=1e-9)
    ras = CENTER_RAS + rng.normal(0, 20, size=(50, 3))
    np.testing.assert_allclose(vol.kji_to_ras(vol.ras_to_kji(ras)), ras, atol=1e-9)
    # KJI order: the last index moves along the i column of the matrix
    step = vol.kji_to_ras([[0, 0, 1]]) - vol.kji_to_ras([[0, 0, 0]])
    np.testing.assert_allclose(step[0], DIRECTIONS[name][:, 0] * SPACING[0], atol=1e-12)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_to_axial_gives_axial_directions(name):
    vol = grid(name)
    work = AxisReorientation.to_axial(vol).volume(vol)
    if name in OBLIQUE:
        cosines = np.diag(AXIAL_DIRECTIONS_RAS.T @ work.directions_ijk)
        assert np.all(cosines > np.cos(np.radians(30))), cosines
    else:
        np.testing.assert_allclose(work.directions_ijk, np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    assert sorted(work.spacing_ijk.round(9)) == sorted(SPACING)
    assert sorted(work.shape_kji) == sorted(SHAPE)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_apply_and_invert_are_inverse(name):
    vol = grid(name)
    reo = AxisReorientation.to_axial(vol)
    a = np.asarray(vol.array)
    np.testing.assert_array_equal(reo.invert(reo.apply(a)), a)
    b = np.random.default_rng(2).normal(size=reo.target_shape())
    np.testing.assert_array_equal(reo.apply(reo.invert(b)), b)
    with_channels = np.stack([a, -a], axis=-1)
    np.testing.assert_array_equal(reo.apply(with_channels)[..., 1], -reo.apply(a))
    np.testing.assert_array_equal(reo.invert(reo.apply(with_channels)), with_channels)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_index_maps_agree_with_arrays(name):
    vol = grid(name)
    reo = AxisReorientation.to_axial(vol)
    work = reo.volume(vol)
    src = all_kji(SHAPE)
    tgt = reo.index_to_target(src)
    np.testing.assert_array_equal(tgt, np.round(tgt))
    assert work.contains_kji(tgt, tolerance=0).all()
    np.testing.assert_array_equal(work.array[tuple(tgt.astype(int).T)], vol.array[tuple(src.T)])
    np.testing.assert_array_equal(reo.index_to_source(tgt), src)
    continuous = np.random.default_rng(3).uniform(-0.5, 8.5, size=(40, 3))
    np.testing.assert_allclose(reo.index_to_source(reo.index_to_target(continuous)), continuous, atol=1e-12)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_every_voxel_keeps_its_ras_position(name):
    vol = grid(name)
    reo = AxisReorientation.to_axial(vol)
    work = reo.volume(vol)
    src = all_kji(SHAPE)
    np.testing.assert_allclose(work.kji_to_ras(reo.index_to_target(src)), vol.kji_to_ras(src), atol=1e-9)
    # the voxel values (flat source indices) say where each working voxel came from
    tgt = all_kji(work.shape_kji)
    came_from = np.array(np.unravel_index(work.array[tuple(tgt.T)], SHAPE)).T
    np.testing.assert_allclose(work.kji_to_ras(tgt), vol.kji_to_ras(came_from), atol=1e-9)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_ras_sphere_maps_to_the_same_physical_voxels(name):
    vol = grid(name)
    reo = AxisReorientation.to_axial(vol)
    work = reo.volume(vol)
    mask = sphere(vol)
    assert 60 < mask.sum() < mask.size // 2
    mapped = reo.apply(mask)
    np.testing.assert_array_equal(mapped, sphere(work))
    np.testing.assert_array_equal(reo.invert(mapped), mask)
    centroid_src = vol.kji_to_ras(np.argwhere(mask)).mean(0)
    centroid_work = work.kji_to_ras(np.argwhere(mapped)).mean(0)
    np.testing.assert_allclose(centroid_work, centroid_src, atol=1e-9)
    assert np.linalg.norm(centroid_src - SPHERE_CENTER) < 1.0


def _relabelled(base: Volume, perm, flips) -> Volume:
    """The same physical voxels as `base`, stored with permuted and flipped array axes (built without geometry.py)."""
    array = np.transpose(base.array, perm)
    for axis, flipped in enumerate(flips):
        if flipped:
            array = np.flip(array, axis)
    shape = base.shape_kji
    first = [shape[p] - 1 if f else 0 for p, f in zip(perm, flips, strict=False)]
    base_index_of_first = np.zeros(3)
    for a, p in enumerate(perm):
        base_index_of_first[p] = first[a]
    matrix = np.eye(4)
    for a, (p, f) in enumerate(zip(perm, flips, strict=False)):
        matrix[:3, 2 - a] = (-1 if f else 1) * base.ijk_to_ras[:3, 2 - p]
    matrix[:3, 3] = base.kji_to_ras(base_index_of_first)[0]
    return Volume(np.ascontiguousarray(array), matrix)


def test_all_storage_orders_of_one_grid_reorient_to_the_same_working_volume():
    base = Volume(np.arange(np.prod(SHAPE)).reshape(SHAPE), centred_matrix(AXIAL_DIRECTIONS_RAS))
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            stored = _relabelled(base, perm, flips)
            np.testing.assert_allclose(
                stored.kji_to_ras([[1, 2, 3]]),
                base.kji_to_ras(np.argwhere(base.array == stored.array[1, 2, 3])),
                atol=1e-9,
            )
            work = AxisReorientation.to_axial(stored).volume(stored)
            np.testing.assert_array_equal(work.array, base.array, err_msg=f"{perm} {flips}")
            np.testing.assert_allclose(work.ijk_to_ras, base.ijk_to_ras, atol=1e-9, err_msg=f"{perm} {flips}")


@pytest.mark.parametrize("name", ["lps", "oblique_permuted"])
def test_resample_onto_itself_is_identity(name):
    vol = grid(name, dtype=np.float32)
    same = resample(vol, vol.ijk_to_ras, vol.shape_kji, order=1)
    np.testing.assert_allclose(same.array, vol.array, atol=1e-3)
    np.testing.assert_array_equal(resample(vol, vol.ijk_to_ras, vol.shape_kji, order=0).array, vol.array)
    assert resample_like(vol, vol) is vol


def test_resample_edge_voxels_cover_half_a_voxel():
    """Nearest-neighbour: a target centre within half a voxel of the source edge gets the edge value, not fill."""
    source = Volume(np.ones((3, 4, 5), np.uint8), make_ijk_to_ras((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    for shift, expected in ((-0.4, 1), (-1e-12, 1), (-0.6, 0)):
        target = make_ijk_to_ras((1.0, 1.0, 1.0), (shift, 0.0, 0.0))
        out = resample(source, target, source.shape_kji, order=0).array
        assert out[1, 1, 0] == expected, shift
        assert out[1, 1, 1] == 1


@pytest.mark.parametrize("name", ["lps", "permuted", "oblique"])
def test_resample_to_finer_grid_and_back_keeps_a_label(name):
    vol = grid(name)
    label = vol.with_array(sphere(vol).astype(np.uint8))
    fine_spacing = np.asarray(SPACING) / 2
    fine = make_ijk_to_ras(fine_spacing, vol.kji_to_ras([[-0.25, -0.25, -0.25]])[0], DIRECTIONS[name])
    fine_shape = tuple(2 * n for n in SHAPE)
    upsampled = resample(label, fine, fine_shape, order=0)
    assert upsampled.array.dtype == np.uint8
    assert upsampled.array.sum() == 8 * label.array.sum()
    back = resample(upsampled, vol.ijk_to_ras, SHAPE, order=0)
    np.testing.assert_array_equal(back.array, label.array)


@pytest.mark.parametrize("name", ["lps", "oblique_permuted"])
def test_resample_keeps_ras_positions(name):
    """A marked voxel stays at its RAS point, and a linear RAS ramp is reproduced exactly."""
    source = grid(name)
    marked_kji = (4, 6, 7)
    marked_ras = source.kji_to_ras([marked_kji])[0]
    target_kji = np.array([7, 6, 5])
    target = make_ijk_to_ras((1.0, 1.0, 1.0), marked_ras - target_kji[::-1] * 1.0)
    target_shape = (26, 14, 15)

    spike = np.zeros(SHAPE, np.float32)
    spike[marked_kji] = 1.0
    out = resample(source.with_array(spike), target, target_shape, order=1).array
    assert out[tuple(target_kji)] == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(out), out.shape) == tuple(target_kji)

    slope = np.array([0.3, -1.1, 0.7])
    ramp = (source.kji_to_ras(all_kji(SHAPE)) @ slope).reshape(SHAPE).astype(np.float64)
    out = resample(source.with_array(ramp), target, target_shape, order=1)
    points = all_kji(target_shape)
    ras = out.kji_to_ras(points)
    inside = source.contains_kji(source.ras_to_kji(ras), tolerance=0)
    assert inside.sum() > 100
    np.testing.assert_allclose(out.array.reshape(-1)[inside], (ras @ slope)[inside], atol=1e-6)
    assert np.all(out.array.reshape(-1)[~source.contains_kji(source.ras_to_kji(ras), tolerance=1.0)] == 0)


@pytest.mark.parametrize("name", ["ras", "lps", "oblique_permuted"])
def test_isotropic_grid_covers_the_same_ras_bounds(name):
    spacing = (0.5, 1.0, 2.5)  # extents 6.5, 11 and 22.5 mm: whole multiples of 0.5
    vol = Volume(np.zeros(SHAPE, np.uint8), centred_matrix(DIRECTIONS[name], spacing=spacing))
    matrix, shape = isotropic_grid(vol, 0.5)
    iso = Volume(np.zeros(shape, np.uint8), matrix)
    assert shape == (45, 22, 13)
    np.testing.assert_allclose(iso.spacing_ijk, 0.5)
    np.testing.assert_allclose(iso.directions_ijk, vol.directions_ijk, atol=1e-12)
    for got, want in zip(iso.bounds_ras(), vol.bounds_ras(), strict=False):
        np.testing.assert_allclose(got, want, atol=1e-9)

    matrix, shape = isotropic_grid(vol, 0.8)  # not a divisor: same first corner, ends within half a voxel
    iso = Volume(np.zeros(shape, np.uint8), matrix)
    corner = [[-0.5, -0.5, -0.5]]
    np.testing.assert_allclose(iso.kji_to_ras(corner), vol.kji_to_ras(corner), atol=1e-9)
    extent = np.array(shape[::-1]) * 0.8
    assert np.all(np.abs(extent - np.array(spacing) * np.array(SHAPE[::-1])) <= 0.4 + 1e-9)


WINDOWS = [
    ((2, 3, 4), (4, 5, 6)),  # inside
    ((-3, 2, 1), (6, 4, 4)),  # starts before the array
    ((7, 9, 10), (6, 6, 6)),  # runs past the end
    ((-2, -2, -2), (14, 16, 18)),  # larger than the array on every side
    ((20, 0, 0), (3, 3, 3)),  # entirely outside
]


@pytest.mark.parametrize("start,size", WINDOWS)
def test_crop_pad_and_paste_round_trip(start, size):
    array = np.random.default_rng(4).integers(1, 100, size=(10, 12, 14)).astype(np.int16)
    crop = crop_pad(array, start, size, fill=-1)
    assert crop.shape == size and crop.dtype == array.dtype
    for index in itertools.product(*(range(n) for n in size)):
        source = tuple(s + i for s, i in zip(start, index, strict=False))
        inside = all(0 <= s < n for s, n in zip(source, array.shape, strict=False))
        assert crop[index] == (array[source] if inside else -1)

    target = array.copy()
    paste(target, crop_pad(array, start, size), start)
    np.testing.assert_array_equal(target, array)

    blank = np.zeros_like(array)
    paste(blank, crop, start)
    window = tuple(
        slice(max(s, 0), max(min(s + n, dim), 0)) for s, n, dim in zip(start, size, array.shape, strict=False)
    )
    np.testing.assert_array_equal(blank[window], array[window])
    outside = np.ones(array.shape, bool)
    outside[window] = False
    assert not blank[outside].any()


def test_crop_pad_keeps_trailing_channels():
    array = np.arange(4 * 5 * 6 * 2).reshape(4, 5, 6, 2)
    crop = crop_pad(array, (-1, 1, 2), (3, 3, 3))
    assert crop.shape == (3, 3, 3, 2)
    np.testing.assert_array_equal(crop[1:], array[0:2, 1:4, 2:5])
    assert not crop[0].any()
