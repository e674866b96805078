"""The interactive Session: prompts, undo/redo, result and encoding reuse, threading and geometry.

The real LiteMedSAM backend is built once per module and handed to every Session through the
backend registry, so each test pays for predictions, not for loading the network again.
"""

import hashlib
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tagseg import backends
from tagseg.backends.base import Backend, GridPrompts
from tagseg.errors import PromptError
from tagseg.evaluate import dice
from tagseg.geometry import resample_like
from tagseg.prompts import PromptSet
from tagseg.session import Session
from tagseg.synth import make_phantom
from tagseg.volume import Volume, make_ijk_to_ras

MODEL = "litemedsam-3d"
# Small enough for a few seconds per prediction on 2 CPU cores; the tumour spans a handful of slices.
PHANTOM = dict(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
CLICKS = 3
MIN_DICE = 0.6
# The same physical grid, indexed three ways: columns are the RAS directions of i, j, k.
GEOMETRIES = {
    "ras": (np.eye(3), (2.0, 2.0, 4.0), (16, 64, 64)),
    "lps": (np.diag([-1.0, -1.0, 1.0]), (2.0, 2.0, 4.0), (16, 64, 64)),
    # i runs along S, j along R, k along A: slices are sagittal-ish in the array, axial in RAS
    "permuted": (np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), (4.0, 2.0, 2.0), (64, 64, 16)),
}


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def label_clicks(label: Volume, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """RAS centres of label voxels drawn uniformly without replacement (the paper's click protocol)."""
    voxels = np.argwhere(np.asarray(label.array) > 0)
    return list(label.kji_to_ras(voxels[rng.choice(len(voxels), size=count, replace=False)]))


def ras_centroid(mask: Volume) -> np.ndarray:
    return mask.kji_to_ras(np.argwhere(np.asarray(mask.array) > 0).mean(axis=0, keepdims=True))[0]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(**PHANTOM)


@pytest.fixture(scope="module")
def clicks(phantom):
    rng = np.random.default_rng(PHANTOM["seed"])
    first_clicks = label_clicks(phantom.label, CLICKS, rng)
    return SimpleNamespace(first=first_clicks, refine=label_clicks(phantom.label, 1, rng)[0])


@pytest.fixture(scope="module")
def first(shared_backend, phantom, clicks):
    """A session after three include clicks and one prediction (the state a user sees first)."""
    hash_before = digest(phantom.image.array)
    session = Session(phantom.image, model=MODEL, device="cpu")
    session.set_text(phantom.description)
    for click in clicks.first:
        session.add_point(click)
    encoded_before = shared_backend.net.stats["encoded"]
    start = time.perf_counter()
    mask = session.predict()
    result = SimpleNamespace(
        session=session,
        mask=mask,
        seconds=time.perf_counter() - start,
        encoded=shared_backend.net.stats["encoded"] - encoded_before,
        hash_before=hash_before,
    )
    yield result
    session.close()


def test_three_clicks_segment_the_phantom(first, phantom):
    mask = first.mask
    assert mask.array.dtype == np.uint8 and mask.same_grid(phantom.image)
    assert set(np.unique(mask.array)) <= {0, 1}
    assert mask.name == phantom.description
    score = dice(mask.array, phantom.label.array)
    assert score > MIN_DICE, f"Dice {score:.3f} after {CLICKS} clicks ({first.seconds:.1f} s)"


def test_refinement_reuses_encodings_and_undo_restores_the_result(first, shared_backend, clicks):
    session = first.session
    assert first.encoded > 0
    three_clicks = session.prompts
    session.add_point(clicks.refine)
    before = shared_backend.net.stats["encoded"]
    refined = session.predict()
    re_encoded = shared_backend.net.stats["encoded"] - before
    assert re_encoded < first.encoded, f"refinement encoded {re_encoded} slices, first prediction {first.encoded}"

    assert session.undo()
    assert session.prompts == three_clicks
    np.testing.assert_array_equal(session.predict().array, first.mask.array)
    assert session.redo()
    np.testing.assert_array_equal(session.predict().array, refined.array)


def test_input_volume_is_untouched(first, phantom):
    assert digest(phantom.image.array) == first.hash_before
    assert not phantom.image.array.flags.writeable
    assert not first.session.volume.array.flags.writeable
    with pytest.raises(ValueError):
        phantom.image.array[0, 0, 0] = 1


# ---- prompts, undo/redo (no model needed) -----------------------------------------------------------------
class RecordingBackend(Backend):
    """A stand-in backend that records which thread runs it and paints a ball at each include click.

    Not a mock of LiteMedSAM: it tests the Session's own machinery (threading, caching, undo), which
    must not depend on what the model predicts.
    """

    name = "test-recorder"

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.calls = 0

    def set_image(self, volume: Volume) -> None:
        self.threads.append(threading.get_ident())
        self.shape = volume.shape_kji

    def predict(self, prompts: GridPrompts) -> np.ndarray:
        self.threads.append(threading.get_ident())
        self.calls += 1
        grid = np.indices(self.shape).reshape(3, -1).T
        out = np.zeros(len(grid), bool)
        for p in prompts.positive_kji:
            out |= np.linalg.norm(grid - p, axis=1) <= 2.0
        return out.reshape(self.shape).astype(np.uint8)


@pytest.fixture()
def recorder():
    instance = RecordingBackend()
    backends.register_backend(RecordingBackend.name, lambda device, options: instance)
    yield instance
    backends.BACKENDS.pop(RecordingBackend.name, None)


@pytest.fixture()
def small_volume():
    return make_phantom(**PHANTOM).image


def test_model_work_runs_on_one_persistent_worker_thread(recorder, small_volume):
    centre = small_volume.kji_to_ras([[8, 32, 32]])[0]
    with Session(small_volume, model=RecordingBackend.name, device="cpu") as session:
        for offset in (0.0, 4.0, 8.0):
            session.add_point(centre + [offset, 0.0, 0.0])
            session.predict()
        worker_threads = set(recorder.threads)
        assert len(worker_threads) == 1
        assert threading.get_ident() not in worker_threads
        assert recorder.calls == 3
        session.undo()
        session.predict()
        assert recorder.calls == 3, "a prompt set seen before must be served from the result cache"


def test_undo_redo_reset(recorder, small_volume):
    a, b = small_volume.kji_to_ras([[8, 30, 30], [8, 34, 34]])
    with Session(small_volume, model=RecordingBackend.name, device="cpu") as session:
        assert not session.undo() and not session.redo()
        session.add_point(a)
        after_a = session.prompts
        first = session.predict()
        session.add_point(b)
        assert len(session.prompts.points) == 2
        second = session.predict()
        assert not np.array_equal(first.array, second.array)

        assert session.undo()
        assert session.prompts == after_a
        np.testing.assert_array_equal(session.predict().array, first.array)
        assert session.redo()
        np.testing.assert_array_equal(session.predict().array, second.array)
        assert not session.redo()

        session.undo()
        session.add_point(b, positive=False)
        assert not session.redo(), "a new interaction after undo discards the redo stack"

        session.reset()
        assert session.prompts == PromptSet()
        assert not session.undo()
        with pytest.raises(PromptError, match="no prompt"):
            session.predict()


def test_predict_needs_an_include_prompt(small_volume):
    with Session(small_volume, device="cpu") as session:
        with pytest.raises(PromptError, match="no prompt"):
            session.predict()
        session.set_text("liver tumor")
        with pytest.raises(PromptError, match="no prompt"):
            session.predict()
        session.add_point(small_volume.kji_to_ras([[8, 32, 32]])[0], positive=False)
        with pytest.raises(PromptError, match="include point"):
            session.predict()


def test_prompts_outside_the_volume_name_its_bounds(small_volume):
    bounds = small_volume.describe_bounds()
    with Session(small_volume, device="cpu") as session:
        with pytest.raises(PromptError, match="outside the volume") as info:
            session.add_point((500.0, 0.0, 0.0))
        assert bounds in str(info.value)
        with pytest.raises(PromptError, match="outside the volume") as info:
            session.add_box((300.0, 300.0, 300.0), (320.0, 320.0, 320.0))
        assert bounds in str(info.value)
        with pytest.raises(PromptError, match="zero size"):
            session.add_box((1.0, 2.0, 3.0), (1.0, 2.0, 3.0))
        with pytest.raises(PromptError, match="finite"):
            session.add_point((np.nan, 0.0, 0.0))
        assert session.prompts == PromptSet(), "a refused prompt must not enter the history"
        assert not session.undo()


def test_anatomy_mask_on_a_coarser_grid_is_resampled(phantom):
    organ = phantom.organs[phantom.tumour_organ]
    coarse = Volume(np.ascontiguousarray(organ.array[::2, ::2, ::2]), organ.ijk_to_ras @ np.diag([2.0, 2.0, 2.0, 1.0]))
    assert coarse.shape_kji != organ.shape_kji
    with Session(phantom.image, device="cpu") as session:
        session.set_anatomy(coarse)
        anatomy = session.prompts.anatomy
        assert anatomy.same_grid(phantom.image)
        assert dice(anatomy.array, organ.array) > 0.8
        assert session.prompts.anatomy_key
        session.set_anatomy(None)
        assert session.prompts.anatomy is None
        assert session.undo() and session.prompts.anatomy is not None


def test_empty_or_disjoint_anatomy_mask_is_refused(phantom):
    empty = phantom.image.with_array(np.zeros(phantom.image.shape_kji, np.uint8))
    far_away = Volume(np.ones((4, 4, 4), np.uint8), make_ijk_to_ras((1.0, 1.0, 1.0), (900.0, 0.0, 0.0)))
    with Session(phantom.image, device="cpu") as session:
        with pytest.raises(PromptError, match="empty"):
            session.set_anatomy(empty)
        with pytest.raises(PromptError, match="empty"):
            session.set_anatomy(far_away)
        assert session.prompts == PromptSet()


# ---- geometry invariance (real model) -------------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["lps", "permuted"])
def test_same_physical_phantom_gives_the_same_mask_in_any_axis_order(shared_backend, first, clicks, phantom, geometry):
    """The phantom on an LPS or axis-permuted grid, same RAS clicks -> the same physical mask.

    make_phantom draws its noise in array order, so each grid gets another noise realisation and
    the comparison would measure the model's sensitivity to noise, not the geometry code. The
    other grid therefore gets the RAS phantom's own voxels, re-indexed (the grids coincide, which
    the label check below proves).
    """
    directions, spacing, shape = GEOMETRIES[geometry]
    other = make_phantom(seed=PHANTOM["seed"], shape_kji=shape, spacing_ijk=spacing, directions=directions)
    assert not np.allclose(other.image.ijk_to_ras, phantom.image.ijk_to_ras)
    np.testing.assert_array_equal(resample_like(phantom.label, other.label, order=0).array, other.label.array)
    image = resample_like(phantom.image, other.image, order=0)
    assert image.array.dtype == phantom.image.array.dtype
    assert digest(np.sort(image.array, axis=None)) == digest(np.sort(phantom.image.array, axis=None))

    with Session(image, model=MODEL, device="cpu") as session:
        session.set_text(other.description)
        for click in clicks.first:
            session.add_point(click)
        mask = session.predict()
    reference = first.mask
    voxel_mm = float(max(spacing))
    shift = np.linalg.norm(ras_centroid(mask) - ras_centroid(reference))
    assert shift <= voxel_mm, f"RAS centroids differ by {shift:.2f} mm"
    volumes = np.count_nonzero(mask.array), np.count_nonzero(reference.array)
    assert abs(volumes[0] - volumes[1]) <= 0.1 * volumes[1], f"voxel counts {volumes}"
    score = dice(resample_like(mask, reference, order=0).array, reference.array)
    assert score >= 0.9, f"Dice {score:.3f} between the {geometry} and RAS predictions"
