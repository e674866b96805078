"""Progress of long steps: one callback signature for the whole engine, and its terminal display.

A progress callback is called as `progress(stage, done, total)`: `done` of `total` units of `stage` are
finished (stage names: "load_model", "slices", "crops", ...). It runs on the thread doing the work (the
Session's model thread), so it must be quick and thread-safe: store the numbers, or hand them to a GUI.
The Session passes its callback to the backend (`Backend.report_progress`); the engine server keeps
the latest report per session for clients to poll.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

Progress = Callable[[str, int, int], None]

# a bar appears only once a stage has run this long: quick steps print nothing (the issue: "over 2 s")
BAR_DELAY_S = 2.0
BAR_MIN_INTERVAL_S = 0.1  # redraw at most 10 times a second


def notify(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, int(done), int(total))


class TerminalProgress:
    """A tqdm bar on stderr per stage, for the command line; silent when disabled or stderr is not a terminal."""

    def __init__(self, enabled: bool = True, file: TextIO | None = None) -> None:
        self._file = file if file is not None else sys.stderr
        isatty = getattr(self._file, "isatty", None)
        self.enabled = bool(enabled and callable(isatty) and isatty())
        self._bar: tqdm | None = None
        self._stage: str | None = None
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            if stage != self._stage or self._bar is None:
                self._close_bar()
                from tqdm import tqdm

                self._bar = tqdm(
                    total=max(int(total), 1),
                    desc=stage,
                    file=self._file,
                    leave=False,
                    delay=BAR_DELAY_S,
                    mininterval=BAR_MIN_INTERVAL_S,
                    dynamic_ncols=True,
                )
                self._stage = stage
            bar = self._bar
            if total and bar.total != total:
                bar.total = int(total)
            bar.update(min(int(done), int(bar.total)) - bar.n)  # drawn after BAR_DELAY_S, at most 10 times a second

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._stage = None

    def close(self) -> None:
        with self._lock:
            self._close_bar()
