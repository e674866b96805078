"""`tagseg train`: the published TAGS recipe on a dataset folder. The set-up is `tagseg.train.prepare`; this module
is the flags and the summary."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .common import DATA, DEVICE, FOLD, LAYOUT, ORGAN_DIR, PRESET, Command, Reporter, option

TASK_CHOICES = ("kits", "lits", "pancreas", "custom")
# flags named as the fields of `train.TrainConfig` (the run's own settings) and the keywords of `train.prepare`
RUN_SETTINGS = (
    "out preset epochs lr seed autocast point_labels max_steps_per_epoch device sam_weights text_encoder "
    "object_word_mode"
).split()
DATA_SETTINGS = "layout organ_dir split fold tumour_label cache resume".split()


def _flags(args: argparse.Namespace, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names}


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Check the flags, prepare the run, fit, print the best checkpoint."""
    if not args.sam_weights and not args.from_scratch:
        raise InputError(
            "no --sam-weights: the frozen SAM ViT-B backbone would stay random; pass --sam-weights "
            "sam_vit_b_01ec64.pth (tagseg weights download sam-vit-b) or --from-scratch to mean it"
        )
    if args.sam_weights and args.from_scratch:
        raise InputError("--sam-weights and --from-scratch contradict each other; pass one")
    from ..train import TrainConfig, prepare

    settings = TrainConfig(**_flags(args, RUN_SETTINGS))
    prepared = prepare(args.data, args.task, settings, **_flags(args, DATA_SETTINGS))
    result = prepared.fit(resume=args.resume)
    if prepared.dist.main:
        last = result["history"][-1] if result["history"] else {}
        print(
            f"trained {result['epochs']} epochs; best validation loss {result['best_val_loss']:.4f}; "
            f"last validation Dice {last.get('val_dice', float('nan')):.3f}"
        )
        print(f"best checkpoint: {result['best']}")
    prepared.close()
    return 0


COMMANDS = (
    Command(
        "train",
        help="train TAGS with the published recipe (torchrun for several GPUs)",
        description="Train TAGS on a dataset folder (MSD, KiTS, LiTS or image/label pairs). "
        "Several GPUs: torchrun --nproc_per_node N -m tagseg train ...",
        run=run,
        options=(
            DATA,
            option(
                "--task",
                required=True,
                choices=TASK_CHOICES,
                help="published task (window, statistics, organ, object word) or custom (from dataset.json)",
            ),
            option("--out", required=True, metavar="RUN_DIR"),
            PRESET,
            option("--epochs", type=int, default=200),
            option("--lr", type=float, default=1e-4),
            option("--seed", type=int, default=0),
            option(
                "--autocast",
                choices=("off", "bf16", "fp16"),
                default="off",
                help="mixed precision (the paper: off = fp32)",
            ),
            LAYOUT,
            ORGAN_DIR,
            option(
                "--split",
                metavar="FILE",
                help="3DSAM-adapter split.pkl (the paper's folds) or a tagseg split .json; without it, a "
                "seeded 70/10/20 split of this data, saved as RUN_DIR/split.json",
            ),
            FOLD,
            option("--tumour-label", type=int, default=None, help="tumour value in the labels (default: task's)"),
            option(
                "--sam-weights",
                metavar="PTH",
                help="sam_vit_b_01ec64.pth (tagseg weights download sam-vit-b); required unless --from-scratch",
            ),
            option(
                "--from-scratch",
                action="store_true",
                help="train without SAM weights: the frozen backbone stays random (tests, tiny presets)",
            ),
            option("--text-encoder", help="open_clip spec (default: the preset's; paper: open_clip:ViT-L-14:openai)"),
            option("--object-word-mode", choices=("dataset-key", "anatomy"), default="dataset-key"),
            option("--point-labels", action="store_true", help="extension: learn include/exclude click labels"),
            option("--max-steps-per-epoch", type=int, help="bound each epoch (smoke tests)"),
            option("--cache", metavar="DIR", help="preprocessed-volume cache (default: RUN_DIR/../cache)"),
            option("--resume", action="store_true", help="continue the run in RUN_DIR from last"),
            DEVICE,
        ),
    ),
)
