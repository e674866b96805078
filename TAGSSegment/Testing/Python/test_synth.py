"""Synthetic phantoms: the known answer many other tests rely on, so its promises are checked here."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tagseg.io import load_volume  # noqa: E402
from tagseg.synth import (  # noqa: E402
    Phantom,
    insert_tumour,
    lesion_phantom_name,
    make_lesion_phantom,
    make_phantom,
    write_case,
    write_lesion_cases,
)
from tagseg.volume import Volume  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
CT_ORGANS = SHARED_DATA / "ct_organs"
IN_PLANE_ONLY = np.zeros((3, 3, 3), bool)
IN_PLANE_ONLY[1] = True


@cache
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
            for b in names[i + 1 :]:
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
        measured = measured_contrast(p.image.array.astype(float), p.label.array > 0, p.organs[p.tumour_organ].array > 0)
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
    p = make_phantom(
        4,
        shape_kji=(24, 96, 96),
        spacing_ijk=(1.5, 1.5, 2.5),
        directions=np.diag([-1.0, -1.0, 1.0]),
        tumour_radius_mm=9.0,
    )
    loaded = load_volume(write_case(p, tmp_path)["label"])
    assert np.allclose(loaded.ijk_to_ras, p.label.ijk_to_ras, atol=1e-4)
    assert np.allclose(label_centroid_and_volume(loaded)[0], p.centre_ras, atol=3.0)


@pytest.fixture(scope="module")
def real_ct():
    if not (CT_ORGANS / "example_ct_sm.nii.gz").exists():
        pytest.skip(f"../shared/data not found: {SHARED_DATA}")
    import json

    names = {v: int(k) for k, v in json.loads((CT_ORGANS / "total_class_map.json").read_text(encoding="utf-8")).items()}
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


# ---------------------------------------------------------------------------------------- lesion phantoms
@cache
def lesion(seed: int, radius: float, edge: str, modality: str, slices: str) -> Phantom:
    return make_lesion_phantom(seed, radius, edge, modality, slices)


def equivalent_radius(label: Volume) -> float:
    return (3 * label_centroid_and_volume(label)[1] / (4 * np.pi)) ** (1 / 3)


def test_lesion_phantom_is_deterministic_and_seeded():
    a, b = make_lesion_phantom(1, 5.0, "soft", "ct", "isotropic"), lesion(1, 5.0, "soft", "ct", "isotropic")
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.label.array, b.label.array)
    assert np.allclose(a.image.ijk_to_ras, b.image.ijk_to_ras)
    c = lesion(2, 5.0, "soft", "ct", "isotropic")
    assert not np.array_equal(c.label.array, b.label.array) or not np.array_equal(c.image.array, b.image.array)


@pytest.mark.parametrize("slices", ["thick", "isotropic"])
@pytest.mark.parametrize("modality", ["ct", "mr", "mr-zscored"])
def test_smallest_lesion_is_present_with_its_size_and_geometry(modality, slices):
    p = lesion(0, 3.0, "sharp", modality, slices)
    assert p.image.same_grid(p.label) and p.label.array.dtype == np.uint8
    if slices == "thick":
        assert p.image.spacing_ijk[2] == 5.0 and 0.7 <= p.image.spacing_ijk[0] == p.image.spacing_ijk[1] <= 0.8
    else:
        assert np.allclose(p.image.spacing_ijk, 1.0)
    assert p.label.array.sum() > 0
    assert 0.6 * 3 < equivalent_radius(p.label) < 1.5 * 3
    assert p.radius_mm == 3.0 and p.extra["modality"] == modality and p.extra["slices"] == slices
    host = p.organs.get(p.tumour_organ)
    assert host is not None and not ((p.label.array > 0) & (host.array == 0)).any(), "the lesion leaves its host"
    assert max(p.image.shape_kji[1:]) <= 224 and p.image.array.size <= 5_000_000


@pytest.mark.parametrize("radius", [8.0, 20.0])
def test_requested_radius_is_the_labels_equivalent_radius(radius):
    for edge in ("sharp", "soft"):
        p = lesion(3, radius, edge, "mr-zscored", "thick")
        assert 0.8 * radius < equivalent_radius(p.label) < 1.25 * radius, edge


def test_ct_intensities_have_air_body_and_tissue():
    p = lesion(0, 6.0, "sharp", "ct", "thick")
    image = p.image.array
    assert image.dtype == np.int16
    assert abs(np.median(image[:, :4, :4]) + 1000) < 40, "corners are air"
    body = p.organs["body"].array > 0
    assert body.mean() > 0.4 and np.median(image[body]) > -200
    assert p.tumour_organ in {"liver", "lung"} and p.description in {"liver tumor", "lung tumor"}
    hosts = {lesion(seed, 6.0, "sharp", "ct", "thick").tumour_organ for seed in range(6)}
    assert hosts == {"liver", "lung"}, "seeds vary the CT host between a liver-like organ and lung"


def test_raw_mr_is_positive_and_zscored_mr_is_negative_with_a_constant_background():
    raw = lesion(0, 6.0, "sharp", "mr", "isotropic")
    assert raw.image.array.dtype == np.int16 and raw.image.array.min() >= 0
    brain = raw.organs["brain"].array > 0
    assert (
        np.median(raw.image.array[brain]) > 100
        and np.median(raw.image.array[~brain]) < np.median(raw.image.array[brain]) / 2
    )
    z = lesion(0, 6.0, "sharp", "mr-zscored", "isotropic")
    image, brain = z.image.array, z.organs["brain"].array > 0
    assert image.dtype == np.float32 and image.min() < -1.0
    assert abs(float(image[brain].mean())) < 0.05 and abs(float(image[brain].std()) - 1.0) < 0.05
    background = image[~brain]
    assert background.size > 0 and np.all(background == image.min()), "background is one fill value, the minimum"
    assert z.description == "brain tumor"


def edge_shell_signal(p: Phantom) -> float:
    """Mean intensity shift 1-2 mm outside the label, as a fraction of the lesion's contrast."""
    label = p.label.array > 0
    host = p.organs[p.tumour_organ].array > 0
    outside = ndimage.distance_transform_edt(~label, sampling=p.image.spacing_kji)
    image = p.image.array.astype(float)
    shell = (outside > 1) & (outside <= 2) & host
    far = (outside > 12) & host
    return float((image[shell].mean() - image[far].mean()) / p.contrast_hu)


def test_soft_edge_ramps_where_a_sharp_edge_stops():
    sharp = lesion(4, 12.0, "sharp", "mr-zscored", "isotropic")
    soft = lesion(4, 12.0, "soft", "mr-zscored", "isotropic")
    assert edge_shell_signal(sharp) < 0.05 < 0.15 < edge_shell_signal(soft)
    assert soft.extra["ramp_mm"] > 2.5 * sharp.extra["ramp_mm"]
    core = ndimage.binary_erosion(soft.label.array > 0, iterations=6)
    lesion_mean = soft.image.array[core].mean()
    assert np.sign(lesion_mean) == np.sign(soft.contrast_hu)


def test_largest_lesion_fits_a_modest_grid():
    p = lesion(0, 40.0, "soft", "mr", "isotropic")
    assert p.image.array.size <= 4_500_000 and max(p.image.shape_kji) <= 224, p.image.shape_kji
    assert 0.8 * 40 < equivalent_radius(p.label) < 1.25 * 40
    label = p.label.array > 0
    for axis in range(3):
        profile = label.any(axis=tuple(a for a in range(3) if a != axis))
        assert not profile[0] and not profile[-1], f"the lesion touches the grid's edge along axis {axis}"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(radius_mm=2.9), "from 3 to 40"),
        (dict(radius_mm=41.0), "from 3 to 40"),
        (dict(radius_mm=float("nan")), "from 3 to 40"),
        (dict(radius_mm="big"), "number"),
        (dict(edge="fuzzy"), "edge"),
        (dict(modality="pet"), "modality"),
        (dict(slices="2mm"), "slices"),
    ],
)
def test_lesion_options_out_of_range_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_lesion_phantom(0, **kwargs)


def test_write_lesion_cases_uses_the_dev_case_layout(tmp_path):
    folders = write_lesion_cases(
        tmp_path, cases=2, seed=5, radius_mm=4.0, edge="soft", modality="mr-zscored", slices="thick"
    )
    assert [f.name for f in folders] == [lesion_phantom_name(4.0, "soft", "mr-zscored", "thick", s) for s in (5, 6)]
    p = lesion(5, 4.0, "soft", "mr-zscored", "thick")
    loaded = load_volume(folders[0] / "label.nii.gz")
    assert np.array_equal(loaded.array, p.label.array) and loaded.same_grid(p.label, atol=1e-4)
    assert np.allclose(load_volume(folders[0] / "image.nii.gz").array, p.image.array)


def run_cli(capsys, *args):
    from tagseg import commands

    code = commands.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_synth_command_writes_lesion_phantoms(capsys, tmp_path):
    out = tmp_path / "phantoms"
    code, stdout, err = run_cli(
        capsys,
        "synth",
        "--out",
        out,
        "--cases",
        "1",
        "--radius-mm",
        "4",
        "--edge",
        "soft",
        "--modality",
        "mr",
        "--slices",
        "thick",
    )
    assert code == 0, err
    case = out / lesion_phantom_name(4.0, "soft", "mr", "thick", 0)
    assert {"image.nii.gz", "label.nii.gz"} <= {f.name for f in case.iterdir()}
    assert "lesion phantoms" in stdout and "soft edge" in stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--radius-mm", "100"], "--radius-mm"),
        (["--radius-mm", "nan"], "--radius-mm"),
        (["--radius-mm", "0.5"], "--radius-mm"),
        (["--radius-mm", "ten"], "--radius-mm"),
        (["--radius-mm", "-5"], "--radius-mm"),
        (["--modality", "ct", "--shape", "16,48,48"], "--shape"),
        (["--edge", "soft", "--from-ct", "x.nii.gz"], "--from-ct"),
        (["--slices", "thick", "--cases", "100000"], "--cases"),
    ],
)
def test_synth_command_refuses_absurd_lesion_options(capsys, tmp_path, args, fragment):
    out = tmp_path / "phantoms"
    code, stdout, err = run_cli(capsys, "synth", "--out", out, *args)
    lines = [line for line in err.splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tagseg: error:") and fragment in lines[0], err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_synth_command_refuses_unknown_choices(capsys, tmp_path):
    code, _, err = run_cli(capsys, "synth", "--out", tmp_path / "p", "--edge", "fuzzy")
    assert code == 2 and "--edge" in err.splitlines()[-1] and "Traceback" not in err


def test_synth_command_choices_match_the_generator():
    from tagseg import synth
    from tagseg.commands import synth as command

    assert command.LESION_EDGES == synth.EDGES and command.LESION_MODALITIES == synth.MODALITIES
    assert command.LESION_SLICES == synth.SLICE_GEOMETRIES
    assert command.LESION_RADIUS_MM == synth.LESION_RADIUS_LIMITS_MM
