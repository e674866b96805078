"""What the TAGS effect shows besides the mask: the engine's result warnings in its status line and the
progress of a long prediction in its busy dialog. The text comes from GUI-free functions in `wording`; the
in-process logic (slicer-core MRML node, scripted backend) fills `last_info["warnings"]` and
`last_progress`, and so does the engine logic (`TAGSLogic`, its progress queries driven by `poll()`) against
the engine server run in this process. The engine logic's warnings are checked in test_slicer_logic.py with
the real model."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tagseg.backends.base import Backend
from tagseg.volume import Volume, make_ijk_to_ras
from TAGSSegmentLib import wording

SHAPE = (8, 32, 32)
HANG_GUARD_S = 60


def test_status_sentence_lists_every_warning_on_one_line():
    info = {
        "warnings": [
            {"code": "tiny", "message": "the result is tiny (0.01 ml)"},
            {"code": "volume_border", "message": "the result touches the\nsuperior edge"},
        ]
    }
    text = wording.warnings_status(info)
    assert text == "Warning: the result is tiny (0.01 ml); the result touches the superior edge."
    assert wording.warnings_status({"warnings": []}) == wording.warnings_status(None) == ""
    assert wording.warnings_status({"warnings": ["not a dict"]}) == ""


def test_busy_dialog_shows_the_latest_progress():
    assert wording.progress_label({}, 4.2) == "TAGS is segmenting… 4 s"
    assert (
        wording.progress_label({"stage": "slices", "done": 3, "total": 12}, 9)
        == "TAGS is segmenting… 9 s (slices 3/12)"
    )
    assert (
        wording.progress_label({"stage": "load_model", "done": 0, "total": 1}, 1)
        == "TAGS is segmenting… 1 s (load model 0/1)"
    )


slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML stack")
from slicer_harness import make_scene  # noqa: E402
from TAGSSegmentLib import logic as L  # noqa: E402


class HalfwayBackend(Backend):
    """Reports slice 1 of 2, waits until the test has seen it in `last_progress`, then returns a tiny mask."""

    name = "scripted-slicer"

    def __init__(self):
        super().__init__()
        self.go_on = threading.Event()

    def set_image(self, volume):
        pass

    def predict(self, prompts):
        self.report_progress("slices", 1, 2)
        assert self.go_on.wait(HANG_GUARD_S), "the test never saw the progress report"
        self.report_progress("slices", 2, 2)
        mask = np.zeros(SHAPE, np.uint8)
        k, j, i = np.round(prompts.positive_kji[0]).astype(int)
        mask[k, j - 1 : j + 2, i - 1 : i + 2] = 1
        return mask


@pytest.fixture()
def scripted(register_backend):
    return register_backend(HalfwayBackend())


def test_in_process_logic_reports_progress_and_the_result_warnings(scripted):
    harness = make_scene()
    volume = Volume(np.zeros(SHAPE, np.int16), make_ijk_to_ras((1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), "zeros")
    node = L.volume_node_from_volume(harness.scene, volume, "zeros")
    logic = L.InProcessTAGSLogic(model=HalfwayBackend.name, device="cpu")
    try:
        click = L.volume_from_node(node).kji_to_ras([(4, 16, 16)])
        future = logic.predict_async(node, click, [], [], "")
        seen = threading.Event()
        while logic.last_progress != {"stage": "slices", "done": 1, "total": 2}:
            assert not future.done(), future.exception()
            seen.wait(0.01)
        scripted.go_on.set()
        mask = future.result(timeout=HANG_GUARD_S)
        assert int(mask.sum()) == 9
        assert logic.last_progress == {"stage": "slices", "done": 2, "total": 2}
        assert [w["code"] for w in logic.last_info["warnings"]] == ["tiny"]
        assert wording.warnings_status(logic.last_info).startswith("Warning: the result is tiny")
    finally:
        scripted.go_on.set()
        logic.shutdown()


@pytest.fixture()
def engine_url(in_process_engine_url):
    return in_process_engine_url


def test_engine_logic_reports_the_engines_progress_while_poll_drives_the_request(scripted, engine_url):
    harness = make_scene()
    volume = Volume(np.zeros(SHAPE, np.int16), make_ijk_to_ras((1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), "zeros")
    node = L.volume_node_from_volume(harness.scene, volume, "zeros")
    logic = L.TAGSLogic(model=HalfwayBackend.name, device="cpu", engine_url=engine_url)
    logic.progress_poll_s = 0.02  # asked often, so the test is quick; the backend waits for it regardless
    try:
        click = L.volume_from_node(node).kji_to_ras([(4, 16, 16)])
        future = logic.predict_async(node, click, [], [], "")
        assert logic.last_progress == {}
        pause = threading.Event()
        # only poll() drives the exchange (no client thread): the report must come through it while the
        # backend holds the prediction half-way, i.e. before the result
        while logic.last_progress != {"stage": "slices", "done": 1, "total": 2}:
            assert not future.done(), future.exception()
            logic.poll()
            pause.wait(0.002)
        assert not future.done()
        scripted.go_on.set()
        mask = future.result(timeout=HANG_GUARD_S)
        assert int(mask.sum()) == 9
        assert wording.progress_label(logic.last_progress, 3).startswith("TAGS is segmenting… 3 s (slices ")
        assert [w["code"] for w in logic.last_info["warnings"]] == ["tiny"]
    finally:
        scripted.go_on.set()
        logic.shutdown()
