"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


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
