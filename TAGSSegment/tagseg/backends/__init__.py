"""Backend registry: a name -> factory map, and the rule behind model="auto"."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import ModelError
from ..text import Description
from .base import Backend, GridPrompts

DEFAULT_BACKEND = "litemedsam-3d"


def _litemedsam_3d(device: str) -> Backend:
    from .litemedsam3d import LiteMedSAM3D

    return LiteMedSAM3D(device=device)


BACKENDS: dict[str, Callable[[str], Backend]] = {DEFAULT_BACKEND: _litemedsam_3d}


def register_backend(name: str, factory: Callable[[str], Backend]) -> None:
    BACKENDS[name] = factory


# Each finder maps an anatomy key to the model name of a registered checkpoint, or None.
CHECKPOINT_FINDERS: list[Callable[[str], str | None]] = []


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
    path = Path(os.path.expanduser(model))
    if path.exists():
        raise ModelError(f"{model}: not a model this version can load (TAGS checkpoints need the 'tags' backend)")
    known = ", ".join(sorted(BACKENDS))
    raise ModelError(f"unknown model '{model}' (known: auto, {known}; or a checkpoint file path)")


def create_backend(name: str, device: str) -> Backend:
    if name not in BACKENDS:
        raise ModelError(f"unknown model '{name}'")
    return BACKENDS[name](device)


__all__ = ["Backend", "GridPrompts", "BACKENDS", "DEFAULT_BACKEND", "register_backend", "resolve_model_name",
           "create_backend"]
