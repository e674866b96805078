"""Evaluation metrics against hand-computed values and MONAI, and the per-case protocol."""

import csv
import math
import warnings

import numpy as np
import pytest

from tagseg.evaluate import (
    CaseResult,
    dice,
    draw_clicks,
    evaluate_case,
    summarise,
    surface_dice,
    surface_distances,
    write_results_csv,
)
from tagseg.volume import Volume, make_ijk_to_ras


def cubes():
    truth = np.zeros((4, 4, 4), bool)
    truth[1:3, 1:3, 1:3] = True
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 2:4] = True  # shifted one voxel along i
    return pred, truth


def test_dice_and_nsd_on_a_hand_computed_case():
    pred, truth = cubes()
    assert dice(pred, truth) == 0.5  # 2*4 / (8 + 8)
    # the surfaces lie at most 1 mm apart, so a 5 mm tolerance accepts all of both
    assert surface_dice(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=5.0) == 1.0
    assert surface_dice(truth, truth, (2.0, 0.7, 0.7), tolerance_mm=0.0) == 1.0


def single_voxel(shape, at):
    mask = np.zeros(shape, bool)
    mask[at] = True
    return mask


def test_nsd_single_voxels_by_hand():
    """A voxel's surface is 8 corner triangles (an octahedron through its face centres), each of area
    sqrt(a²b² + b²c² + c²a²) / 8 for spacing (a, b, c): 3 mm² in all at (2, 1, 1) mm. Two voxels two
    slices apart (4 mm): each has 4 triangles 2 mm from the other's nearest ones and 4 at 4 mm."""
    spacing = (2.0, 1.0, 1.0)
    a, b = single_voxel((7, 3, 3), (2, 1, 1)), single_voxel((7, 3, 3), (4, 1, 1))
    s = surface_distances(a, b, spacing)
    assert s["areas_pred"].sum() == pytest.approx(3.0) and s["areas_truth"].sum() == pytest.approx(3.0)
    assert len(s["areas_pred"]) == 8 and np.allclose(s["areas_pred"], 3.0 / 8)
    assert sorted(s["pred_to_truth"]) == pytest.approx([2.0] * 4 + [4.0] * 4)
    assert surface_dice(a, b, spacing, tolerance_mm=1.9) == 0.0
    assert surface_dice(a, b, spacing, tolerance_mm=2.0) == pytest.approx(0.5)
    assert surface_dice(a, b, spacing, tolerance_mm=3.9) == pytest.approx(0.5)
    assert surface_dice(a, b, spacing, tolerance_mm=4.0) == pytest.approx(1.0)


def test_nsd_weights_surface_elements_by_area():
    """Truth: two voxels along i; prediction: the first one (1 mm voxels). The truth's surface: 8 corner
    triangles (sqrt(3)/8 mm² each) and, between the voxels, 4 rectangles of 1 x sqrt(2)/2 mm; the
    prediction's: 8 corner triangles. Within 0.5 mm: everything but the truth's far 4 triangles, which
    lie 1 mm away. Area-weighted: (1.5 sqrt3 + 2 sqrt2) / (2 sqrt3 + 2 sqrt2) = 0.8624; counting
    boundary voxels instead would give 2/3."""
    truth = np.zeros((3, 3, 4), bool)
    truth[1, 1, 1:3] = True
    pred = single_voxel(truth.shape, (1, 1, 1))
    r3, r2 = math.sqrt(3), math.sqrt(2)
    s = surface_distances(pred, truth, (1.0, 1.0, 1.0))
    assert s["areas_truth"].sum() == pytest.approx(r3 + 2 * r2) and s["areas_pred"].sum() == pytest.approx(r3)
    expected = (1.5 * r3 + 2 * r2) / (2 * r3 + 2 * r2)
    assert surface_dice(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=0.5) == pytest.approx(expected)
    assert expected == pytest.approx(0.8624, abs=1e-4)
    assert surface_dice(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=1.0) == pytest.approx(1.0)


def test_empty_masks():
    pred, truth = cubes()
    empty = np.zeros_like(truth)
    assert dice(empty, truth) == 0.0 and dice(empty, empty) == 1.0
    assert surface_dice(empty, truth, (1, 1, 1)) == 0.0
    assert surface_dice(truth, empty, (1, 1, 1)) == 0.0
    assert math.isnan(surface_dice(empty, empty, (1, 1, 1)))


def ellipsoid_pairs(count=10, seed=0):
    """Pairs of overlapping, differently shaped ellipsoids on anisotropic grids (CT-like spacings)."""
    rng = np.random.default_rng(seed)
    spacings = [
        (2.5, 0.8, 0.8),
        (5.0, 0.7, 0.7),
        (3.0, 1.5, 0.6),
        (1.0, 1.0, 1.0),
        (0.8, 2.0, 3.0),
        (2.0, 0.9, 1.3),
        (4.0, 0.6, 0.9),
        (1.5, 3.0, 1.5),
        (0.7, 0.7, 2.5),
        (3.0, 2.5, 1.5),
    ]
    shape = (36, 44, 52)
    grid = np.indices(shape).astype(float)
    for n in range(count):
        spacing = spacings[n % len(spacings)]
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
        radii = rng.uniform(8, 18, 3)

        def ellipsoid(c, r):
            return sum(((grid[a] - c[a]) * spacing[a] / r[a]) ** 2 for a in range(3)) <= 1.0  # noqa: B023 (runs within this iteration)

        truth = ellipsoid(centre, radii)
        pred = ellipsoid(centre + rng.uniform(-2.5, 2.5, 3), radii * rng.uniform(0.75, 1.25, 3))
        yield pred, truth, spacing


def test_surface_dice_matches_monai_area_weighted_nsd_on_anisotropic_pairs():
    """Agreement with MONAI's area-weighted NSD (use_subvoxels=True, its port of DeepMind's method) on 10
    pairs at 2 and 5 mm; measured: identical to 1e-6. Counting boundary voxels reads lower."""
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    worst, voxel_gap = 0.0, 0.0
    for pred, truth, spacing in ellipsoid_pairs(10):
        for tolerance in (2.0, 5.0):
            args = (torch.tensor(pred)[None, None].float(), torch.tensor(truth)[None, None].float())
            kwargs = dict(class_thresholds=[tolerance], spacing=spacing, include_background=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                area = float(metrics.compute_surface_dice(*args, use_subvoxels=True, **kwargs))
                voxels = float(metrics.compute_surface_dice(*args, use_subvoxels=False, **kwargs))
            ours = surface_dice(pred, truth, spacing, tolerance)
            worst = max(worst, abs(ours - area))
            voxel_gap = max(voxel_gap, abs(ours - voxels))
    assert worst <= 0.005, worst
    assert voxel_gap > 0.01  # the metric this replaced differs measurably


def test_surface_dice_equals_deepminds_surface_distance():
    """The authors call DeepMind's package; where it is installed, the numbers are the same."""
    sd = pytest.importorskip("surface_distance")
    for pred, truth, spacing in ellipsoid_pairs(4, seed=1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its scipy.ndimage.filters imports are deprecated
            theirs = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(truth, pred, spacing), 2.0)
        assert surface_dice(pred, truth, spacing, 2.0) == pytest.approx(float(theirs), abs=1e-9)


def test_case_protocol_draws_clicks_from_the_tumour_and_skips_empty_cases(tmp_path):
    pred, truth = cubes()
    image = Volume(np.zeros((4, 4, 4), np.int16), make_ijk_to_ras((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), "img", {})
    label = image.with_array(truth.astype(np.uint8))
    rng = np.random.default_rng(2)
    seen = []

    def predict(volume, clicks):
        seen.append(clicks)
        return pred.astype(np.uint8)

    result = evaluate_case("c1", image, label, predict, clicks=3, rng=rng)
    assert len(seen[0]) == 3 and all(truth[tuple(np.round(label.ras_to_kji(p)[0]).astype(int))] for p in seen[0])
    assert (result.dice, result.nsd) == (0.5, 1.0)
    skipped = evaluate_case("c2", image, image.with_array(np.zeros((4, 4, 4), np.uint8)), predict, 3, rng)
    assert skipped.dice is None and "no tumour" in skipped.note
    summary = summarise([result, skipped])
    assert (summary.scored, summary.skipped, summary.dice_mean) == (1, 1, 0.5)
    out = tmp_path / "results.csv"
    write_results_csv([result, skipped], out, extra={"model": "m", "seed": 2})
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert rows[0]["dice"] == "0.500000" and rows[1]["dice"] == "" and rows[0]["model"] == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no partial file


def test_clicks_are_seeded():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[2:5, 1:4, 2:6] = 1
    label = Volume(truth, make_ijk_to_ras((1.0, 2.0, 3.0), (5.0, 0.0, -2.0)), "l", {})
    a = draw_clicks(label, 3, np.random.default_rng(2))
    b = draw_clicks(label, 3, np.random.default_rng(2))
    assert np.array_equal(a, b)


def test_evaluate_command_reproduces_hand_computed_numbers(tmp_path, capsys, monkeypatch):
    """`tagseg evaluate` end to end on a tiny known case with a model that always answers the shifted cube."""
    from tagseg import backends, commands
    from tagseg.backends.base import Backend
    from tagseg.io import save_volume

    pred, truth = cubes()

    class ShiftedCube(Backend):
        name = "shifted-cube"

        def set_image(self, volume):
            self.shape = volume.shape_kji

        def predict(self, prompts):
            return pred.astype(np.uint8)

    monkeypatch.setitem(backends.BACKENDS, "shifted-cube", lambda device, options: ShiftedCube())
    data = tmp_path / "data"
    data.mkdir()
    grid = make_ijk_to_ras((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    save_volume(Volume(np.zeros((4, 4, 4), np.int16), grid, "img", {}), data / "case1_image.nii.gz")
    save_volume(Volume((truth * 2).astype(np.uint8), grid, "lab", {}), data / "case1_label.nii.gz")
    save_volume(Volume(np.zeros((4, 4, 4), np.uint8), grid, "lab", {}), data / "case2_image.nii.gz")
    save_volume(Volume(np.zeros((4, 4, 4), np.uint8), grid, "lab", {}), data / "case2_label.nii.gz")
    out = tmp_path / "results.csv"
    code = commands.main(
        [
            "evaluate",
            "--data",
            str(data),
            "--model",
            "shifted-cube",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--clicks",
            "3",
            "--seed",
            "2",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = {r["case_id"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert rows["case1"]["dice"] == "0.500000" and rows["case1"]["nsd"] == "1.000000"
    assert rows["case2"]["dice"] == "" and "no tumour" in rows["case2"]["note"]
    assert "1 cases scored (1 skipped): Dice 0.5000 ± 0.0000, NSD@5mm 1.0000 ± 0.0000" in printed.out


# ---- `tagseg evaluate --protocol paper` with a TAGS checkpoint ---------------------------------------------
def write_msd_case(root, case_id, image, label, organ=None):
    from tagseg.io import save_volume

    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    save_volume(image, root / "imagesTr" / f"{case_id}.nii.gz")
    save_volume(label, root / "labelsTr" / f"{case_id}.nii.gz")
    if organ is not None:
        (root / "organsTr" / case_id).mkdir(parents=True, exist_ok=True)
        save_volume(organ, root / "organsTr" / case_id / "liver.nii.gz")


def wide_case():
    """A 240 mm long phantom with two small tumours 210 mm apart: three clicks drawn from them span ~200 mm,
    far more than one tags-tiny crop (32 voxels at 1.5 mm = 48 mm)."""
    grid = make_ijk_to_ras((1.5, 1.5, 2.0), (0.0, 0.0, 0.0))
    image = np.full((12, 20, 160), -100, np.int16)
    label = np.zeros(image.shape, np.uint8)
    organ = np.zeros(image.shape, np.uint8)
    for i in (8, 148):
        image[4:8, 7:12, i - 2 : i + 3] = 60
        label[5:7, 8:11, i - 1 : i + 2] = 2
        organ[2:10, 4:16, i - 6 : i + 7] = 1
    vol = Volume(image, grid, "img", {})
    return vol, vol.with_array(label), vol.with_array(organ)


@pytest.fixture
def wide_dataset(tmp_path):
    import json

    root = tmp_path / "data"
    root.mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "liver", "2": "tumour"}}), encoding="utf-8"
    )
    image, label, organ = wide_case()
    write_msd_case(root, "wide_001", image, label, organ)
    return root


def click_spread_mm(row) -> float:
    points = np.array([[float(v) for v in p.split(",")] for p in row["clicks_ras"].split(";")])
    return float(np.max(points.max(0) - points.min(0)))


def test_paper_protocol_finishes_a_case_whose_clicks_span_200_mm(tiny_trained, wide_dataset, tmp_path, capsys):
    from tagseg import commands

    out = tmp_path / "results.csv"
    code = commands.main(
        [
            "evaluate",
            "--data",
            str(wide_dataset),
            "--model",
            str(tiny_trained.checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--clicks",
            "3",
            "--seed",
            "2",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    (row,) = list(csv.DictReader(out.open(encoding="utf-8")))
    assert click_spread_mm(row) >= 200.0  # the premise: far wider than one 48 mm crop
    assert row["error"] == "" and 0.0 <= float(row["dice"]) <= 1.0 and row["nsd"] != ""
    # one crop, fp32, the organ mask (as far as it reaches) in the third channel: the authors' test.py
    assert row["protocol"] == "paper" and row["requested_protocol"] == "paper"
    assert "crops=1" in row["inference"] and "precision=fp32" in row["inference"]
    assert "text_fusion=0.0" in row["inference"]
    assert "[paper]" in printed.err and "failed" not in printed.err


def test_extensions_are_recorded_per_case(tiny_trained, wide_dataset, tmp_path, capsys):
    from tagseg import commands

    out = tmp_path / "results.csv"
    code = commands.main(
        [
            "evaluate",
            "--data",
            str(wide_dataset),
            "--model",
            str(tiny_trained.checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--seed",
            "2",
            "--sliding-window",
            "--text-fusion",
            "0.2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    (row,) = list(csv.DictReader(out.open(encoding="utf-8")))
    assert row["protocol"].startswith("extended:") and "sliding window" in row["protocol"]
    assert "text fusion 0.2" in row["protocol"]


def test_a_failing_case_is_a_row_and_the_run_goes_on(tiny_trained, wide_dataset, tmp_path, capsys):
    from tagseg import commands
    from tagseg.io import save_volume

    image, label, organ = wide_case()
    # a label on another grid than its image: the prediction cannot be scored against it
    small = Volume(np.asarray(label.array)[:, :, :80].copy(), label.ijk_to_ras, "lab", {})
    write_msd_case(wide_dataset, "wide_002", image, small, organ)
    write_msd_case(wide_dataset, "wide_003", image, label, organ)
    (wide_dataset / "imagesTr" / "wide_004.nii.gz").write_bytes(b"not a volume")
    save_volume(label, wide_dataset / "labelsTr" / "wide_004.nii.gz")
    out = tmp_path / "results.csv"
    code = commands.main(
        [
            "evaluate",
            "--data",
            str(wide_dataset),
            "--model",
            str(tiny_trained.checkpoint),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--seed",
            "2",
        ]
    )
    printed = capsys.readouterr()
    assert code == 3, printed.err
    rows = {r["case_id"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    assert list(rows) == ["wide_001", "wide_002", "wide_003", "wide_004"]
    assert rows["wide_001"]["error"] == "" and rows["wide_003"]["error"] == "" and rows["wide_003"]["dice"] != ""
    assert "shape" in rows["wide_002"]["error"] and rows["wide_002"]["dice"] == ""
    assert rows["wide_004"]["error"] and rows["wide_004"]["dice"] == ""
    assert "2 of 4 cases failed" in printed.err
    assert "2 cases scored (0 skipped, 2 failed)" in printed.out


def test_results_are_written_as_each_case_finishes(tmp_path):
    from tagseg.evaluate import ResultsWriter

    out = tmp_path / "r.csv"
    pred, truth = cubes()
    with ResultsWriter(out, {"model": "m"}) as writer:
        writer.write(CaseResult("a", 0.5, 1.0, 8, 8, 0.1, protocol="paper"))
        rows = list(csv.DictReader(out.open(encoding="utf-8")))  # readable before the run ends
        assert [r["case_id"] for r in rows] == ["a"] and rows[0]["protocol"] == "paper"
