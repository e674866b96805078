"""GPU check (issue 12): first-prediction and per-click latency and peak GPU memory of the default backend
(`litemedsam-3d`, on a generated lesion phantom spanning ~15 slices) and of TAGS, as a table (`--json`: one
JSON line). Without a CUDA device it prints "unmeasured: no CUDA device" and exits 0, unless `--device cpu`
asks for a CPU run (`--device cpu --tiny`: tags-tiny, a small lesion, a few clicks; what the test runs).

TAGS: builds a TAGS preset with random weights (no TAGS weights exist publicly), then through the real
`tags` backend on a synthetic CT: a cold and a warm first prediction (encoder + decoder), 20
refinement clicks inside the crop (prompt encoder + decoder only), one prediction with text fusion,
and 50 bf16 training steps on synthetic 128³ crops with the published losses and optimisers.
Sized to finish in well under 4 minutes on one H100/H200 with tags-b; `--preset tags-tiny
--device cpu` smoke-tests it anywhere.

    python scripts/gpu_check.py                 # litemedsam-3d and tags-b (bf16) on cuda
    python scripts/gpu_check.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAGSSegment"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tagseg.backends.base import GridPrompts  # noqa: E402
from tagseg.backends.tags import TagsBackend, TagsOptions  # noqa: E402
from tagseg.synth import make_phantom  # noqa: E402
from tagseg.tags import build_tags  # noqa: E402
from tagseg.tags.crop import Intensity  # noqa: E402
from tagseg.tags.fit import Case, training_crop, tumour_centre_ras  # noqa: E402
from tagseg.tags.recipe import make_optimisers, sample_training_points, training_step  # noqa: E402

INTENSITY = {"window": [-160.0, 240.0], "mean": 40.0, "std": 60.0}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="TAGS preset (default tags-b, tags-tiny with --tiny)")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--tiny", action="store_true", help="small sizes that run on a CPU in about a minute")
    parser.add_argument("--refines", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--autocast", default="bf16", choices=("bf16", "fp16", "off"))
    parser.add_argument("--skip-default", action="store_true", help="only TAGS")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = parser.parse_args(argv)
    if args.device is None:
        if not torch.cuda.is_available():
            print("unmeasured: no CUDA device")
            return 0
        args.device = "cuda"
    args.preset = args.preset or ("tags-tiny" if args.tiny else "tags-b")
    args.refines = args.refines if args.refines is not None else (2 if args.tiny else 20)
    args.train_steps = max(1, args.train_steps if args.train_steps is not None else (2 if args.tiny else 30))
    device = args.device
    if device == "cpu" and args.preset == "tags-b":
        print(json.dumps({"error": "tags-b on CPU takes minutes per pass; use --preset tags-tiny"}))
        return 2
    torch.manual_seed(0)
    default = None if args.skip_default else default_backend_check(device, args.tiny, args.refines)
    result: dict = {
        "preset": args.preset,
        "device": device,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor(),
        "autocast": args.autocast,
    }

    start = time.perf_counter()
    model = build_tags(args.preset, seed=0).to(device)
    result["build_s"] = round(time.perf_counter() - start, 2)
    result["parameters"] = model.parameter_counts()
    config = model.config
    embed = torch.nn.functional.normalize(torch.randn(config.embed_dim, 2), dim=0)
    metadata = {
        "config": config.to_dict(),
        "intensity": INTENSITY,
        "task": "gpu-check",
        "anatomy": "liver",
        "text": {"encoder": config.text_encoder, "object_word": "liver", "object_word_mode": "anatomy"},
    }

    phantom = make_phantom(
        seed=0,
        shape_kji=(40, 96, 96) if args.tiny else (80, 256, 256),
        spacing_ijk=(0.8, 0.8, 2.0),
        tumour_radius_mm=8.0 if args.tiny else 15.0,
    )
    label = np.asarray(phantom.label.array) > 0
    voxels = np.argwhere(label)
    rng = np.random.default_rng(2)
    organ = np.asarray(phantom.organs[phantom.tumour_organ].array) > 0
    autocast = {"bf16": "bf16", "fp16": "fp16", "off": "off"}[args.autocast]

    def prompts(points):
        return GridPrompts(np.asarray(points, float), np.zeros((0, 3)), (), phantom.description, organ)

    backend = TagsBackend(
        model=model, metadata=metadata, class_embeddings=embed, device=device, options=TagsOptions(autocast=autocast)
    )
    backend.set_image(phantom.image)
    clicks = voxels[rng.choice(len(voxels), 3, replace=False)]
    _reset_peak(device)
    start = time.perf_counter()
    backend.predict(prompts(clicks))
    _sync(device)
    result["first_prediction_cold_s"] = round(time.perf_counter() - start, 3)
    result["first_prediction_cold_stages_s"] = {k: round(v, 3) for k, v in backend.timings.items()}

    backend._grid = None  # force a new crop: a warm first prediction
    backend._encodings.clear()
    start = time.perf_counter()
    backend.predict(prompts(clicks))
    _sync(device)
    result["first_prediction_warm_s"] = round(time.perf_counter() - start, 3)
    result["first_prediction_warm_stages_s"] = {k: round(v, 3) for k, v in backend.timings.items()}
    result["inference_peak_gb"] = _peak_gb(device)

    refine_times, encodes = [], 0
    points = list(clicks)
    for _ in range(args.refines):
        points.append(voxels[rng.integers(len(voxels))])
        start = time.perf_counter()
        backend.predict(prompts(points))
        _sync(device)
        refine_times.append(time.perf_counter() - start)
        encodes += "encode" in backend.timings
    result["refine_s"] = {
        "median": round(statistics.median(refine_times), 3),
        "min": round(min(refine_times), 3),
        "max": round(max(refine_times), 3),
        "n": len(refine_times),
        "re_encoded": encodes,
    }

    fusion = TagsBackend(
        model=model,
        metadata=metadata,
        class_embeddings=embed,
        device=device,
        options=TagsOptions(autocast=autocast, text_fusion=0.3),
    )
    fusion.set_image(phantom.image)
    fusion.predict(prompts(clicks))
    start = time.perf_counter()
    fusion.predict(prompts(points[:4]))
    _sync(device)
    result["refine_with_text_fusion_s"] = round(time.perf_counter() - start, 3)
    del fusion, backend
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    case = Case(phantom.image, phantom.label, phantom.organs[phantom.tumour_organ])
    optimisers = make_optimisers(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[args.autocast]
    centre = tumour_centre_ras(phantom.label)
    step_times, losses = [], []
    _reset_peak(device)
    for _ in range(args.train_steps):
        crop, crop_label = training_crop(
            case, centre + rng.uniform(-8, 8, 3), model, Intensity.from_metadata(INTENSITY)
        )
        pts, pl = sample_training_points(crop_label.numpy(), rng)
        _sync(device)
        start = time.perf_counter()
        losses.append(training_step(model, optimisers, crop, crop_label, pts, pl, embed, autocast_dtype=dtype))
        _sync(device)
        step_times.append(time.perf_counter() - start)
    steady = step_times[1:] or step_times
    result["train_steps"] = len(step_times)
    result["train_first_step_s"] = round(step_times[0], 3)
    result["train_step_median_s"] = round(statistics.median(steady), 3)
    result["train_steps_per_s"] = round(len(steady) / sum(steady), 2)
    result["train_peak_gb"] = _peak_gb(device)
    result["train_loss_first_last"] = [round(losses[0]["loss"], 4), round(losses[-1]["loss"], 4)]
    result["gpus"] = torch.cuda.device_count() if device.startswith("cuda") else 0
    result["ddp"] = "not run: one GPU" if result["gpus"] < 2 else "run scripts/gpu_check_ddp (not written)"
    result["finite"] = all(np.isfinite(x["loss"]) for x in losses)
    result["default_backend"] = default
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result, default)
    return 0


def default_backend_check(device: str, tiny: bool, refines: int) -> dict:
    """litemedsam-3d on a generated CT lesion (5 mm slices): first prediction from one click, then `refines`
    clicks (each adds an include or exclude point; what a user's correction costs), peak GPU memory."""
    from tagseg.backends.litemedsam3d import LiteMedSAM3D
    from tagseg.synth import make_lesion_phantom

    phantom = make_lesion_phantom(seed=0, radius_mm=6.0 if tiny else 38.0)
    label = np.asarray(phantom.label.array) > 0
    voxels = np.argwhere(label)
    outside = np.argwhere(~label & (np.asarray(phantom.image.array) > -200))
    rng = np.random.default_rng(2)
    start = time.perf_counter()
    backend = LiteMedSAM3D(device=device)
    out = {
        "model": "litemedsam-3d",
        "device": device,
        "lesion_slices": int(len(np.unique(voxels[:, 0]))),
        "image_kji": list(phantom.image.shape_kji),
        "load_s": round(time.perf_counter() - start, 3),
        "encoder_runtime": backend.encoder_runtime,
    }
    backend.set_image(phantom.image)
    centre = voxels.mean(0)
    include, exclude = [centre], []

    def predict():
        prompts = GridPrompts(
            np.array(include, float), np.array(exclude, float).reshape(-1, 3), (), phantom.description, None
        )
        _sync(device)
        t0 = time.perf_counter()
        mask = backend.predict(prompts)  # noqa: F821 (runs before the `del backend` below)
        _sync(device)
        return time.perf_counter() - t0, mask

    _reset_peak(device)
    first_s, mask = predict()
    out["first_prediction_s"] = round(first_s, 3)
    clicks = []
    for n in range(refines):
        if n % 2 == 0 or not len(outside):
            include.append(voxels[rng.integers(len(voxels))])
        else:
            exclude.append(outside[rng.integers(len(outside))])
        seconds, mask = predict()
        clicks.append(seconds)
    if clicks:
        out["refine_s"] = {
            "median": round(statistics.median(clicks), 3),
            "max": round(max(clicks), 3),
            "n": len(clicks),
        }
    out["peak_gb"] = _peak_gb(device)
    out["voxels"] = int(np.count_nonzero(mask))
    del backend
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def print_table(result: dict, default: dict | None) -> None:
    """Latency and memory, one row per model (random TAGS weights: speed only, never accuracy)."""
    where = f"{result['device']} ({result['gpu']}), torch {result['torch']}"
    print(f"gpu_check on {where}")
    print(f"{'model':<34}{'first s':>9}{'click s (median)':>18}{'peak GB':>9}")
    if default is not None:
        click = default.get("refine_s", {}).get("median")
        print(
            f"{'litemedsam-3d, ' + str(default['lesion_slices']) + '-slice lesion':<34}"
            f"{default['first_prediction_s']:>9.3f}{click if click is not None else float('nan'):>18.3f}"
            f"{default['peak_gb'] if default['peak_gb'] is not None else float('nan'):>9.2f}"
        )
    name = f"{result['preset']} ({result['autocast']}, random weights)"
    peak = result["inference_peak_gb"]
    print(
        f"{name:<34}{result['first_prediction_warm_s']:>9.3f}{result['refine_s']['median']:>18.3f}"
        f"{peak if peak is not None else float('nan'):>9.2f}"
    )
    print(
        f"  TAGS cold first prediction {result['first_prediction_cold_s']:.3f} s; warm stages "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["first_prediction_warm_stages_s"].items())
    )
    if result.get("train_steps"):
        print(
            f"  TAGS training: {result['train_step_median_s']:.3f} s/step, peak {result['train_peak_gb']} GB, "
            f"loss finite: {result['finite']}"
        )


if __name__ == "__main__":
    sys.exit(main())
