"""Train a TAGS network on a few in-memory volumes with the published step (clicks, losses, optimisers).

This is the small loop behind the tests, the demo and the GPU check: crops centred near the tumour
(jittered), built by the same `crop` module as inference. `tagseg train` (datasets, augmentation,
validation, DDP) is the full recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..volume import Volume
from .crop import CropGrid, Intensity, ct_channel, mask_channel
from .model import TagsNet
from .recipe import make_optimisers, sample_training_points, training_step


@dataclass(frozen=True)
class Case:
    image: Volume
    label: Volume  # tumour = nonzero
    organ: Volume | None  # organ mask for the anatomy channel


def training_crop(case: Case, centre_ras, model: TagsNet, intensity: Intensity) -> tuple[torch.Tensor, torch.Tensor]:
    """(CT, CT, organ) crop [3, P, P, P] and its tumour label [P, P, P] around `centre_ras`."""
    config = model.config
    grid = CropGrid.centred(centre_ras, config.crop_size, config.spacing_mm)
    image = (
        case.image
        if np.asarray(case.image.array).dtype == np.float32
        else case.image.with_array(np.asarray(case.image.array, np.float32))
    )
    ct = ct_channel(image, grid, intensity)
    organ = mask_channel(case.organ, grid) if case.organ is not None else ct
    label = mask_channel(case.label, grid)
    return torch.from_numpy(np.stack([ct, ct, organ])), torch.from_numpy(label)


def tumour_centre_ras(label: Volume) -> np.ndarray:
    kji = np.argwhere(np.asarray(label.array) > 0)
    return label.kji_to_ras(kji.mean(0))[0]


def fit(
    model: TagsNet,
    cases: list[Case],
    intensity: Intensity,
    class_embeddings: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-4,
    jitter_mm: float = 6.0,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    log: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """`steps` optimisation steps cycling over `cases`; returns the per-step losses."""
    rng = np.random.default_rng(seed)
    optimisers = make_optimisers(model, lr=lr)
    centres = [tumour_centre_ras(c.label) for c in cases]
    history = []
    for step in range(steps):
        index = step % len(cases)
        centre = centres[index] + rng.uniform(-jitter_mm, jitter_mm, 3)
        crop, label = training_crop(cases[index], centre, model, intensity)
        points, labels = sample_training_points(label.numpy(), rng)
        losses = training_step(
            model, optimisers, crop, label, points, labels, class_embeddings, autocast_dtype=autocast_dtype
        )
        history.append(losses)
        if log is not None:
            log(step, losses)
    model.eval()
    return history
