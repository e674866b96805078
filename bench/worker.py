"""One method x one protocol over every case, in its own process, so the peak RSS it reports is that method's.

Started by bench/run_bench.py (never needed by hand). Reads the cases and their prompts (already drawn by
the parent with ../shared/tools/clicks.py, so every method sees the same clicks) from a JSON file, runs
`repeats` cold first predictions per case, each followed by one refinement click, saves the first
repeat's mask as .npy (the parent scores Dice, so scoring does not count in this process's memory) and
writes timings and memory to a JSON file.

Usage: python bench/worker.py --method M --protocol P --cases-json F --out-dir D [--tags-checkpoint C]
       [--per-slice-encoder onnxruntime|torch] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TAGSSegment"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("litemedsam-3d", "tags", "grow-from-seeds", "lms-per-slice")
PROTOCOLS = ("1 click", "3 clicks", "box")


def rss_mb() -> float:
    """Current resident set size (MB), from /proc (Linux); 0 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


class Runner:
    """The interface every method offers the loop below: a cold first prediction, then one refine click."""

    encoder = ""
    load_s = 0.0

    def prepare(self, case: dict, protocol: str) -> None:
        """Untimed: make the next first prediction cold (a user's model is already loaded)."""

    def first(self, case: dict, protocol: str) -> np.ndarray:
        raise NotImplementedError

    def refine(self, case: dict, protocol: str, point) -> np.ndarray:
        raise NotImplementedError

    def finish(self) -> None:
        """Drop per-repeat state (undo the refine click, close sessions)."""

    def slices_encoded(self) -> int | None:
        return None


def prompts_for(case: dict, protocol: str) -> tuple[list, tuple | None]:
    """(include clicks, box) of a protocol: the box protocol gives the box alone."""
    if protocol == "1 click":
        return case["clicks1"], None
    if protocol == "3 clicks":
        return case["clicks3"], None
    return [], tuple(tuple(c) for c in case["box"])


class SessionRunner(Runner):
    """Our backends through the public `tagseg.Session` (text + clicks or box), as a user's script drives it."""

    def __init__(self, model: str, fresh_backend_each_repeat: bool) -> None:
        from tagseg.backends import resolve_model_name
        from tagseg.text import parse_description

        self.model = model
        self.name = resolve_model_name(model, parse_description(None))
        self._fresh = fresh_backend_each_repeat
        t = time.perf_counter()
        self.backend = self._load()
        self.load_s = time.perf_counter() - t
        self.encoder = getattr(self.backend, "encoder_runtime", "torch")
        self.session = None

    def _load(self):
        """Load the model outside any timing. Where the engine shares loaded backends between sessions
        (`acquire_backend`), the session picks this one up itself; otherwise `first` hands it over."""
        import tagseg.backends as tb

        if hasattr(tb, "acquire_backend"):
            tb.release_shared_backends()
            return tb.acquire_backend(self.name, "cpu")[0]
        return tb.create_backend(self.name, "cpu")

    def _cold_backend(self) -> None:
        """The model stays loaded; every cache that would make a repeat warm is emptied."""
        if self._fresh:
            self.backend = None
            self.backend = self._load()
            return
        b = self.backend
        b._image_key = None  # redo reorientation + normalisation, as for a new volume
        if hasattr(b, "net"):
            b.net._cache.clear()  # image embeddings
        if hasattr(b, "_decoded"):
            b._decoded.clear()  # decoded (slice, box) masks

    def prepare(self, case: dict, protocol: str) -> None:
        self._cold_backend()

    def first(self, case: dict, protocol: str) -> np.ndarray:
        import tagseg.backends as tb
        from tagseg import Session

        points, box = prompts_for(case, protocol)
        self.session = Session(case["volume"], model=self.model, device="cpu", warn=lambda m: None)
        if not hasattr(tb, "acquire_backend"):
            self.session._backends[self.name] = self.backend
        self.session.set_text(case["text"])
        for p in points:
            self.session.add_point(p)
        if box is not None:
            self.session.add_box(*box)
        self.backend.timings = {}
        mask = np.asarray(self.session.predict().array)
        if not self.backend.timings:
            raise RuntimeError("the session did not use the preloaded model: its timing would include a model load")
        return mask

    def slices_encoded(self) -> int | None:
        return self.backend.timings.get("slices_encoded")

    def refine(self, case: dict, protocol: str, point) -> np.ndarray:
        self.session.add_point(point)
        return np.asarray(self.session.predict().array)

    def finish(self) -> None:
        if self.session is not None:
            self.session.undo()
            self.session.close()  # the runner keeps the loaded model
            self.session = None


class GrowRunner(Runner):
    """Slicer's Grow from seeds with BASELINES.md's seeding (see bench/baselines.py)."""

    encoder = "vtkImageGrowCutSegment (slicer-core)"

    def __init__(self) -> None:
        import slicer  # noqa: F401  (imported here so the first timed run does not pay for it)

        import baselines

        self.b = baselines

    def _seeds(self, case: dict, protocol: str) -> tuple[list, tuple]:
        if protocol == "box":
            # Grow from seeds needs include seeds: BASELINES.md's box variant keeps the 3 clicks
            return case["clicks3"], self.b.grow_box(tuple(case["box"]), self.b.BOX_SHELL_MARGIN_MM)
        points, _ = prompts_for(case, protocol)
        return points, self.b.points_box(points, self.b.CLICK_SHELL_MARGIN_MM)

    def first(self, case: dict, protocol: str) -> np.ndarray:
        self.grow = self.b.GrowFromSeeds(case["volume"])
        self.points, self.shell = self._seeds(case, protocol)
        return self.grow.run(self.points, self.shell)

    def refine(self, case: dict, protocol: str, point) -> np.ndarray:
        # the background the user painted stays; one more include seed, the filter updates incrementally
        return self.grow.run(list(self.points) + [point], self.shell)

    def finish(self) -> None:
        self.grow = None


class PerSliceRunner(Runner):
    """MedSAM's Slicer plugin: LiteMedSAM slice by slice with one 2D box per slice, no embedding cache."""

    def __init__(self, encoder: str) -> None:
        import baselines

        t = time.perf_counter()
        self.model = baselines.PerSliceLiteMedSAM(encoder)
        self.load_s = time.perf_counter() - t
        self.encoder = self.model.encoder

    def _boxes(self, protocol: str, points: list, box):
        return self.model.boxes_for_3d_box(box) if box is not None else self.model.boxes_for_clicks(points)

    def first(self, case: dict, protocol: str) -> np.ndarray:
        self.model.slices_encoded = 0
        self.model.set_image(case["volume"])
        self.points, self.box = prompts_for(case, protocol)
        return self.model.segment(self._boxes(protocol, self.points, self.box))

    def slices_encoded(self) -> int | None:
        return self.model.slices_encoded

    def refine(self, case: dict, protocol: str, point) -> np.ndarray:
        # a click-only user boxes the new click too; the box protocol has nothing to add: the same run again
        points = list(self.points) + [point] if self.box is None else self.points
        return self.model.segment(self._boxes(protocol, points, self.box))


def make_runner(method: str, args: argparse.Namespace) -> Runner:
    if method == "litemedsam-3d":
        return SessionRunner("litemedsam-3d", fresh_backend_each_repeat=False)
    if method == "tags":
        # TagsBackend keeps its crop encoding: a fresh backend per repeat makes each first prediction cold
        return SessionRunner(str(Path(args.tags_checkpoint).resolve()), fresh_backend_each_repeat=True)
    if method == "grow-from-seeds":
        return GrowRunner()
    if method == "lms-per-slice":
        return PerSliceRunner(args.per_slice_encoder)
    raise SystemExit(f"unknown method {method}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--cases-json", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--tags-checkpoint")
    parser.add_argument("--per-slice-encoder", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    spec = json.loads(Path(args.cases_json).read_text(encoding="utf-8"))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    from tagseg import load_volume

    torch_threads = None
    if args.method != "grow-from-seeds":  # Grow from seeds never imports torch: its RSS stays its own
        import torch

        torch.set_num_threads(args.threads)
        torch_threads = torch.get_num_threads()
    t = time.perf_counter()
    runner = make_runner(args.method, args)
    setup = {"load_s": getattr(runner, "load_s", time.perf_counter() - t), "rss_after_load_mb": rss_mb()}
    rows = []
    for case in spec["cases"]:
        row = {"name": case["name"], "first_s": [], "refine_s": [], "slices_encoded": None, "mask": None, "error": None}
        try:
            case = dict(case, volume=load_volume(case["image"]))
            for r in range(spec["repeats"]):
                runner.prepare(case, args.protocol)
                mask, first_s = timed(lambda: runner.first(case, args.protocol))  # noqa: B023 (runs within this iteration)
                if r == 0:
                    row["slices_encoded"] = runner.slices_encoded()
                    path = out_dir / f"{case['name']}.npy"
                    np.save(path, np.ascontiguousarray(mask, dtype=np.uint8))
                    row["mask"] = str(path)
                _, refine_s = timed(lambda: runner.refine(case, args.protocol, case["refine"][r]))  # noqa: B023 (runs within this iteration)
                runner.finish()
                row["first_s"].append(first_s)
                row["refine_s"].append(refine_s)
            print(
                f"  {args.method:15s} {args.protocol:8s} {case['name']:22s} first "
                + " ".join(f"{v:.2f}" for v in row["first_s"])
                + " s, refine "
                + " ".join(f"{v:.2f}" for v in row["refine_s"])
                + " s",
                file=sys.stderr,
                flush=True,
            )
        except Exception as exc:  # one failing case must not hide the others' numbers
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            traceback.print_exc(file=sys.stderr)
        rows.append(row)
    result = {
        "method": args.method,
        "protocol": args.protocol,
        "encoder": runner.encoder,
        "torch_threads": torch_threads,
        **setup,
        "peak_rss_mb": peak_rss_mb(),
        "cases": rows,
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
