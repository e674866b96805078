"""Encoder variants of the default model: runtime, milliseconds per 256x256 slice, and what each does to dev Dice.

Variants: LiteMedSAM in ONNX Runtime fp32 (the default), ONNX Runtime int8 (dynamic quantisation of the
encoder's MatMul/Gemm weights, per channel) and eager PyTorch fp32 (what MedSAM's own Slicer plugin runs).
OpenVINO (what MedSAM's Slicer-Lite uses) is listed as not measured when it is not installed.

Speed: the encoder alone on `--slices` real axial slices (the first dev case, else a generated phantom),
median ms per slice after one warm-up. Accuracy: the dev cases with 3 clicks and with the label's box
(the shared click protocol, as bench/tune_default.py runs it), each variant's Dice minus the default's.
A variant is acceptable only if both Dice changes are within ±0.005 (issue: speed).

Writes bench/results/encoder_variants.md (and --json). Usage: python bench/encoder_variants.py [--cases DIR]
       [--variants onnxruntime:fp32,onnxruntime:int8,torch:fp32] [--slices N] [--no-accuracy]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tune_default  # noqa: E402  (puts TAGSSegment on sys.path)
from tagseg.backends.litemedsam_net import INPUT_SIZE, LiteMedSAM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VARIANTS = "onnxruntime:fp32,onnxruntime:int8,torch:fp32"
TOLERANCE = 0.005


def slices_for_speed(cases: list[dict], n: int) -> list[np.ndarray]:
    """n model inputs (3x256x256 in 0..1) cut from the first case's middle slices, or from a phantom."""
    import torch
    import torch.nn.functional as F

    if cases:
        array = np.asarray(cases[0]["image"].array, dtype=np.float32)
    else:
        from tagseg.synth import make_lesion_phantom

        array = np.asarray(make_lesion_phantom(seed=0, radius_mm=20.0).image.array, dtype=np.float32)
    lo, hi = np.percentile(array, [0.5, 99.5])
    array = np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1)
    mid = array.shape[0] // 2
    out = []
    for k in range(max(0, mid - n // 2), min(array.shape[0], max(0, mid - n // 2) + n)):
        t = F.interpolate(
            torch.from_numpy(np.ascontiguousarray(array[k]))[None, None],
            size=(INPUT_SIZE,) * 2,
            mode="bilinear",
            align_corners=False,
        )
        out.append(t[0].repeat(3, 1, 1).numpy())
    return out


def ms_per_slice(nets: list[LiteMedSAM], images: list[np.ndarray]) -> list[float]:
    """Median encode time per slice for each net, round robin (slice by slice, every net in turn), so a
    change in the machine's load during the run weighs on every variant alike."""
    times: list[list[float]] = [[] for _ in nets]
    for net in nets:
        net.embedding(("warm-up",), lambda: images[0])
    for i, image in enumerate(images):
        for net, bucket in zip(nets, times, strict=False):
            t = time.perf_counter()
            net.embedding(("speed", i), lambda img=image: img)
            bucket.append(time.perf_counter() - t)
    return [1000 * statistics.median(bucket) for bucket in times]


def decoder_ms_per_box(net: LiteMedSAM, image: np.ndarray, rounds: int = 20) -> dict[str, float]:
    """Median ms per box of the network's own decoder as one ONNX graph (exported here to a temporary file) and
    of the split decoder the default runs (slice part kept, as on a correction's seed slice; and computed for
    each box, as the first box on a new slice), one box per call, round robin after a warm-up."""
    import tempfile

    import torch

    from tagseg.backends.litemedsam_net import EMBEDDING_SHAPE, _box_decoder, _onnx_session

    embedding = net.embedding(("decoder-speed",), lambda: image)
    boxes = np.array([[[96, 80, 160, 150]]], np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference_decoder.onnx"
        torch.onnx.export(
            _box_decoder(net.network()),
            (torch.zeros(EMBEDDING_SHAPE), torch.zeros(2, 1, 4)),
            str(path),
            opset_version=17,
            input_names=["embedding", "boxes"],
            output_names=["logits", "iou"],
            dynamic_axes={"boxes": {0: "n"}, "logits": {0: "n"}, "iou": {0: "n"}},
            dynamo=False,
        )
        reference = _onnx_session(path, 2)
        runs = {
            "one graph (the network's decoder)": lambda: reference.run(None, {"embedding": embedding, "boxes": boxes}),
            "split, slice part kept": lambda: net.decode(embedding, boxes[0], key=("decoder-speed",)),
            "split, slice part per box": lambda: net.decode(embedding, boxes[0]),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():
            for _ in range(3):
                run()
        for _ in range(rounds):
            for name, run in runs.items():
                for _ in range(3):  # three in a row: the same session warm, as a correction's seed boxes run
                    t = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t)
    return {name: 1000 * statistics.median(bucket) for name, bucket in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=tune_default.DEFAULT_CASES)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of runtime:encoder")
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--no-accuracy", action="store_true", help="speed only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    cases = tune_default.load_cases(args.cases, set()) if args.cases.is_dir() else []
    if not cases:
        print(f"no dev cases at {args.cases}: speed on a generated phantom, Dice not measured")
    images = slices_for_speed(cases, args.slices)
    variants = [v.split(":") for v in args.variants.split(",")]
    nets = [LiteMedSAM(device="cpu", runtime=runtime, encoder=encoder) for runtime, encoder in variants]
    speeds = ms_per_slice(nets, images)
    rows = []
    for (runtime, encoder), net, speed in zip(variants, nets, speeds, strict=False):
        row = {"variant": f"{runtime}:{encoder}", "runtime": net.runtime, "encoder": encoder, "ms_per_slice": speed}
        if cases and not args.no_accuracy:
            scores = [tune_default.run_case(case, ["points", "box"], {}, net=net) for case in cases]
            row["points"] = {r["name"]: r["points"] for r in scores}
            row["box"] = {r["name"]: r["box"] for r in scores}
        rows.append(row)
        print(
            json.dumps(
                {
                    k: (round(v, 1) if isinstance(v, float) else v)
                    for k, v in row.items()
                    if k in ("variant", "runtime", "ms_per_slice")
                }
            ),
            flush=True,
        )
    decoders = decoder_ms_per_box(nets[0], images[0]) if nets[0].runtime == "onnxruntime" else {}
    openvino = importlib.util.find_spec("openvino") is not None
    load = os.getloadavg()[0]
    lines = [
        f"# Encoder variants ({datetime.now():%Y-%m-%d %H:%M}, {len(images)} slices round robin, 2 threads, "
        f"1-min load average {load:.1f} at the end)",
        "",
        "| variant | runtime | ms / slice | vs default | mean Dice 3 clicks (Δ) | mean Dice box (Δ) | accepted |",
        "|---|---|---|---|---|---|---|",
    ]
    base = rows[0]
    for row in rows:
        cells = [
            row["variant"],
            row["runtime"],
            f"{row['ms_per_slice']:.0f}",
            f"{base['ms_per_slice'] / row['ms_per_slice']:.2f}x",
        ]
        if "points" in row:
            deltas = []
            for key in ("points", "box"):
                mean, delta = (
                    float(np.mean(list(row[key].values()))),
                    float(np.mean([row[key][n] - base[key][n] for n in row[key]])),
                )
                deltas.append(delta)
                cells.append(f"{mean:.3f} ({delta:+.3f})")
            cells.append("default" if row is base else ("yes" if max(map(abs, deltas)) <= TOLERANCE else "no"))
        else:
            cells += ["not measured", "not measured", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if not openvino:
        lines.append("| openvino | OpenVINO | not measured: openvino is not installable on this machine | | | | |")
    if decoders:
        reference = next(iter(decoders.values()))
        lines += [
            "",
            "Box decoder (ONNX Runtime, ms per box, the same run; masks identical on the 7 dev cases):",
            "",
            "| decoder | ms / box | vs one graph |",
            "|---|---|---|",
            *(f"| {name} | {ms:.1f} | {reference / ms:.2f}x |" for name, ms in decoders.items()),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "encoder_variants.md").write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
