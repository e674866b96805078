"""The registry of installed TAGS checkpoints (`tagseg models install`): where they live and which one
`model="auto"` picks for an anatomy. Standard library only: every `tagseg segment` with model "auto" asks
it, and importing `checkpoint` (torch, safetensors) just to learn that nothing is installed cost 2-5 s of
start-up (bench/startup.py). Installing and removing stay in `checkpoint`, which re-exports these names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..paths import cache_dir, sha256_file

INDEX_NAME = "index.json"
_SHA_RE = re.compile(r"[0-9a-f]{64}\Z")


def models_dir() -> Path:
    """Where installed checkpoints live: $TAGSEG_MODELS_DIR, else <cache>/models."""
    env = os.environ.get("TAGSEG_MODELS_DIR")
    return Path(env) if env else cache_dir() / "models"


def _valid_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("file"), str)
        and entry["file"]
        and Path(entry["file"]).name == entry["file"]
        and entry["file"] not in (".", "..")
        and isinstance(entry.get("sha256"), str)
        and bool(_SHA_RE.match(entry["sha256"]))
        and isinstance(entry.get("anatomy"), str)
    )


def _read_index(root: Path) -> list[dict]:
    """The index's entries; a missing or damaged index reads as empty (the files themselves stay)."""
    try:
        data = json.loads((root / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    return [dict(entry) for entry in entries if _valid_entry(entry)]


def find_installed(anatomy: str) -> Path | None:
    """The most recently installed checkpoint for this anatomy (None if none), after checking that the file
    still has the SHA-256 recorded at installation."""
    root = models_dir()
    wanted = anatomy.strip().lower()
    entries = _read_index(root)
    matches = [(str(e.get("installed_at", "")), i, e) for i, e in enumerate(entries) if e["anatomy"] == wanted]
    if not matches:
        return None
    entry = max(matches, key=lambda match: (match[0], match[1]))[2]
    path = root / entry["file"]
    if not path.is_file():
        raise ModelError(
            f"installed checkpoint {path} for {wanted} is missing; install it again or uninstall {entry['sha256'][:12]}"
        )
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ModelError(
            f"installed checkpoint {path} was modified or damaged (SHA-256 {actual[:12]}…, installed as "
            f"{entry['sha256'][:12]}…); install it again"
        )
    return path
