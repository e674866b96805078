"""Accuracy and latency of our backends against what a 3D Slicer user has today, on the same cases and prompts.

Methods (one run, side by side): `litemedsam-3d` (our default, through `tagseg.Session`), `tags` (a TAGS
checkpoint given with --tags-checkpoint; skipped without one: no TAGS weights are published), Slicer's
"Grow from seeds" (`vtkImageGrowCutSegment`) and LiteMedSAM per slice as MedSAM's Slicer plugin runs it
(bench/baselines.py; seeding and boxes as ../shared/docs/BASELINES.md ran them).

Protocols, all drawn from the label with the shared ../shared/tools/clicks.py: 1 and 3 include clicks
(`lesion_clicks(label, n, seed=0)`) plus the case's text, or the label's box with a 2 mm margin
(`bbox_ras`). Cases: ../shared/data/lesions_dev (skipped with a message when absent) and N synthetic
phantoms (`tagseg.synth.make_phantom`, written to a temporary folder so the click protocol can read them).

Per case and repeat: a cold first prediction, then one more include click (`lesion_clicks(label, 1,
seed=r)`), timed, then undone. Each method x protocol runs in its own process (bench/worker.py), so peak
RSS is per method. Dice uses the shared `clicks.dice` (on the label's grid).

Writes bench/results/bench.md, bench.png, bench.json, and latency.md (the README's latency table).
Usage: python bench/run_bench.py [--cases DIR] [--repeats R] [--phantoms N] [--methods a,b]
       [--protocols 1click,3clicks,box] [--tags-checkpoint PATH] [--per-slice-encoder onnxruntime|torch] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TAGSSegment"))
SHARED = Path(os.environ.get("TAGSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
TOOLS = SHARED.parent / "tools"
RESULTS = ROOT / "bench" / "results"

METHODS = ("litemedsam-3d", "tags", "grow-from-seeds", "lms-per-slice")
OURS = ("litemedsam-3d", "tags")
PROTOCOLS = {"1click": "1 click", "3clicks": "3 clicks", "box": "box"}
PHANTOM = dict(shape_kji=(24, 96, 96), spacing_ijk=(1.0, 1.0, 2.5), tumour_radius_mm=10)
DEFAULTS = {"repeats": 2, "phantoms": 2, "protocols": "1click,3clicks,box"}
QUICK = {"repeats": 1, "phantoms": 2, "protocols": "3clicks,box"}
METHOD_NOTES = {
    "litemedsam-3d": 'our default backend, `tagseg.Session(model="litemedsam-3d")`: text + clicks, or text + box',
    "tags": "`tagseg.Session(model=CHECKPOINT)`",
    "grow-from-seeds": "Slicer's Grow from seeds (`vtkImageGrowCutSegment`, slicer-core)",
    "lms-per-slice": "LiteMedSAM per slice, MedSAM's Slicer plugin workflow (no embedding cache)",
}


def text_for(name: str) -> str:
    """The description a user would type; the same rule as ../shared/tools/accuracy.py."""
    if name.startswith("lung"):
        return "lung tumor"
    if name.startswith(("brats", "brain")):
        return "brain tumor"
    if name.startswith("breast"):
        return "breast lesion"
    return "lesion"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=str(SHARED / "lesions_dev"), help="folder of case folders (image.*, label.*)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"cold first predictions (+1 refine click each) per case (default {DEFAULTS['repeats']})",
    )
    parser.add_argument(
        "--phantoms", type=int, help=f"synthetic phantoms, seeds 0..N-1 (default {DEFAULTS['phantoms']})"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    parser.add_argument("--protocols", help=f"comma list of {', '.join(PROTOCOLS)} (default {DEFAULTS['protocols']})")
    parser.add_argument("--tags-checkpoint", help="a TAGS .safetensors checkpoint for the `tags` method")
    parser.add_argument(
        "--per-slice-encoder",
        default="onnxruntime",
        choices=("onnxruntime", "torch"),
        help="LiteMedSAM encoder runtime for the per-slice baseline (the plugin runs torch, ~2x slower)",
    )
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch / ONNX threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['repeats']} repeat, {QUICK['phantoms']} phantoms, protocols {QUICK['protocols']}",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if unknown or any(p not in PROTOCOLS for p in protocols) or args.repeats < 1 or args.phantoms < 0:
        parser.error(f"methods from {METHODS}, protocols from {tuple(PROTOCOLS)}, repeats >= 1, phantoms >= 0")
    args.protocols = [PROTOCOLS[p] for p in protocols]
    return args


# ---- cases and prompts ----------------------------------------------------------------------------
def collect_cases(args: argparse.Namespace, tmp: Path, notes: list[str]) -> list[dict]:
    """Dev cases (if present) and phantoms, each with every prompt drawn once for all methods."""
    from clicks import bbox_ras, lesion_clicks

    from tagseg.io import save_volume
    from tagseg.synth import make_phantom

    cases = []
    dev = Path(args.cases)
    dev_cases = (
        sorted(p for p in dev.glob("*/") if list(p.glob("image.*")) and list(p.glob("label.*"))) if dev.is_dir() else []
    )
    if not dev_cases:
        msg = f"dev cases: skipped — no case folders (image.*, label.*) under {dev}"
        print(f"bench: {msg}", flush=True)
        notes.append(msg)
    for folder in dev_cases:
        cases.append(
            {
                "name": folder.name,
                "group": "dev",
                "image": str(next(folder.glob("image.*"))),
                "label": str(next(folder.glob("label.*"))),
                "text": text_for(folder.name),
            }
        )
    for seed in range(args.phantoms):
        phantom = make_phantom(seed=seed, **PHANTOM)
        folder = tmp / f"phantom_s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        save_volume(phantom.image, folder / "image.nii.gz")
        save_volume(phantom.label, folder / "label.nii.gz")
        cases.append(
            {
                "name": f"phantom_s{seed}",
                "group": "phantom",
                "image": str(folder / "image.nii.gz"),
                "label": str(folder / "label.nii.gz"),
                "text": phantom.description,
            }
        )
    for case in cases:
        label = case["label"]
        case["clicks1"] = [list(map(float, p)) for p in lesion_clicks(label, 1, seed=0)]
        case["clicks3"] = [list(map(float, p)) for p in lesion_clicks(label, 3, seed=0)]
        case["box"] = [list(map(float, c)) for c in bbox_ras(label)]
        case["refine"] = [list(map(float, lesion_clicks(label, 1, seed=r)[0])) for r in range(1, args.repeats + 1)]
    return cases


# ---- running the workers ----------------------------------------------------------------------------
def run_worker(method: str, protocol: str, args: argparse.Namespace, cases_json: Path, out_dir: Path) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "worker.py"),
        "--method",
        method,
        "--protocol",
        protocol,
        "--cases-json",
        str(cases_json),
        "--out-dir",
        str(out_dir),
        "--threads",
        str(args.threads),
        "--per-slice-encoder",
        args.per_slice_encoder,
    ]
    if method == "tags":
        cmd += ["--tags-checkpoint", args.tags_checkpoint]
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
    wall = time.perf_counter() - t
    result_file = out_dir / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        return {
            "method": method,
            "protocol": protocol,
            "failed": f"worker exit {proc.returncode}",
            "wall_s": wall,
            "cases": [],
        }
    result = json.loads(result_file.read_text(encoding="utf-8"))
    result["wall_s"] = wall
    return result


def score(results: list[dict], cases: list[dict], tmp: Path) -> None:
    """Dice of each first-repeat mask with the shared `clicks.dice` (prediction written on the image grid)."""
    from clicks import dice

    from tagseg.io import load_volume, save_volume

    by_name = {c["name"]: c for c in cases}
    volumes: dict[str, object] = {}
    for result in results:
        for row in result["cases"]:
            if not row.get("mask"):
                continue
            case = by_name[row["name"]]
            if case["name"] not in volumes:
                volumes[case["name"]] = load_volume(case["image"])
            pred = tmp / "pred.nii"
            save_volume(volumes[case["name"]].with_array(np.load(row["mask"])), pred)
            row["dice"] = float(dice(str(pred), case["label"]))


# ---- numbers -------------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(v: float) -> str:
    """Seconds with the digits that matter: 0.004, 0.42, 12.3."""
    if v != v:
        return "—"
    return f"{v:.3f}" if v < 0.1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def fmt_range(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{fmt_s(med(values))} ({fmt_s(min(values))}–{fmt_s(max(values))})"


class Table:
    """Results indexed by (method, protocol) and case, with the aggregates the report needs."""

    def __init__(self, results: list[dict], cases: list[dict]) -> None:
        self.by_key = {(r["method"], r["protocol"]): r for r in results}
        self.group = {c["name"]: c["group"] for c in cases}
        self.case_names = [c["name"] for c in cases]

    def rows(self, method: str, protocol: str, group: str | None = None) -> list[dict]:
        result = self.by_key.get((method, protocol))
        if not result:
            return []
        return [
            r
            for r in result["cases"]
            if r.get("dice") is not None and (group is None or self.group[r["name"]] == group)
        ]

    def row(self, method: str, protocol: str, case: str) -> dict | None:
        return next((r for r in self.rows(method, protocol) if r["name"] == case), None)

    def mean_dice(self, method: str, protocol: str, group: str) -> float:
        rows = self.rows(method, protocol, group)
        return float(np.mean([r["dice"] for r in rows])) if rows else float("nan")

    def samples(self, method: str, protocol: str, group: str, key: str) -> list[float]:
        return [v for r in self.rows(method, protocol, group) for v in r[key]]

    def case_median(self, method: str, protocol: str, case: str, key: str) -> float:
        r = self.row(method, protocol, case)
        return med(r[key]) if r else float("nan")

    def ratio(self, a: str, b: str, protocol: str, group: str, key: str) -> float:
        """Median over cases of (a's median time / b's median time) on the same case."""
        ratios = []
        for r in self.rows(a, protocol, group):
            other = self.row(b, protocol, r["name"])
            if other and med(other[key]) > 0:
                ratios.append(med(r[key]) / med(other[key]))
        return med(ratios)

    def dice_delta(self, a: str, b: str, protocol: str, group: str) -> float:
        pairs = [(r["dice"], self.row(b, protocol, r["name"])) for r in self.rows(a, protocol, group)]
        deltas = [d - o["dice"] for d, o in pairs if o]
        return float(np.mean(deltas)) if deltas else float("nan")


def fmt_dice(v: float) -> str:
    return "—" if v != v else f"{v:.3f}"


def fmt_delta(v: float) -> str:
    return "—" if v != v else f"{v:+.3f}"


def fmt_ratio(v: float) -> str:
    return "—" if v != v else (f"{v:.2f}×" if v < 10 else f"{v:.0f}×")


def machine_line(results: list[dict], threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    torch_threads = next((r.get("torch_threads") for r in results if r.get("torch_threads")), threads)
    return (
        f"{cpu}, {os.cpu_count()} cores, torch/ONNX threads {torch_threads}, {platform.system()} {platform.machine()}"
    )


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, the rule under it, one line per row."""
    lines = ["| " + " | ".join(cells) + " |" for cells in [head, *rows]]
    lines.insert(1, "|" + "---|" * len(head))
    return lines


def md_section(heading: str, intro: str, head: list[str], rows: list[list[str]]) -> list[str]:
    """A report section: the heading, one paragraph, the table."""
    return ["", heading, "", intro, "", *md_table(head, rows)]


def write_report(
    args: argparse.Namespace,
    results: list[dict],
    cases: list[dict],
    notes: list[str],
    wall_s: float,
    cpu_s: float,
    started: datetime,
    load: tuple[tuple, tuple],
    out: Path,
) -> str:
    t = Table(results, cases)
    methods = [m for m in args.methods if any((m, p) in t.by_key for p in args.protocols)]
    groups = [g for g in ("dev", "phantom") if any(c["group"] == g for c in cases)]
    n = {g: sum(c["group"] == g for c in cases) for g in groups}
    label = {"dev": f"dev ({n.get('dev', 0)})", "phantom": f"phantoms ({n.get('phantom', 0)})"}
    command = " ".join(shlex.quote(a) for a in ["python", "bench/run_bench.py", *sys.argv[1:]])
    lines = [
        "# Benchmark: our backends against Slicer's Grow from seeds and per-slice LiteMedSAM",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M')}; wall time {wall_s / 60:.1f} min; CPU time of the "
        f"workers {cpu_s / 60:.1f} min (user + sys), so about {cpu_s / 60 / max(1, min(2, os.cpu_count() or 1)):.0f}+ "
        "min of wall time on an otherwise idle machine.",
        f"- Machine: {machine_line(results, args.threads)}. Load average (1 min) at start {load[0][0]:.1f}, "
        f"at end {load[1][0]:.1f}: the machine is shared, so timings are noisy (±40 % or worse); "
        "compare methods within this run only.",
        f"- Command: `{command}` (make bench runs it with no options).",
        f"- Repeats: {args.repeats} cold first predictions per case, each followed by one refine click "
        f"(`lesion_clicks(label, 1, seed=r)`, r = 1..{args.repeats}); times are medians with (min–max).",
        f"- Cases: {', '.join(label[g] for g in groups)}. Phantoms: `make_phantom(seed=s, shape_kji=(24, 96, 96), "
        "spacing_ijk=(1.0, 1.0, 2.5), tumour_radius_mm=10)`, text = the phantom's description.",
        "- Methods: " + "; ".join(f"`{m}` = {METHOD_NOTES[m]}" for m in methods) + ".",
    ]
    head = (
        ["method", "protocol"]
        + [f"mean Dice, {label[g]}" for g in groups]
        + [f"first prediction s, {g}" for g in groups]
        + [f"refine click s, {g}" for g in groups]
        + ["RSS after load MB", "peak RSS MB"]
    )
    rows = []
    for m in methods:
        for p in args.protocols:
            r = t.by_key.get((m, p))
            if not r:
                continue
            cells = [f"`{m}`", p] + [fmt_dice(t.mean_dice(m, p, g)) for g in groups]
            cells += [fmt_range(t.samples(m, p, g, "first_s")) for g in groups]
            cells += [fmt_range(t.samples(m, p, g, "refine_s")) for g in groups]
            cells += [f"{r[k]:.0f}" if r.get(k) else "—" for k in ("rss_after_load_mb", "peak_rss_mb")]
            rows.append(cells)
    lines += md_section(
        "## Summary",
        "Dice: mean over cases. Times: median (min–max) over every case × repeat of the group. RSS: the "
        "method's own process, after imports and model load, and its peak over all cases (Python, libraries, "
        "model, the case's image, working memory; for both LiteMedSAM methods most of it is torch + ONNX "
        "Runtime, whose memory arena grows over the first encodes).",
        head,
        rows,
    )

    for ours in [m for m in OURS if m in methods]:
        base = [b for b in ("grow-from-seeds", "lms-per-slice") if b in methods]
        if not base:
            continue
        head = ["protocol"]
        for b in base:
            head += [f"ΔDice vs {b}, {g}" for g in groups]
            head += [f"first-prediction time / {b}, {groups[0]}", f"refine time / {b}, {groups[0]}"]
        rows = []
        for p in args.protocols:
            cells = [p]
            for b in base:
                cells += [fmt_delta(t.dice_delta(ours, b, p, g)) for g in groups]
                cells += [
                    fmt_ratio(t.ratio(ours, b, p, groups[0], "first_s")),
                    fmt_ratio(t.ratio(ours, b, p, groups[0], "refine_s")),
                ]
            rows.append(cells)
        lines += md_section(
            f"### `{ours}` against the baselines (same run, same cases and prompts)",
            "ΔDice: mean over cases of (ours − baseline). Time ratios: median over cases of "
            "(ours / baseline), both per-case medians; < 1 means ours is faster.",
            head,
            rows,
        )

    head = ["case", "protocol"] + [f"`{m}`" for m in methods]
    rows = []
    for case in t.case_names:
        for p in args.protocols:
            cells = [case, p]
            for m in methods:
                r = t.row(m, p, case)
                if r is None:
                    failed = next(
                        (
                            x.get("error")
                            for x in (t.by_key.get((m, p)) or {}).get("cases", [])
                            if x["name"] == case and x.get("error")
                        ),
                        None,
                    )
                    cells.append("error" if failed else "—")
                    continue
                enc = f" [{r['slices_encoded']}]" if r.get("slices_encoded") is not None else ""
                cells.append(f"{r['dice']:.3f} · {fmt_s(med(r['first_s']))} · {fmt_s(med(r['refine_s']))}{enc}")
            rows.append(cells)
    lines += md_section(
        "## Per case",
        "Each cell: Dice · first prediction s · refine click s (medians over repeats)"
        + "; slices encoded in brackets for LiteMedSAM methods.",
        head,
        rows,
    )

    lines += [
        "",
        "## How each method was run",
        "",
        "- Prompts: drawn once by this script with ../shared/tools/clicks.py and given to every method "
        "(1 click = `lesion_clicks(label, 1, seed=0)`, 3 clicks = `lesion_clicks(label, 3, seed=0)`, "
        "box = `bbox_ras(label)`, 2 mm margin). Dice = `clicks.dice` on the label's grid.",
        "- `litemedsam-3d` / `tags`: `Session.set_text` (accuracy.py's rule for dev cases) then "
        "`add_point` ×n or `add_box`; first prediction with empty embedding and decode caches (model "
        "already loaded; `tags` gets a fresh backend per repeat); refine = `add_point` + `predict`, "
        "then `undo`.",
        "- `grow-from-seeds`: seed label map 1 = a ball of radius 1 voxel at each include click, "
        "2 = a one-voxel shell on the faces of the clicks' box + 30 mm (box protocol: the faces of the "
        "box + 5 mm, with the 3 clicks as include seeds, BASELINES.md's variant: Grow from seeds needs "
        "include seeds, so it gets more input than the others here). The shell sits at least one voxel "
        "inside the region handed to the filter (the shell's box + 1 voxel, clipped to the image); "
        "result = label 1; raw intensities. Refine: one more include ball, the same background, the same "
        "filter instance (Slicer's incremental update).",
        f"- `lms-per-slice`: LiteMedSAM ({args.per_slice_encoder} encoder"
        + (
            "; MedSAM's plugin runs the PyTorch encoder, about 2× slower per slice on this CPU — "
            "`--per-slice-encoder torch` measures that"
            if args.per_slice_encoder == "onnxruntime"
            else ""
        )
        + ") on every slice of the 3D box with the same 2D box, or, for click protocols, a 30 mm box around "
        "the clicks on each clicked slice only (BASELINES.md's click-only variant). Slices in Slicer's "
        "display orientation, CT window −160..240 HU or MR 0.5–99.5 percentiles, longest side to 256 "
        "(area averaging when shrinking), padded; every slice re-encoded at every run. Refine: click "
        "protocols box the new click too and run again; the box protocol can only run the same box again.",
        "- BASELINES.md (the project's earlier measurement, same cases): Grow 3 clicks 0.665, Grow + box "
        "0.628, per-slice click box 0.608, per-slice 3D box 0.822. Differences to this run come from seeding "
        "details BASELINES.md does not fix (seed ball size, shell rounding); Grow from seeds moves by up "
        "to ±0.2 Dice per case with them.",
    ]
    skipped = [m for m in args.methods if m not in methods]
    for note in notes:
        lines.append(f"- Note: {note}")
    if skipped:
        lines.append(f"- Not run: {', '.join(skipped)}.")
    for r in results:
        if r.get("failed"):
            lines.append(f"- `{r['method']}` {r['protocol']}: {r['failed']}.")
        for row in r.get("cases", []):
            if row.get("error"):
                lines.append(f"- `{r['method']}` {r['protocol']} {row['name']}: {row['error']}")
    loads = {
        m: next((r.get("load_s") for r in results if r["method"] == m and r.get("load_s") is not None), None)
        for m in methods
    }
    lines.append(
        "- Model load (once per process, not in any timing): "
        + ", ".join(f"`{m}` {v:.1f} s" for m, v in loads.items() if v is not None)
        + "."
    )
    lines.append(
        "- Cite the case sources when reusing numbers: pyradiomics, TotalSegmentator, DeepLesion, MedSAM2 "
        "(../shared/data/README.md)."
    )
    text = "\n".join(lines) + "\n"
    (out / "bench.md").write_text(text, encoding="utf-8")
    return text


def write_latency(args: argparse.Namespace, results: list[dict], cases: list[dict], out: Path) -> str | None:
    """The README's latency table (litemedsam-3d, 3 clicks, dev cases), kept in its earlier format."""
    t = Table(results, cases)
    result = t.by_key.get(("litemedsam-3d", "3 clicks"))
    rows = t.rows("litemedsam-3d", "3 clicks", "dev")
    if not result or not rows:
        return None
    volumes = {c["name"]: c for c in cases}
    from tagseg.io import load_volume

    lines = [
        f"Measured {datetime.now().date().isoformat()} on {platform.machine()} CPU ({os.cpu_count()} cores, "
        f"torch threads {result.get('torch_threads')}), encoder runtime {result.get('encoder')}; "
        f"model load {result.get('load_s', 0):.1f} s.",
        "Clicks: 3 voxels drawn uniformly from the label, seed 0 (../shared/tools/clicks.py); first prediction = "
        f"median of {args.repeats} cold runs; refine = one more include click (seeds 1..{args.repeats}), "
        "median (min-max).",
        "",
        "| case | grid (k,j,i) | Dice, 3 clicks | first prediction s | slices encoded | refine click s "
        "| first / refine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = load_volume(volumes[r["name"]]["image"]).shape_kji
        first, ref = med(r["first_s"]), med(r["refine_s"])
        lines.append(
            f"| {r['name']} | {shape} | {r['dice']:.3f} | {first:.1f} | {r['slices_encoded']} | "
            f"{ref:.2f} ({min(r['refine_s']):.2f}-{max(r['refine_s']):.2f}) | {first / ref:.1f}x |"
        )
    firsts = [med(r["first_s"]) for r in rows]
    refines = [med(r["refine_s"]) for r in rows]
    lines.append(
        f"| **mean / median** | | **{np.mean([r['dice'] for r in rows]):.3f}** | {med(firsts):.1f} | | "
        f"{med(refines):.2f} | {med(firsts) / med(refines):.1f}x |"
    )
    text = "\n".join(lines) + "\n"
    (out / "latency.md").write_text(text, encoding="utf-8")
    return text


def make_plot(args: argparse.Namespace, results: list[dict], cases: list[dict], out: Path, started: datetime) -> str:
    try:
        from plot import plot
    except ImportError as exc:
        return f"bench.png not written ({exc})"
    t = Table(results, cases)
    methods = [m for m in args.methods if any((m, p) in t.by_key for p in args.protocols)]
    dice = {(m, p, r["name"]): r["dice"] for m in methods for p in args.protocols for r in t.rows(m, p)}
    group = "dev" if any(c["group"] == "dev" for c in cases) else "phantom"
    names = [c["name"] for c in cases if c["group"] == group]
    latency = {}
    for m in methods:
        for p in args.protocols:
            firsts = [t.case_median(m, p, c, "first_s") for c in names if t.row(m, p, c)]
            refines = [t.case_median(m, p, c, "refine_s") for c in names if t.row(m, p, c)]
            if firsts:
                latency[(m, p)] = (med(firsts), med(refines))
    try:
        plot(
            out / "bench.png",
            methods,
            args.protocols,
            [c["name"] for c in cases],
            dice,
            latency,
            "dev cases" if group == "dev" else "phantoms",
            f"tagseg bench {started.strftime('%Y-%m-%d')}: {machine_line(results, args.threads)}",
        )
    except Exception as exc:  # a plotting problem must not lose the tables
        return f"bench.png not written ({type(exc).__name__}: {exc})"
    return "bench.png written"


def main() -> int:
    args = parse_args()
    if not (TOOLS / "clicks.py").exists():
        print(f"bench: skipped — the shared click protocol is missing ({TOOLS}/clicks.py)")
        return 0
    sys.path.insert(0, str(TOOLS))
    sys.path.insert(0, str(ROOT / "bench"))
    started = datetime.now()
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    notes: list[str] = []
    if "tags" in args.methods and not args.tags_checkpoint:
        args.methods.remove("tags")
        msg = (
            "`tags`: skipped — no --tags-checkpoint given (no TAGS weights are published; train one with "
            "`tagseg train`, see README)"
        )
        print(f"bench: {msg}", flush=True)
        notes.append(msg)
    elif "tags" in args.methods and not Path(args.tags_checkpoint).is_file():
        print(f"bench: --tags-checkpoint {args.tags_checkpoint}: file not found")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tagseg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cases = collect_cases(args, tmp, notes)
        if not cases:
            print("bench: nothing to run (no dev cases and --phantoms 0)")
            return 0
        cases_json = tmp / "cases.json"
        cases_json.write_text(json.dumps({"repeats": args.repeats, "cases": cases}), encoding="utf-8")
        print(
            f"bench: {len(cases)} cases × {len(args.protocols)} protocols × {args.methods}, {args.repeats} repeat(s)",
            flush=True,
        )
        results = []
        for protocol in args.protocols:
            for method in args.methods:
                slug = f"{method}_{protocol.replace(' ', '')}"
                print(f"bench: {method} / {protocol} ...", flush=True)
                result = run_worker(method, protocol, args, cases_json, tmp / slug)
                failed = f" — {result['failed']}" if result.get("failed") else ""
                print(
                    f"bench: {method} / {protocol}: {result['wall_s']:.0f} s, peak RSS "
                    f"{result.get('peak_rss_mb', 0):.0f} MB{failed}",
                    flush=True,
                )
                results.append(result)
        score(results, cases, tmp)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        report = write_report(args, results, cases, notes, wall, cpu, started, (load_start, os.getloadavg()), out)
        latency = write_latency(args, results, cases, out)
        plot_msg = make_plot(args, results, cases, out, started)
        for r in results:
            for row in r["cases"]:
                row.pop("mask", None)
        (out / "bench.json").write_text(
            json.dumps(
                {
                    "args": {k: v for k, v in vars(args).items()},
                    "cases": [{k: v for k, v in c.items() if k != "volume"} for c in cases],
                    "results": results,
                    "wall_s": wall,
                },
                indent=1,
                default=str,
            ),
            encoding="utf-8",
        )
    print(report)
    if latency is None:
        print("bench: latency.md not updated (needs litemedsam-3d, 3 clicks and the dev cases)")
    print(f"bench: {plot_msg}; results in {out}; wall time {wall / 60:.1f} min")
    return 1 if any(r.get("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
