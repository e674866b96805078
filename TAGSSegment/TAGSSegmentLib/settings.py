"""The module's settings: compute device and where the engine runs, kept in a small store.

In Slicer the store is `QSettingsStore` (Slicer's application settings, so choices survive a restart); tests
and scripts without Qt use `MemorySettings`. Both offer the same two calls, so the module logic never knows
which one it has. The choices offered to the user and their validation live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlparse

DEVICE_KEY = "TAGSSegment/Device"
ALLOW_MPS_KEY = "TAGSSegment/AllowMPS"
ENGINE_MODE_KEY = "TAGSSegment/EngineMode"  # local | remote | in-process
ENGINE_URL_KEY = "TAGSSegment/EngineURL"
ENGINE_TOKEN_KEY = "TAGSSegment/EngineToken"  # stored in Slicer's settings file, readable by this user

DEVICE_CHOICES: tuple[tuple[str, str], ...] = (("Auto (CUDA if available)", "auto"), ("CUDA", "cuda"), ("CPU", "cpu"))
MPS_CHOICE = ("MPS (experimental)", "mps")

# where the model runs: "local" (a `tagseg serve` child process, the default), "remote" (a server the user
# runs, e.g. on a GPU machine: URL + token) or "in-process" (the fallback: a worker thread inside Slicer)
ENGINE_MODES: tuple[tuple[str, str], ...] = (
    ("Engine process on this computer (default)", "local"),
    ("Remote engine server (URL and token)", "remote"),
    ("Inside Slicer's process (fallback)", "in-process"),
)
LOCAL_ENGINE: dict[str, str] = {"mode": "local", "url": "", "token": ""}


class Settings(Protocol):
    """A string-valued key/value store (Slicer's QSettings, or a dict in tests)."""

    def value(self, key: str, default: str = "") -> str: ...

    def set_value(self, key: str, value: str) -> None: ...


class MemorySettings:
    """Settings held in a dict: for tests and scripts that run without Qt."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = dict(values or {})

    def value(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def set_value(self, key: str, value: str) -> None:
        self.values[key] = value


class QSettingsStore:
    """Settings in Slicer's application settings (`qt.QSettings()`, read and written at each call, as Slicer
    modules do). `make` builds the QSettings object; by default PythonQt's, imported only when first used."""

    def __init__(self, make: Callable[[], Any] | None = None) -> None:
        self._make = make

    def _settings(self) -> Any:
        if self._make is None:
            import qt

            return qt.QSettings()
        return self._make()

    def value(self, key: str, default: str = "") -> str:
        value = self._settings().value(key, default)
        return str(value) if value is not None else default

    def set_value(self, key: str, value: str) -> None:
        self._settings().setValue(key, value)


def device_choices(allow_mps: bool = False) -> list[tuple[str, str]]:
    """(label, device) pairs for the device combo box; Apple MPS only on explicit opt-in."""
    return [*DEVICE_CHOICES, MPS_CHOICE] if allow_mps else list(DEVICE_CHOICES)


def normalise_device(device: str | None) -> str:
    """'auto', 'cpu', 'cuda:1', ... as the engine expects it ('' means auto)."""
    return (device or "auto").strip().lower() or "auto"


def normalise_engine_url(url: str) -> str:
    """'http://host:port' from what a user types ('host:port' allowed); ValueError when it is not one."""
    text = (url or "").strip().rstrip("/")
    if not text:
        raise ValueError("enter the engine's URL, e.g. http://127.0.0.1:8765 (the 'url' tagseg serve prints)")
    parsed = urlparse(text if "://" in text else f"http://{text}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError("the engine URL must look like http://HOST:PORT (for TLS, tunnel with ssh -L to 127.0.0.1)")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError("the engine URL has an invalid port") from None
    if port is None:
        raise ValueError("the engine URL needs a port, e.g. http://gpu-host:8765")
    return f"http://{parsed.netloc}"


def check_engine(mode: str, url: str = "", token: str = "") -> dict[str, str]:
    """{"mode", "url", "token"} for an engine choice, normalised; ValueError for an unknown mode, a remote
    engine without a valid URL, or a token with spaces or control characters (it is sent with every request)."""
    mode = (mode or "local").strip().lower()
    if mode not in {value for _, value in ENGINE_MODES}:
        raise ValueError(f"unknown engine mode {mode!r}")
    url = normalise_engine_url(url) if mode == "remote" else (url or "").strip()
    token = (token or "").strip()
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ValueError("the token must be printable characters without spaces")
    return {"mode": mode, "url": url, "token": token}
