"""The default model's generalisation rules: intensity normalisation of masked MR, the corrective-click
simulation, and corrections that edit the previous result locally (real LiteMedSAM weights)."""

import numpy as np
import pytest

from tagseg import intensity
from tagseg.corrective import next_corrective_click


def test_constant_background_is_left_out_of_mr_percentiles():
    rng = np.random.default_rng(0)
    brain = rng.normal(0.0, 1.0, (20, 40, 40)).astype(np.float32)
    brain[8:12, 15:25, 15:25] += 4.0  # a bright lesion
    zscored = np.full((20, 80, 80), brain.min(), np.float32)  # skull-stripped: the fill is the minimum
    zscored[:, 20:60, 20:60] = brain
    assert intensity.constant_background(zscored.ravel()) == pytest.approx(float(brain.min()))
    out = intensity.normalise(zscored, intensity.PERCENTILE)
    lo, hi = np.percentile(brain[brain != brain.min()], [0.5, 99.5])  # the fill value itself is left out
    inside = out[:, 20:60, 20:60]
    assert np.allclose(inside, np.clip((brain - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert out[0, 0, 0] == 0.0  # the fill is black, not mid-grey
    # the same brain shifted to raw positive values, no fill: identical normalised brain
    raw = (brain * 100 + 1000).astype(np.float32)
    assert intensity.constant_background(raw.ravel()) is None
    assert np.allclose(intensity.normalise(raw, intensity.PERCENTILE), inside, atol=1e-4)


def test_corrective_click_goes_to_the_innermost_voxel_of_the_larger_error():
    truth = np.zeros((9, 30, 30), bool)
    truth[2:7, 5:25, 5:25] = True
    pred = np.zeros_like(truth)
    pred[2:7, 5:25, 5:15] = True  # misses the right half
    kji, positive = next_corrective_click(pred, truth, (2.0, 1.0, 1.0))
    assert positive and pred[tuple(kji.astype(int))] == 0 and truth[tuple(kji.astype(int))]
    assert 18 <= kji[2] <= 21 and kji[0] == 4
    leak = truth.copy()
    leak[2:7, 25:30, 5:25] = True  # leaks past the right border
    kji, positive = next_corrective_click(leak, truth, (2.0, 1.0, 1.0))
    assert not positive and leak[tuple(kji.astype(int))] and not truth[tuple(kji.astype(int))]
    assert next_corrective_click(truth, truth, (1.0, 1.0, 1.0)) is None


PHANTOM = dict(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))


@pytest.fixture(scope="module")
def phantom_session(shared_backend):
    from tagseg import Session
    from tagseg.synth import make_phantom

    phantom = make_phantom(**PHANTOM)
    label = np.asarray(phantom.label.array) > 0
    clicks = [
        phantom.image.kji_to_ras(v)[0]
        for v in np.argwhere(label)[np.random.default_rng(0).integers(0, int(label.sum()), size=3)]
    ]
    s = Session(phantom.image, model="litemedsam-3d", device="cpu")
    s.set_text(phantom.description)
    for p in clicks:
        s.add_point(p)
    first = np.asarray(s.predict().array) > 0
    yield phantom, s, first, clicks
    s.close()


def test_an_include_click_adds_and_keeps_everything_else(phantom_session):
    phantom, s, first, _ = phantom_session
    assert first.any()
    label = np.asarray(phantom.label.array) > 0
    outside = np.argwhere(~first & ~label)
    far = outside[np.argmax(np.linalg.norm(outside - np.argwhere(first).mean(0), axis=1))]
    s.add_point(phantom.image.kji_to_ras(far)[0], positive=True)
    try:
        after = np.asarray(s.predict().array) > 0
    finally:
        s.undo()
    assert after[tuple(far)]  # the clicked voxel is in
    assert np.all(after[first])  # nothing the first result held was lost


def test_an_exclude_click_only_removes(phantom_session):
    phantom, s, first, clicks = phantom_session
    kji = np.argwhere(first)
    click_z = {int(round(z)) for z in phantom.image.ras_to_kji(clicks)[:, 0]}
    candidates = [v for v in kji if int(v[0]) not in click_z] or list(kji)
    target = candidates[len(candidates) // 2]
    s.add_point(phantom.image.kji_to_ras(target)[0], positive=False)
    try:
        after = np.asarray(s.predict().array) > 0
    finally:
        s.undo()
    assert not np.any(after & ~first)  # nothing added
    assert after.sum() < first.sum() and not after[tuple(target)]


def test_corrections_can_be_switched_off(phantom_session, shared_backend):
    """incremental=False recomputes from all prompts: the same as giving them at once."""
    from tagseg import Session

    phantom, s, first, clicks = phantom_session
    label = np.asarray(phantom.label.array) > 0
    extra = phantom.image.kji_to_ras(np.argwhere(label)[0])[0]
    shared_backend.options.incremental = False
    try:
        s.add_point(extra, positive=True)
        try:
            stepwise = np.asarray(s.predict().array) > 0
        finally:
            s.undo()
        with Session(phantom.image, model="litemedsam-3d", device="cpu") as fresh:
            fresh.set_text(phantom.description)
            for p in clicks + [extra]:
                fresh.add_point(p)
            at_once = np.asarray(fresh.predict().array) > 0
    finally:
        shared_backend.options.incremental = True
    assert np.array_equal(stepwise, at_once)


def test_slices_a_correction_needs_are_encoded_while_the_user_looks(shared_backend):
    """After a result, the backend encodes the slices around it in the background (Session work_ahead, the
    default): an include correction then encodes fewer slices itself. Neither waiting for it nor cancelling it mid-way (an immediate click) changes
    a mask."""
    from tagseg import Session
    from tagseg.synth import make_phantom

    phantom = make_phantom(seed=1, shape_kji=(24, 64, 64), spacing_ijk=(2.0, 2.0, 1.5))  # thin slices
    label = np.asarray(phantom.label.array) > 0
    inside = np.argwhere(label)
    centre = inside[len(inside) // 2]
    net = shared_backend.net
    default = shared_backend.options.prefetch_slices
    runs = {}
    for mode in ("off", "immediate", "wait"):
        shared_backend.options.prefetch_slices = 16
        net.clear_cache()
        try:
            with Session(phantom.image, model="litemedsam-3d", device="cpu", work_ahead=mode != "off") as s:
                s.set_text(phantom.description)
                s.add_point(phantom.image.kji_to_ras(centre)[0])
                first = np.asarray(s.predict().array) > 0
                if mode == "wait":
                    assert net.wait_background(timeout=300)
                    assert net.stats["prefetched"] > 0
                # an include click on the slice of the missed part farthest from the first click
                missed = np.argwhere(label & ~first)
                assert len(missed), "the first result already holds the whole phantom: no correction to test"
                target = missed[np.argmax(np.abs(missed[:, 0] - centre[0]))]
                s.add_point(phantom.image.kji_to_ras(target)[0])
                corrected = np.asarray(s.predict().array) > 0
                runs[mode] = (first, corrected, s.timings.get("slices_encoded", 0))
        finally:
            shared_backend.options.prefetch_slices = default
    for mode in ("immediate", "wait"):
        assert np.array_equal(runs["off"][0], runs[mode][0])
        assert np.array_equal(runs["off"][1], runs[mode][1])
    assert runs["off"][2] > 0 and runs["wait"][2] < runs["off"][2]
