"""2D resizing in NumPy with PyTorch's exact sampling rules, so the default model runs without importing torch.

`torch.nn.functional.interpolate` is what LiteMedSAM's own pipeline uses to make its 256x256 inputs and to bring
its logits back to the slice; torch alone costs ~0.5 GB of memory and 1-2 s to import on the 2-core build
machine. These functions sample the same source pixels with the same weights ("bilinear" with
`align_corners=False`, and "area" = adaptive average pooling); they differ from torch only in float32
rounding (test_resize.py holds them to 1e-5).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the second one's weight (half-pixel centres), computed
    in float32 as torch does."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    first = np.minimum(src.astype(np.int64), n_in - 1)
    second = np.minimum(first + 1, n_in - 1)
    return first, second, (src - first.astype(np.float32)).astype(np.float32)


@lru_cache(maxsize=64)
def _area_bounds(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index: the [start, end) source range adaptive average pooling averages."""
    index = np.arange(n_out)
    return (index * n_in) // n_out, -((-(index + 1) * n_in) // n_out)


def _bilinear_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    first, second, weight = _bilinear_taps(a.shape[axis], n_out)
    shape = [1] * a.ndim
    shape[axis] = n_out
    weight = weight.reshape(shape)
    return np.take(a, first, axis=axis) * (1 - weight) + np.take(a, second, axis=axis) * weight


def _area_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    start, end = _area_bounds(a.shape[axis], n_out)
    padded = np.concatenate(
        [np.zeros_like(np.take(a, [0], axis=axis), dtype=np.float64), np.cumsum(a, axis=axis, dtype=np.float64)],
        axis=axis,
    )
    shape = [1] * a.ndim
    shape[axis] = n_out
    sums = np.take(padded, end, axis=axis) - np.take(padded, start, axis=axis)
    return (sums / (end - start).reshape(shape)).astype(np.float32)


def resize_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The last two axes of `a` resized to `size` as torch's bilinear interpolation (align_corners=False)."""
    a = np.asarray(a, dtype=np.float32)
    return _bilinear_axis(_bilinear_axis(a, size[0], a.ndim - 2), size[1], a.ndim - 1).astype(np.float32)


def resize_area(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The last two axes of `a` resized to `size` as torch's "area" mode (adaptive average pooling)."""
    a = np.asarray(a, dtype=np.float32)
    return _area_axis(_area_axis(a, size[0], a.ndim - 2), size[1], a.ndim - 1)
