"""Synthetic phantoms: the known answer many other tests rely on, so its promises are checked here."""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tagseg.io import load_volume  # noqa: E402
from tagseg.synth import Phantom, insert_tumour, make_phantom, write_case  # noqa: E402
from tagseg.volume import Volume  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
CT_ORGANS = SHARED_DATA / "ct_organs"
IN_PLANE_ONLY = np.zeros((3, 3, 3), bool)
IN_PLANE_ONLY[1] = True


@lru_cache(maxsize=None)
def phantom(seed: int) -> Phantom:
    return make_phantom(seed)


def label_centroid_and_volume(volume: Volume) -> tuple[np.ndarray, float]:
    kji = np.argwhere(volume.array > 0)
    return volume.kji_to_ras(kji).mean(axis=0), len(kji) * float(np.prod(volume.spacing_ijk))


def measured_contrast(image: np.ndarray, label: np.ndarray, organ: np.ndarray) -> float:
    """Tumour core minus the surrounding organ, away from the blurred edge."""
    core = ndimage.binary_erosion(label, IN_PLANE_ONLY)
    ring = organ & ~ndimage.binary_dilation(label, iterations=3)
    return float(image[core].mean() - image[ring].mean())


def test_same_seed_gives_identical_phantom():
    a, b = make_phantom(3), phantom(3)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.label.array, b.label.array)
    assert a.organs.keys() == b.organs.keys()
    assert all(np.array_equal(a.organs[n].array, b.organs[n].array) for n in a.organs)
    assert a.description == b.description and a.contrast_hu == b.contrast_hu


def test_different_seeds_differ():
    a, b = phantom(0), phantom(1)
    assert not np.array_equal(a.label.array, b.label.array)
    assert not np.array_equal(a.image.array, b.image.array)
    assert a.centre_ras != b.centre_ras


def test_types_geometry_and_tissue_values():
    p = phantom(0)
    assert p.image.array.dtype == np.int16 and p.label.array.dtype == np.uint8
    assert p.image.shape_kji == (40, 160, 160)
    assert np.allclose(p.image.spacing_ijk, (1.0, 1.0, 2.5))
    lo, hi = p.image.bounds_ras()
    assert np.allclose((lo + hi) / 2, 0.0, atol=1e-6), "default grid is centred on RAS (0, 0, 0)"
    assert set(np.unique(p.label.array)) == {0, 1}
    for organ in p.organs.values():
        assert organ.same_grid(p.image) and organ.array.dtype == np.uint8
    image = p.image.array.astype(float)
    assert abs(np.median(image[:, :3, :3]) + 1000) < 30, "corners are air"
    assert abs(np.median(image[p.organs["spine"].array > 0]) - 700) < 30
    assert 40 < np.median(image[(p.organs["liver"].array > 0) & (p.label.array == 0)]) < 80
    assert {"liver", "kidney_left", "kidney_right", "pancreas", "spine"} <= set(p.organs)


def test_organs_do_not_overlap_and_hold_the_tumour():
    hosts = set()
    for seed in range(8):
        p = phantom(seed)
        masks = {n: v.array > 0 for n, v in p.organs.items()}
        names = sorted(masks)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert not (masks[a] & masks[b]).any(), f"seed {seed}: {a} overlaps {b}"
        label, organ = p.label.array > 0, masks[p.tumour_organ]
        assert label.any() and not (label & ~organ).any(), f"seed {seed}: tumour leaves {p.tumour_organ}"
        rim = ndimage.binary_dilation(label, IN_PLANE_ONLY, iterations=2) & ~label
        assert organ[rim].mean() > 0.95, f"seed {seed}: tumour is not surrounded by {p.tumour_organ}"
        assert p.tumour_organ.split("_")[0] in p.description.replace("pancreatic", "pancreas")
        assert "tumor" in p.description
        hosts.add(p.tumour_organ)
    assert "liver" in hosts and len(hosts) >= 2, "seeds should vary the host organ"


def test_tumour_contrast_sign_and_magnitude():
    signs = set()
    for seed in range(8):
        p = phantom(seed)
        assert 40 <= abs(p.contrast_hu) <= 80
        measured = measured_contrast(p.image.array.astype(float), p.label.array > 0,
                                     p.organs[p.tumour_organ].array > 0)
        assert np.sign(measured) == np.sign(p.contrast_hu)
        assert abs(measured - p.contrast_hu) < 12, f"seed {seed}: {measured:.0f} vs {p.contrast_hu:.0f} HU"
        signs.add(np.sign(p.contrast_hu))
    assert signs == {-1.0, 1.0}, "seeds should give both hypo- and hyperdense tumours"


def test_tumour_size_and_extent():
    for seed in range(8):
        p = phantom(seed)
        assert 8 <= p.radius_mm <= 20
        slices = np.unique(np.nonzero(p.label.array)[0])
        assert len(slices) >= 3 and np.all(np.diff(slices) == 1), f"seed {seed}: slices {slices}"
        _, volume_mm3 = label_centroid_and_volume(p.label)
        equivalent_radius = (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)
        assert 0.75 * p.radius_mm < equivalent_radius < 1.3 * p.radius_mm


def test_requested_radius_and_contrast():
    p = make_phantom(5, tumour_radius_mm=14.0, contrast_hu=-55.0)
    assert p.radius_mm == 14.0 and p.contrast_hu == -55.0
    _, volume_mm3 = label_centroid_and_volume(p.label)
    assert 0.75 * 14 < (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3) < 1.3 * 14
    measured = measured_contrast(p.image.array.astype(float), p.label.array > 0, p.organs[p.tumour_organ].array > 0)
    assert -67 < measured < -43
    with pytest.raises(ValueError, match="fits in no organ"):
        make_phantom(0, tumour_radius_mm=60.0)


def test_same_physical_phantom_whatever_the_axis_directions():
    reference = phantom(2)
    centre, volume = label_centroid_and_volume(reference.label)
    to_a_s_r = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i -> A, j -> S, k -> R
    angle = np.deg2rad(20)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    variants = {
        "LPS": make_phantom(2, directions=np.diag([-1.0, -1.0, 1.0])),
        "flipped S": make_phantom(2, directions=np.diag([1.0, 1.0, -1.0])),
        "permuted": make_phantom(2, shape_kji=(160, 40, 160), spacing_ijk=(1.0, 2.5, 1.0), directions=to_a_s_r),
        "oblique": make_phantom(2, directions=oblique),
    }
    voxel = reference.image.spacing_ijk.max()
    for name, variant in variants.items():
        other_centre, other_volume = label_centroid_and_volume(variant.label)
        assert np.linalg.norm(other_centre - centre) < voxel, name
        assert abs(other_volume - volume) < 0.03 * volume, name
        assert variant.tumour_organ == reference.tumour_organ, name
        liver_centre, _ = label_centroid_and_volume(variant.organs["liver"])
        assert np.linalg.norm(liver_centre - label_centroid_and_volume(reference.organs["liver"])[0]) < voxel, name
    liver_side = label_centroid_and_volume(reference.organs["liver"])[0]
    assert liver_side[0] > 0, "the liver lies on the patient's right (R > 0)"


def test_write_case_round_trips(tmp_path):
    p = phantom(1)
    paths = write_case(p, tmp_path / "case")
    assert set(paths) == {"image", "label", *p.organs}
    assert paths["image"].name == "image.nii.gz" and paths["label"].name == "label.nii.gz"
    for name, path in paths.items():
        original = {"image": p.image, "label": p.label}.get(name) or p.organs[name]
        loaded = load_volume(path)
        assert loaded.same_grid(original, atol=1e-4), name
        assert np.array_equal(loaded.array, original.array), name
        assert loaded.array.dtype == original.array.dtype, name
    assert not [f for f in (tmp_path / "case").iterdir() if f.name.startswith(".")], "no temp files left"


def test_write_case_keeps_lps_geometry(tmp_path):
    p = make_phantom(4, shape_kji=(24, 96, 96), spacing_ijk=(1.5, 1.5, 2.5), directions=np.diag([-1.0, -1.0, 1.0]),
                     tumour_radius_mm=9.0)
    loaded = load_volume(write_case(p, tmp_path)["label"])
    assert np.allclose(loaded.ijk_to_ras, p.label.ijk_to_ras, atol=1e-4)
    assert np.allclose(label_centroid_and_volume(loaded)[0], p.centre_ras, atol=3.0)


@pytest.fixture(scope="module")
def real_ct():
    if not (CT_ORGANS / "example_ct_sm.nii.gz").exists():
        pytest.skip(f"../shared/data not found: {SHARED_DATA}")
    import json

    names = {v: int(k) for k, v in json.loads((CT_ORGANS / "total_class_map.json").read_text()).items()}
    image = load_volume(CT_ORGANS / "example_ct_sm.nii.gz")
    seg = load_volume(CT_ORGANS / "example_seg.nii.gz")
    liver = seg.with_array((seg.array == names["liver"]).astype(np.uint8), name="liver")
    return image, liver


def test_insert_tumour_in_real_liver(real_ct):
    image, liver = real_ct
    image_before, liver_before = image.array.copy(), liver.array.copy()
    organ = liver.array > 0
    signs = set()
    for seed in range(4):
        new_image, label = insert_tumour(image, liver, seed)
        tumour = label.array > 0
        assert new_image.same_grid(image) and label.same_grid(image)
        assert new_image.array.dtype == image.array.dtype and label.array.dtype == np.uint8
        assert tumour.sum() >= 20 and not (tumour & ~organ).any(), f"seed {seed}: tumour leaves the liver"
        assert len(np.unique(np.nonzero(tumour)[0])) >= 3
        changed = new_image.array != image.array
        assert changed[tumour].mean() > 0.9
        near = ndimage.binary_dilation(tumour, iterations=3)
        assert not (changed & ~near).any(), f"seed {seed}: voxels changed away from the tumour"
        shift = float(np.mean(new_image.array[tumour].astype(float) - image.array[tumour]))
        assert 30 <= abs(shift) <= 80, f"seed {seed}: mean shift {shift:.0f} HU"
        signs.add(np.sign(shift))
        again, again_label = insert_tumour(image, liver, seed)
        assert np.array_equal(again.array, new_image.array) and np.array_equal(again_label.array, label.array)
    assert signs == {-1.0, 1.0}
    assert np.array_equal(image.array, image_before) and np.array_equal(liver.array, liver_before)


def test_insert_tumour_with_given_size_and_contrast(real_ct):
    image, liver = real_ct
    new_image, label = insert_tumour(image, liver, seed=7, radius_mm=12.0, contrast_hu=-70.0)
    tumour = label.array > 0
    core = ndimage.binary_erosion(tumour)
    shift = new_image.array[core].astype(float) - image.array[core]
    assert np.allclose(shift, -70.0, atol=1.0)
    _, volume_mm3 = label_centroid_and_volume(label)
    assert 0.7 * 12 < (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3) < 1.3 * 12
    with pytest.raises(ValueError, match="does not fit"):
        insert_tumour(image, liver, seed=0, radius_mm=80.0)
    with pytest.raises(ValueError, match="empty"):
        insert_tumour(image, liver.with_array(np.zeros(liver.shape_kji, np.uint8)), seed=0)


def test_insert_tumour_in_phantom_keeps_to_the_mask():
    p = phantom(0)
    kidney = p.organs["kidney_left"]
    new_image, label = insert_tumour(p.image, kidney, seed=1, radius_mm=6.0)
    assert not ((label.array > 0) & (kidney.array == 0)).any()
    assert (new_image.array != p.image.array).any()
