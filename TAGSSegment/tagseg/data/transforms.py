"""The published MONAI dictionary transforms (TAGS_SPEC §4.5) for the keys image, label and organ.

Reproduced step for step, including the quirks: the validation crop is zero-padded before z-scoring,
the training crop after it; the label and the organ mask are interpolated like the image and binarised
at 0.5 afterwards. Only the crop size is a parameter (128 for TAGS, 32 for tags-tiny); the padding
around the positive/negative crop stays round(1.2 * crop) as published. Inputs are channel-first
arrays [1, D, H, W] in the crop orientation (`preprocess.resample_case`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    MapTransform,
    NormalizeIntensityd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandShiftIntensityd,
    RandSpatialCropd,
    RandZoomd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from ..tags.crop import Intensity
from ..tags.tasks import Task
from .preprocess import task_intensity

KEYS = ("image", "label", "organ")
MASK_KEYS = ("label", "organ")
# tasks trained with 3DSAM-adapter's `do_dummy_2D` (in-plane rotation + in-plane zoom) instead of 3D zoom
DUMMY_2D_TASKS = frozenset({"pancreas", "colon"})


class BinariseMasksd(MapTransform):
    """Masks -> {0, 1} at `threshold`, keeping their dtype (the published BinarizeLabeld, applied to the
    organ mask as well, as TAGS does)."""

    def __init__(self, keys=MASK_KEYS, threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            value = torch.as_tensor(out[key])
            out[key] = (value > self.threshold).to(value.dtype)
        return out


class AboveWindow:
    """CropForeground's selector "image > window minimum", as a class so loader workers can pickle it."""

    def __init__(self, minimum: float) -> None:
        self.minimum = float(minimum)

    def __call__(self, image):
        return image > self.minimum


def transform_settings(task: Task | str | Intensity | Mapping) -> tuple[Intensity, bool]:
    """(intensity, dummy_2d) for a published task, its key, an `Intensity` or a dict. A dict may set
    "dummy_2d": true to get the pancreas-style augmentation."""
    intensity = task_intensity(task)
    if isinstance(task, Task):
        return intensity, task.key in DUMMY_2D_TASKS
    if isinstance(task, str):
        return intensity, task in DUMMY_2D_TASKS
    if isinstance(task, Mapping):
        return intensity, bool(task.get("dummy_2d", False))
    return intensity, False


def pad_size(crop: int, pad: int | None = None) -> int:
    """round(1.2 * crop): the published margin for the positive/negative crop (154 for 128)."""
    return int(round(1.2 * crop)) if pad is None else int(pad)


def _clip(intensity: Intensity, allow_missing: bool = False) -> ScaleIntensityRanged:
    lo, hi = intensity.window
    return ScaleIntensityRanged(
        keys="image", a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True, allow_missing_keys=allow_missing
    )


def _normalise(intensity: Intensity) -> NormalizeIntensityd:
    # monai takes a float here (and applies it to the whole image); its annotation says array or tensor only
    return NormalizeIntensityd(
        keys="image",
        subtrahend=intensity.mean,  # type: ignore[arg-type]
        divisor=intensity.std,  # type: ignore[arg-type]
    )


def train_transforms(task: Task | str | Intensity | Mapping, crop: int = 128, pad: int | None = None) -> Compose:
    """Published training augmentation -> one [1, crop, crop, crop] sample per call (in a list of one)."""
    intensity, dummy_2d = transform_settings(task)
    margin = pad_size(crop, pad)
    keys = list(KEYS)
    steps = [
        _clip(intensity),
        RandShiftIntensityd(keys="image", offsets=20, prob=0.5),
        # allow_smaller=True: the box never extends past the image (the MONAI 1.1 behaviour the authors had)
        CropForegroundd(keys=keys, source_key="image", select_fn=AboveWindow(intensity.window[0]), allow_smaller=True),
        _normalise(intensity),
    ]
    if dummy_2d:
        steps += [
            RandRotated(keys=keys, prob=0.3, range_x=30 / 180 * math.pi, keep_size=False),
            RandZoomd(keys=keys, prob=0.3, min_zoom=[1.0, 0.9, 0.9], max_zoom=[1.0, 1.1, 1.1], mode="trilinear"),
        ]
    else:
        steps.append(RandZoomd(keys=keys, prob=0.8, min_zoom=0.85, max_zoom=1.25, mode="trilinear"))
    steps += [
        BinariseMasksd(MASK_KEYS),
        SpatialPadd(keys=keys, spatial_size=[margin] * 3),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=[margin] * 3, pos=2, neg=1, num_samples=1),
        RandSpatialCropd(keys=keys, roi_size=[crop] * 3, random_size=False),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandRotate90d(keys=keys, prob=0.5, max_k=3),
    ]
    return Compose(steps)


def val_transforms(task: Task | str | Intensity | Mapping, crop: int = 128) -> Compose:
    """Published validation crop: clip, pad, a crop centred on a tumour voxel, z-score, binarise."""
    intensity, _ = transform_settings(task)
    keys = list(KEYS)
    return Compose(
        [
            _clip(intensity),
            SpatialPadd(keys=keys, spatial_size=[crop] * 3),
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=[crop] * 3, pos=1, neg=0, num_samples=1),
            _normalise(intensity),
            BinariseMasksd(MASK_KEYS),
        ]
    )


def test_transforms(task: Task | str | Intensity | Mapping) -> Compose:
    """Published test preprocessing of the whole 1 mm volume: clip, z-score, binarise (label optional)."""
    intensity, _ = transform_settings(task)
    return Compose(
        [
            _clip(intensity),
            _normalise(intensity),
            BinariseMasksd(MASK_KEYS, allow_missing_keys=True),
        ]
    )


def first_sample(output) -> dict:
    """The single sample of a transform output (the positive/negative crop returns a list of one)."""
    if isinstance(output, (list, tuple)):
        if len(output) != 1:
            raise ValueError(f"expected one sample, got {len(output)}")
        return output[0]
    return output


__all__ = [
    "KEYS",
    "MASK_KEYS",
    "DUMMY_2D_TASKS",
    "BinariseMasksd",
    "AboveWindow",
    "transform_settings",
    "pad_size",
    "train_transforms",
    "val_transforms",
    "test_transforms",
    "first_sample",
]
