"""Errors a user can act on, and the one way to turn an error into a one-line message.

The CLI prints them as one line and exits with code 2.
"""

from __future__ import annotations


class TagsegError(Exception):
    """Base class: the message names the problem and, where possible, the fix."""


class InputError(TagsegError):
    """An input file or volume cannot be used (missing, unreadable, wrong dimensions, ...)."""


class PromptError(TagsegError):
    """A click, box, text or anatomy prompt cannot be used."""


class ModelError(TagsegError):
    """A model name, checkpoint or weight file cannot be used."""


class DeviceError(TagsegError):
    """The requested compute device is unavailable or ran out of memory."""


class EngineUnavailable(TagsegError):
    """The engine process (`tagseg serve`) cannot be reached: not started, exited, killed, or unreachable."""


class Superseded(TagsegError):
    """A newer prediction request for the same session arrived first; this one was dropped (newest wins)."""


def one_line(value: object, limit: int | None = None, *, with_type: bool = False, first_line: bool = False) -> str:
    """Any exception or text as one clean printable line: every message a user sees goes through here.

    Undecodable bytes become '?', control characters (terminal escapes, NUL, newlines) spaces, runs of spaces one.
    An exception with an empty message is named by its type; `with_type` always prefixes the type (logs, CSV rows);
    `first_line` keeps only the first line (a message followed by a traceback); `limit` cuts to that many characters.
    """
    text = str(value)
    if first_line:
        text = next(iter(text.strip().splitlines()), "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if isinstance(value, BaseException):
        name = type(value).__name__
        text = (f"{name}: {text}" if text else name) if with_type else (text or name)
    return text if limit is None else text[:limit]
