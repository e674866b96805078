"""Latency and accuracy of the default backend on the dev lesions, with the shared click protocol.

Per case: 3 include clicks drawn uniformly from the label (seed 0, ../shared/tools/clicks.py), the
matching text, a cold first prediction (empty embedding cache), then refinement clicks (one more
include click drawn with seeds 1..R, each undone after) timed separately. Prints a Markdown table
with medians and the refine/first ratio, and writes it to bench/results/latency.md.
Usage: python bench/run_bench.py [--cases DIR] [--repeats R]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TAGSSegment"))
SHARED = Path(os.environ.get("TAGSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
TOOLS = SHARED.parent / "tools"


def text_for(name: str) -> str:
    """The description a user would type; the same rule as ../shared/tools/accuracy.py."""
    if name.startswith("lung"):
        return "lung tumor"
    if name.startswith(("brats", "brain")):
        return "brain tumor"
    return "lesion"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=str(SHARED / "lesions_dev"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = sorted(p for p in Path(args.cases).glob("*/") if list(p.glob("image.*")))
    if not cases or not (TOOLS / "clicks.py").exists():
        print(f"bench: skipped — no cases under {args.cases} or no click protocol at {TOOLS}/clicks.py")
        return 0
    sys.path.insert(0, str(TOOLS))
    import torch
    from clicks import lesion_clicks

    from tagseg import Session, load_volume
    from tagseg.backends import create_backend

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    backend = create_backend("litemedsam-3d", "cpu")
    load_s = time.perf_counter() - t0
    rows = []
    for case in cases:
        image = load_volume(next(case.glob("image.*")))
        label_path = next(case.glob("label.*"))
        label = np.asarray(load_volume(label_path).array) > 0
        backend.net._cache.clear()
        session = Session(image, model="litemedsam-3d", device="cpu", warn=lambda m: None)
        session._backends["litemedsam-3d"] = backend
        session.set_text(text_for(case.name))
        for point in lesion_clicks(str(label_path), 3, seed=0):
            session.add_point(point)
        t = time.perf_counter()
        mask = np.asarray(session.predict().array) > 0
        first = time.perf_counter() - t
        encoded = backend.timings.get("slices_encoded", 0)
        dice = 2 * (mask & label).sum() / max(mask.sum() + label.sum(), 1)
        refine = []
        for seed in range(1, args.repeats + 1):
            session.add_point(lesion_clicks(str(label_path), 1, seed=seed)[0])
            t = time.perf_counter()
            session.predict()
            refine.append(time.perf_counter() - t)
            session.undo()
        rows.append((case.name, image.shape_kji, float(dice), first, encoded, statistics.median(refine),
                     min(refine), max(refine)))
        print(f"{case.name}: dice {dice:.3f}, first {first:.1f} s ({encoded} slices encoded), "
              f"refine median {statistics.median(refine):.2f} s", flush=True)
    lines = [
        f"Measured {date.today().isoformat()} on {platform.machine()} CPU ({os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}), encoder runtime {backend.encoder_runtime}; model load {load_s:.1f} s.",
        "Clicks: 3 voxels drawn uniformly from the label, seed 0 (../shared/tools/clicks.py); refine = one more "
        f"include click (seeds 1..{args.repeats}), median (min-max).",
        "",
        "| case | grid (k,j,i) | Dice, 3 clicks | first prediction s | slices encoded | refine click s | first / refine |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, shape, dice, first, enc, med, lo, hi in rows:
        lines.append(f"| {name} | {shape} | {dice:.3f} | {first:.1f} | {enc} | {med:.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{first / med:.1f}x |")
    dices = [r[2] for r in rows]
    firsts = [r[3] for r in rows]
    refines = [r[5] for r in rows]
    lines.append(f"| **mean / median** | | **{np.mean(dices):.3f}** | {statistics.median(firsts):.1f} | | "
                 f"{statistics.median(refines):.2f} | {statistics.median(firsts) / statistics.median(refines):.1f}x |")
    table = "\n".join(lines)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
