"""Intensity normalisation: CT windows in HU, MR percentiles. Always explicit, never the display window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class IntensityPreset:
    """How raw voxel values become 0..1: a fixed HU window (CT) or robust percentiles (MR and unknown)."""

    name: str
    window_hu: tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    def describe(self) -> str:
        if self.window_hu:
            return f"{self.name} (CT window {self.window_hu[0]:g}..{self.window_hu[1]:g} HU)"
        return f"{self.name} (percentiles {self.percentiles[0]:g}..{self.percentiles[1]:g})"


SOFT_TISSUE = IntensityPreset("ct-soft-tissue", window_hu=(-160.0, 240.0))
LUNG = IntensityPreset("ct-lung", window_hu=(-1000.0, 400.0))
BRAIN_CT = IntensityPreset("ct-brain", window_hu=(-20.0, 100.0))
BONE = IntensityPreset("ct-bone", window_hu=(-500.0, 1500.0))
PERCENTILE = IntensityPreset("percentile")

PRESETS = {p.name: p for p in (SOFT_TISSUE, LUNG, BRAIN_CT, BONE, PERCENTILE)}


def finite_or_floor(array: np.ndarray) -> np.ndarray:
    """A float32 copy with NaN/inf voxels replaced by the lowest finite value (documented NaN handling)."""
    data = np.asarray(array, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        data = data.copy()
        data[bad] = np.min(data[~bad]) if (~bad).any() else 0.0
    return data


def looks_like_ct(array: np.ndarray) -> bool:
    """CT in HU has air near -1000 (or a saturated window floor below -100) and no huge positive range."""
    sample = np.asarray(array).ravel()[:: max(1, np.asarray(array).size // 200_000)].astype(np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return False
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return lo < -100 and -1200 <= sample.min() and hi < 4000


BACKGROUND_FRACTION = 0.25


def constant_background(sample: np.ndarray) -> float | None:
    """The fill value of a masked image (skull-stripped or zero-padded MR: one value, the minimum, in a
    quarter or more of the voxels), or None. Percentiles taken with it would depend on how much of the
    field of view is empty, and a z-scored image's fill would land mid-grey."""
    if sample.size == 0:
        return None
    low = float(sample.min())
    if np.count_nonzero(sample == low) >= BACKGROUND_FRACTION * sample.size:
        return low
    return None


def normalise(array: np.ndarray, preset: IntensityPreset, reference: np.ndarray | None = None) -> np.ndarray:
    """Map voxel values to float32 0..1 with `preset`. `reference` supplies percentile statistics (e.g. the whole volume)."""
    data = finite_or_floor(array)
    if preset.window_hu is not None:
        lo, hi = preset.window_hu
    else:
        ref = data if reference is None else finite_or_floor(reference)
        sample = ref.ravel()[:: max(1, ref.size // 2_000_000)]
        background = constant_background(sample)
        if background is not None:
            sample = sample[sample != background]
        lo, hi = (float(v) for v in np.percentile(sample, preset.percentiles))
    if hi <= lo:
        return np.zeros_like(data, dtype=np.float32)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
