"""The researcher commands of the `tagseg` CLI: train, evaluate, synth, organs.

Kept apart from cli.py (the clinician-facing segment/info/demo) so each file stays one concern; the
error handling, exit codes and one-line messages are cli.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import InputError

TASK_CHOICES = ("kits", "lits", "pancreas", "custom")
PROTOCOL_CHOICES = ("paper", "interactive")
EXIT_CASES_FAILED = 3
# `tagseg synth` lesion phantoms: the choices of tagseg.synth (not imported here: numpy stays out of parsing)
LESION_EDGES = ("sharp", "soft")
LESION_MODALITIES = ("ct", "mr", "mr-zscored")
LESION_SLICES = ("thick", "isotropic")
LESION_DEFAULTS = {"radius_mm": "10", "edge": "sharp", "modality": "ct", "slices": "thick"}
LESION_RADIUS_MM = (3.0, 40.0)


def add_commands(commands) -> None:
    train = commands.add_parser("train", help="train TAGS with the published recipe (torchrun for several GPUs)",
                                description="Train TAGS on a dataset folder (MSD, KiTS, LiTS or image/label pairs). "
                                            "Several GPUs: torchrun --nproc_per_node N -m tagseg train ...")
    train.add_argument("--data", required=True, metavar="DIR")
    train.add_argument("--task", required=True, choices=TASK_CHOICES,
                       help="published task (window, statistics, organ, object word) or custom (from dataset.json)")
    train.add_argument("--out", required=True, metavar="RUN_DIR")
    train.add_argument("--preset", default="tags-b")
    train.add_argument("--epochs", type=int, default=200)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off",
                       help="mixed precision (the paper: off = fp32)")
    train.add_argument("--layout", default="auto", help="auto, msd, kits, lits, folder, case-folder")
    train.add_argument("--organ-dir", metavar="DIR", help="organ masks as DIR/<case>/<organ>.nii.gz")
    train.add_argument("--split", metavar="FILE",
                       help="3DSAM-adapter split.pkl (the paper's folds) or a tagseg split .json; without it, a "
                            "seeded 70/10/20 split of this data, saved as RUN_DIR/split.json")
    train.add_argument("--fold", type=int, default=0)
    train.add_argument("--tumour-label", type=int, default=None, help="tumour value in the labels (default: task's)")
    train.add_argument("--sam-weights", metavar="PTH",
                       help="sam_vit_b_01ec64.pth (tagseg weights download sam-vit-b); required unless --from-scratch")
    train.add_argument("--from-scratch", action="store_true",
                       help="train without SAM weights: the frozen backbone stays random (tests, tiny presets)")
    train.add_argument("--text-encoder", help="open_clip spec (default: the preset's; paper: open_clip:ViT-L-14:openai)")
    train.add_argument("--object-word-mode", choices=("dataset-key", "anatomy"), default="dataset-key")
    train.add_argument("--point-labels", action="store_true", help="extension: learn include/exclude click labels")
    train.add_argument("--max-steps-per-epoch", type=int, help="bound each epoch (smoke tests)")
    train.add_argument("--cache", metavar="DIR", help="preprocessed-volume cache (default: RUN_DIR/../cache)")
    train.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from last")
    train.add_argument("--device", default="auto")
    train.set_defaults(func=cmd_train)

    ev = commands.add_parser(
        "evaluate", help="the paper's evaluation protocol for any model (Dice, NSD@5mm)",
        description="Per case: clicks drawn from the tumour (seeded), one prediction, Dice and the authors' NSD "
                    "at 5 mm on the original grid. --protocol paper (default) runs TAGS as the authors' test.py "
                    "does: one crop at the floored midpoint of the clicks whatever their spread, fp32, text "
                    "unused, zeros in the organ channel when the mask misses the crop. The extensions are "
                    "opt-in flags; the CSV records per case what actually ran. A case that fails is a row with "
                    "its error; the run goes on and exits with code 3 if any case failed.")
    ev.add_argument("--data", required=True, metavar="DIR")
    ev.add_argument("--model", required=True, metavar="CHECKPOINT|NAME")
    ev.add_argument("--clicks", type=int, default=3)
    ev.add_argument("--seed", type=int, default=2)
    ev.add_argument("--out", required=True, metavar="results.csv")
    ev.add_argument("--layout", default="auto")
    ev.add_argument("--organ-dir", metavar="DIR")
    ev.add_argument("--split", metavar="FILE", help="evaluate the --subset of this split (default: every case)")
    ev.add_argument("--fold", type=int, default=0)
    ev.add_argument("--subset", default="test")
    ev.add_argument("--tumour-label", type=int, default=2)
    ev.add_argument("--text", default=None,
                    help="description (default: '<organ> tumor'); picks the model with --model auto, and reaches "
                         "the model only with --text-fusion or --protocol interactive (the paper: text unused)")
    ev.add_argument("--protocol", choices=tuple(PROTOCOL_CHOICES), default="paper",
                    help="paper (default): the authors' test.py; interactive: what the app does (sliding window, "
                         "bf16 on GPU, a box around the clicks as organ channel when the mask is missing)")
    ext = ev.add_argument_group("TAGS extensions (off in --protocol paper; each flag turns one on)")
    ext.add_argument("--sliding-window", action="store_true", default=None,
                     help="cover clicks wider than one crop with overlapping crops")
    ext.add_argument("--autocast", choices=("off", "bf16", "fp16", "auto"), default=None,
                     help="mixed precision (paper: off = fp32; auto = bf16 on CUDA)")
    ext.add_argument("--text-fusion", type=float, default=None, metavar="W",
                     help="mix the text-conditioned tumour map into the result with weight W (paper: 0)")
    ext.add_argument("--anatomy-fallback", choices=("zeros", "prompt-box", "ct", "ones"), default=None,
                     help="organ channel when the mask is missing or misses the crop (paper: zeros)")
    ev.add_argument("--limit", type=int, help="only the first N cases")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=cmd_evaluate)

    synth = commands.add_parser("synth", help="write synthetic CT-like cases with tumours (MSD layout)")
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--cases", type=int, default=8)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--organ", default="pancreas")
    synth.add_argument("--shape", default="48,128,128", metavar="K,J,I", help="voxels per case (slices,rows,cols)")
    synth.add_argument("--from-ct", metavar="CT", help="insert tumours into this real CT instead of phantoms")
    synth.add_argument("--organ-mask", metavar="MASK", help="with --from-ct: the organ mask (label map) to use")
    # Lesion phantoms (any of these four): one folder per case with image, label and organ masks, the
    # layout of ../shared/data/lesions_dev; tagseg.synth.make_lesion_phantom describes them.
    synth.add_argument("--radius-mm", metavar="MM", help="lesion phantoms: lesion radius, 3-40 mm (default 10)")
    synth.add_argument("--edge", choices=LESION_EDGES, help="lesion phantoms: sharp, or soft (irregular, "
                       "infiltrating, a gradual intensity ramp) (default sharp)")
    synth.add_argument("--modality", choices=LESION_MODALITIES, help="lesion phantoms: ct (HU), mr (raw, positive) "
                       "or mr-zscored (skull-stripped, z-scored, background at the minimum) (default ct)")
    synth.add_argument("--slices", choices=LESION_SLICES, help="lesion phantoms: thick (5 mm, 0.7-0.8 mm pixels) "
                       "or isotropic (1 mm) (default thick)")
    synth.set_defaults(func=cmd_synth)

    organs = commands.add_parser("organs", help="organ masks for the anatomy prompt with TotalSegmentator (optional)")
    organs.add_argument("--data", required=True, metavar="DIR")
    organs.add_argument("--anatomy", required=True, help="kidney, liver, pancreas, ...")
    organs.add_argument("--out", required=True, metavar="ORGAN_DIR", help="writes ORGAN_DIR/<case>/<organ>.nii.gz")
    organs.add_argument("--device", default="gpu")
    organs.set_defaults(func=cmd_organs)


def _task(name: str):
    from .tags.tasks import TASKS

    return TASKS.get(name)


def _cases(args, organ, tumour_label: int, split_subsets: tuple[str, ...] | None):
    from .data.datasets import (check_cases, discover_cases, load_split_json, load_split_pkl, make_split,
                                split_cases)

    root = Path(args.data).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    cases = discover_cases(root, layout=args.layout, organ=organ, organ_dir=args.organ_dir)
    split = None
    if args.split:
        path = Path(args.split).expanduser()
        split = load_split_pkl(path, args.fold) if path.suffix == ".pkl" else load_split_json(path)
    return cases, split, check_cases, make_split, split_cases


def cmd_train(args: argparse.Namespace, reporter) -> int:
    from .data import transforms as T
    from .data.datasets import save_split_json
    from .data.loader import TrainingDataset
    from .data.preprocess import PreprocessedCache, task_intensity
    from .data.synthetic import dataset_intensity
    from .tags import text_encoder as te
    from .tags.config import get_preset
    from .text import ORGAN_LABELS
    from .train import Trainer, TrainConfig, check_output_folder, init_distributed, write_run_config

    if not args.sam_weights and not args.from_scratch:
        raise InputError("no --sam-weights: the frozen SAM ViT-B backbone would stay random; pass --sam-weights "
                         "sam_vit_b_01ec64.pth (tagseg weights download sam-vit-b) or --from-scratch to mean it")
    if args.sam_weights and args.from_scratch:
        raise InputError("--sam-weights and --from-scratch contradict each other; pass one")
    task = _task(args.task)
    out = Path(args.out).expanduser()
    check_output_folder(out, args.resume)
    preset = get_preset(args.preset)
    tumour_label = args.tumour_label if args.tumour_label is not None else (task.tumour_label if task else 2)
    cases, split, check_cases, make_split, split_cases = _cases(args, "auto", tumour_label, None)
    check_cases(cases, tumour_label=tumour_label)
    if split is None:
        split = make_split([c.case_id for c in cases], args.seed)
        print("no --split: a seeded 70/10/20 split of this data (saved as split.json in the run folder), "
              "not the paper's 3DSAM-adapter fold", file=sys.stderr, flush=True)
    sets = split_cases(cases, split)
    if not sets.get("train") or not sets.get("val"):
        raise InputError("the split has no training or no validation cases")
    if task is not None:
        intensity = task_intensity(task)
        anatomy, organ_labels = task.anatomy, list(task.organ_labels)
        word = te.object_word(anatomy, mode=args.object_word_mode, task=task.key)
    else:
        stats = dataset_intensity(args.data)
        if stats is None:
            raise InputError(f"{args.data}: a custom task needs intensity statistics in dataset.json "
                             "(window/mean/std, as `tagseg synth` writes) or use --task kits|lits|pancreas")
        intensity = task_intensity(stats)
        anatomy = _custom_anatomy(args.data)
        organ_labels = list(ORGAN_LABELS.get(anatomy, (anatomy,)))
        word = te.object_word(anatomy, mode="anatomy")
    intensity_meta = {"window": list(intensity.window), "mean": intensity.mean, "std": intensity.std}
    crop = preset.crop_size
    cache = PreprocessedCache(Path(args.cache).expanduser() if args.cache else out.parent / "cache",
                              spacing_mm=preset.spacing_mm)
    dist = init_distributed(args.device if args.device != "auto" else "cpu")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        cache.warm(sets["train"] + sets["val"], intensity.window, tumour_label)
        save_split_json(out / "split.json", split, meta={"seed": args.seed, "fold": args.fold})
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()
    task_spec = task if task is not None else intensity_meta
    train_set = TrainingDataset(sets["train"], cache, T.train_transforms(task_spec, crop=crop), task_spec, args.seed,
                                tumour_label=tumour_label)
    val_set = TrainingDataset(sets["val"], cache, T.val_transforms(task_spec, crop=crop), task_spec, args.seed,
                              tumour_label=tumour_label)
    config = TrainConfig(out=str(out), preset=args.preset, epochs=args.epochs, lr=args.lr, seed=args.seed,
                         autocast=args.autocast, point_labels=args.point_labels,
                         max_steps_per_epoch=args.max_steps_per_epoch, device=args.device,
                         sam_weights=args.sam_weights, text_encoder=args.text_encoder, object_word=word,
                         object_word_mode=args.object_word_mode if task else "anatomy",
                         task=task.key if task else "custom", anatomy=anatomy, organ_labels=organ_labels,
                         intensity=intensity_meta,
                         provenance={"data": str(Path(args.data).resolve()), "train_cases": len(sets["train"]),
                                     "val_cases": len(sets["val"])})
    if dist.main:
        write_run_config(out, config)
    result = Trainer(config, train_set, val_set).fit(resume=args.resume)
    if dist.main:
        last = result["history"][-1] if result["history"] else {}
        print(f"trained {result['epochs']} epochs; best validation loss {result['best_val_loss']:.4f}; "
              f"last validation Dice {last.get('val_dice', float('nan')):.3f}")
        print(f"best checkpoint: {result['best']}")
    if dist.enabled:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return 0


def _custom_anatomy(root) -> str:
    meta = Path(root) / "dataset.json"
    if meta.is_file():
        labels = json.loads(meta.read_text(encoding="utf-8")).get("labels", {})
        name = labels.get("1") or labels.get(1)
        if isinstance(name, str) and name:
            return name.lower()
    return "organ"


def cmd_evaluate(args: argparse.Namespace, reporter) -> int:
    import numpy as np

    from .backends import resolve_model_name
    from .data.datasets import load_case
    from .evaluate import (ResultsWriter, evaluate_case, failed_case, protocol_options, session_predictor,
                           summarise)
    from .text import parse_description

    from .cli import _check_writable

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".csv":
        raise InputError(f"{out}: --out must be a .csv file")
    _check_writable(out, "the results file")
    if args.clicks < 1:
        raise InputError("--clicks must be at least 1")
    if args.text_fusion is not None and not 0.0 <= args.text_fusion <= 1.0:
        raise InputError(f"--text-fusion {args.text_fusion}: must be within 0..1")
    cases, split, _, _, split_cases = _cases(args, "auto", args.tumour_label, None)
    if split is not None:
        cases = split_cases(cases, split).get(args.subset, [])
    cases = [c for c in cases if c.label is not None][: args.limit or None]
    if not cases:
        raise InputError(f"{args.data}: no labelled cases to evaluate")
    anatomy = _custom_anatomy(args.data)
    text = args.text if args.text is not None else f"{anatomy if anatomy != 'organ' else ''} tumor".strip()
    model = resolve_model_name(args.model, parse_description(text))
    options = protocol_options(args.protocol, sliding_window=args.sliding_window, autocast=args.autocast,
                               text_fusion=args.text_fusion, anatomy_fallback=args.anatomy_fallback)
    # the paper's test.py never looks at text; it reaches the model only when an extension uses it
    model_text = text if (args.protocol != "paper" or options["text_fusion"] > 0) else ""
    organs: dict = {}
    predictor = session_predictor(model, args.device, model_text, options, organ_for=lambda cid: organs.get(cid))
    rng = np.random.default_rng(args.seed)
    results = []
    extra = {"model": model, "clicks": args.clicks, "seed": args.seed, "requested_protocol": args.protocol}
    with ResultsWriter(out, extra) as writer:
        for index, case in enumerate(cases, 1):
            try:
                image, label, organ = load_case(case)
                tumour = label.with_array((np.asarray(label.array) == args.tumour_label).astype(np.uint8))
            except Exception as exc:  # noqa: BLE001 - an unreadable case is a row, not the end of the run
                result = failed_case(case.case_id, exc)
            else:
                organs[case.case_id] = organ
                result = evaluate_case(case.case_id, image, tumour, predictor(case.case_id), args.clicks, rng)
                organs.pop(case.case_id, None)
            results.append(result)
            writer.write(result)
            if result.failed:
                shown = f"FAILED: {result.error}"
            elif result.dice is None:
                shown = "skipped (no tumour)"
            else:
                shown = f"Dice {result.dice:.4f} NSD {result.nsd:.4f} [{result.protocol}]"
            print(f"[{index}/{len(cases)}] {case.case_id}: {shown}", file=sys.stderr, flush=True)
    summary = summarise(results)
    print(summary.line())
    print(f"per-case results: {out}")
    if summary.failed:
        print(f"{summary.failed} of {len(results)} cases failed (their rows in {out} give the error); "
              f"exit code {EXIT_CASES_FAILED}", file=sys.stderr, flush=True)
        return EXIT_CASES_FAILED
    return 0


def cmd_synth(args: argparse.Namespace, reporter) -> int:
    import shutil
    import tempfile

    out = Path(args.out).expanduser()
    if args.cases < 1:
        raise InputError("--cases must be at least 1")
    lesion = _lesion_options(args)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty folder")
    if not args.from_ct and not lesion:
        _synth_shape(args)                         # refused before any folder is made
    final, parent = out, out.parent
    from .paths import make_parents, remove_folders

    created = make_parents(out)                    # every folder made here goes again on failure
    # written into a temporary sibling and renamed at the end: a failure leaves no half dataset
    work = Path(tempfile.mkdtemp(prefix=".tagseg-synth-", dir=parent))
    done = False
    try:
        if lesion:
            from .synth import write_lesion_cases

            write_lesion_cases(work, cases=args.cases, seed=args.seed, **lesion)
        else:
            _write_synth(args, work)
        if final.exists():
            final.rmdir()
        os.replace(work, final)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not done:
            remove_folders(created)
    if lesion:
        print(f"wrote {args.cases} lesion phantoms to {final} ({lesion['radius_mm']:g} mm, {lesion['edge']} edge, "
              f"{lesion['modality']}, {lesion['slices']} slices; one folder per case: image, label, organ masks)")
        return 0
    print(f"wrote {args.cases} cases to {final} (MSD layout: dataset.json, imagesTr, labelsTr, organsTr)")
    return 0


def _lesion_options(args: argparse.Namespace) -> dict | None:
    """The lesion-phantom options when any is given (defaults for the rest), checked; None otherwise."""
    import math

    given = {name: getattr(args, name) for name in LESION_DEFAULTS if getattr(args, name, None) is not None}
    if not given:
        return None
    if args.from_ct or args.organ_mask:
        raise InputError("--radius-mm/--edge/--modality/--slices write lesion phantoms; they cannot be combined "
                         "with --from-ct or --organ-mask")
    if args.shape != "48,128,128" or args.organ != "pancreas":
        raise InputError("--shape and --organ do not apply to lesion phantoms (their grid follows --slices and "
                         "--radius-mm, their host follows --modality)")
    if args.cases > 500:
        raise InputError(f"--cases {args.cases}: at most 500 lesion phantoms at a time")
    options = {**LESION_DEFAULTS, **given}
    text = str(options["radius_mm"]).strip()
    lo, hi = LESION_RADIUS_MM
    try:
        radius = float(text)
    except ValueError:
        raise InputError(f"--radius-mm {text}: expected a number of mm from {lo:g} to {hi:g}") from None
    if not math.isfinite(radius) or not lo <= radius <= hi:
        raise InputError(f"--radius-mm {text}: lesion phantoms take a radius from {lo:g} to {hi:g} mm")
    options["radius_mm"] = radius
    return options


def _write_synth(args: argparse.Namespace, out: Path) -> Path:
    from .data.synthetic import insert_into_ct, write_synthetic_dataset

    if args.from_ct:
        if not args.organ_mask:
            raise InputError("--from-ct needs --organ-mask")
        return insert_into_ct(Path(args.from_ct).expanduser(), Path(args.organ_mask).expanduser(), out,
                              cases=args.cases, seed=args.seed, organ=args.organ)
    return write_synthetic_dataset(out, cases=args.cases, seed=args.seed, organ=args.organ,
                                   shape_kji=_synth_shape(args))


# a phantom holds a float image, a label and organ masks plus float64 working copies: about this many bytes a voxel
SYNTH_BYTES_PER_VOXEL = 32


def _synth_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """--shape K,J,I: three integers >= 8 whose phantom fits the memory budget."""
    from . import budget

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise InputError(f"--shape {args.shape}: expected three integers K,J,I") from None
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"--shape {args.shape}: expected three integers >= 8")
    budget.check_voxels(shape, SYNTH_BYTES_PER_VOXEL, f"--shape {args.shape}: a phantom")
    return shape


def cmd_organs(args: argparse.Namespace, reporter) -> int:
    from .data.datasets import discover_cases
    from .organs import organ_names, run_totalsegmentator, totalsegmentator_available, INSTALL_HINT
    from .errors import ModelError

    names = organ_names(args.anatomy)
    if not totalsegmentator_available():
        raise ModelError(INSTALL_HINT)
    cases = discover_cases(Path(args.data).expanduser(), organ=None)
    out = Path(args.out).expanduser()
    for case in cases:
        written = run_totalsegmentator(case.image, out / case.case_id, args.anatomy, device=args.device)
        print(f"{case.case_id}: {', '.join(p.name for p in written)}")
    print(f"organ masks ({'+'.join(names)}) in {out}; pass --organ-dir {out} to train/evaluate")
    return 0
