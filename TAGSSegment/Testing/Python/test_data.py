"""Training data: dataset layouts, input checks, splits, 1 mm preprocessing + cache, transforms, loader,
synthetic datasets. Every test writes real files into tmp_path and checks something that can fail."""

from __future__ import annotations

import errno
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tagseg.data import preprocess as P  # noqa: E402
from tagseg.data.datasets import (
    Case,
    cases_from_split,
    check_cases,
    detect_layout,
    discover_cases,  # noqa: E402
    load_case,
    load_split_json,
    load_split_pkl,
    make_split,
    read_split_pkl,
    save_split_json,
    split_cases,
)
from tagseg.data.synthetic import dataset_intensity, insert_into_ct, write_synthetic_dataset  # noqa: E402
from tagseg.errors import InputError  # noqa: E402
from tagseg.io import load_volume, save_volume  # noqa: E402
from tagseg.volume import Volume, make_ijk_to_ras  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
LPS = np.diag([-1.0, -1.0, 1.0])
SMALL = dict(shape_kji=(24, 64, 64), spacing_ijk=(2.5, 2.5, 4.0))


def write(path: Path, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), directions=LPS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    array = array.astype(np.uint8) if array.dtype == bool else array
    save_volume(Volume(array, make_ijk_to_ras(spacing, origin, directions)), path)
    return path


def seg(shape=(4, 6, 6), tumour=True) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[1:3, 1:5, 1:5] = 1
    if tumour:
        out[2, 2:4, 2:4] = 2
    return out


def ct(shape=(4, 6, 6)) -> np.ndarray:
    return np.full(shape, 40, np.int16)


def ids(cases) -> list[str]:
    return [c.case_id for c in cases]


# ------------------------------------------------------------------------------------------------ layouts
def test_msd_layout_uses_dataset_json_and_skips_macos_junk(tmp_path):
    root = tmp_path / "Task07_Pancreas"
    for cid in ("pancreas_001", "pancreas_010"):
        write(root / "imagesTr" / f"{cid}.nii.gz", ct())
        write(root / "labelsTr" / f"{cid}.nii.gz", seg())
    (root / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble from the tarball
    write(root / "organsTr" / "pancreas_010" / "pancreas.nii.gz", seg() > 0)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
                "training": [
                    {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                    for c in ("pancreas_010", "pancreas_001")
                ],
            }
        ),
        encoding="utf-8",
    )
    assert detect_layout(root) == "msd"
    cases = discover_cases(root)
    assert ids(cases) == ["pancreas_001", "pancreas_010"]
    assert cases[0].label == root / "labelsTr" / "pancreas_001.nii.gz"
    assert cases[0].organ_masks == () and cases[1].organ_masks == (root / "organsTr/pancreas_010/pancreas.nii.gz",)

    bare = tmp_path / "nnunet"  # no dataset.json, nnU-Net `_0000` channel names
    write(bare / "imagesTr" / "x_7_0000.nii.gz", ct())
    write(bare / "labelsTr" / "x_7.nii.gz", seg())
    (bare / "imagesTr" / "._x_7_0000.nii.gz").write_bytes(b"junk")
    [case] = discover_cases(bare, layout="msd", organ=None)
    assert case.case_id == "x_7" and case.label == bare / "labelsTr" / "x_7.nii.gz"


def test_kits_layout_prefers_majority_label_and_unites_kidneys(tmp_path):
    root = tmp_path / "kits21"
    left, right = np.zeros((4, 6, 6), np.uint8), np.zeros((4, 6, 6), np.uint8)
    left[:, :, :2], right[:, :, 4:] = 1, 1
    a, b = root / "data" / "case_00000", root / "data" / "case_00001"
    write(a / "imaging.nii.gz", ct())
    write(a / "aggregated_MAJ_seg.nii.gz", seg())
    write(a / "segmentation.nii.gz", seg(tumour=False))
    write(a / "kidney_left.nii.gz", left)
    write(a / "kidney_right.nii.gz", right)
    write(b / "imaging.nii.gz", ct())
    write(b / "segmentation.nii.gz", seg())
    write(b / "kidney.nii.gz", seg() > 0)
    assert detect_layout(root) == "kits"
    first, second = discover_cases(root)  # organ "auto" = kidney for KiTS
    assert first.label.name == "aggregated_MAJ_seg.nii.gz" and second.label.name == "segmentation.nii.gz"
    assert [p.name for p in first.organ_masks] == ["kidney_left.nii.gz", "kidney_right.nii.gz"]
    assert [p.name for p in second.organ_masks] == ["kidney.nii.gz"]  # the authors' single file wins
    organ = load_case(first)[2]
    assert np.array_equal(organ.array, left | right)


def test_lits_layout_in_batches_with_totalsegmentator_folder(tmp_path):
    root, organs = tmp_path / "LiTS", tmp_path / "totalseg"
    for n, batch in ((0, 1), (2, 1), (10, 2)):
        write(root / f"Training Batch {batch}" / f"volume-{n}.nii", ct())
    write(root / "Training Batch 1" / "segmentation-0.nii", seg())
    write(root / "Training Batch 2" / "segmentation-10.nii", seg())
    write(organs / "volume-10" / "liver.nii.gz", seg() > 0)
    assert detect_layout(root) == "lits"
    cases = discover_cases(root, organ_dir=organs)
    assert ids(cases) == ["volume-0", "volume-2", "volume-10"]  # natural order, split.pkl ids
    assert cases[1].label is None and cases[2].label.name == "segmentation-10.nii"
    assert cases[2].organ_masks == (organs / "volume-10" / "liver.nii.gz",) and cases[0].organ_masks == ()


@pytest.mark.parametrize("variant", ["suffix", "subfolders"])
def test_folder_layout(tmp_path, variant):
    root = tmp_path / "ds"
    for cid in ("b2", "a1"):
        if variant == "suffix":
            write(root / f"{cid}_image.nii.gz", ct())
            write(root / f"{cid}_label.nii.gz", seg())
        else:
            write(root / "images" / f"{cid}.nii.gz", ct())
            write(root / "labels" / f"{cid}.nii.gz", seg())
    write(root / "organs" / "a1" / "liver.nii.gz", seg() > 0)
    assert detect_layout(root) == "folder"
    cases = discover_cases(root, organ="liver")
    assert ids(cases) == ["a1", "b2"] and all(c.label is not None and c.label.is_file() for c in cases)
    assert cases[0].organ_masks == (root / "organs" / "a1" / "liver.nii.gz",) and cases[1].organ_masks == ()


def test_unusable_dataset_folders_are_refused(tmp_path):
    with pytest.raises(InputError, match="not found"):
        discover_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no known dataset layout"):
        discover_cases(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown dataset layout"):
        discover_cases(tmp_path / "empty", layout="nnunet")


# ------------------------------------------------------------------------------------------------ checks
def test_check_cases_reports_every_problem_in_one_error(tmp_path):
    root = tmp_path / "ds"

    def case(cid, label=True, organ=True, **geometry):
        write(root / f"{cid}_image.nii.gz", ct())
        if label:
            write(
                root / f"{cid}_label.nii.gz",
                geometry.pop("label_array", seg()),
                spacing=geometry.pop("label_spacing", (1.0, 1.0, 1.0)),
            )
        if organ:
            write(root / "organs" / cid / "liver.nii.gz", seg() > 0, origin=geometry.pop("organ_origin", (0, 0, 0)))

    case("good")
    case("nolabel", label=False)
    case("noorgan", organ=False)
    case("notumour", label_array=seg(tumour=False))
    case("thick", label_spacing=(1.0, 1.0, 2.5))
    case("small", label_array=seg(shape=(4, 6, 5)))
    case("shifted", organ_origin=(0.0, 0.0, 3.0))
    cases = discover_cases(root, organ="liver")
    with pytest.raises(InputError) as info:
        check_cases(cases)
    message = str(info.value)
    assert "\n" not in message and message.startswith("6 of 7 cases cannot be used")
    assert "missing labels (1): nolabel" in message and "missing organ masks (1): noorgan" in message
    assert "notumour (values 0, 1)" in message
    assert "thick: label spacing (1, 1, 2.5) vs image (1, 1, 1) mm" in message
    assert "small: label size 5x6x4 vs image 6x6x4" in message
    assert "shifted: organ liver.nii.gz origin" in message
    assert "good" not in message.replace("cannot", "")
    check_cases([c for c in cases if c.case_id == "good"])  # a clean case passes


def test_check_cases_truncates_long_lists(tmp_path):
    image = write(tmp_path / "img.nii.gz", ct())
    cases = [Case(f"case_{n:02d}", image, None, ()) for n in range(13)]
    with pytest.raises(InputError) as info:
        check_cases(cases, require_organs=False, check_geometry=False)
    message = str(info.value)
    assert "missing labels (13): case_00, case_01" in message and "case_09 … and 3 more" in message
    assert "case_10" not in message


# ------------------------------------------------------------------------------------------------ splits
class _Exploit:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _split_fold(offset: int) -> dict:
    def entries(names):
        return {n: [f"Training/{n}/image.nii.gz", f"Training/{n}/segmentation.nii.gz"] for n in names}

    return {
        "train": entries([f"pancreas_{offset + i}" for i in range(3)]),
        "val": entries([f"pancreas_{offset + 10}"]),
        "test": entries([f"pancreas_{offset + 20}"]),
    }


def test_split_pkl_restricted_unpickler(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([{"train": {"case": _Exploit(sentinel)}}]))
    with pytest.raises(InputError, match="refused.*posix.system|refused.*os.system"):
        load_split_pkl(evil)
    assert not sentinel.exists()

    legit = tmp_path / "split.pkl"
    legit.write_bytes(pickle.dumps([_split_fold(100 * f) for f in range(5)], protocol=4))
    assert load_split_pkl(legit, fold=1) == {
        "train": ["pancreas_100", "pancreas_101", "pancreas_102"],
        "val": ["pancreas_110"],
        "test": ["pancreas_120"],
    }
    legit0 = tmp_path / "split0.pkl"
    legit0.write_bytes(pickle.dumps([_split_fold(0)], protocol=0))
    entries = read_split_pkl(legit0)["val"]
    assert entries == {"pancreas_10": ("Training/pancreas_10/image.nii.gz", "Training/pancreas_10/segmentation.nii.gz")}
    write(tmp_path / "Training" / "pancreas_10" / "pancreas.nii.gz", seg() > 0)
    [case] = cases_from_split(tmp_path, entries, organ="pancreas")
    assert case.image == tmp_path / "Training/pancreas_10/image.nii.gz"
    assert case.organ_masks == (tmp_path / "Training/pancreas_10/pancreas.nii.gz",)
    with pytest.raises(InputError, match="no fold 7"):
        load_split_pkl(legit, fold=7)


def test_seeded_split_is_reproducible_and_round_trips(tmp_path):
    case_ids = [f"case_{n:05d}" for n in range(20)]
    split = make_split(case_ids, seed=3)
    assert split == make_split(list(reversed(case_ids)), seed=3)  # order-independent
    assert split != make_split(case_ids, seed=4)
    assert [len(split[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    assert sorted(sum(split.values(), [])) == case_ids
    path = save_split_json(tmp_path / "split.json", split, meta={"seed": 3})
    assert load_split_json(path) == split
    cases = [Case(cid, Path(f"{cid}.nii.gz"), None) for cid in case_ids]
    assert [c.case_id for c in split_cases(cases, split)["test"]] == split["test"]
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}), encoding="utf-8")
    with pytest.raises(InputError, match=r"b \(train\+val\)"):
        load_split_json(path)


# ------------------------------------------------------------------------------------------------ preprocessing
def test_resampling_keeps_physical_positions_windows_and_zeroes_nan():
    rotation = np.array([[np.cos(0.35), -np.sin(0.35), 0], [np.sin(0.35), np.cos(0.35), 0], [0, 0, 1]])
    directions = rotation @ LPS
    shape, spacing = (16, 40, 36), (0.7, 0.9, 3.0)
    matrix = make_ijk_to_ras(spacing, (12.0, -8.0, 30.0), directions)
    image = Volume(np.zeros(shape, np.float32), matrix)
    centre_ras = image.kji_to_ras([[8, 22, 15]])[0]
    ras = image.kji_to_ras(np.argwhere(np.ones(shape))).reshape(*shape, 3)
    ball = np.linalg.norm(ras - centre_ras, axis=-1) < 6.0
    labels = np.where(ball, 2, np.where(np.linalg.norm(ras - centre_ras, axis=-1) < 10.0, 1, 0)).astype(np.uint8)
    pixels = np.where(ball, 300.0, -500.0).astype(np.float32)
    pixels[0, 0, :5] = np.nan
    out_image, out_label, out_organ = P.resample_case(
        image.with_array(pixels), image.with_array(labels), image.with_array(labels), 1.0, window=(-100.0, 200.0)
    )
    assert np.allclose(out_image.ijk_to_ras[:3, :3], LPS) and out_label.same_grid(out_image)
    values = np.asarray(out_image.array)
    assert np.isfinite(values).all() and values.min() == -100.0 and values.max() == 200.0
    assert set(np.unique(out_label.array)) == {0, 1} and out_label.array.dtype == np.uint8
    centroid = out_label.kji_to_ras(np.argwhere(out_label.array).mean(0))[0]
    assert np.linalg.norm(centroid - image.kji_to_ras(np.argwhere(ball).mean(0))[0]) < 1.0
    assert out_organ.array.sum() > out_label.array.sum()  # organ = labels > 0, tumour inside
    volume_ml = out_label.array.sum() / 1000.0
    assert abs(volume_ml - ball.sum() * np.prod(spacing) / 1000.0) < 0.15 * volume_ml


def test_anisotropic_volume_is_resampled_in_plane_first(monkeypatch):
    """0.8 x 0.8 x 10 mm: max/min spacing 12.5 > 8, so bilinear in-plane, then along D, as published; the
    result equals the authors' F.interpolate calls on the KJI array of this LPS-stored volume."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    array = rng.normal(0.0, 100.0, (6, 20, 25)).astype(np.float32)
    volume = Volume(array, make_ijk_to_ras((0.8, 0.8, 10.0), (5.0, 7.0, -20.0), LPS))
    grids = []
    original = P.resample

    def spy(vol, matrix, shape, **kwargs):
        grids.append((tuple(np.round(np.linalg.norm(matrix[:3, :3], axis=0), 4)), tuple(shape)))
        return original(vol, matrix, shape, **kwargs)

    monkeypatch.setattr(P, "resample", spy)
    out, _, _ = P.resample_case(volume, None, None, 1.0)
    assert grids == [((1.0, 1.0, 10.0), (6, 16, 20)), ((1.0, 1.0, 1.0), (60, 16, 20))]
    slices = F.interpolate(torch.from_numpy(array)[:, None], scale_factor=(0.8, 0.8), mode="bilinear")
    reference = F.interpolate(
        slices[None].permute(0, 2, 1, 3, 4).contiguous(), scale_factor=(10.0, 1.0, 1.0), mode="trilinear"
    )[0, 0].numpy()
    assert out.shape_kji == reference.shape and np.abs(out.array - reference).max() < 1e-2

    grids.clear()
    P.resample_case(Volume(array, make_ijk_to_ras((1.0, 1.0, 3.0), (0, 0, 0), LPS)), None, None, 1.0)
    assert len(grids) == 1  # ratio 3: one trilinear pass


def test_training_grid_matches_the_inference_crop():
    """Training arrays and inference crops must share axes: a RAS-stored volume resampled for training,
    cut at a voxel, equals the inference crop (tags.crop) centred on that voxel's RAS position."""
    from scipy import ndimage

    from tagseg.tags.crop import CropGrid, Intensity, ct_channel

    rng = np.random.default_rng(2)
    smooth = ndimage.gaussian_filter(rng.normal(0.0, 400.0, (20, 40, 44)), 2.0).astype(np.float32)
    volume = Volume(smooth, make_ijk_to_ras((0.9, 0.9, 2.0), (-20.0, -15.0, 5.0), np.eye(3)))
    intensity = Intensity((-54.0, 247.0), 59.53867, 55.457336)
    image, _, _ = P.resample_case(volume, None, None, 1.0, window=intensity.window)
    centre = np.array([20, 18, 19])
    grid = CropGrid.centred(image.kji_to_ras([centre])[0], 16, 1.0)
    crop = ct_channel(volume, grid, intensity)
    block = np.asarray(image.array)[tuple(slice(c - 8, c + 8) for c in centre)]
    assert np.allclose(crop, (block - intensity.mean) / intensity.std, atol=1e-4)
    assert np.ptp(crop) > 1.0  # a real pattern, not a constant


def _tiny_case(root: Path, value: int = 40) -> Case:
    image = np.full((6, 12, 12), value, np.int16)
    label = np.zeros((6, 12, 12), np.uint8)
    label[2:4, 4:8, 4:8] = 2
    write(root / "c1_image.nii.gz", image, spacing=(1.5, 1.5, 2.0))
    write(root / "c1_label.nii.gz", label, spacing=(1.5, 1.5, 2.0))
    write(root / "organs" / "c1" / "liver.nii.gz", label > 0, spacing=(1.5, 1.5, 2.0))
    return discover_cases(root, organ="liver")[0]


def test_cache_hit_is_identical_and_source_changes_invalidate(tmp_path):
    case = _tiny_case(tmp_path / "ds")
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return P.resample_case(*args, **kwargs)

    cache = P.PreprocessedCache(tmp_path / "cache", resample_fn=counting)
    first = cache.load(case, window=(-48.0, 163.0))
    second = cache.load(case, window=(-48.0, 163.0))
    assert len(calls) == 1 and first.image.array.dtype == np.float16 and second.label.array.dtype == np.uint8
    for a, b in zip(first.__dict__.values(), second.__dict__.values(), strict=False):
        assert np.array_equal(a.array, b.array) and np.allclose(a.ijk_to_ras, b.ijk_to_ras)
    assert (cache.folder(case, (-48.0, 163.0)) / "meta.json").is_file()

    stat = case.image.stat()
    os.utime(case.image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: still valid
    cache.load(case, window=(-48.0, 163.0))
    assert len(calls) == 1
    _tiny_case(tmp_path / "ds", value=90)  # new voxels
    third = cache.load(case, window=(-48.0, 163.0))
    assert len(calls) == 2 and float(third.image.array.max()) == 90.0 and float(first.image.array.max()) == 40.0
    cache.load(case, window=(-39.0, 204.0))  # other settings: another entry
    assert len(calls) == 3


def test_cache_out_of_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    case = _tiny_case(tmp_path / "ds")
    root = tmp_path / "cache"
    cache = P.PreprocessedCache(root)
    real_save = np.save
    written = []

    def full_disk(stream, array, **kwargs):
        if written:  # the image array fits, the label does not
            stream.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(1)
        return real_save(stream, array, **kwargs)

    monkeypatch.setattr(P.np, "save", full_disk)
    with pytest.raises(InputError) as info:
        cache.load(case, window=(-48.0, 163.0))
    assert "no space left" in str(info.value) and str(root) in str(info.value)
    assert [p for p in root.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(P.np, "save", real_save)
    assert cache.load(case, window=(-48.0, 163.0)).label.array.sum() > 0


# ------------------------------------------------------------------------------------------------ transforms
def _arrays(shape=(40, 48, 44), tumour_at=(30, 10, 12)) -> dict:
    rng = np.random.default_rng(1)
    image = rng.normal(60.0, 30.0, shape).astype(np.float32)
    image[:, :3] = -1000.0  # air, removed by the foreground crop
    label = np.zeros(shape, np.float32)
    organ = np.zeros(shape, np.float32)
    d, h, w = tumour_at
    organ[d - 6 : d + 6, h - 6 : h + 6, w - 6 : w + 6] = 1
    label[d - 2 : d + 2, h - 2 : h + 2, w - 2 : w + 2] = 1
    return {"image": image[None], "label": label[None], "organ": organ[None]}


@pytest.mark.parametrize("task", ["kits", "pancreas"])
def test_train_transforms_give_binary_crops(task):
    from tagseg.data import transforms as T

    assert T.pad_size(128) == 154 and T.pad_size(32) == 38
    pipeline = T.train_transforms(task, crop=32)
    names = [type(t).__name__ for t in pipeline.transforms]
    expected_aug = ["RandRotated", "RandZoomd"] if task == "pancreas" else ["RandZoomd"]
    assert names == [
        "ScaleIntensityRanged",
        "RandShiftIntensityd",
        "CropForegroundd",
        "NormalizeIntensityd",
        *expected_aug,
        "BinariseMasksd",
        "SpatialPadd",
        "RandCropByPosNegLabeld",
        "RandSpatialCropd",
        "RandFlipd",
        "RandFlipd",
        "RandFlipd",
        "RandRotate90d",
    ]
    crop = pipeline.transforms[names.index("RandCropByPosNegLabeld")]
    assert tuple(crop.cropper.spatial_size) == (38, 38, 38) and crop.cropper.pos_ratio == 2 / 3
    for seed in range(3):
        pipeline.set_random_state(seed=seed)
        out = T.first_sample(pipeline(_arrays()))
        for key in ("image", "label", "organ"):
            assert tuple(out[key].shape) == (1, 32, 32, 32)
        assert set(np.unique(np.asarray(out["label"]))) <= {0.0, 1.0}
        assert set(np.unique(np.asarray(out["organ"]))) <= {0.0, 1.0}


def test_val_crop_is_centred_on_tumour():
    from tagseg.data import transforms as T

    pipeline = T.val_transforms("lits", crop=16)
    for seed in range(4):
        pipeline.set_random_state(seed=seed)
        out = T.first_sample(pipeline(_arrays(tumour_at=(34, 40, 6))))
        assert tuple(out["image"].shape) == (1, 16, 16, 16) and float(out["label"].sum()) > 0


def test_zscore_uses_the_task_statistics():
    from tagseg.data import transforms as T

    image = np.array([-1000.0, 0.0, 60.057533, 500.0], np.float32).reshape(1, 1, 1, 4)
    masks = np.array([0.0, 0.2, 0.7, 1.0], np.float32).reshape(1, 1, 1, 4)
    out = T.test_transforms("lits")({"image": image, "label": masks, "organ": masks})
    expected = (np.clip(image, -48.0, 163.0) - 60.057533) / 40.198017
    assert np.allclose(np.asarray(out["image"]), expected, atol=1e-5)
    assert np.array_equal(np.asarray(out["label"]).ravel(), [0, 0, 1, 1])
    custom = T.test_transforms({"window": [0.0, 100.0], "mean": 50.0, "std": 10.0})({"image": image})
    assert np.allclose(np.asarray(custom["image"]).ravel(), [-5.0, -5.0, 1.0057533, 5.0], atol=1e-5)
    with pytest.raises(InputError, match="unknown task"):
        T.test_transforms("brats")


# ------------------------------------------------------------------------------------------------ synthetic + loader
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synth") / "Task99", cases=3, seed=5, organ="pancreas", **SMALL
    )


def test_synthetic_dataset_is_discovered_checked_and_reproducible(synthetic, tmp_path):
    cases = discover_cases(synthetic, layout="msd")  # organ "auto" = dataset.json label 1
    assert ids(cases) == ["pancreas_000", "pancreas_001", "pancreas_002"]
    check_cases(cases)
    meta = json.loads((synthetic / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"0": "background", "1": "pancreas", "2": "tumour"}
    details = meta["tagseg"]["cases"]
    assert {d["tumour_organ"] for d in details} == {"pancreas"}
    assert len({d["contrast_hu"] for d in details}) == 3 and len({d["radius_mm"] for d in details}) == 3
    suggested = dataset_intensity(synthetic)  # foreground percentiles, for a custom task
    assert suggested["window"][0] < suggested["mean"] < suggested["window"][1] and suggested["std"] > 0
    image, label, organ = load_case(cases[0])
    assert image.shape_kji == SMALL["shape_kji"] and set(np.unique(label.array)) == {0, 1, 2}
    assert np.all(organ.array[label.array == 2] == 1)  # the tumour lies inside the organ mask
    again = write_synthetic_dataset(tmp_path / "again", cases=1, seed=5, organ="pancreas", **SMALL)
    assert np.array_equal(load_volume(again / "imagesTr" / "pancreas_000.nii.gz").array, image.array)
    kidney = write_synthetic_dataset(tmp_path / "kidney", cases=1, seed=1, organ="kidney", **SMALL)
    [kcase] = discover_cases(kidney)
    assert kcase.organ_masks[0].name == "kidney.nii.gz"
    assert json.loads((kidney / "dataset.json").read_text(encoding="utf-8"))["tagseg"]["cases"][0][
        "tumour_organ"
    ].startswith("kidney_")


def test_training_dataset_and_loader(synthetic, tmp_path):
    import torch

    from tagseg.data import transforms as T
    from tagseg.data.loader import TrainingDataset, make_loader, start_epoch

    cases = discover_cases(synthetic)
    cache = P.PreprocessedCache(tmp_path / "cache")
    intensity = {"window": [-39.0, 204.0], "mean": 68.45214, "std": 63.422806}

    def dataset(seed=0):
        return TrainingDataset(cases, cache, T.train_transforms("pancreas", crop=16), intensity, seed=seed)

    a, b = dataset(), dataset()
    sample = a[1]
    assert sample["case_id"] == "pancreas_001"
    assert {k: tuple(v.shape) for k, v in sample.items() if k != "case_id"} == {
        k: (1, 16, 16, 16) for k in ("image", "label", "organ")
    }
    assert sample["image"].dtype == torch.float32 and type(sample["image"]) is torch.Tensor
    assert torch.equal(sample["image"], b[1]["image"])  # same seed, same augmentation
    b.set_epoch(1)
    assert not torch.equal(sample["image"], b[1]["image"])  # a new epoch, new augmentation
    ranks = [make_loader(dataset(), workers=0, distributed=True, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    seen = []
    for loader in ranks:
        start_epoch(loader, 0)
        for batch in loader:
            assert tuple(batch["image"].shape) == (1, 1, 16, 16, 16)
            seen += batch["case_id"]
    assert sorted(set(seen)) == ids(cases)  # the two ranks cover every case


@pytest.mark.skipif(
    not (SHARED_DATA / "ct_organs" / "example_seg.nii.gz").is_file(),
    reason="../shared/data/ct_organs is not available on this machine",
)
def test_tumours_inserted_into_a_real_ct(tmp_path):
    folder = SHARED_DATA / "ct_organs"
    out = insert_into_ct(
        folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz", tmp_path / "ct", cases=2, seed=0, organ="liver"
    )
    cases = discover_cases(out, layout="msd")
    check_cases(cases)
    source = load_volume(folder / "example_ct_sm.nii.gz")
    for case in cases:
        image, label, organ = load_case(case)
        tumour = label.array == 2
        assert tumour.any() and np.all(organ.array[tumour] == 1)
        assert image.same_grid(source) and not np.array_equal(image.array, source.array)
