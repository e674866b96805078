"""Pieces of the published training recipe shared by `tagseg train` and the tests (TAGS_SPEC.md §5):
click sampling, the three AdamW optimisers with their linear schedule, and one optimisation step."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .losses import alignment_loss, dice_ce_loss
from .model import TagsNet

POSITIVE_POINTS = 10
RANDOM_POINTS = 20


def sample_training_points(
    label: np.ndarray | torch.Tensor,
    rng: np.random.Generator,
    positives: int = POSITIVE_POINTS,
    randoms: int = RANDOM_POINTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (d, w, h) [N, 3] and their labels [N]: `positives` drawn from the tumour with replacement,
    then `randoms` drawn from the whole crop (they may land on tumour, as published). Labels are the
    ground truth at each point; only checkpoints with a label embedding use them."""
    lab = torch.as_tensor(label)
    tumour = torch.nonzero(lab > 0)
    picks = []
    if len(tumour):
        picks.append(tumour[rng.integers(0, len(tumour), positives)])
    if randoms:
        shape = torch.tensor(lab.shape)
        picks.append(torch.as_tensor(rng.integers(0, shape.numpy(), size=(randoms, 3))))
    dhw = torch.cat(picks).long()
    labels = (lab[dhw[:, 0], dhw[:, 1], dhw[:, 2]] > 0).long()
    return dhw[:, [0, 2, 1]].float(), labels


@dataclass
class Optimisers:
    optimisers: Mapping[str, torch.optim.Optimizer]
    schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler]

    def zero_grad(self) -> None:
        for opt in self.optimisers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimisers.values():
            opt.step()

    def epoch_end(self) -> None:
        """The published LinearLR is stepped once per epoch."""
        for sched in self.schedulers.values():
            sched.step()

    def state_dict(self) -> dict:
        return {
            k: {"optimiser": o.state_dict(), "scheduler": self.schedulers[k].state_dict()}
            for k, o in self.optimisers.items()
        }

    def load_state_dict(self, state: dict) -> None:
        for k, o in self.optimisers.items():
            o.load_state_dict(state[k]["optimiser"])
            self.schedulers[k].load_state_dict(state[k]["scheduler"])


def make_optimisers(
    model: TagsNet, lr: float = 1e-4, weight_decay: float = 1e-5, schedule_iters: int = 500
) -> Optimisers:
    """Three AdamW (encoder, prompt encoders, decoder) with LinearLR 1.0 -> 0.01 over `schedule_iters` epochs."""
    optimisers, schedulers = {}, {}
    for name, params in model.parameter_groups().items():
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        optimisers[name] = opt
        schedulers[name] = torch.optim.lr_scheduler.LinearLR(
            opt, start_factor=1.0, end_factor=0.01, total_iters=schedule_iters
        )
    return Optimisers(optimisers, schedulers)


def losses_for(
    logits: torch.Tensor, maps: list[torch.Tensor], target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(DiceCE on the mask, alignment loss) in fp32."""
    return dice_ce_loss(logits.float(), target), alignment_loss([m.float() for m in maps], target)


def training_step(
    model: TagsNet,
    optimisers: Optimisers,
    crop: torch.Tensor,
    label: torch.Tensor,
    points_dwh: torch.Tensor,
    point_labels: torch.Tensor,
    class_embeddings: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
    forward=None,
) -> dict[str, float]:
    """One step on one crop [3, P, P, P] with label [P, P, P]: DiceCE + alignment loss, gradient clipping
    at 1.0 on the encoder, the decoder and the applied prompt encoder, then the three optimisers.
    `forward` is the module to call (a DistributedDataParallel wrapper of `model` under torchrun)."""
    forward = forward or model
    forward.train()
    device = next(model.parameters()).device
    crops = crop[None].to(device)
    target = label[None].to(device)
    enabled = autocast_dtype is not None
    with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.bfloat16, enabled=enabled):
        logits, encoded = forward(crops, points_dwh[None].to(device), point_labels[None].to(device))
        maps = model.alignment_maps(encoded, class_embeddings.to(device))
    main, align = losses_for(logits, maps, target)
    loss = main + align
    optimisers.zero_grad()
    loss.backward()
    for module in (model.image_encoder, model.mask_decoder, model.prompt_encoders[3]):
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    if model.point_label_embed is not None:
        torch.nn.utils.clip_grad_norm_(model.point_label_embed.parameters(), 1.0)
    optimisers.step()
    return {"loss": float(loss.detach()), "main": float(main.detach()), "alignment": float(align.detach())}
