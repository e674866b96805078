"""`tagseg serve` passes result warnings and progress through to `RemoteSession`.

The server runs in this process (uvicorn on a thread, loopback) so a scripted backend, registered like
any model, can hold a prediction half-way until the client has seen its progress: no sleeps decide
the outcome. (test_server.py checks the same warnings against the in-process Session with the real model.)
"""

import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tagseg.backends.base import Backend  # noqa: E402
from tagseg.checks import ResultWarning  # noqa: E402
from tagseg.client import RemoteSession  # noqa: E402
from tagseg.session import Session  # noqa: E402
from tagseg.volume import Volume, make_ijk_to_ras  # noqa: E402

SHAPE = (8, 32, 32)
MATRIX = make_ijk_to_ras((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
HANG_GUARD_S = 60  # only bounds a broken run; a working one never waits this long


class HalfwayBackend(Backend):
    """Reports slice 1 of 3, waits until the client has seen it, then finishes with a given mask."""

    name = "scripted-server"

    def __init__(self):
        super().__init__()
        self.mask = np.zeros(SHAPE, np.uint8)
        self.seen_first = threading.Event()
        self.wait_for_client = False

    def set_image(self, volume):
        pass

    def predict(self, prompts):
        self.report_progress("slices", 1, 3)
        if self.wait_for_client:
            assert self.seen_first.wait(HANG_GUARD_S), "the client never saw the first progress report"
        self.report_progress("slices", 2, 3)
        self.report_progress("slices", 3, 3)
        return self.mask.copy()


@pytest.fixture()
def scripted(register_backend):
    return register_backend(HalfwayBackend())


@pytest.fixture()
def url(in_process_engine_url):
    return in_process_engine_url


def volume() -> Volume:
    return Volume(np.zeros(SHAPE, np.int16), MATRIX, "zeros")


def test_warnings_arrive_as_the_in_process_session_gives_them(scripted, url):
    vol = volume()
    click = vol.kji_to_ras([(4, 16, 31)])[0]
    remote = RemoteSession(url, vol, model=HalfwayBackend.name, device="cpu")
    local = Session(vol, model=HalfwayBackend.name, device="cpu")
    try:
        for s in (remote, local):
            s.add_point(click)
        scripted.mask[3:6, 12:20, 31] = 1  # touches the image's edge along i, and is tiny
        mine, theirs = remote.predict(), local.predict()
        assert mine.meta["warnings"] == theirs.meta["warnings"] == list(remote.warnings)
        assert [w.code for w in mine.meta["warnings"]] == ["tiny", "volume_border"]
        assert all(isinstance(w, ResultWarning) for w in mine.meta["warnings"])
    finally:
        remote.close()
        local.close()


def test_progress_is_seen_while_the_prediction_runs(scripted, url):
    vol = volume()
    seen = []

    def progress(stage, done, total):
        seen.append((stage, done, total, scripted.seen_first.is_set()))
        if (stage, done) == ("slices", 1):
            scripted.seen_first.set()

    remote = RemoteSession(url, vol, model=HalfwayBackend.name, device="cpu", progress=progress)
    try:
        remote.add_point(vol.kji_to_ras([(4, 16, 16)])[0])
        scripted.wait_for_client = True
        remote.predict()
        # slice 1 was reported before the backend went on (so while the request was still open), and the
        # final state arrives before predict returns
        assert ("slices", 1, 3, False) in seen
        assert seen[-1][:3] == ("slices", 3, 3)
    finally:
        remote.close()
