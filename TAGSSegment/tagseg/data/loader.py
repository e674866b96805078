"""A torch Dataset over preprocessed cases and the DataLoader the trainer iterates (TAGS_SPEC §5.3).

Augmentation randomness is seeded per sample from (seed, epoch, index), so a run is reproducible
whatever the number of loader workers or DDP ranks, and each epoch sees new augmentations once the
trainer calls `set_epoch` (or `set_random_state`, which the trainer calls with a per-epoch seed).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import InputError
from ..tags.crop import Intensity
from ..tags.tasks import Task
from .datasets import Case
from .preprocess import PreprocessedCache, task_intensity
from .transforms import first_sample


class TrainingDataset(Dataset):
    """Samples {"image", "label", "organ": float32 [1, D, H, W], "case_id": str} of cached 1 mm cases
    passed through `transforms` (train, val or test transforms of `tagseg.data.transforms`)."""

    def __init__(
        self,
        cases: Sequence[Case],
        cache: PreprocessedCache,
        transforms: Callable,
        intensity: Task | str | Intensity | Mapping,
        seed: int = 0,
        *,
        tumour_label: int | None = 2,
    ) -> None:
        if not cases:
            raise InputError("no cases for the training dataset")
        self.cases = list(cases)
        self.cache = cache
        self.transforms = transforms
        self.intensity = task_intensity(intensity)
        self.seed = int(seed)
        self.epoch = 0
        self.tumour_label = tumour_label

    def __len__(self) -> int:
        return len(self.cases)

    def set_epoch(self, epoch: int) -> None:
        """New augmentations per epoch; call before creating the epoch's iterator (workers copy the dataset)."""
        self.epoch = int(epoch)

    def set_random_state(self, seed: int) -> TrainingDataset:
        """Replace the base seed (the trainer passes a per-epoch, per-rank seed)."""
        self.seed = int(seed)
        return self

    def sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        entry = self.cache.load(case, self.intensity.window, self.tumour_label)
        if entry.label is None or entry.organ is None:
            missing = "label" if entry.label is None else "organ mask"
            raise InputError(f"{case.case_id}: no {missing}; run check_cases before training")
        data = {
            "image": np.asarray(entry.image.array, np.float32)[None],
            "label": np.asarray(entry.label.array, np.float32)[None],
            "organ": np.asarray(entry.organ.array, np.float32)[None],
        }
        if hasattr(self.transforms, "set_random_state"):
            self.transforms.set_random_state(seed=self.sample_seed(index))
        out = first_sample(self.transforms(data))
        sample: dict[str, Any] = {key: _plain(out[key]) for key in ("image", "label", "organ")}
        sample["case_id"] = case.case_id
        return sample


def _plain(value) -> torch.Tensor:
    """A plain float32 tensor (MONAI's MetaTensor carries per-sample metadata the collate does not need)."""
    tensor = value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(np.asarray(value))
    return tensor.float().contiguous()


def seed_worker(worker_id: int) -> None:
    """Seed numpy/random in each worker from torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int = 1,
    workers: int = 0,
    shuffle: bool = True,
    distributed: bool = False,
    *,
    seed: int = 0,
    drop_last: bool | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader with deterministic shuffling and worker seeding; a DistributedSampler when distributed
    (the trainer calls `loader.sampler.set_epoch(epoch)`, or `start_epoch`). drop_last defaults to True
    when shuffling (training, as published) and False otherwise (validation)."""
    drop = shuffle if drop_last is None else drop_last
    generator = torch.Generator().manual_seed(int(seed))
    sampler: DistributedSampler | None = None
    if distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=int(seed), drop_last=False
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=int(workers),
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def start_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler (DDP shuffling) and the dataset (augmentation seeds) which epoch begins."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
