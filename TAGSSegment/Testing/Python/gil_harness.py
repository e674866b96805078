"""An event loop with Slicer's GIL behaviour, for tests and benches (no pytest here).

In Slicer, PythonQt keeps the GIL while the main thread idles in the Qt event loop: Python code on other
threads only advances while main-thread Python runs (a timer callback) or when the main thread happens to
release the GIL. `GilHoldingLoop` reproduces that: between timer ticks the "event loop" sleeps in a C call
made through `ctypes.PyDLL`, which (unlike `ctypes.CDLL`) keeps the GIL held, like libc `usleep(45000)` inside
Qt's event processing; then the Python timer callbacks run. `hold_gil=False` gives the same loop with an
ordinary `time.sleep` (GIL released), the reference an unconstrained Python sees.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable, Iterable

IDLE_US = 45000


def _usleep():
    library = ctypes.util.find_library("c")
    libc = ctypes.PyDLL(library)  # PyDLL: the GIL is NOT released during the call
    usleep = libc.usleep
    usleep.argtypes = [ctypes.c_uint]
    usleep.restype = ctypes.c_int
    return usleep


class GilHoldingLoop:
    """`run_until(done, callbacks)`: idle `idle_us` (GIL held when `hold_gil`), run each callback, repeat.

    `longest_callback_s` is the longest single callback in wall-clock time (what Slicer's user would feel);
    `longest_callback_cpu_s` the longest in the main thread's CPU time, which a loaded machine's scheduler
    does not inflate (a callback descheduled for half a second by other processes is not a blocking call)."""

    def __init__(self, idle_us: int = IDLE_US, hold_gil: bool = True) -> None:
        self.idle_us = int(idle_us)
        self.hold_gil = hold_gil
        self._usleep = _usleep() if hold_gil else None
        self.longest_callback_s = 0.0
        self.longest_callback_cpu_s = 0.0
        self.ticks = 0

    def idle(self) -> None:
        if self._usleep is not None:
            self._usleep(self.idle_us)
        else:
            time.sleep(self.idle_us / 1e6)

    def run_until(self, done: Callable[[], bool], callbacks: Iterable[Callable[[], object]], timeout: float) -> float:
        """Seconds until `done()`; TimeoutError after `timeout` seconds."""
        callbacks = list(callbacks)
        start = time.perf_counter()
        while not done():
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"not done after {timeout:.0f} s ({self.ticks} ticks)")
            self.idle()
            for callback in callbacks:
                began, began_cpu = time.perf_counter(), time.thread_time()
                callback()
                self.longest_callback_s = max(self.longest_callback_s, time.perf_counter() - began)
                self.longest_callback_cpu_s = max(self.longest_callback_cpu_s, time.thread_time() - began_cpu)
            self.ticks += 1
        return time.perf_counter() - start
