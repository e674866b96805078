"""Evaluation metrics against hand-computed values and MONAI, and the per-case protocol."""
import csv
import math

import numpy as np
import pytest

from tagseg.evaluate import (CaseResult, draw_clicks, dice, evaluate_case, summarise, surface_dice,
                             write_results_csv)
from tagseg.volume import Volume, make_ijk_to_ras


def cubes():
    truth = np.zeros((4, 4, 4), bool)
    truth[1:3, 1:3, 1:3] = True
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 2:4] = True          # shifted one voxel along i
    return pred, truth


def test_dice_and_nsd_on_a_hand_computed_case():
    pred, truth = cubes()
    assert dice(pred, truth) == 0.5                                   # 2*4 / (8 + 8)
    # every voxel of a 2x2x2 cube is a boundary voxel; the shifted half lies 1 mm away
    assert surface_dice(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=5.0) == 1.0
    assert surface_dice(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=0.5) == 0.5    # (4 + 4) / 16
    # 3 mm voxels along i: the shifted half is 3 mm away
    assert surface_dice(pred, truth, (1.0, 1.0, 3.0), tolerance_mm=2.9) == 0.5
    assert surface_dice(pred, truth, (1.0, 1.0, 3.0), tolerance_mm=3.0) == 1.0


def test_empty_masks():
    pred, truth = cubes()
    empty = np.zeros_like(truth)
    assert dice(empty, truth) == 0.0 and dice(empty, empty) == 1.0
    assert surface_dice(empty, truth, (1, 1, 1)) == 0.0
    assert math.isnan(surface_dice(empty, empty, (1, 1, 1)))


def test_surface_dice_matches_monai_on_random_shapes():
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(3):
        a = ndimage.binary_dilation(rng.random((16, 24, 24)) > 0.995, iterations=3)
        b = ndimage.binary_dilation(rng.random((16, 24, 24)) > 0.995, iterations=2) | (a & (rng.random(a.shape) > 0.3))
        spacing = (2.5, 0.8, 0.8)
        ref = metrics.compute_surface_dice(torch.tensor(a)[None, None].float(), torch.tensor(b)[None, None].float(),
                                           class_thresholds=[5.0], spacing=spacing, include_background=True)
        assert surface_dice(a, b, spacing) == pytest.approx(float(ref), abs=1e-6)


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
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["dice"] == "0.500000" and rows[1]["dice"] == "" and rows[0]["model"] == "m"
    assert not list(tmp_path.glob(".*.part"))


def test_clicks_are_seeded():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[2:5, 1:4, 2:6] = 1
    label = Volume(truth, make_ijk_to_ras((1.0, 2.0, 3.0), (5.0, 0.0, -2.0)), "l", {})
    a = draw_clicks(label, 3, np.random.default_rng(2))
    b = draw_clicks(label, 3, np.random.default_rng(2))
    assert np.array_equal(a, b)


def test_evaluate_command_reproduces_hand_computed_numbers(tmp_path, capsys, monkeypatch):
    """`tagseg evaluate` end to end on a tiny known case with a model that always answers the shifted cube."""
    from tagseg import backends, cli
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
    code = cli.main(["evaluate", "--data", str(data), "--model", "shifted-cube", "--out", str(out), "--device", "cpu",
                     "--clicks", "3", "--seed", "2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rows = {r["case_id"]: r for r in csv.DictReader(out.open())}
    assert rows["case1"]["dice"] == "0.500000" and rows["case1"]["nsd"] == "1.000000"
    assert rows["case2"]["dice"] == "" and "no tumour" in rows["case2"]["note"]
    assert "1 cases scored (1 skipped): Dice 0.5000 ± 0.0000, NSD@5mm 1.0000 ± 0.0000" in printed.out
