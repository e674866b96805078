"""The torch crop path (used on CUDA) gives the scipy path's crops and results: same voxels, same values.

Tolerances: NaN/out-of-volume patterns, nearest-neighbour labels, the binary organ channel and the final
masks must be identical; float intensities (z-scored CT channel, linear resampling, the probability block
mapped back) within 1e-6 absolute. On CPU the two are bit-identical today (max difference 0.0); the
tolerance leaves room for a GPU's float32 rounding in the z-score, never for a voxel off the grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagseg.backends.base import GridPrompts
from tagseg.backends.tags import TagsBackend, TagsOptions
from tagseg.geometry import resample, resample_tensor
from tagseg.tags.crop import (
    CropGrid,
    Intensity,
    crop_to_source,
    crop_to_source_tensor,
    ct_channel,
    ct_channel_tensor,
    floored_centre_ras,
    mask_channel,
    mask_channel_tensor,
)
from tagseg.volume import Volume, make_ijk_to_ras

FLOAT_TOL = 1e-6
INTENSITY = Intensity((-160.0, 240.0), 40.0, 60.0)

LPS = np.diag([-1.0, -1.0, 1.0])  # the crop's own directions (common axial CT)
RAS = np.eye(3)  # flipped in-plane against the crop
SAGITTAL = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # permuted and flipped axes


def _oblique() -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


GEOMETRIES = {
    # name: (shape_kji, spacing_ijk, directions)
    "aligned-1mm": ((20, 30, 26), (1.0, 1.0, 1.0), LPS),  # samples land exactly on voxel centres
    "anisotropic": ((12, 40, 36), (0.7, 0.9, 2.5), LPS),  # 2.5 mm slices: samples halfway between them
    "flipped": ((12, 40, 36), (0.8, 0.8, 2.0), RAS),
    "permuted": ((30, 14, 28), (1.3, 3.0, 0.9), SAGITTAL),
    "oblique": ((16, 30, 30), (0.9, 1.1, 1.7), _oblique()),
}


def _volume(name: str, dtype=np.float32, shape=None) -> Volume:
    default_shape, spacing, directions = GEOMETRIES[name]
    shape = shape or default_shape
    rng = np.random.default_rng(len(name))
    array = rng.normal(40.0, 150.0, shape).astype(dtype)
    return Volume(array, make_ijk_to_ras(spacing, (12.3, -40.1, 7.7), directions), name, {})


def _grids(volume: Volume, size: int = 16, spacing_mm: float = 1.0) -> list[CropGrid]:
    """Crops inside the volume, over each corner (touching/crossing the border) and entirely outside."""
    shape = np.array(volume.shape_kji, float)
    centres = [shape / 2, np.zeros(3), shape - 1, np.array([0.0, shape[1] - 1, shape[2] / 2]), shape * 3]
    grids = []
    for kji in centres:
        ras = volume.kji_to_ras(kji)[0]
        grids.append(CropGrid.centred(floored_centre_ras(volume, ras[None], spacing_mm), size, spacing_mm))
    grids.append(CropGrid.centred(volume.kji_to_ras(shape / 2 + 0.37)[0], size, 1.3))  # off-lattice centre
    return grids


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[both] - b[both]), initial=0.0))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_resample_tensor_matches_scipy_linear_and_nearest(name):
    volume = _volume(name)
    labels = volume.with_array((np.asarray(volume.array) > 100).astype(np.uint8) * 3)
    for grid in _grids(volume):
        for fill in (np.nan, 0.0):
            ref = resample(volume, grid.ijk_to_ras, grid.shape, order=1, fill=fill).array
            out = resample_tensor(
                torch.from_numpy(np.array(volume.array)),
                volume.ijk_to_ras,
                grid.ijk_to_ras,
                grid.shape,
                order=1,
                fill=fill,
            ).numpy()
            assert out.dtype == ref.dtype
            assert np.array_equal(np.isnan(out), np.isnan(ref))
            assert _max_diff(out, ref) <= FLOAT_TOL
        ref = resample(labels, grid.ijk_to_ras, grid.shape, order=0, fill=0).array
        out = resample_tensor(
            torch.from_numpy(np.array(labels.array)), labels.ijk_to_ras, grid.ijk_to_ras, grid.shape, order=0, fill=0
        ).numpy()
        assert out.dtype == ref.dtype and np.array_equal(out, ref)


def test_grids_cover_inside_border_and_outside():
    """The geometries above really exercise the edge rules: some crops are partly and one wholly outside."""
    volume = _volume("anisotropic")
    outside = [
        np.isnan(resample(volume, g.ijk_to_ras, g.shape, order=1, fill=np.nan).array).mean() for g in _grids(volume)
    ]
    assert outside[0] == 0.0 or outside[0] < 1.0
    assert any(0.0 < f < 1.0 for f in outside) and outside[4] == 1.0


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_ct_and_organ_channels_match(name):
    volume = _volume(name)
    array = np.array(volume.array)
    organ = np.zeros(volume.shape_kji, bool)
    k, j, i = (n // 2 for n in volume.shape_kji)
    organ[max(k - 4, 0) : k + 3, j - 7 : j + 5, i - 6 : i + 9] = True
    organ_volume = volume.with_array(organ.astype(np.uint8))
    for grid in _grids(volume):
        ref = ct_channel(volume, grid, INTENSITY)
        out = ct_channel_tensor(torch.from_numpy(array), volume, grid, INTENSITY).numpy()
        assert out.dtype == np.float32 and np.all(np.isfinite(out))
        assert np.array_equal(out == 0, ref == 0) and _max_diff(out, ref) <= FLOAT_TOL
        ref_mask = mask_channel(organ_volume, grid)
        out_mask = mask_channel_tensor(torch.from_numpy(organ), organ_volume, grid).numpy()
        assert np.array_equal(out_mask, ref_mask)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_probability_maps_back_onto_the_same_block(name):
    volume = _volume(name)
    rng = np.random.default_rng(0)
    for grid in _grids(volume):
        prob = rng.random(grid.shape).astype(np.float32)
        ref = crop_to_source(prob, grid, volume)
        out = crop_to_source_tensor(torch.from_numpy(prob), grid, volume)
        if ref is None:
            assert out is None
            continue
        assert out[0] == ref[0]
        block = out[1].numpy()
        assert block.dtype == np.float32 and block.shape == ref[1].shape
        assert _max_diff(block, ref[1]) <= FLOAT_TOL
        assert np.array_equal(block > 0.5, ref[1] > 0.5)


def _ball_decoder(model, radius_vox: float):
    """A stand-in decoder: tumour logit > 0 inside a ball around the crop centre, so masks are not trivial."""
    size = model.config.crop_size
    axis = torch.arange(size, dtype=torch.float32) - (size / 2 - 0.3)
    d2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2

    def decode(encoded, points, labels):
        logit = (radius_vox**2 - d2) / 10.0
        return torch.stack([torch.zeros_like(logit), logit])[None]

    return decode


@pytest.mark.parametrize("name", ["anisotropic", "permuted"])
def test_backend_torch_resampling_gives_the_scipy_masks(name):
    from tagseg.tags import build_tags

    volume = _volume(name, np.int16, shape=(30, 80, 70))  # wider than one 48 mm tags-tiny crop
    model = build_tags("tags-tiny", seed=0).eval()
    model.decode = _ball_decoder(model, 9.0)
    metadata = {"config": model.config.to_dict(), "intensity": {"window": [-160.0, 240.0], "mean": 40.0, "std": 60.0}}
    backends = {
        mode: TagsBackend(
            model=model,
            metadata=metadata,
            device="cpu",
            options=TagsOptions(resample=mode, autocast="off", sliding_window=True),
        )
        for mode in ("scipy", "torch")
    }
    for backend in backends.values():
        backend.set_image(volume)
    assert backends["torch"]._resample_on_device() and not backends["scipy"]._resample_on_device()
    shape = np.array(volume.shape_kji, float)
    organ = np.zeros(volume.shape_kji, bool)
    organ[1:-1, 2:-2, 3:-3] = True
    lattice = np.array(
        [
            [a, b, c]
            for a in (0, shape[0] / 2, shape[0] - 1)
            for b in (0, shape[1] / 2, shape[1] - 1)
            for c in (0, shape[2] / 2, shape[2] - 1)
        ]
    )
    sessions = [
        [GridPrompts(shape[None] / 2, np.zeros((0, 3)), (), "", organ)],  # centre, organ mask
        [
            GridPrompts(np.array([[0.0, 0.0, 0.0]]), np.zeros((0, 3)), (), "", None),  # a corner: border
            GridPrompts(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]), np.zeros((0, 3)), (), "", None),
        ],  # refine
        [GridPrompts(lattice, np.zeros((0, 3)), (), "", organ)],  # clicks across the volume: overlapping crops
    ]
    nontrivial = 0
    for session in sessions:
        for prompts in session:
            masks = {mode: b.predict(prompts) for mode, b in backends.items()}
            assert np.array_equal(masks["torch"], masks["scipy"])
            nontrivial += int(masks["torch"].any())
        grid = backends["scipy"]._grid
        if grid is not None:
            inputs = {mode: b._input_crop(grid, session[-1]).numpy() for mode, b in backends.items()}
            assert _max_diff(inputs["torch"], inputs["scipy"]) <= FLOAT_TOL
            assert np.array_equal(inputs["torch"][0, 2], inputs["scipy"][0, 2])  # organ channel exactly
    assert nontrivial == 4
    assert backends["torch"].last_run["crops"] > 1
