"""The corrective-click protocol (NoC@85) for our default model and Slicer's Grow from seeds, same clicks.

After the 3 seeded lesion clicks (the shared click protocol, seed 0) each method gets up to 5
corrections, each at the innermost voxel of the larger error region of *its own* last result
(`tagseg.corrective`): an include click on a miss, an exclude click on a leak. Reports Dice after
every click and the clicks needed to reach Dice 0.85 (NoC@85; 9 = never), per case and on average.
Our numbers are the shared corrective tool's (same clicks, same Session calls). `litemedsam-3d+look3s` is the
same run with 3 s between each result and the next click, as a user looking at it (the default model encodes
the slices a correction may need meanwhile; the 3 s are not timed). Also prints first-prediction and click
times per case (the speed issue's CPU rows).

Usage: python bench/corrective_bench.py [--cases DIR] [--methods litemedsam-3d,litemedsam-3d+look3s,grow-from-seeds]
       [--out bench/results/corrective.md] [--json F]
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TAGSSegment"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED_TOOLS = ROOT.parent / "shared" / "tools"
DEFAULT_CASES = ROOT.parent / "shared" / "data" / "lesions_dev"
CORRECTIONS = 5

from run_bench import text_for  # noqa: E402  (the scoring tools' texts)

TARGET = 0.85


def curve_ours(
    image, truth: np.ndarray, clicks: list, text: str, think_s: float = 0.0
) -> tuple[list[float], float, float]:
    """`think_s`: seconds the simulated user looks at each result before the next click (not timed; the
    default model encodes ahead meanwhile)."""
    from tagseg import Session
    from tagseg.backends import release_shared_backends
    from tagseg.corrective import next_corrective_click
    from tagseg.evaluate import dice

    spacing = image.spacing_kji
    release_shared_backends()  # no encodings or decoded masks left from another method's run of this case
    with Session(image, model="auto", device="cpu") as s:
        s.set_text(text)
        for p in clicks:
            s.add_point(p, positive=True)
        t = time.perf_counter()
        pred = np.asarray(s.predict().array) > 0
        first = time.perf_counter() - t
        curve, refine = [dice(pred, truth)], []
        for _ in range(CORRECTIONS):
            click = next_corrective_click(pred, truth, spacing)
            if click is None:
                curve.append(curve[-1])
                continue
            time.sleep(think_s)
            s.add_point(image.kji_to_ras([click[0]])[0], positive=click[1])
            t = time.perf_counter()
            pred = np.asarray(s.predict().array) > 0
            refine.append(time.perf_counter() - t)
            curve.append(dice(pred, truth))
    return curve, first, float(np.median(refine)) if refine else 0.0


def curve_grow(image, truth: np.ndarray, clicks: list, text: str) -> tuple[list[float], float, float]:
    import baselines
    from tagseg.corrective import next_corrective_click
    from tagseg.evaluate import dice

    grow = baselines.GrowFromSeeds(image)
    include, exclude = list(clicks), []
    shell = baselines.points_box(include, baselines.CLICK_SHELL_MARGIN_MM)
    t = time.perf_counter()
    pred = grow.run(include, shell, exclude) > 0
    first = time.perf_counter() - t
    curve, refine = [dice(pred, truth)], []
    for _ in range(CORRECTIONS):
        click = next_corrective_click(pred, truth, image.spacing_kji)
        if click is None:
            curve.append(curve[-1])
            continue
        point = tuple(image.kji_to_ras([click[0]])[0])
        (include if click[1] else exclude).append(point)
        t = time.perf_counter()
        pred = grow.run(include, shell, exclude) > 0  # the background shell the user drew stays
        refine.append(time.perf_counter() - t)
        curve.append(dice(pred, truth))
    return curve, first, float(np.median(refine)) if refine else 0.0


METHODS = {
    "litemedsam-3d": curve_ours,
    "litemedsam-3d+look3s": functools.partial(curve_ours, think_s=3.0),
    "grow-from-seeds": curve_grow,
}
DEFAULT_METHODS = "litemedsam-3d,litemedsam-3d+look3s,grow-from-seeds"


def noc(curve: list[float]) -> int:
    return next((3 + i for i, d in enumerate(curve) if d >= TARGET), 9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    ap.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma list of " + ", ".join(METHODS) + " (+look3s: 3 s between a result and the next click)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "corrective.md")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.cases.is_dir():
        print(f"corrective protocol skipped: no cases at {args.cases} (the dev data is not on this machine)")
        return 0
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sys.path.insert(0, str(SHARED_TOOLS))
    from clicks import lesion_clicks

    from tagseg import load_volume

    methods = args.methods.split(",")
    rows = []
    for case in sorted(glob.glob(os.path.join(str(args.cases), "*", ""))):
        name = Path(case).name
        images, labels = sorted(glob.glob(case + "image.*")), sorted(glob.glob(case + "label*"))
        if not images or not labels:
            continue
        image, label = load_volume(images[0]), load_volume(labels[0])
        truth = np.asarray(label.array) > 0
        clicks = lesion_clicks(labels[0], 3, seed=0)
        for method in methods:
            curve, first, refine = METHODS[method](image, truth, clicks, text_for(name))
            rows.append(
                {
                    "case": name,
                    "method": method,
                    "curve": curve,
                    "noc85": noc(curve),
                    "first_s": first,
                    "refine_s": refine,
                }
            )
            print(
                f"{name:24s} {method:16s} "
                + " ".join(f"{d:.3f}" for d in curve)
                + f"  NoC@85 {noc(curve)}  first {first:.1f}s refine {refine:.2f}s",
                flush=True,
            )
    lines = [
        f"Corrective protocol, {time.strftime('%Y-%m-%d')}: 3 seeded clicks (seed 0) + up to {CORRECTIONS} "
        "corrections at the innermost voxel of the larger error region. Dice after each click; NoC@85 = clicks "
        "to reach Dice 0.85 (9 = never).",
        "",
        "| case | method | " + " | ".join(f"{3 + i} clicks" for i in range(CORRECTIONS + 1)) + " | NoC@85 |",
        "|---|---|" + "---|" * (CORRECTIONS + 2),
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['method']} | " + " | ".join(f"{d:.3f}" for d in r["curve"]) + f" | {r['noc85']} |"
        )
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if mine:
            mean = np.mean([r["curve"] for r in mine], axis=0)
            lines.append(
                f"| **mean** | {method} | "
                + " | ".join(f"**{d:.3f}**" for d in mean)
                + f" | **{np.mean([r['noc85'] for r in mine]):.1f}** |"
            )
    lines += [
        "",
        f"Speed ({os.cpu_count()} CPU cores, 1-min load average {os.getloadavg()[0]:.1f} at the end): "
        "first prediction and the median corrective click per case, then the median over cases.",
        "",
        "| method | " + " | ".join(sorted({r["case"] for r in rows})) + " | median |",
        "|---|" + "---|" * (len({r["case"] for r in rows}) + 1),
    ]
    for method in methods:
        mine = {r["case"]: r for r in rows if r["method"] == method}
        if mine:
            cells = [
                f"{mine[c]['first_s']:.1f} / {mine[c]['refine_s']:.2f}" if c in mine else "-"
                for c in sorted({r["case"] for r in rows})
            ]
            lines.append(
                f"| {method} (first s / click s) | "
                + " | ".join(cells)
                + f" | {np.median([r['first_s'] for r in mine.values()]):.1f} / "
                f"{np.median([r['refine_s'] for r in mine.values()]):.2f} |"
            )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
