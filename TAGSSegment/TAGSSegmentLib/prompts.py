"""The prompts the effect holds for the selected segment (the model is stateless: every prediction gets all of them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Vec3 = tuple[float, float, float]


@dataclass
class Prompts:
    include: list[Vec3] = field(default_factory=list)
    exclude: list[Vec3] = field(default_factory=list)
    boxes: list[tuple[Vec3, Vec3]] = field(default_factory=list)

    def add_point(self, ras: Sequence[float], include: bool = True) -> None:
        point = as_vec3(ras, "point")
        (self.include if include else self.exclude).append(point)

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float]) -> None:
        a, b = as_vec3(corner_a, "box corner"), as_vec3(corner_b, "box corner")
        lo = tuple(min(x, y) for x, y in zip(a, b, strict=False))
        hi = tuple(max(x, y) for x, y in zip(a, b, strict=False))
        self.boxes.append((lo, hi))  # type: ignore[arg-type]

    def clear(self) -> None:
        self.include.clear()
        self.exclude.clear()
        self.boxes.clear()

    @property
    def empty(self) -> bool:
        return not (self.include or self.exclude or self.boxes)

    @property
    def has_spatial_prompt(self) -> bool:
        """The model needs an include point or a box; exclude points alone say where the target is not."""
        return bool(self.include or self.boxes)

    def describe(self) -> str:
        return f"{len(self.include)} include, {len(self.exclude)} exclude, {len(self.boxes)} box(es)"

    def predict_arguments(self, volume_node: Any, text: str, anatomy: Any = None) -> dict:
        """Keyword arguments for TAGSLogic.predict/predict_async, copied so later clicks cannot change them."""
        return {
            "volume_node": volume_node,
            "include_ras": [list(p) for p in self.include],
            "exclude_ras": [list(p) for p in self.exclude],
            "boxes_ras": [(list(lo), list(hi)) for lo, hi in self.boxes],
            "text": (text or "").strip(),
            "anatomy": anatomy,
        }


def as_vec3(values: Sequence[float], what: str) -> Vec3:
    """Three finite floats; ValueError naming `what` otherwise (a click, corner or normal from the view)."""
    try:
        x, y, z = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} needs three numbers, got {values!r}") from None
    if not all(math.isfinite(v) for v in (x, y, z)):
        raise ValueError(f"{what} is not finite: {values!r}")
    return (x, y, z)
