"""The interface every model backend implements. Backends see the source `Volume` and prompts in
source KJI indices; each does its own source->model-grid conversion through `tagseg.geometry`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..volume import Volume


@dataclass(frozen=True)
class GridPrompts:
    """A `PromptSet` expressed on the source grid: continuous KJI indices and a boolean anatomy mask."""

    positive_kji: np.ndarray            # (N, 3)
    negative_kji: np.ndarray            # (M, 3)
    boxes_kji: tuple[tuple[np.ndarray, np.ndarray], ...]  # (lo, hi) continuous KJI, lo <= hi
    text: str
    anatomy: np.ndarray | None          # bool KJI on the source grid, or None


class Backend(ABC):
    name: str = ""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @abstractmethod
    def set_image(self, volume: Volume) -> None:
        """Prepare for a new volume; cheap if the same content was set before."""

    @abstractmethod
    def predict(self, prompts: GridPrompts) -> np.ndarray:
        """uint8 KJI mask on the source grid (1 = target)."""

    def info(self) -> dict:
        return {"name": self.name}
