"""Prompts in RAS millimetres (what Slicer shows at the cursor) and their validation against a volume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from .errors import PromptError
from .volume import Volume

State = TypeVar("State")


class UndoHistory(Generic[State]):
    """Undo and redo over immutable prompt states; the local Session and the engine client's RemoteSession
    keep their prompts in one, so both take a click back the same way."""

    def __init__(self, first: State) -> None:
        self._states: list[State] = [first]
        self._redo: list[State] = []

    @property
    def current(self) -> State:
        return self._states[-1]

    def push(self, state: State) -> None:
        """A new interaction: it becomes current and what was undone cannot be redone any more."""
        self._states.append(state)
        self._redo.clear()

    def undo(self) -> bool:
        """Take back the last interaction; False when there is nothing to undo."""
        if len(self._states) == 1:
            return False
        self._redo.append(self._states.pop())
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        self._states.append(self._redo.pop())
        return True

    def reset(self, first: State) -> None:
        self._states = [first]
        self._redo.clear()


def _ras(value, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise PromptError(f"{what}: expected three numbers R,A,S in mm, got {value!r}") from None
    if arr.shape != (3,):
        raise PromptError(f"{what}: expected three numbers R,A,S in mm, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise PromptError(f"{what}: coordinates must be finite numbers, got {tuple(arr)}")
    return arr


def _floats3(arr: np.ndarray) -> tuple[float, float, float]:
    """A checked point (see `_ras`) as three floats."""
    return float(arr[0]), float(arr[1]), float(arr[2])


@dataclass(frozen=True)
class Point:
    ras: tuple[float, float, float]
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in RAS given by two opposite corners (any order)."""

    corner_a: tuple[float, float, float]
    corner_b: tuple[float, float, float]


@dataclass(frozen=True)
class PromptSet:
    """Everything the user has said so far; immutable so undo is a pop and results can be cached by it."""

    points: tuple[Point, ...] = ()
    boxes: tuple[Box, ...] = ()
    text: str = ""
    anatomy: Volume | None = field(default=None, compare=False)
    anatomy_key: str = ""

    @property
    def positive_points(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.positive)

    @property
    def negative_points(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if not p.positive)

    def has_spatial_prompt(self) -> bool:
        return bool(self.positive_points or self.boxes)


def make_point(volume: Volume, ras, positive: bool = True) -> Point:
    what = "include point" if positive else "exclude point"
    arr = _ras(ras, what)
    if not volume.contains_kji(volume.ras_to_kji(arr))[0]:
        raise PromptError(
            f"{what} ({arr[0]:.1f}, {arr[1]:.1f}, {arr[2]:.1f}) is outside the volume "
            f"(RAS bounds {volume.describe_bounds()})"
        )
    return Point(_floats3(arr), bool(positive))


def make_box(volume: Volume, corner_a, corner_b) -> Box:
    a, b = _ras(corner_a, "box corner"), _ras(corner_b, "box corner")
    kji = volume.ras_to_kji(np.stack([a, b]))
    lo, hi = np.minimum(kji[0], kji[1]), np.maximum(kji[0], kji[1])
    size_mm = np.abs(a - b)
    if np.all(size_mm < 1e-6):
        raise PromptError("box has zero size (both corners are the same point)")
    # a box may be flat along the slice axis (a 2D box drawn on one slice); it needs extent in-plane
    if np.count_nonzero((hi - lo) * volume.spacing_kji > 1e-6) < 2:
        raise PromptError(
            f"box has zero size in two directions ({size_mm[0]:.1f} x {size_mm[1]:.1f} x {size_mm[2]:.1f} mm)"
        )
    shape = np.array(volume.shape_kji)
    inter_lo, inter_hi = np.maximum(lo, -0.5), np.minimum(hi, shape - 0.5)
    if np.any(inter_hi < inter_lo):
        raise PromptError(
            f"box ({a[0]:.1f}, {a[1]:.1f}, {a[2]:.1f})-({b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}) "
            f"is outside the volume (RAS bounds {volume.describe_bounds()})"
        )
    return Box(_floats3(a), _floats3(b))
