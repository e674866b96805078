"""`tagseg train`: the published TAGS recipe (TAGS_SPEC.md §5) on one GPU or many (torchrun + DDP).

One crop per case per epoch, 10 positive + 20 random clicks, DiceCE + alignment losses, three AdamW
with LinearLR stepped per epoch, clipping 1.0, validation every epoch, `best`/`last` checkpoints in
the project's TAGS format (they drop straight into the CLI and Slicer) plus a resumable training
state. Randomness is re-seeded from (seed, epoch, rank) at every epoch, so a run resumed from `last`
continues exactly as an uninterrupted one would. Launched by `torchrun`, it trains with
DistributedDataParallel and distributed samplers; otherwise in one process.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, one_line
from .fs import atomic_write, write_json_atomic, write_text_atomic
from .tags import build_tags
from .tags.losses import alignment_loss, soft_dice_loss
from .tags.model import TagsNet
from .tags.recipe import Optimisers, make_optimisers, sample_training_points, training_step

STATE_NAME = "last.train-state.pt"


@dataclass
class TrainConfig:
    out: str
    preset: str = "tags-b"
    epochs: int = 200
    lr: float = 1e-4
    weight_decay: float = 1e-5
    schedule_iters: int | None = None  # LinearLR total_iters; None = 500 for 200 epochs, else 2.5 x epochs
    seed: int = 0
    autocast: str = "off"  # the paper trains in fp32; "bf16"/"fp16" are options
    point_labels: bool = False  # extension: learn a +/- label embedding for clicks
    max_steps_per_epoch: int | None = None  # bound an epoch (tests, smoke runs)
    device: str = "auto"
    sam_weights: str | None = None
    text_encoder: str | None = None  # default: the preset's (paper: open_clip:ViT-L-14:openai)
    object_word: str = ""
    object_word_mode: str = "dataset-key"
    task: str = "custom"
    anatomy: str = "tumour"
    organ_labels: list = field(default_factory=lambda: ["organ"])
    intensity: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def total_iters(self) -> int:
        if self.schedule_iters:
            return self.schedule_iters
        return 500 if self.epochs == 200 else max(1, round(2.5 * self.epochs))


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return Distributed()
    import torch.distributed as dist

    env = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return env


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _atomic_torch_save(obj, path: Path) -> None:
    """Through the one atomic writer; torch's zip archive is CRC-checked member by member before the rename
    (streamed: an optimiser state several times the model's size is not loaded twice)."""
    import zipfile

    def verify(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(tmp) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError) as exc:
            raise OSError(errno.EIO, f"the training state read back is damaged ({exc})") from None
        if bad is not None:
            raise OSError(errno.EIO, f"the training state read back is damaged ({bad})")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:  # a Python file: a short write raises OSError with the OS's reason
            try:
                torch.save(obj, stream)
            except RuntimeError as exc:  # torch's zip writer masks that OSError with its own error
                cause = exc.__context__ or exc.__cause__
                if isinstance(cause, OSError):
                    raise cause from None
                raise OSError(errno.EIO, one_line(exc, 200)) from None

    atomic_write(path, write, verify, suffix=path.suffix, what="the training state")


def _crop_from_sample(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(CT, CT, organ) [3, P, P, P] and the binary label [P, P, P] from a loader sample."""
    image = torch.as_tensor(sample["image"]).float()
    organ = torch.as_tensor(sample["organ"]).float()
    label = torch.as_tensor(sample["label"]).float()
    if image.dim() == 5:  # a batch of one from a DataLoader
        image, organ, label = image[0], organ[0], label[0]
    return torch.cat([image, image, organ], dim=0), (label[0] > 0.5).float()


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        train_data,
        val_data,
        class_embeddings: torch.Tensor | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from .devices import resolve_device

        self.config = config
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.startswith("cuda"):
            self.device = f"cuda:{self.dist.local_rank}"
            torch.cuda.set_device(self.dist.local_rank)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.train_data, self.val_data = train_data, val_data
        seed_everything(config.seed)
        self.model = self._build_model()
        self.class_embeddings = (class_embeddings if class_embeddings is not None else self._class_embeddings()).float()
        self.forward: torch.nn.Module = self.model  # the model, or its DistributedDataParallel wrapper
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.local_rank] if self.device.startswith("cuda") else None
            # prompt encoders 1-3 get no gradient in the published forward
            self.forward = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        self.optimisers: Optimisers = make_optimisers(self.model, config.lr, config.weight_decay, config.total_iters())
        self.epoch = 0
        self.best_val = math.inf
        self.history: list[dict] = []

    # -- setup --------------------------------------------------------------------------------
    def _build_model(self) -> TagsNet:
        from .tags.config import get_preset

        preset = get_preset(self.config.preset)
        if self.config.point_labels != preset.point_labels:
            preset = type(preset).from_dict({**preset.to_dict(), "point_labels": self.config.point_labels})
        model = build_tags(preset, seed=self.config.seed)
        if self.config.sam_weights:
            from .tags.sam_weights import load_sam_weights

            load_sam_weights(model, self.config.sam_weights)
            self.log(f"SAM ViT-B weights loaded from {self.config.sam_weights}")
        return model.to(self.device)

    def _class_embeddings(self) -> torch.Tensor:
        from .tags import text_encoder as te

        spec = self.config.text_encoder or self.model.config.text_encoder
        return te.class_embeddings(te.make_text_encoder(spec), self.config.object_word)

    def _autocast_dtype(self):
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.config.autocast]

    # -- checkpoints --------------------------------------------------------------------------
    def _metadata_kwargs(self) -> dict:
        c = self.config
        spec = c.text_encoder or self.model.config.text_encoder
        return dict(
            task=c.task,
            anatomy=c.anatomy,
            intensity=c.intensity,
            organ_labels=c.organ_labels,
            text={"encoder": spec, "object_word": c.object_word, "object_word_mode": c.object_word_mode},
            class_embeddings=self.class_embeddings,
        )

    def save(self, name: str, extra: dict | None = None) -> Path:
        from .tags.checkpoint import save_model

        path = self.out / f"{name}.safetensors"
        provenance = {
            **self.config.provenance,
            "epoch": self.epoch,
            "best_val_loss": self.best_val,
            "recipe": {
                k: v
                for k, v in asdict(self.config).items()
                if k in ("preset", "epochs", "lr", "weight_decay", "seed", "autocast", "point_labels")
            },
            "world_size": self.dist.world,
            **(extra or {}),
        }
        save_model(self.model, path, provenance=provenance, **self._metadata_kwargs())
        return path

    def save_state(self) -> None:
        state = {
            "epoch": self.epoch,
            "best_val": self.best_val,
            "history": self.history,
            "optimisers": self.optimisers.state_dict(),
            "config": asdict(self.config),
        }
        _atomic_torch_save(state, self.out / STATE_NAME)

    def resume(self) -> bool:
        """Continue from `last`: weights from last.safetensors, optimisers and counters from the state file."""
        from .paths import forget_input
        from .tags.checkpoint import load_model

        state_path, last = self.out / STATE_NAME, self.out / "last.safetensors"
        if not (state_path.is_file() and last.is_file()):
            return False
        model, _ = load_model(last)
        forget_input(last)  # the run's own checkpoint: continuing it replaces it
        self.model.load_state_dict(model.state_dict())
        state = torch.load(state_path, map_location=self.device, weights_only=True)
        self.optimisers.load_state_dict(state["optimisers"])
        self.epoch, self.best_val, self.history = state["epoch"], state["best_val"], list(state["history"])
        self.log(f"resumed from {last} after epoch {self.epoch}")
        return True

    # -- loops ----------------------------------------------------------------------------------
    def _loader(self, dataset, shuffle: bool, epoch: int):
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        seed = _epoch_seed(self.config.seed, epoch, self.dist.rank)
        if hasattr(dataset, "set_random_state"):
            dataset.set_random_state(seed)
        sampler: DistributedSampler | None = None
        if self.dist.enabled:
            sampler = DistributedSampler(
                dataset,
                num_replicas=self.dist.world,
                rank=self.dist.rank,
                shuffle=shuffle,
                seed=self.config.seed,
                drop_last=False,
            )
            sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=1,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=0,
            generator=generator,
            collate_fn=lambda items: items[0],
        )

    def train_epoch(self, epoch: int) -> dict:
        seed = _epoch_seed(self.config.seed, epoch, self.dist.rank)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        losses, mains, aligns = [], [], []
        loader = self._loader(self.train_data, True, epoch)
        for step, sample in enumerate(loader):
            if self.config.max_steps_per_epoch is not None and step >= self.config.max_steps_per_epoch:
                break
            crop, label = _crop_from_sample(sample)
            points, labels = sample_training_points(label.numpy(), rng)
            result = training_step(
                self.model,
                self.optimisers,
                crop,
                label,
                points,
                labels,
                self.class_embeddings,
                autocast_dtype=self._autocast_dtype(),
                forward=self.forward,
            )
            losses.append(result["loss"])
            mains.append(result["main"])
            aligns.append(result["alignment"])
        self.optimisers.epoch_end()
        return {
            "train_loss": _mean(losses),
            "train_main": _mean(mains),
            "train_alignment": _mean(aligns),
            "steps": len(losses),
        }

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        """Published validation: 10 positive clicks (random ones without tumour), Dice loss + alignment loss."""
        model = self.model.eval()
        rng = np.random.default_rng(_epoch_seed(self.config.seed, 10_000 + epoch, self.dist.rank))
        totals = torch.zeros(3, dtype=torch.float64)
        for sample in self._loader(self.val_data, False, 10_000 + epoch):
            crop, label = _crop_from_sample(sample)
            points, point_labels = sample_training_points(label.numpy(), rng, positives=10, randoms=0)
            if len(points) == 0:
                points, point_labels = sample_training_points(label.numpy(), rng, positives=0, randoms=10)
            crops, target = crop[None].to(self.device), label[None].to(self.device)
            with torch.autocast(
                device_type=torch.device(self.device).type,
                dtype=self._autocast_dtype() or torch.bfloat16,
                enabled=self._autocast_dtype() is not None,
            ):
                logits, encoded = model(crops, points[None].to(self.device), point_labels[None].to(self.device))
                maps = model.alignment_maps(encoded, self.class_embeddings.to(self.device))
            prob = torch.softmax(logits.float(), 1)[:, 1]
            loss = soft_dice_loss(prob, target) + alignment_loss([m.float() for m in maps], target)
            pred = (prob > 0.5).float()
            dice = (
                1.0
                if target.sum() + pred.sum() == 0
                else float(2 * (pred * target).sum() / (pred.sum() + target.sum()))
            )
            totals += torch.tensor([float(loss), dice, 1.0], dtype=torch.float64)
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(totals)
        n = max(float(totals[2]), 1.0)
        return {"val_loss": float(totals[0]) / n, "val_dice": float(totals[1]) / n, "val_cases": int(totals[2])}

    def fit(self, resume: bool = False) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and not self.resume():
            self.log("no resumable run in the output folder; starting from scratch")
        csv_path = self.out / "log.csv"
        writer = self._tensorboard()
        start_epoch = self.epoch
        bar = _progress(self.config.epochs, start_epoch, enabled=self.dist.main)
        for epoch in range(start_epoch, self.config.epochs):
            started = time.perf_counter()
            row = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            row.update(self.validate(epoch))
            row["lr"] = self.optimisers.optimisers["encoder"].param_groups[0]["lr"]
            row["seconds"] = round(time.perf_counter() - started, 2)
            self.epoch = epoch + 1
            improved = row["val_loss"] < self.best_val
            if improved:
                self.best_val = row["val_loss"]
            self.history.append(row)
            if self.dist.main:
                self.save("last")
                if improved:
                    self.save("best", {"best_epoch": self.epoch})
                self.save_state()
                _append_csv(csv_path, row)
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch" and isinstance(value, (int, float)):
                            writer.add_scalar(key, value, self.epoch)
                    writer.flush()
                bar.update(row)
            if self.dist.enabled:
                import torch.distributed as dist

                dist.barrier()
        bar.close()
        if writer is not None:
            writer.close()
        return {
            "epochs": self.epoch,
            "best_val_loss": self.best_val,
            "history": self.history,
            "best": str(self.out / "best.safetensors"),
            "last": str(self.out / "last.safetensors"),
        }

    def _tensorboard(self):
        if not self.dist.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            self.log("tensorboard is not installed; logging to log.csv only")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _append_csv(path: Path, row: dict) -> None:
    """One row more, by an atomic rewrite of the whole log (one line per epoch: a few KB): a full disk or a
    kill mid-write leaves the previous log, never half a row."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise InputError(f"{path}: cannot read the training log ({exc.strerror or exc})") from None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    if not text:
        writer.writeheader()
    writer.writerow(row)
    write_text_atomic(path, text + buffer.getvalue(), what="the training log")


class _progress:
    """A tqdm bar over epochs with the ETA, on the main rank only."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="epoch", dynamic_ncols=True, file=sys.stderr)

    def update(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}", dice=f"{row['val_dice']:.3f}"
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_run_config(out: Path, config: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", asdict(config))


def check_output_folder(out: Path, resume: bool) -> None:
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{out}: cannot use it as the run folder: {folder} is a file")
    if out.exists() and any(out.iterdir()) and not resume and (out / "last.safetensors").exists():
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


# ---- a run's set-up: data, split, intensity, datasets, config (what `tagseg train` does before fitting) ----------
@dataclass
class PreparedRun:
    """Everything `Trainer` needs, made by `prepare`; `fit` trains, `close` leaves the process group."""

    config: TrainConfig
    train_set: object
    val_set: object
    dist: Distributed

    def fit(self, resume: bool = False) -> dict:
        return Trainer(self.config, self.train_set, self.val_set).fit(resume=resume)

    def close(self) -> None:
        if self.dist.enabled:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def prepare(
    data: str | os.PathLike,
    task: str,
    settings: TrainConfig,
    *,
    layout: str = "auto",
    organ_dir: str | None = None,
    split: str | None = None,
    fold: int = 0,
    tumour_label: int | None = None,
    cache: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> PreparedRun:
    """Check the data and the run folder, split the cases (seeded 70/10/20 without a split file), fix the
    intensity normalisation, warm the preprocessed cache and write split.json and config.json (main rank only).

    `task` is a published one (kits, lits, pancreas: window, statistics, organ, object word) or "custom" (from
    the dataset.json); `settings` are the run's own (out, preset, epochs, ...), and the config written is them
    with what the data decides filled in; `log` receives the notes a user should see (default: stderr).
    """
    from .data import transforms as T
    from .data.datasets import check_cases, dataset_anatomy, find_cases, make_split, save_split_json, split_cases
    from .data.loader import TrainingDataset
    from .data.preprocess import PreprocessedCache, task_intensity
    from .data.synthetic import dataset_intensity
    from .tags import text_encoder as te
    from .tags.config import get_preset
    from .tags.tasks import TASKS
    from .text import ORGAN_LABELS

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    spec = TASKS.get(task)
    out = Path(settings.out).expanduser()
    check_output_folder(out, resume)
    net_preset = get_preset(settings.preset)
    tumour_label = tumour_label if tumour_label is not None else (spec.tumour_label if spec else 2)
    cases, subsets = find_cases(data, layout=layout, organ="auto", organ_dir=organ_dir, split_file=split, fold=fold)
    check_cases(cases, tumour_label=tumour_label)
    if subsets is None:
        subsets = make_split([c.case_id for c in cases], settings.seed)
        log(
            "no --split: a seeded 70/10/20 split of this data (saved as split.json in the run folder), "
            "not the paper's 3DSAM-adapter fold"
        )
    sets = split_cases(cases, subsets)
    if not sets.get("train") or not sets.get("val"):
        raise InputError("the split has no training or no validation cases")
    if spec is not None:
        intensity = task_intensity(spec)
        anatomy, organ_labels = spec.anatomy, list(spec.organ_labels)
        word = te.object_word(anatomy, mode=settings.object_word_mode, task=spec.key)
    else:
        stats = dataset_intensity(data)
        if stats is None:
            raise InputError(
                f"{data}: a custom task needs intensity statistics in dataset.json "
                "(window/mean/std, as `tagseg synth` writes) or use --task kits|lits|pancreas"
            )
        intensity = task_intensity(stats)
        anatomy = dataset_anatomy(data)
        organ_labels = list(ORGAN_LABELS.get(anatomy, (anatomy,)))
        word = te.object_word(anatomy, mode="anatomy")
    intensity_meta = {"window": list(intensity.window), "mean": intensity.mean, "std": intensity.std}
    crop = net_preset.crop_size
    preprocessed = PreprocessedCache(
        Path(cache).expanduser() if cache else out.parent / "cache", spacing_mm=net_preset.spacing_mm
    )
    dist = init_distributed(settings.device if settings.device != "auto" else "cpu")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        preprocessed.warm(sets["train"] + sets["val"], intensity.window, tumour_label)
        save_split_json(out / "split.json", subsets, meta={"seed": settings.seed, "fold": fold})
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()
    task_spec = spec if spec is not None else intensity_meta
    train_set, val_set = (
        TrainingDataset(
            sets[name],
            preprocessed,
            transforms(task_spec, crop=crop),
            task_spec,
            settings.seed,
            tumour_label=tumour_label,
        )
        for name, transforms in (("train", T.train_transforms), ("val", T.val_transforms))
    )
    config = replace(
        settings,
        out=str(out),
        object_word=word,
        object_word_mode=settings.object_word_mode if spec else "anatomy",
        task=spec.key if spec else "custom",
        anatomy=anatomy,
        organ_labels=organ_labels,
        intensity=intensity_meta,
        provenance={
            "data": str(Path(data).resolve()),
            "train_cases": len(sets["train"]),
            "val_cases": len(sets["val"]),
        },
    )
    if dist.main:
        write_run_config(out, config)
    return PreparedRun(config, train_set, val_set, dist)
