"""The status log shared by the module panel (which shows it) and the "TAGS" effect (which writes most of it).

One log per Python process, like the `logging` module: the effect may write before the panel exists, and a panel
built later shows the history. Listeners are called on the main thread; one that raises (a deleted widget) is
dropped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

_history: deque[str] = deque(maxlen=500)
_listeners: list[Callable[[str], None]] = []


def log_message(text: str) -> str:
    """Record one status line with a time stamp and pass it to the listeners (all on the main thread)."""
    line = f"{time.strftime('%H:%M:%S')}  {text}"
    _history.append(line)
    for listener in list(_listeners):
        try:
            listener(line)
        except Exception:  # a deleted panel must not break the effect
            remove_log_listener(listener)
    return line


def log_history() -> list[str]:
    return list(_history)


def add_log_listener(listener: Callable[[str], None]) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def remove_log_listener(listener: Callable[[str], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
