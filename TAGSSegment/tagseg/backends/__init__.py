"""Backend registry (after segment-anything's `sam_model_registry`): one `BackendKind` per kind of model, saying
how to build one, which options it takes and what it can do; and the rule behind model="auto".

Model names: a registered name (`BACKENDS`, e.g. "litemedsam-3d"), or a checkpoint kind's prefix and a file path
(`CHECKPOINT_KINDS`, e.g. "tags:/path/model.safetensors")."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import ModelError
from ..text import Description
from .base import ANATOMY, BOXES, NEGATIVE_POINTS, PROPOSE_POINT, Backend, GridPrompts

DEFAULT_BACKEND = "litemedsam-3d"


TAGS_PREFIX = "tags:"
CHECKPOINT_SUFFIXES = (".safetensors",)
FOREIGN_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".pkl")

Factory = Callable[[str, dict], Backend]


@dataclass(frozen=True)
class BackendKind:
    """One registry entry.

    `build(device, options)` makes the backend; a checkpoint kind (`prefix` set) builds with
    `build(checkpoint, device, options)` and its models are named `prefix + path`. `build` gets the options as a
    dict whose names `check_options` has accepted. `options` returns the dataclass whose fields are the option names
    the kind takes (plus `extra_options`, the builder's own); None = undeclared: the builder gets any dict (a test
    double registered with a bare factory). `backend` returns the Backend class, whose `capabilities` the kind
    reports before a model loads (None: known only once built). Both are lazy so that listing kinds imports no
    backend module."""

    name: str
    build: Callable[..., Backend]
    options: Callable[[], type] | None = None
    extra_options: tuple[str, ...] = ()
    backend: Callable[[], type[Backend]] | None = None
    prefix: str = ""  # a checkpoint kind: the model-name prefix
    suffixes: tuple[str, ...] = ()  # ... the checkpoint files it loads
    installed: Callable[[str], str | Path | None] | None = None  # ... anatomy key -> an installed checkpoint

    def option_names(self) -> frozenset[str] | None:
        """The option names this kind takes; None when it does not declare them."""
        if self.options is None:
            return None
        return frozenset(f.name for f in fields(self.options())) | frozenset(self.extra_options)

    @property
    def capabilities(self) -> frozenset[str] | None:
        """What its backends can do (`base.PROPOSE_POINT`, ...); None when known only once one is built."""
        return None if self.backend is None else self.backend().capabilities

    def check_options(self, options: dict | None) -> dict:
        """`options` as a new dict, or a ModelError naming every option this kind does not take."""
        options = dict(options or {})
        known = self.option_names()
        if known is None:  # undeclared: the builder takes any dict
            return options
        unknown = sorted(set(options) - known)
        if unknown:
            raise ModelError(
                f"model '{self.name}' has no option {', '.join(repr(k) for k in unknown)} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        return options

    def create(self, device: str, options: dict | None = None, checkpoint: str | None = None) -> Backend:
        options = self.check_options(options)
        if self.prefix:
            return self.build(checkpoint, device, options)
        return self.build(device, options)

    def __call__(self, device: str, options: dict | None = None) -> Backend:
        """A registered kind is also a `factory(device, options)`, the shape `BACKENDS` entries had (and tests or
        benchmarks that wrap an entry still call)."""
        return self.create(device, options)


# ---- the built-in kinds -----------------------------------------------------------------------------
def _litemedsam_options() -> type:
    from .litemedsam3d import Options

    return Options


def _litemedsam_class() -> type[Backend]:
    from .litemedsam3d import LiteMedSAM3D

    return LiteMedSAM3D


def _build_litemedsam_3d(device: str, options: dict) -> Backend:
    """`Options` fields, plus `runtime`/`encoder` (LiteMedSAM's engine; `litemedsam_net`)."""
    from .litemedsam3d import LiteMedSAM3D, Options

    engine = {key: options.pop(key) for key in ("runtime", "encoder") if key in options}
    return LiteMedSAM3D(device=device, options=Options(**options), **engine)


def _tags_options() -> type:
    from .tags import TagsOptions

    return TagsOptions


def _tags_class() -> type[Backend]:
    from .tags import TagsBackend

    return TagsBackend


def _build_tags(checkpoint: str, device: str, options: dict) -> Backend:
    from .tags import TagsBackend, TagsOptions

    return TagsBackend(checkpoint, device, options=TagsOptions(**options))


def _installed_tags(anatomy: str) -> str | Path | None:
    from ..tags.installed import find_installed

    return find_installed(anatomy)


LITEMEDSAM_3D = BackendKind(
    DEFAULT_BACKEND,
    _build_litemedsam_3d,
    options=_litemedsam_options,
    extra_options=("runtime", "encoder"),
    backend=_litemedsam_class,
)
TAGS = BackendKind(
    "tags",
    _build_tags,
    options=_tags_options,
    backend=_tags_class,
    prefix=TAGS_PREFIX,
    suffixes=CHECKPOINT_SUFFIXES,
    installed=_installed_tags,
)

# name -> kind. A bare `factory(device, options)` is still accepted here (tests patch entries with one): it is a
# kind that declares neither options nor capabilities.
BACKENDS: dict[str, BackendKind | Factory] = {DEFAULT_BACKEND: LITEMEDSAM_3D}
# kind name -> a kind whose models are checkpoint files, named prefix + path
CHECKPOINT_KINDS: dict[str, BackendKind] = {TAGS.name: TAGS}


def register_backend(name: str, factory: BackendKind | Factory, options: type | None = None) -> None:
    """Register a kind under `name`: a `BackendKind`, or a bare `factory(device, options)` taking the option names
    of the dataclass `options` (None: any dict, undeclared)."""
    if not isinstance(factory, BackendKind):
        factory = BackendKind(name, factory, options=(lambda: options) if options is not None else None)
    BACKENDS[name] = factory


def kind_of(name: str) -> BackendKind:
    """The registry entry behind a resolved model name (see `resolve_model_name`)."""
    entry = BACKENDS.get(name)
    if isinstance(entry, BackendKind):
        return entry
    if entry is not None:
        return BackendKind(name, entry)
    for kind in CHECKPOINT_KINDS.values():
        if name.startswith(kind.prefix):
            return kind
    raise ModelError(f"unknown model '{name}'")


def checkpoint_of(name: str) -> str | None:
    """The checkpoint file a checkpoint kind's model name stands for; None for a registered name."""
    kind = kind_of(name)
    return name[len(kind.prefix) :] if kind.prefix else None


def registered_checkpoint_for(anatomy: str | None) -> str | None:
    """The model name of a checkpoint installed for this anatomy, if any (each checkpoint kind's `installed`)."""
    if not anatomy:
        return None
    for kind in CHECKPOINT_KINDS.values():
        path = kind.installed(anatomy) if kind.installed else None
        if path:
            return f"{kind.prefix}{path}"
    return None


def resolve_model_name(model: str, description: Description) -> str:
    """ "auto" -> a registered TAGS checkpoint for the described anatomy, else the embedded default."""
    if model in (None, "", "auto"):
        return registered_checkpoint_for(description.anatomy) or DEFAULT_BACKEND
    if model in BACKENDS:
        return model
    if any(model.startswith(kind.prefix) for kind in CHECKPOINT_KINDS.values()):
        return model
    path = Path(os.path.expanduser(model))
    if path.is_file():
        name = path.name.lower()
        for kind in CHECKPOINT_KINDS.values():
            if name.endswith(kind.suffixes):
                return f"{kind.prefix}{path.resolve()}"
        if name.endswith(FOREIGN_CHECKPOINT_SUFFIXES):
            raise ModelError(
                f"{model}: a PyTorch pickle, not a tagseg checkpoint; convert the authors' .pth.tar "
                "with `tagseg convert-checkpoint` (only tensors are read, nothing is executed)"
            )
        raise ModelError(f"{model}: not a model file this version can load (expected a TAGS .safetensors checkpoint)")
    if path.exists():
        from ..paths import file_kind

        what = file_kind(path)
        raise ModelError(f"{model}: is {'a folder' if what == 'folder' else what}, not a checkpoint file")
    known = ", ".join(sorted(BACKENDS))
    raise ModelError(f"unknown model '{model}' (known: auto, {known}; or a checkpoint file path)")


def _declared_kinds() -> list[BackendKind]:
    kinds = [*BACKENDS.values(), *CHECKPOINT_KINDS.values()]
    return [kind for kind in kinds if isinstance(kind, BackendKind) and kind.options is not None]


def check_option_names(options: dict | None) -> None:
    """A ModelError naming every option that no registered kind takes (a typo is refused, never dropped)."""
    known: set[str] = set()
    for kind in _declared_kinds():
        known |= kind.option_names() or frozenset()  # declared kinds only: never None
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ModelError(
            f"no model has the option {', '.join(repr(k) for k in unknown)} (known: {', '.join(sorted(known))})"
        )


def options_for(name: str, options: dict | None) -> dict:
    """The part of `options` that `name`'s kind takes, for a caller holding options for several kinds: a Session
    with model="auto" runs a TAGS checkpoint or the default model as the description changes, and `tagseg segment`
    passes its TAGS flags whichever model runs. A name that no registered kind takes is a ModelError."""
    options = dict(options or {})
    if not options:
        return options
    check_option_names(options)
    known = kind_of(name).option_names()
    return options if known is None else {key: value for key, value in options.items() if key in known}


def create_backend(name: str, device: str, options: dict | None = None) -> Backend:
    """A new backend for a resolved model name; an option its kind does not take is a ModelError."""
    kind = kind_of(name)
    return kind.create(device, options, checkpoint=name[len(kind.prefix) :] if kind.prefix else None)


# Loaded backends shared by every Session in the process (a model load costs seconds; a Slicer user
# switching volumes, or `tagseg evaluate` going through cases, should pay it once). Each entry has a
# lock: sessions run on their own worker threads, and a backend holds per-volume state.
_SHARED: OrderedDict[tuple, tuple[Backend, threading.Lock]] = OrderedDict()
_SHARED_LOCK = threading.Lock()
SHARED_BACKENDS = 2


def acquire_backend(name: str, device: str, options: dict | None = None) -> tuple[Backend, threading.Lock]:
    """A loaded backend for (name, device, options) and the lock to hold while using it."""
    factory = BACKENDS.get(name)
    # the entry itself (not its id, which a new object may reuse) tells re-registered backends apart
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


__all__ = [
    "Backend",
    "GridPrompts",
    "BackendKind",
    "BACKENDS",
    "CHECKPOINT_KINDS",
    "DEFAULT_BACKEND",
    "TAGS_PREFIX",
    "ANATOMY",
    "BOXES",
    "NEGATIVE_POINTS",
    "PROPOSE_POINT",
    "register_backend",
    "kind_of",
    "checkpoint_of",
    "resolve_model_name",
    "check_option_names",
    "options_for",
    "create_backend",
    "acquire_backend",
    "release_shared_backends",
]
