"""What the TAGS Segment module logic does, without Qt: it owns the one TAGS logic of the Slicer session.

`TAGSSegment.TAGSSegmentLogic` is this class plus Slicer's `ScriptedLoadableModuleLogic`. The module panel
creates it, and the "TAGS" effect reaches it with `slicer.util.getModuleLogic("TAGSSegment")`, which for a
scripted module returns the panel's `logic` attribute (and builds the panel, hidden, if it does not exist yet;
Slicer 5.10 and 5.12 neither create nor cache a scripted module's logic themselves). So the panel and every
Segment Editor share one TAGS logic: the engine process starts once and its caches are shared.

The TAGS logic (`TAGSLogic` with a local or remote engine, or `InProcessTAGSLogic`) is built on first use, so
torch and the engine start only when needed, from the device and engine choice in the settings store. A new
choice releases the running one (its engine process and GPU memory) and the next use builds it again.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from TAGSSegmentLib import status_log
from TAGSSegmentLib.settings import (
    DEVICE_KEY,
    ENGINE_MODE_KEY,
    ENGINE_TOKEN_KEY,
    ENGINE_URL_KEY,
    LOCAL_ENGINE,
    Settings,
    check_engine,
    normalise_device,
)


class ModuleLogic:
    """Settings in a store, and the TAGS logic built from them on first use."""

    model = "auto"

    def __init__(self, settings: Settings, log: Callable[[str], None] = status_log.log_message) -> None:
        self.settings = settings
        self._log = log
        self._lock = threading.RLock()
        self._tags: Any = None
        self._reported_engine: tuple[str, str, str] | None = None  # saved engine choice already reported invalid

    # ---- settings --------------------------------------------------------------------------------------------

    def device(self) -> str:
        """The device the TAGS logic uses (or will use when it is built)."""
        return normalise_device(self.settings.value(DEVICE_KEY, "auto"))

    def set_device(self, device: str) -> bool:
        """Choose (and save) the compute device; a running TAGS logic on another device is shut down (its GPU
        memory freed) and rebuilt lazily. Returns True when a running logic was released."""
        device = normalise_device(device)
        with self._lock:
            changed = device != self.device()
            self.settings.set_value(DEVICE_KEY, device)
            return self._release_locked() if changed else False

    def saved_engine(self) -> tuple[str, str, str]:
        """(mode, url, token) as saved, unchecked: what the panel's engine fields show."""
        return (
            self.settings.value(ENGINE_MODE_KEY, "local") or "local",
            self.settings.value(ENGINE_URL_KEY, ""),
            self.settings.value(ENGINE_TOKEN_KEY, ""),
        )

    def engine_settings(self) -> dict[str, str]:
        """The engine choice in force: {"mode", "url", "token"}. An invalid saved choice (say, a remote URL
        without a port) means the local engine process, and the log says so once."""
        saved = self.saved_engine()
        try:
            return check_engine(*saved)
        except ValueError as exc:
            if saved != self._reported_engine:
                self._reported_engine = saved
                self._log(f"Saved engine settings ignored ({exc}); using the local engine process.")
            return dict(LOCAL_ENGINE)

    def set_engine(self, mode: str, url: str = "", token: str = "") -> bool:
        """Choose (and save) where the model runs. A remote engine needs a valid URL (ValueError otherwise, and
        nothing changes); its token is sent with every request. A running logic is released when the choice
        changed (returns True then)."""
        new = check_engine(mode, url, token)
        with self._lock:
            changed = new != self.engine_settings()
            for key, name in ((ENGINE_MODE_KEY, "mode"), (ENGINE_URL_KEY, "url"), (ENGINE_TOKEN_KEY, "token")):
                self.settings.set_value(key, new[name])
            return self._release_locked() if changed else False

    # ---- the TAGS logic --------------------------------------------------------------------------------------

    def tags_logic(self) -> Any:
        """The TAGS logic, built on first use: `TAGSLogic` with a local engine process by default, or with the
        remote engine of the settings, or the in-process fallback."""
        with self._lock:
            if self._tags is None:
                logic = importlib.import_module("TAGSSegmentLib.logic")
                engine, device = self.engine_settings(), self.device()
                if engine["mode"] == "remote":
                    self._tags = logic.TAGSLogic(
                        model=self.model, device=device, engine_url=engine["url"], engine_token=engine["token"] or None
                    )
                elif engine["mode"] == "in-process":
                    self._tags = logic.InProcessTAGSLogic(model=self.model, device=device)
                else:
                    self._tags = logic.TAGSLogic(model=self.model, device=device)
            return self._tags

    def running_tags_logic(self) -> Any:
        """The TAGS logic if it was built, else None (never builds one: no torch, no engine start)."""
        return self._tags

    def poll_tags_logic(self) -> bool:
        """Advance the TAGS logic's engine exchange (the effect's and the panel's QTimer call this); True while
        it has work. Never builds a logic, and a logic without `poll` (a test fake) is fine."""
        poll = getattr(self._tags, "poll", None)
        return bool(poll()) if callable(poll) else False

    def replace_tags_logic(self, logic: Any) -> Any:
        """Install another TAGS logic (Slicer tests install a fake predictor); returns the previous one, which
        the caller owns and must shut down."""
        with self._lock:
            previous, self._tags = self._tags, logic
            return previous

    def release_tags_logic(self) -> bool:
        """Cancel queued work, stop the engine or worker and free memory; the next use builds a new one."""
        with self._lock:
            return self._release_locked()

    def _release_locked(self) -> bool:
        logic, self._tags = self._tags, None
        if logic is None:
            return False
        for name in ("cancel_pending", "shutdown"):
            method = getattr(logic, name, None)
            if callable(method):
                try:
                    method()
                except Exception:  # a dying worker must not stop Slicer from closing
                    pass
        return True
