"""Where `tagseg segment` spends its time before the first prediction (issue 12, start-up).

Each run is a fresh interpreter that executes the real CLI (`tagseg.commands.main`) on a small generated lesion
phantom, with one change: the default backend's `predict` records the time and ends the process, so the
prediction itself (another benchmark's business) never runs. Phases, from timestamps taken inside the run:

  interpreter   process start -> first line of the driver (python itself, site-packages)
  import cli    `import tagseg.commands` (what the `tagseg` command imports first)
  to model      argument checks, image load, Session imports, up to the backend factory
  model load    the factory: the ONNX Runtime sessions (encoder, decoder; exported from the weights once)
  to predict    set_image and anything else before the backend's `predict` is called
  total         process start -> predict called

Medians over `--runs` (default 5); the machine's load average is printed with them, as these numbers move
with it. `--importtime` adds the slowest imports of one run (`python -X importtime`).

    python bench/startup.py [--runs 5] [--importtime] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("interpreter", "import cli", "to model", "model load", "onnx sessions", "to predict", "total")

DRIVER = r"""
import json, os, sys, time
marks = {"driver": time.time()}
import tagseg.commands as cli
marks["import_cli"] = time.time()
from tagseg import backends
from tagseg.backends import litemedsam_net

import dataclasses
kind = backends.BACKENDS[backends.DEFAULT_BACKEND]
factory = kind.build
use_onnx = litemedsam_net.LiteMedSAM._start_onnx

def timed_onnx(self):
    marks["onnx_start"] = time.time()
    try:
        return use_onnx(self)
    finally:
        marks["onnx_end"] = time.time()

def stop(prompts):
    marks["predict"] = time.time()
    print("STARTUP " + json.dumps(marks), flush=True)
    os._exit(0)

def timed_factory(device, options):
    marks["model_start"] = time.time()
    backend = factory(device, options)
    marks["model_end"] = time.time()
    backend.predict = stop
    return backend

litemedsam_net.LiteMedSAM._start_onnx = timed_onnx
backends.BACKENDS[backends.DEFAULT_BACKEND] = dataclasses.replace(kind, build=timed_factory)  # options checked as before
sys.exit(cli.main(sys.argv[1:]))
"""


def make_case(folder: Path) -> tuple[Path, str]:
    """A small CT lesion phantom (21 x 156 x 188 voxels, 5 mm slices) and a click on its lesion (RAS)."""
    sys.path.insert(0, str(ROOT / "TAGSSegment"))
    import numpy as np

    from tagseg.io import save_volume
    from tagseg.synth import make_lesion_phantom

    phantom = make_lesion_phantom(seed=0, radius_mm=20.0)
    path = folder / "lesion.nii.gz"
    save_volume(phantom.image, path)
    kji = np.argwhere(np.asarray(phantom.label.array) > 0).mean(0)
    return path, ",".join(f"{v:.1f}" for v in phantom.image.kji_to_ras(kji[None])[0])


def run_once(image: Path, point: str, out: Path, extra: tuple[str, ...] = ()) -> tuple[dict, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "TAGSSegment"))
    args = [
        sys.executable,
        *extra,
        "-c",
        DRIVER,
        "segment",
        str(image),
        "-o",
        str(out),
        "--point",
        point,
        "--text",
        "liver tumor",
        "--quiet",
    ]
    start = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, encoding="utf-8", env=env, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("STARTUP ")), None)
    if line is None:
        raise SystemExit(f"the run did not reach predict (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    m = json.loads(line[len("STARTUP ") :])
    onnx = m["onnx_end"] - m["onnx_start"] if "onnx_start" in m else float("nan")
    phases = {
        "interpreter": m["driver"] - start,
        "import cli": m["import_cli"] - m["driver"],
        "to model": m["model_start"] - m["import_cli"],
        "model load": m["model_end"] - m["model_start"],
        "onnx sessions": onnx,
        "to predict": m["predict"] - m["model_end"],
        "total": m["predict"] - start,
    }
    return phases, proc.stderr


def slowest_imports(image: Path, point: str, out: Path, count: int = 15) -> list[tuple[float, str]]:
    _, stderr = run_once(image, point, out, extra=("-X", "importtime"))
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
            if cumulative.isdigit() and not name.startswith(" "):
                rows.append((int(cumulative) / 1e6, name))
    top = [r for r in rows if "." not in r[1]]  # top-level packages: the cost a lazy import can move
    return sorted(top, reverse=True)[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image, point = make_case(folder)
        out = folder / "mask.nii.gz"
        run_once(image, point, out)  # warm-up: the ONNX export on a fresh cache, disk cache
        load_before = os.getloadavg()[0]
        runs = [run_once(image, point, out)[0] for _ in range(args.runs)]
        load_after = os.getloadavg()[0]
        imports = slowest_imports(image, point, out) if args.importtime else []
    medians = {p: statistics.median(r[p] for r in runs) for p in PHASES}
    result = {
        "runs": args.runs,
        "median_s": {p: round(v, 3) for p, v in medians.items()},
        "min_s": {p: round(min(r[p] for r in runs), 3) for p in PHASES},
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "slowest_imports_s": [[round(t, 3), n] for t, n in imports],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"tagseg segment start-up, {args.runs} runs, {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f} -> {load_after:.2f}"
    )
    print(f"{'phase':<14}{'median s':>10}{'min s':>8}")
    for p in PHASES:
        print(f"{p:<14}{result['median_s'][p]:>10.3f}{result['min_s'][p]:>8.3f}")
    if imports:
        print("slowest top-level imports (one run, cumulative s):")
        for t, n in imports:
            print(f"  {t:7.3f}  {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
