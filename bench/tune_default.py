"""Accuracy of the default backend on every dev case, in one process: 3 clicks, box, and the corrective
protocol (3 seeded clicks + up to 5 corrections at the innermost voxel of the larger error region).

Used to choose the default backend's constants on all cases together and to report leave-one-case-out
numbers (see `--sweep`). Clicks come from the shared click protocol (../shared/tools/clicks.py), so the
numbers match `accuracy.py` and `corrective.py`. Image encodings can be cached on disk between runs
(`--embedding-cache DIR`; a development aid, the product never writes them).

Usage: python bench/tune_default.py [--cases DIR] [--protocols points,box,corrective] [--only NAME,...] [--no-text]
       [--set option=value ...] [--sweep "option=v1;v2;..." --sweep ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TAGSSegment"))
SHARED_TOOLS = ROOT.parent / "shared" / "tools"
DEFAULT_CASES = ROOT.parent / "shared" / "data" / "lesions_dev"

from tagseg import Session, load_volume  # noqa: E402
from tagseg.backends import litemedsam3d  # noqa: E402
from tagseg.backends.litemedsam_net import LiteMedSAM  # noqa: E402
from tagseg.corrective import next_corrective_click  # noqa: E402
from tagseg.evaluate import dice  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import text_for  # noqa: E402  (the scoring tools' texts)


def install_disk_cache(folder: Path) -> None:
    """Memoise LiteMedSAM image encodings on disk, keyed by the exact model input."""
    folder.mkdir(parents=True, exist_ok=True)
    original = LiteMedSAM.embedding

    def embedding(self, key, image_fn):
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        image = np.ascontiguousarray(image_fn(), dtype=np.float32)
        path = folder / (hashlib.sha1(image.tobytes()).hexdigest() + ".npy")
        if path.is_file():
            out = np.load(path)
            with self._lock:
                self._cache[key] = out
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return out
        out = original(self, key, lambda: image)
        np.save(path, out)
        return out

    LiteMedSAM.embedding = embedding


def load_cases(folder: Path, only: set[str]) -> list[dict]:
    sys.path.insert(0, str(SHARED_TOOLS))
    from clicks import bbox_ras, lesion_clicks

    cases = []
    for case in sorted(glob.glob(os.path.join(str(folder), "*", ""))):
        name = Path(case).name  # the folder name
        if only and name not in only:
            continue
        image = sorted(glob.glob(case + "image.*"))[0]
        label = sorted(glob.glob(case + "label*"))[0]
        cases.append(
            {
                "name": name,
                "image": load_volume(image),
                "label": load_volume(label),
                "clicks": lesion_clicks(label, 3, seed=0),
                "box": bbox_ras(label),
            }
        )
    return cases


def run_case(
    case: dict,
    protocols: list[str],
    options: dict,
    use_text: bool = True,
    net: LiteMedSAM | None = None,
    think_s: float = 0.0,
) -> dict:
    """`net`: a LiteMedSAM to run instead of the backend's own (another runtime or encoder variant).
    `think_s`: seconds the simulated user looks at each result before the next corrective click (not timed)."""
    truth = np.asarray(case["label"].array) > 0
    spacing = case["label"].spacing_kji
    out = {"name": case["name"]}
    with Session(case["image"], model="litemedsam-3d", device="cpu") as s:
        backend, _ = s._backend("litemedsam-3d")
        backend.options = litemedsam3d.Options(**options)
        if net is not None and net is not backend.net:
            backend.net = net
            backend._decoded.clear()  # decoded masks and results of the other network are not this one's
            backend._results.clear()
        s.set_text(text_for(case["name"]) if use_text else "")
        if "box" in protocols:
            s.add_box(*case["box"])
            t = time.perf_counter()
            out["box"] = dice(np.asarray(s.predict().array) > 0, truth)
            out["box_s"] = time.perf_counter() - t
            s.undo()
        if "points" in protocols or "corrective" in protocols:
            for p in case["clicks"]:
                s.add_point(p, positive=True)
            t = time.perf_counter()
            pred = np.asarray(s.predict().array) > 0
            out["first_s"] = time.perf_counter() - t
            out["points"] = dice(pred, truth)
            if "corrective" in protocols:
                curve, refine = [out["points"]], []
                for _ in range(5):
                    click = next_corrective_click(pred, truth, spacing)
                    if click is None:
                        curve.append(curve[-1])
                        continue
                    kji, positive = click
                    time.sleep(think_s)
                    s.add_point(case["image"].kji_to_ras([kji])[0], positive=positive)
                    t = time.perf_counter()
                    pred = np.asarray(s.predict().array) > 0
                    refine.append(time.perf_counter() - t)
                    curve.append(dice(pred, truth))
                out["curve"] = curve
                out["refine_s"] = float(np.median(refine)) if refine else 0.0
                out["noc85"] = next((3 + i for i, d in enumerate(curve) if d >= 0.85), 9)
    return out


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in ("points", "box") if k in rows[0]]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if "points" in rows[0]:
        summary["points_min"] = float(min(r["points"] for r in rows))
    if "curve" in rows[0]:
        summary["after5"] = float(np.mean([r["curve"][-1] for r in rows]))
        summary["noc85"] = float(np.mean([r["noc85"] for r in rows]))
    return summary


def print_row(r: dict) -> None:
    line = f"{r['name']:24s}"
    if "points" in r:
        line += f" points {r['points']:.3f} ({r['first_s']:5.1f}s)"
    if "box" in r:
        line += f" box {r['box']:.3f} ({r['box_s']:5.1f}s)"
    if "curve" in r:
        line += " corr " + " ".join(f"{d:.2f}" for d in r["curve"]) + f" refine {r['refine_s']:.2f}s NoC85 {r['noc85']}"
    print(line, flush=True)


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    ap.add_argument("--protocols", default="points,box,corrective")
    ap.add_argument("--only", default="")
    ap.add_argument("--set", action="append", default=[], help="option=value for litemedsam3d.Options")
    ap.add_argument("--sweep", action="append", default=[], help="option=v1;v2;... (leave-one-case-out report)")
    ap.add_argument("--embedding-cache", type=Path, default=None)
    ap.add_argument("--no-text", action="store_true", help="no description (the scoring tools' texts otherwise)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="seconds between a result and the next corrective click (a user looking; not timed)",
    )
    args = ap.parse_args()
    if not args.cases.is_dir():
        print(f"no cases at {args.cases}: nothing to tune on (the dev data is not on this machine)")
        return 0
    if args.embedding_cache:
        install_disk_cache(args.embedding_cache)
    import torch

    torch.set_num_threads(int(os.environ.get("TAGSEG_THREADS", "2")))
    protocols = args.protocols.split(",")
    cases = load_cases(args.cases, set(filter(None, args.only.split(","))))
    base = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    sweeps = [
        (name, [parse_value(v) for v in values.split(";")]) for name, values in (s.split("=", 1) for s in args.sweep)
    ]
    settings = [
        dict(base, **dict(zip([n for n, _ in sweeps], combo, strict=False)))
        for combo in itertools.product(*[v for _, v in sweeps])
    ] or [base]
    results = []
    for setting in settings:
        print(f"== {setting}", flush=True)
        rows = []
        for case in cases:
            rows.append(run_case(case, protocols, setting, use_text=not args.no_text, think_s=args.think))
            print_row(rows[-1])
        print("mean: " + json.dumps({k: round(v, 3) for k, v in summarise(rows).items()}), flush=True)
        results.append({"setting": setting, "rows": rows})
    if len(settings) > 1:
        print_leave_one_out(results, protocols[0])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    return 0


def print_leave_one_out(results: list[dict], metric: str) -> None:
    """For each held-out case: choose the setting with the best mean on the others, score it on the held-out one."""
    names = [r["name"] for r in results[0]["rows"]]
    key = "curve" if metric == "corrective" else metric

    def score(row):
        return row[key][-1] if key == "curve" else row[key]

    held = []
    for i, name in enumerate(names):
        best = max(results, key=lambda res: np.mean([score(r) for j, r in enumerate(res["rows"]) if j != i]))
        held.append(score(best["rows"][i]))
        print(f"leave-one-out {name:24s} chosen {best['setting']} -> {held[-1]:.3f}")
    print(f"leave-one-out mean {metric}: {np.mean(held):.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
