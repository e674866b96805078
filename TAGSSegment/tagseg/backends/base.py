"""The interface every model backend implements. Backends see the source `Volume` and prompts in
source KJI indices; each does its own source->model-grid conversion through `tagseg.geometry`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ..volume import Volume

# What a backend takes and can do, declared in `Backend.capabilities`; callers test membership, never `hasattr`.
ANATOMY = "anatomy"  # an organ mask bounds the result (`GridPrompts.anatomy`)
BOXES = "boxes"  # box prompts
NEGATIVE_POINTS = "negative_points"  # exclude clicks
PROPOSE_POINT = "propose_point"  # text-only start: `propose_point` finds a first include click


@dataclass(frozen=True)
class GridPrompts:
    """A `PromptSet` expressed on the source grid: continuous KJI indices and a boolean anatomy mask."""

    # fmt: off
    positive_kji: np.ndarray            # (N, 3)
    negative_kji: np.ndarray            # (M, 3)
    boxes_kji: tuple[tuple[np.ndarray, np.ndarray], ...]  # (lo, hi) continuous KJI, lo <= hi
    text: str
    anatomy: np.ndarray | None          # bool KJI on the source grid, or None
    history: str = ""                   # whose prompts these are (a session): a click corrects only its own results
    # fmt: on


class Backend(ABC):
    """A model behind the session interface.

    Three things a backend may tell its caller besides the mask:
    - progress: a step that can take over 2 s calls `self.report_progress(stage, done, total)` as it goes
      (per slice, per crop, ...); the Session sets `progress` to its callback around each call.
    - `crops`: after `predict`, the regions the model saw when it did not see the whole volume, so the
      result checks can tell a mask cut off by a crop's edge (`tagseg.checks.Crop`; empty = whole volume).
    - `last_run`: after `predict`, what the inference ran when it has settings of its own (TAGS: crops,
      precision, organ channel, text fusion), for `tagseg.evaluate`'s per-case record; empty = nothing to say.
    """

    name: str = ""
    # set by the Session for the duration of one call; None when nobody listens
    progress: Callable[[str, int, int], None] | None = None
    crops: tuple = ()
    last_run: Mapping[str, Any] = MappingProxyType({})
    # the prompts every backend so far takes; a backend that can do more (or less) says so
    capabilities: frozenset[str] = frozenset({ANATOMY, BOXES, NEGATIVE_POINTS})

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def report_progress(self, stage: str, done: int, total: int) -> None:
        """`done` of `total` units of `stage` (e.g. "slices") are finished; cheap when nobody listens."""
        callback = self.progress
        if callback is not None:
            callback(stage, int(done), int(total))

    @abstractmethod
    def set_image(self, volume: Volume) -> None:
        """Prepare for a new volume; cheap if the same content was set before."""

    @abstractmethod
    def predict(self, prompts: GridPrompts) -> np.ndarray:
        """uint8 KJI mask on the source grid (1 = target)."""

    def work_ahead(self) -> None:  # noqa: B027 (optional: does nothing unless a backend overrides it)
        """Start, in the background, what the next call on this result will likely need (interactive use; the
        Session calls it after `predict` unless told not to). Must return at once; the next call stops it."""

    def stop_background(self) -> None:  # noqa: B027 (optional, as work_ahead)
        """Stop work started by `work_ahead`; the Session calls it on close."""

    def propose_point(self, prompts: GridPrompts) -> np.ndarray:
        """A first include point (RAS) from the text and organ mask alone; only with `PROPOSE_POINT`."""
        raise NotImplementedError(f"{type(self).__name__} does not declare {PROPOSE_POINT}")

    def info(self) -> dict:
        return {"name": self.name}
