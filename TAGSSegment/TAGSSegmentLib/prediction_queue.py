"""One prediction in flight, the newest request waiting: the effect's queue between clicks and the model."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass
class Outcome:
    """A finished prediction: `mask` (uint8 KJI array) or `error`, and the request it answers."""

    request: Any
    mask: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


class PredictionQueue:
    """Runs at most one prediction; a request made meanwhile replaces any waiting one (only the newest prompt
    set matters, as every request carries all prompts). A finished result is dropped when a newer request waits,
    so the segment is written, and one undo state saved, only for results the user still wants.

    `start(request) -> Future` is called on the caller's (main) thread; `poll()` is called from a timer."""

    def __init__(self, start: Callable[[Any], Future], clock: Callable[[], float] = time.monotonic):
        self._start = start
        self._clock = clock
        self._future: Future | None = None
        self._request: Any = None
        self._queued: Any = None
        self._has_queued = False
        self._started_at = 0.0
        self.dropped = 0

    @property
    def busy(self) -> bool:
        return self._future is not None or self._has_queued

    @property
    def elapsed(self) -> float:
        """Seconds since the running prediction started (0 when idle)."""
        return self._clock() - self._started_at if self._future is not None else 0.0

    def submit(self, request: Any) -> None:
        if self._future is None:
            self._launch(request)
        else:
            if self._has_queued:
                self.dropped += 1
            self._queued, self._has_queued = request, True

    def _launch(self, request: Any) -> None:
        self._request, self._started_at = request, self._clock()
        try:
            future = self._start(request)
        except Exception as exc:  # invalid prompts are reported like any other failure, on the next poll
            future = Future()
            future.set_exception(exc)
        self._future = future

    def poll(self) -> Outcome | None:
        """The finished outcome the caller should apply, or None (still running, idle, or superseded)."""
        future = self._future
        if future is None or not future.done():
            return None
        request, seconds = self._request, self._clock() - self._started_at
        self._future = self._request = None
        if self._has_queued:
            queued, self._queued, self._has_queued = self._queued, None, False
            self.dropped += 1
            self._launch(queued)
            return None
        if future.cancelled():
            return None
        error = future.exception()
        return (
            Outcome(request, error=error, seconds=seconds)
            if error
            else Outcome(request, future.result(), seconds=seconds)
        )

    def cancel(self) -> bool:
        """Forget the running and the waiting request (their results will never be applied)."""
        had = self.busy
        if self._future is not None:
            self._future.cancel()
        self._future = self._request = self._queued = None
        self._has_queued = False
        return had


def mask_is_empty(mask: Any) -> bool:
    if mask is None:
        return True
    box = getattr(mask, "bbox", False)  # an engine result knows its bounding box (None: empty)
    if box is None:
        return True
    if box:
        return False
    any_method = getattr(mask, "any", None)
    return not bool(any_method()) if callable(any_method) else not bool(mask)


def mask_voxels(mask: Any) -> int:
    """Non-zero voxels of a result: counted inside its bounding box when it carries one (a few voxels of a
    512x512x300 grid), without a full-grid temporary otherwise."""
    if mask is None:
        return 0
    import numpy as np

    box = getattr(mask, "bbox", False)
    if box is None:
        return 0
    array = np.asarray(mask)
    if box:
        (k0, j0, i0), (k1, j1, i1) = box
        array = array[int(k0) : int(k1), int(j0) : int(j1), int(i0) : int(i1)]
    return int(np.count_nonzero(array))
