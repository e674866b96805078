"""Dice of the default model on synthetic lesion phantoms, by lesion size, edge, modality and slice geometry.

Phantoms: `tagseg.synth.make_lesion_phantom` over radii 3, 5, 8, 12, 18, 25, 40 mm x edge sharp/soft x
modality ct/mr/mr-zscored x slices thick (5 mm, 0.7-0.8 mm pixels)/isotropic (1 mm) = 84 phantoms. Each
phantom's seed is its index in that full grid, so a phantom is the same whichever subset runs.

The default run is one phantom per radius x modality (21), its edge x slices pair cycling through the four
pairs (6/5/5/5 phantoms each; the cycle's start drawn by numpy default_rng(0)), so it fits ~25 min of a
2-core CPU when the model takes ~1 min a phantom. `--half`: 42, every radius x modality x slices cell once
with one sharp and one soft phantom per radius x modality (edge x slices balanced 10/11, a default_rng(0)
permutation). `--full`: all 84. `--quick`: 4 phantoms, one per size bin (a smoke test; 6 min on a
shared 2-core CPU when first written). Time grows with the lesion's slices: isotropic 40 mm lesions are dearest.

Protocol, as for the real cases (../shared/tools/accuracy.py): 3 clicks = 3 voxels drawn uniformly from the
label (`rng.integers(0, n, size=3)` over `np.argwhere(label > 0)`, numpy default_rng(0)), plus the text the
scoring tool gives such a case ("brain tumor" on MR, "lung tumor" in lung, "lesion" otherwise; --text
overrides it, --text "" for none), one first prediction of `tagseg.Session(model="litemedsam-3d",
device="cpu")`, Dice by `tagseg.evaluate.dice`.

Prints one row per phantom, then mean Dice by size bin (radius 3-5, 6-10, 11-20, 21-40 mm) x modality, and
writes the tables to bench/results/phantoms.md (phantoms_quick.md with --quick); --json prints JSON instead.
Usage: python bench/phantoms.py [--quick | --half | --full] [--json] [--text TEXT] [--model NAME] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TAGSSegment"))
RESULTS = ROOT / "bench" / "results"

RADII_MM = (3, 5, 8, 12, 18, 25, 40)
EDGES = ("sharp", "soft")
MODALITIES = ("ct", "mr", "mr-zscored")
SLICES = ("thick", "isotropic")
SIZE_BINS = (("3-5 mm", 3, 5), ("6-10 mm", 6, 10), ("11-20 mm", 11, 20), ("21-40 mm", 21, 40))
QUICK = (  # (radius, edge, modality, slices): one per size bin, all three modalities, both edges and geometries
    (3, "sharp", "ct", "thick"),
    (8, "soft", "mr-zscored", "isotropic"),
    (18, "soft", "mr", "thick"),
    (25, "sharp", "ct", "thick"),
)


def full_grid() -> list[tuple[int, str, str, str]]:
    return [(r, e, m, s) for r in RADII_MM for e in EDGES for m in MODALITIES for s in SLICES]


def balanced_half() -> list[tuple[int, str, str, str]]:
    """Each radius x modality x slices cell once; per radius x modality one sharp and one soft; edge x slices
    balanced (10 or 11 cells each way); which cells flip is a default_rng(0) permutation."""
    cells = [(r, m) for r in RADII_MM for m in MODALITIES]
    flips = np.random.default_rng(0).permutation(np.arange(len(cells)) % 2)
    return [
        (r, EDGES[(flip + c) % 2], m, s)
        for (r, m), flip in zip(cells, flips, strict=False)
        for c, s in enumerate(SLICES)
    ]


def one_per_cell() -> list[tuple[int, str, str, str]]:
    """One phantom per radius x modality (21); edge x slices cycles through its 4 pairs (6/5/5/5 phantoms),
    so every radius sees three different pairs; the cycle's start is drawn by default_rng(0)."""
    pairs = [(e, s) for e in EDGES for s in SLICES]
    start = int(np.random.default_rng(0).integers(0, len(pairs)))
    cells = [(r, m) for r in RADII_MM for m in MODALITIES]
    return [
        (r, *pairs[(n + start) % len(pairs)][:1], m, pairs[(n + start) % len(pairs)][1])
        for n, (r, m) in enumerate(cells)
    ]


def grid_seed(spec) -> int:
    return full_grid().index(tuple(spec))


def size_bin(radius: float) -> str:
    for name, lo, hi in SIZE_BINS:
        if lo <= radius <= hi:
            return name
    return "other"


def text_for(phantom) -> str:
    """The text ../shared/tools/accuracy.py gives a case of this kind."""
    return {"brain": "brain tumor", "lung": "lung tumor"}.get(phantom.tumour_organ, "lesion")


def clicks(label) -> list:
    """3 voxels drawn uniformly from the label, numpy default_rng(0), as RAS points."""
    voxels = np.argwhere(np.asarray(label.array) > 0)
    pick = voxels[np.random.default_rng(0).integers(0, len(voxels), size=3)]
    return [tuple(float(v) for v in p) for p in label.kji_to_ras(pick)]


def run_one(spec, args) -> dict:
    from tagseg import Session
    from tagseg.evaluate import dice
    from tagseg.synth import lesion_phantom_name, make_lesion_phantom

    radius, edge, modality, slices = spec
    seed = grid_seed(spec)
    t0 = time.perf_counter()
    phantom = make_lesion_phantom(seed, radius, edge, modality, slices)
    make_s = time.perf_counter() - t0
    text = text_for(phantom) if args.text is None else args.text
    label = phantom.label
    volume_ml = float((label.array > 0).sum() * np.prod(label.spacing_ijk) / 1000.0)
    row = {
        "phantom": lesion_phantom_name(radius, edge, modality, slices, seed),
        "radius_mm": radius,
        "edge": edge,
        "modality": modality,
        "slices": slices,
        "seed": seed,
        "host": phantom.tumour_organ,
        "text": text,
        "shape_ijk": list(phantom.image.shape_kji[::-1]),
        "volume_ml": round(volume_ml, 3),
        "lesion_slices": int(len(np.unique(np.nonzero(label.array)[0]))),
        "make_s": round(make_s, 2),
    }
    session = Session(phantom.image, model=args.model, device=args.device)
    try:
        if text:
            session.set_text(text)
        for point in clicks(label):
            session.add_point(point)
        t1 = time.perf_counter()
        mask = session.predict()
        row["predict_s"] = round(time.perf_counter() - t1, 2)
        row["dice"] = round(dice(mask.array, label.array), 4)
        row["predicted_ml"] = round(float((mask.array > 0).sum() * np.prod(label.spacing_ijk) / 1000.0), 3)
    except Exception as exc:  # a failing phantom is a row with Dice 0, as a failing case is in accuracy.py
        row.update(dice=0.0, predict_s=round(time.perf_counter() - t0, 2), error=" ".join(str(exc).split())[:200])
    finally:
        session.close()
    return row


def summarise(rows: list[dict]) -> dict:
    table = {}
    for name, _, _ in SIZE_BINS:
        cells = {}
        for m in (*MODALITIES, "all"):
            values = [
                r["dice"] for r in rows if size_bin(r["radius_mm"]) == name and (m == "all" or r["modality"] == m)
            ]
            cells[m] = {"mean": round(statistics.fmean(values), 3), "n": len(values)} if values else None
        table[name] = cells
    by = {}
    for key, values in (("edge", EDGES), ("slices", SLICES), ("modality", MODALITIES)):
        by[key] = {
            v: round(statistics.fmean(d), 3) if (d := [r["dice"] for r in rows if r[key] == v]) else None
            for v in values
        }
    return {
        "by_size_and_modality": table,
        "by": by,
        "mean": round(statistics.fmean(r["dice"] for r in rows), 3),
        "n": len(rows),
    }


def fmt_cell(cell) -> str:
    return "–" if cell is None else f"{cell['mean']:.2f} ({cell['n']})"


def markdown(rows: list[dict], summary: dict, meta: dict) -> str:
    lines = [
        f"# Phantom Dice by lesion size ({meta['date']}, {meta['selection']})",
        "",
        f"Model `{meta['model']}` on {meta['device']}; 3 clicks drawn uniformly from the label "
        f"(numpy default_rng(0)); text {meta['text']}; one first prediction per phantom; "
        f"{summary['n']} phantoms, mean Dice {summary['mean']:.3f}, {meta['wall_s']:.0f} s.",
        "",
        "Mean Dice (phantoms) by lesion radius x modality:",
        "",
        "| radius | " + " | ".join(MODALITIES) + " | all |",
        "|---" * (len(MODALITIES) + 2) + "|",
    ]
    for name, cells in summary["by_size_and_modality"].items():
        lines.append(f"| {name} | " + " | ".join(fmt_cell(cells[m]) for m in (*MODALITIES, "all")) + " |")
    lines += [
        "",
        "Mean Dice by "
        + "; ".join(
            f"{key}: " + ", ".join(f"{v} {d:.2f}" for v, d in values.items() if d is not None)
            for key, values in summary["by"].items()
        )
        + ".",
        "",
        "| phantom | radius mm | edge | modality | slices | host | volume ml | lesion slices | Dice | predict s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phantom']} | {r['radius_mm']} | {r['edge']} | {r['modality']} | {r['slices']} | "
            f"{r['host']} | {r['volume_ml']:.2f} | {r['lesion_slices']} | {r['dice']:.3f} | "
            f"{r['predict_s']:.1f}{' (error: ' + r['error'] + ')' if 'error' in r else ''} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help=f"{len(QUICK)} small phantoms (smoke test)")
    which.add_argument("--half", action="store_true", help=f"a balanced half of the grid ({len(balanced_half())})")
    which.add_argument("--full", action="store_true", help=f"all {len(full_grid())} phantoms")
    parser.add_argument("--json", action="store_true", help="print JSON (rows, summary) instead of tables")
    parser.add_argument("--text", default=None, help="text for every phantom ('' = none; default: as accuracy.py)")
    parser.add_argument("--model", default="litemedsam-3d")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        specs, selection = list(QUICK), f"quick: {len(QUICK)} phantoms"
    elif args.full:
        specs, selection = full_grid(), f"full grid: {len(full_grid())} phantoms"
    elif args.half:
        specs, selection = balanced_half(), f"balanced half of the grid: {len(balanced_half())} phantoms"
    else:
        specs, selection = one_per_cell(), f"one phantom per radius x modality: {len(one_per_cell())} phantoms"
    start = time.perf_counter()
    rows = []
    for n, spec in enumerate(specs, 1):
        row = run_one(spec, args)
        rows.append(row)
        if not args.json:
            print(
                f"[{n}/{len(specs)}] {row['phantom']:44s} {row['host']:5s} {row['volume_ml']:8.2f} ml "
                f"{row['lesion_slices']:3d} slices  Dice {row['dice']:.3f}  {row['predict_s']:6.1f} s"
                + (f"  error: {row['error']}" if "error" in row else ""),
                flush=True,
            )
    summary = summarise(rows)
    meta = {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "selection": selection,
        "model": args.model,
        "device": args.device,
        "text": "as accuracy.py" if args.text is None else repr(args.text),
        "wall_s": time.perf_counter() - start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("phantoms_quick.md" if args.quick else "phantoms.md")
    out.write_text(markdown(rows, summary, meta), encoding="utf-8")
    if args.json:
        print(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    else:
        print()
        print(f"mean Dice by radius x modality ({summary['n']} phantoms, mean {summary['mean']:.3f}):")
        print(f"{'radius':10s}" + "".join(f"{m:>16s}" for m in (*MODALITIES, "all")))
        for name, cells in summary["by_size_and_modality"].items():
            print(f"{name:10s}" + "".join(f"{fmt_cell(cells[m]):>16s}" for m in (*MODALITIES, "all")))
        print(
            "by "
            + "; ".join(
                f"{k}: " + ", ".join(f"{v} {d:.2f}" for v, d in vals.items() if d is not None)
                for k, vals in summary["by"].items()
            )
        )
        print(f"wrote {out.relative_to(ROOT)} ({meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
