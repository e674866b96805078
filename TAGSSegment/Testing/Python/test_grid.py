"""`tagseg.geometry.Grid`: the one owner of index/point geometry. Its mappings must equal, bit for bit, the
hand-written ones they replaced (Volume's, the TAGS crop's, the Slicer logic's block resampler), and no
module but geometry.py may invert an IJK->RAS matrix again."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest

from tagseg.checks import Crop
from tagseg.geometry import KJI_SWAP, Grid, as_grid, mask_bbox, padded_bbox, resample, resample_like
from tagseg.tags.crop import CropGrid, crop_to_source
from tagseg.volume import Volume, make_ijk_to_ras

SOURCE = Path(__file__).resolve().parents[2]  # TAGSSegment/
GEOMETRY = SOURCE / "tagseg" / "geometry.py"
SOURCE_FOLDERS = (SOURCE / "tagseg", SOURCE / "TAGSSegmentLib")


def _oblique(angle: float = 0.3) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.0, -1.0, 1.0])


GRIDS = {
    "identity": (np.eye(4), (5, 6, 7)),
    "lps-axial": (make_ijk_to_ras((0.7, 0.7, 2.5), (120.3, -90.1, 33.3), np.diag([-1.0, -1.0, 1.0])), (40, 64, 64)),
    "oblique": (make_ijk_to_ras((0.9, 1.1, 3.0), (-12.0, 40.5, -7.25), _oblique()), (20, 30, 40)),
}


def _points(rng, n: int = 200) -> np.ndarray:
    return rng.uniform(-150, 150, (n, 3))


# -- the grid itself ---------------------------------------------------------------------------


def test_grid_is_immutable_and_compares_by_value():
    matrix = make_ijk_to_ras((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    grid = Grid(matrix, [2, 3, 4])
    matrix[0, 0] = 99.0  # the caller's matrix is copied
    assert grid.ijk_to_ras[0, 0] == 1.0 and grid.shape_kji == (2, 3, 4)
    assert not grid.ijk_to_ras.flags.writeable and not grid.ras_to_ijk.flags.writeable
    assert grid == Grid(make_ijk_to_ras((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)), (2, 3, 4))
    assert grid != Grid(grid.ijk_to_ras, (2, 3, 5))
    assert len({grid, Grid(grid.ijk_to_ras, (2, 3, 4))}) == 1
    assert pickle.loads(pickle.dumps(grid)) == grid
    assert "4x3x2 voxels" in repr(grid)
    with pytest.raises(ValueError, match="4x4"):
        Grid(np.eye(3), (1, 1, 1))


@pytest.mark.parametrize("name", GRIDS)
def test_point_maps_equal_the_hand_written_ones(name):
    matrix, shape = GRIDS[name]
    grid = Grid(matrix, shape)
    pts = _points(np.random.default_rng(0))
    homog = np.c_[pts, np.ones(len(pts))]
    kji = (np.linalg.inv(matrix) @ homog.T).T[:, :3][:, ::-1]
    assert np.array_equal(grid.ras_to_kji(pts), kji)
    assert np.array_equal(grid.kji_to_ras(kji), (matrix @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3])
    np.testing.assert_allclose(grid.kji_to_ras(grid.ras_to_kji(pts)), pts, atol=1e-9)
    assert np.array_equal(grid.spacing_kji, np.linalg.norm(matrix[:3, :3], axis=0)[::-1])
    np.testing.assert_allclose(grid.directions_ijk.T @ grid.directions_ijk, np.eye(3), atol=1e-12)
    assert np.array_equal(grid.directions_kji, grid.directions_ijk[:, ::-1])


@pytest.mark.parametrize("name", GRIDS)
def test_contains_matches_both_former_rules(name):
    """Volume's rule (tolerance + slack) and the crop's (exact, `margin` voxels inside the faces)."""
    matrix, shape = GRIDS[name]
    grid = Grid(matrix, shape)
    rng = np.random.default_rng(1)
    upper = np.array(shape) - 1
    kji = np.concatenate(
        [
            rng.uniform(-2, upper + 2, (500, 3)),
            np.array([[-0.5, 0, 0], [-0.5 - 1e-10, 0, 0], [-0.5 - 1e-8, 0, 0]]),
            np.array(upper + 0.5)[None] + np.array([[0.0], [1e-10], [1e-8]]),
        ]
    )
    for tolerance in (0.0, 0.5, 1.0):
        slack = tolerance + 1e-9
        old = np.all((kji >= -slack) & (kji <= np.array(shape) - 1 + slack), axis=1)
        assert np.array_equal(grid.contains_kji(kji, tolerance), old)
    cube = CropGrid.centred((1.0, 2.0, 3.0), 16, 1.5)
    for margin in (0.0, 2.0):
        old = np.all((kji >= -0.5 + margin) & (kji <= cube.size - 0.5 - margin), axis=1)
        assert np.array_equal(cube.well_inside(kji, margin), old)


def test_index_map_between_grids_is_the_former_formula():
    source, target = (Grid(*GRIDS["oblique"]), Grid(*GRIDS["lps-axial"]))
    swap = np.eye(4)[[2, 1, 0, 3]]
    old = swap @ (np.linalg.inv(source.ijk_to_ras) @ target.ijk_to_ras) @ swap
    assert np.array_equal(target.kji_map_to(source), old)
    assert np.array_equal(KJI_SWAP, swap) and not KJI_SWAP.flags.writeable
    kji = _points(np.random.default_rng(2), 20) / 10
    mapped = (target.kji_map_to(source) @ np.c_[kji, np.ones(len(kji))].T).T[:, :3]
    np.testing.assert_allclose(source.kji_to_ras(mapped), target.kji_to_ras(kji), atol=1e-9)


@pytest.mark.parametrize("clip", [True, False])
def test_block_covering_equals_the_slicer_block_arithmetic(clip):
    """The block the Slicer logic computed by hand (through a dummy Volume) before it used `Grid`."""
    source = Grid(*GRIDS["oblique"])
    centre = source.kji_to_ras(np.array(source.shape_kji) / 2)[0] + (15.0, 0.0, 0.0)  # overlapping, part outside
    linear = make_ijk_to_ras((0.7, 0.7, 2.5), (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]))
    target = Grid(
        make_ijk_to_ras((0.7, 0.7, 2.5), centre - linear[:3, :3] @ (32.0, 32.0, 20.0), np.diag([-1.0, -1.0, 1.0])),
        (40, 64, 64),
    )
    first, last = np.array([2, 3, 4]), np.array([9, 20, 30])
    lo_src, hi_src = first - 0.5, last + 0.5
    corners = np.array(
        [[k, j, i] for k in (lo_src[0], hi_src[0]) for j in (lo_src[1], hi_src[1]) for i in (lo_src[2], hi_src[2])],
        dtype=np.float64,
    )
    kji = Volume(np.zeros((1, 1, 1)), target.ijk_to_ras).ras_to_kji(source.kji_to_ras(corners))
    lo, hi = np.floor(kji.min(0)).astype(int), np.ceil(kji.max(0)).astype(int)
    if clip:
        clipped = np.maximum(lo, 0), np.minimum(hi, np.asarray(target.shape_kji) - 1)
        assert not (np.array_equal(clipped[0], lo) and np.array_equal(clipped[1], hi)), "the case should clip"
        lo, hi = clipped
    got_lo, got_hi = target.block_covering(source, first, last, clip=clip)
    assert np.array_equal(got_lo, lo) and np.array_equal(got_hi, hi + 1)
    translation = np.eye(4)
    translation[:3, 3] = (lo[2], lo[1], lo[0])
    block = target.sub_grid(got_lo, got_hi)
    assert np.array_equal(block.ijk_to_ras, target.ijk_to_ras @ translation)
    assert block.shape_kji == tuple(int(n) for n in hi - lo + 1)
    far = Grid(make_ijk_to_ras((1.0, 1.0, 1.0), (5000.0, 0.0, 0.0)), (4, 4, 4))
    assert target.block_covering(far) is None


def test_volume_is_a_grid_plus_voxels():
    matrix, shape = GRIDS["oblique"]
    volume = Volume(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), matrix, "ct")
    assert volume.grid == Grid(matrix, shape) and as_grid(volume) is volume.grid and as_grid(volume.grid) is volume.grid
    assert volume.ijk_to_ras is volume.grid.ijk_to_ras and volume.shape_kji == shape
    pts = _points(np.random.default_rng(3), 10)
    assert np.array_equal(volume.ras_to_kji(pts), volume.grid.ras_to_kji(pts))
    assert volume.describe_bounds() == volume.grid.describe_bounds()
    assert volume.same_grid(volume.grid) and volume.with_array(np.zeros(shape)).grid == volume.grid
    assert resample_like(volume, volume.grid) is volume
    copy = pickle.loads(pickle.dumps(volume))
    assert copy.grid == volume.grid and copy.content_key() == volume.content_key()


def test_resample_takes_a_grid_or_a_matrix_and_shape():
    rng = np.random.default_rng(4)
    matrix, shape = GRIDS["lps-axial"]
    volume = Volume(rng.normal(size=shape).astype(np.float32), matrix)
    target = Grid(*GRIDS["oblique"])
    a = resample(volume, target, order=1, fill=np.nan)
    b = resample(volume, target.ijk_to_ras, target.shape_kji, order=1, fill=np.nan)
    assert a.grid == target and np.array_equal(a.array, b.array, equal_nan=True)


def test_crops_are_grids():
    crop = CropGrid.centred((10.0, -20.0, 30.0), 24, 1.5)
    assert isinstance(crop, Grid) and crop.shape == crop.shape_kji == (24, 24, 24) and crop.size == 24
    assert crop.spacing_mm == 1.5 and Crop is Grid
    np.testing.assert_allclose(crop.kji_to_ras([[12, 12, 12]])[0], (10.0, -20.0, 30.0), atol=1e-12)
    source = Volume(np.zeros((30, 40, 50), np.int16), make_ijk_to_ras((0.8, 0.8, 2.0), (0.0, -40.0, 10.0)))
    slices, block = crop_to_source(np.ones(crop.shape, np.float32), crop, source)
    lo, hi = source.grid.block_covering(crop)
    assert slices == tuple(slice(a, b) for a, b in zip(lo, hi, strict=False)) and block.shape == tuple(hi - lo)


# -- guards ----------------------------------------------------------------------------------

# words that mark a matrix as a grid's (IJK->RAS, an affine, a direction/world/transform matrix): an inverse
# of one of those belongs in geometry.py; an inverse of anything else (a covariance, a fit) is left alone
GEOMETRY_WORDS = (
    "ijk",
    "ras",
    "affine",
    "matrix",
    "lps",
    "grid",
    "direction",
    "world",
    "transform",
    "xform",
    "sform",
    "qform",
    "crop",
    "volume",
)
INVERSES = ("inv", "pinv")


def _sources() -> list[Path]:
    return sorted(p for folder in SOURCE_FOLDERS for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _grid_inverses(path: Path) -> list[str]:
    """`linalg.inv(...)`-style calls on a grid matrix (and bare `inv` imported from a linalg module) in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bare = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("linalg")
        for alias in node.names
        if alias.name in INVERSES
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = ast.unparse(node.func)
        is_inverse = func in bare or any(
            func == f"linalg.{name}" or func.endswith(f".linalg.{name}") for name in INVERSES
        )
        argument = ast.unparse(node.args[0]).lower()
        if is_inverse and any(word in argument for word in GEOMETRY_WORDS):
            where = path.relative_to(SOURCE) if path.is_relative_to(SOURCE) else path.name
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_geometry_inverts_a_grid_matrix():
    """Each conversion lives in geometry.py: elsewhere ask a `Grid` (`ras_to_kji`, `ras_to_ijk`, `kji_map_to`)."""
    offenders = [hit for path in _sources() if path != GEOMETRY for hit in _grid_inverses(path)]
    assert not offenders, "IJK->RAS inverted outside tagseg/geometry.py (use tagseg.geometry.Grid):\n" + "\n".join(
        offenders
    )


def test_the_guard_sees_what_it_guards(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import numpy as np\nfrom numpy.linalg import inv as invert\nimport numpy\n"
        "a = np.linalg.inv(volume.ijk_to_ras)\nb = numpy.linalg.inv(matrix)\n"
        "c = invert(self.affine)\nd = np.linalg.inv(covariance)\ne = linalg.inv(crop.ijk_to_ras)\n"
    )
    hits = _grid_inverses(sample)
    assert [h.split(":")[1] for h in hits] == ["4", "5", "6", "8"]
    assert _grid_inverses(GEOMETRY), "geometry.py's own inverse should be visible to the guard"


def test_the_kji_swap_is_written_once():
    pattern = "[[2, 1, 0, 3]]"
    holders = [p.relative_to(SOURCE) for p in _sources() if pattern in p.read_text(encoding="utf-8")]
    assert holders == [Path("tagseg/geometry.py")]
    assert GEOMETRY.read_text(encoding="utf-8").count(pattern) == 1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_bbox_and_padded_bbox_match_nonzero(seed, ndim):
    """The per-axis reductions give nonzero()'s extent, on a volume or a slice; padding is clipped at the
    array's faces."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((7, 9, 11)[3 - ndim :], bool)
    if seed:  # seed 0: an empty mask
        mask[tuple(rng.integers(0, n, size=seed) for n in mask.shape)] = True
    found = mask_bbox(mask)
    if not mask.any():
        assert found is None and padded_bbox(mask, 2) is None
        return
    idx = np.nonzero(mask)
    assert found == (tuple(int(a.min()) for a in idx), tuple(int(a.max()) + 1 for a in idx))
    for pad in (0, 1, 3):
        box = padded_bbox(mask, pad)
        assert box == tuple(
            slice(max(int(a.min()) - pad, 0), min(int(a.max()) + 1 + pad, n))
            for a, n in zip(idx, mask.shape, strict=True)
        )
        assert mask[box].sum() == mask.sum()


def test_content_key_is_remembered_until_the_voxels_change_in_place():
    """Asked on every click, so it is remembered; the array may be a view of a buffer its owner edits (Slicer's
    arrayFromVolume), and such an edit still gives a new key."""
    owner = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    volume = Volume(owner, make_ijk_to_ras((1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))
    first = volume.content_key()
    assert volume.content_key() == first
    owner[2, 3, 4] += 1.0
    edited = volume.content_key()
    assert edited != first
    assert Volume(owner.copy(), volume.ijk_to_ras).content_key() == edited  # a key of the voxels, not the object
    assert Volume(owner.copy(), make_ijk_to_ras((1.0, 1.0, 3.0), (0.0, 0.0, 0.0))).content_key() != edited
