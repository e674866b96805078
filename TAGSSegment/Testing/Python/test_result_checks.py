"""Honest results: each named warning fires on a mask that deserves it and stays quiet on a plausible one.

The checker runs on generated masks and prompts (no model); one Session test with a scripted backend
shows the warnings reaching `predict`'s result, and the CLI tests (test_cli.py) their printing.
"""

import numpy as np
import pytest

from tagseg.backends.base import Backend
from tagseg.checks import Crop, ResultWarning, check_result, prompt_span_mm
from tagseg.session import Session
from tagseg.synth import make_phantom
from tagseg.volume import Volume, make_ijk_to_ras

SPACING = (1.0, 1.0, 2.0)  # i, j, k in mm
SHAPE = (40, 96, 96)  # k, j, i
MATRIX = make_ijk_to_ras(SPACING, (0.0, 0.0, 0.0))
SPACING_KJI = np.array(SPACING[::-1])


def ball(centre_kji, radius_mm, shape=SHAPE, spacing_kji=SPACING_KJI) -> np.ndarray:
    grid = np.indices(shape).reshape(3, -1).T
    inside = np.linalg.norm((grid - np.asarray(centre_kji)) * spacing_kji, axis=1) <= radius_mm
    return inside.reshape(shape).astype(np.uint8)


def codes(mask, include=(), boxes=(), crops=(), matrix=MATRIX):
    return [w.code for w in check_result(mask, matrix, np.asarray(include, float).reshape(-1, 3), boxes, crops)]


CENTRE = (20, 48, 48)


def test_a_compact_lesion_with_clicks_inside_gets_no_warning():
    mask = ball(CENTRE, 12.0)
    clicks = [(20, 48, 48), (20, 40, 52), (22, 52, 44)]
    assert codes(mask, clicks) == []
    box = [(np.array([14.0, 35, 35]), np.array([26.0, 61, 61]))]
    assert codes(mask, (), box) == []


def test_empty_result():
    warnings = check_result(np.zeros(SHAPE, np.uint8), MATRIX, [CENTRE], ())
    assert [w.code for w in warnings] == ["empty"]
    assert "\n" not in warnings[0].message and "empty" in warnings[0].message


def test_a_few_voxels_at_one_click_are_tiny():
    mask = np.zeros(SHAPE, np.uint8)
    mask[20, 47:50, 47:50] = 1  # 9 voxels, 0.018 ml: the spleen case of issue 16
    assert codes(mask, [CENTRE]) == ["tiny"]
    assert codes(ball(CENTRE, 3.0), [CENTRE]) == []  # a 6 mm nodule is a plausible target


def test_a_result_far_smaller_than_the_span_of_the_clicks():
    clicks = [(20, 48, 20), (20, 48, 76)]  # 56 mm apart
    small = ball((20, 48, 20), 6.0) | ball((20, 48, 76), 6.0)  # each click kept, little in between
    found = codes(small, clicks)
    assert "small" in found and "tiny" not in found
    # the same clicks on a lesion that spans them: no warning
    assert "small" not in codes(ball((20, 48, 48), 30.0), clicks)
    # a box is a span too: a 60 mm box holding a 4 mm-radius result
    box = [(np.array([10.0, 18, 18]), np.array([30.0, 78, 78]))]
    assert "small" in codes(ball(CENTRE, 4.0), (), box)


def test_the_threshold_follows_the_geometry_of_a_lesion_holding_the_clicks():
    """An ellipsoid S x S/3 x S/3 through both clicks passes; S x S/6 x S/6 (a needle) is flagged."""
    clicks = np.array([(20, 48, 18), (20, 48, 78)], float)  # S = 60 mm along i
    grid = np.indices(SHAPE).reshape(3, -1).T * SPACING_KJI
    centre = np.array(CENTRE) * SPACING_KJI

    def ellipsoid(minor_fraction):
        semi = np.array([30 * minor_fraction, 30 * minor_fraction, 31.0])  # k, j, i mm
        return (np.sum(((grid - centre) / semi) ** 2, axis=1) <= 1).reshape(SHAPE).astype(np.uint8)

    assert "small" not in codes(ellipsoid(1 / 3), clicks)
    assert "small" in codes(ellipsoid(1 / 6), clicks)


def test_a_result_leaking_along_a_thin_structure():
    mask = ball(CENTRE, 6.0)
    mask[20, 48, 48:96] = 1  # a one-voxel tendril running 48 mm to the image edge
    mask[20, 47:50, 60:95] = 1
    found = codes(mask, [CENTRE])
    assert "leak" in found
    # clicked at both ends, the same shape is what the user asked for
    assert "leak" not in codes(mask, [CENTRE, (20, 48, 90)])


def test_touching_the_volume_edge_names_the_side():
    mask = ball((38, 48, 48), 8.0)  # runs out through the last slice (k = 39: superior)
    warnings = check_result(mask, MATRIX, [(38, 48, 48)], ())
    assert [w.code for w in warnings] == ["volume_border"]
    assert "superior" in warnings[0].message
    flipped = MATRIX.copy()
    flipped[:3, 2] *= -1  # k now runs inferior: the same voxels are the inferior edge
    assert "inferior" in check_result(mask, flipped, [(38, 48, 48)], ())[0].message
    # a single-slice image has no edge along k
    flat = np.zeros((1, 96, 96), np.uint8)
    flat[0, 40:56, 40:56] = 1
    assert codes(flat, [(0, 48, 48)]) == []


def test_reaching_the_edge_of_the_model_crop():
    crop_matrix = make_ijk_to_ras((1.5, 1.5, 1.5), (24.0, 24.0, 10.0))  # 32^3 crop at 1.5 mm: 24..72 mm in-plane
    crop = Crop(crop_matrix, (32, 32, 32))
    inside = ball(CENTRE, 10.0)
    assert codes(inside, [CENTRE], crops=[crop]) == []
    cut = ball(CENTRE, 30.0)
    cut[:, :, :24] = 0
    cut[:, :, 72:] = 0  # what a crop 24..72 mm wide leaves of a larger lesion
    cut[:, :24] = 0
    cut[:, 72:] = 0
    assert "crop_border" in codes(cut, [CENTRE], crops=[crop])
    assert "crop_border" not in codes(cut, [CENTRE])  # whole volume seen: no crop
    # two overlapping crops: the seam between them is not an edge
    left = Crop(make_ijk_to_ras((1.5, 1.5, 1.5), (0.0, 24.0, 10.0)), (32, 32, 32))
    right = Crop(make_ijk_to_ras((1.5, 1.5, 1.5), (36.0, 24.0, 10.0)), (32, 32, 32))
    wide = np.zeros(SHAPE, np.uint8)
    wide[18:23, 40:56, 10:80] = 1  # i 10..80 mm: inside the union 0..84, across the seam at 48
    assert "crop_border" not in codes(wide, [(20, 48, 20), (20, 48, 70)], crops=[left, right])
    assert "crop_border" in codes(wide, [(20, 48, 20), (20, 48, 70)], crops=[left])


def test_prompt_span_counts_points_and_boxes():
    assert prompt_span_mm(np.array([[0, 0, 0], [0, 0, 30]], float), [], SPACING_KJI) == pytest.approx(30)
    assert prompt_span_mm(np.array([[0, 0, 0], [5, 0, 0]], float), [], SPACING_KJI) == pytest.approx(10)
    box = [(np.array([0.0, 0, 0]), np.array([2.0, 40, 10]))]
    assert prompt_span_mm(np.zeros((0, 3)), box, SPACING_KJI) == pytest.approx(40)


def test_warnings_round_trip_as_dicts():
    w = ResultWarning("tiny", "the result is tiny")
    assert ResultWarning.from_dict(w.to_dict()) == w and str(w) == "the result is tiny"


# ---- through the Session -------------------------------------------------------------------------------
class ScriptedBackend(Backend):
    """Returns a given mask and reports progress once per 'slice' (the hook the default backend uses)."""

    name = "scripted-checks"

    def __init__(self):
        super().__init__()
        self.mask = None

    def set_image(self, volume):
        self.shape = volume.shape_kji

    def predict(self, prompts):
        for done in range(3):
            self.report_progress("slices", done + 1, 3)
        return self.mask.copy()


@pytest.fixture()
def scripted(register_backend):
    return register_backend(ScriptedBackend())


def test_session_returns_the_warnings_with_the_result_and_reports_progress(scripted):
    volume = Volume(np.zeros(SHAPE, np.int16), MATRIX, "zeros")
    calls = []
    session = Session(volume, model=ScriptedBackend.name, device="cpu", progress=lambda *a: calls.append(a))
    try:
        centre_ras = volume.kji_to_ras([CENTRE])[0]
        session.add_point(centre_ras)
        scripted.mask = np.zeros(SHAPE, np.uint8)
        result = session.predict()
        assert [w.code for w in result.meta["warnings"]] == ["empty"] == [w.code for w in session.warnings]
        assert all(isinstance(w, ResultWarning) for w in result.meta["warnings"])
        assert ("load_model", 1, 1) in calls and calls[-3:] == [("slices", 1, 3), ("slices", 2, 3), ("slices", 3, 3)]
        assert scripted.progress is None  # the hook is only set during the call
        session.add_point(centre_ras + (0, 0, 2))  # new prompts: a new prediction
        scripted.mask = ball(CENTRE, 10.0)
        calls.clear()
        other = []
        assert session.predict(progress=lambda *a: other.append(a)).meta["warnings"] == []
        assert other == [("slices", 1, 3), ("slices", 2, 3), ("slices", 3, 3)] and calls == []
        session.undo()  # the cached empty result keeps its warning
        assert [w.code for w in session.predict().meta["warnings"]] == ["empty"]
    finally:
        session.close()


def test_a_real_phantom_lesion_segmented_from_its_label_passes_the_checks():
    """The phantom's own label, clicked on three of its voxels, is what a good result looks like."""
    phantom = make_phantom(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
    label = np.asarray(phantom.label.array)
    voxels = np.argwhere(label > 0)
    clicks = voxels[np.random.default_rng(0).choice(len(voxels), 3, replace=False)]
    assert codes(label, clicks, matrix=phantom.label.ijk_to_ras) == []
