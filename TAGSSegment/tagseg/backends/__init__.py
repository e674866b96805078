"""Backend registry: a name -> factory map, and the rule behind model="auto"."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from ..errors import ModelError
from ..text import Description
from .base import Backend, GridPrompts

DEFAULT_BACKEND = "litemedsam-3d"


TAGS_PREFIX = "tags:"
CHECKPOINT_SUFFIXES = (".safetensors",)
FOREIGN_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".pkl")


def _litemedsam_3d(device: str, options: dict) -> Backend:
    from .litemedsam3d import LiteMedSAM3D

    return LiteMedSAM3D(device=device)


# name -> factory(device, options); options are backend-specific settings (e.g. TAGS extensions)
BACKENDS: dict[str, Callable[[str, dict], Backend]] = {DEFAULT_BACKEND: _litemedsam_3d}


def register_backend(name: str, factory: Callable[[str, dict], Backend]) -> None:
    BACKENDS[name] = factory


def _installed_tags_checkpoint(anatomy: str) -> str | None:
    from ..tags.installed import find_installed

    path = find_installed(anatomy)
    return f"{TAGS_PREFIX}{path}" if path else None


# Each finder maps an anatomy key to the model name of a registered checkpoint, or None.
CHECKPOINT_FINDERS: list[Callable[[str], str | None]] = [_installed_tags_checkpoint]


def registered_checkpoint_for(anatomy: str | None) -> str | None:
    """A TAGS checkpoint registered for this anatomy, if any (the `tags` backend adds a finder)."""
    for finder in CHECKPOINT_FINDERS if anatomy else ():
        name = finder(anatomy)
        if name:
            return name
    return None


def resolve_model_name(model: str, description: Description) -> str:
    """"auto" -> a registered TAGS checkpoint for the described anatomy, else the embedded default."""
    if model in (None, "", "auto"):
        return registered_checkpoint_for(description.anatomy) or DEFAULT_BACKEND
    if model in BACKENDS:
        return model
    if model.startswith(TAGS_PREFIX):
        return model
    path = Path(os.path.expanduser(model))
    if path.is_file():
        name = path.name.lower()
        if name.endswith(CHECKPOINT_SUFFIXES):
            return f"{TAGS_PREFIX}{path.resolve()}"
        if name.endswith(FOREIGN_CHECKPOINT_SUFFIXES):
            raise ModelError(f"{model}: a PyTorch pickle, not a tagseg checkpoint; convert the authors' .pth.tar "
                             "with `tagseg convert-checkpoint` (only tensors are read, nothing is executed)")
        raise ModelError(f"{model}: not a model file this version can load (expected a TAGS .safetensors checkpoint)")
    if path.exists():
        from ..paths import file_kind

        kind = file_kind(path)
        raise ModelError(f"{model}: is {'a folder' if kind == 'folder' else kind}, not a checkpoint file")
    known = ", ".join(sorted(BACKENDS))
    raise ModelError(f"unknown model '{model}' (known: auto, {known}; or a checkpoint file path)")


def create_backend(name: str, device: str, options: dict | None = None) -> Backend:
    options = dict(options or {})
    if name.startswith(TAGS_PREFIX):
        from .tags import TagsBackend, TagsOptions

        known = set(TagsOptions.__dataclass_fields__)
        return TagsBackend(name[len(TAGS_PREFIX):], device,
                           options=TagsOptions(**{k: v for k, v in options.items() if k in known}))
    if name not in BACKENDS:
        raise ModelError(f"unknown model '{name}'")
    return BACKENDS[name](device, options)


# Loaded backends shared by every Session in the process (a model load costs seconds; a Slicer user
# switching volumes, or `tagseg evaluate` going through cases, should pay it once). Each entry has a
# lock: sessions run on their own worker threads, and a backend holds per-volume state.
_SHARED: "OrderedDict[tuple, tuple[Backend, threading.Lock]]" = OrderedDict()
_SHARED_LOCK = threading.Lock()
SHARED_BACKENDS = 2


def acquire_backend(name: str, device: str, options: dict | None = None) -> tuple[Backend, threading.Lock]:
    """A loaded backend for (name, device, options) and the lock to hold while using it."""
    factory = None if name.startswith(TAGS_PREFIX) else BACKENDS.get(name)
    # the factory itself (not its id, which a new function may reuse) tells re-registered backends apart
    key = (name, device, repr(sorted((options or {}).items())), factory)
    with _SHARED_LOCK:
        if key in _SHARED:
            _SHARED.move_to_end(key)
            return _SHARED[key]
    entry = (create_backend(name, device, options), threading.Lock())
    with _SHARED_LOCK:
        entry = _SHARED.setdefault(key, entry)
        _SHARED.move_to_end(key)
        while len(_SHARED) > SHARED_BACKENDS:
            _SHARED.popitem(last=False)
    return entry


def release_shared_backends() -> None:
    """Drop every shared backend (frees GPU memory; the next use loads again)."""
    with _SHARED_LOCK:
        _SHARED.clear()


__all__ = ["Backend", "GridPrompts", "BACKENDS", "DEFAULT_BACKEND", "register_backend", "resolve_model_name",
           "create_backend", "acquire_backend", "release_shared_backends"]
