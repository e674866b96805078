"""The paper's evaluation protocol (TAGS_SPEC.md §6-7) for any backend, and its metrics.

Per case: `clicks` include points drawn uniformly (with replacement, as published) from the
ground-truth tumour voxels with one seeded generator for the whole run, one prediction, Dice and
normalised surface Dice (NSD) at 5 mm on the original grid. Cases without tumour are skipped with a
note (the published code crashes on them).
"""
from __future__ import annotations

import csv
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage

from .volume import Volume

NSD_TOLERANCE_MM = 5.0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|); 1.0 when both are empty."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    total = int(p.sum() + t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(p & t)) / total


def _edges(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its 6-connected erosion (MONAI's `get_mask_edges` convention)."""
    return mask ^ ndimage.binary_erosion(mask)


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing_kji, tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice: the fraction of both boundaries lying within `tolerance_mm` of the other one.

    Boundary voxels are counted (as MONAI's `compute_surface_dice` does), distances are Euclidean in mm
    between voxel centres. NaN when both masks are empty; 0 when exactly one is.
    """
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if not p.any() and not t.any():
        return float("nan")
    if not p.any() or not t.any():
        return 0.0
    ep, et = _edges(p), _edges(t)
    spacing = tuple(float(s) for s in spacing_kji)
    dist_to_truth = ndimage.distance_transform_edt(~et, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~ep, sampling=spacing)
    close = np.count_nonzero(dist_to_truth[ep] <= tolerance_mm) + np.count_nonzero(dist_to_pred[et] <= tolerance_mm)
    return close / float(np.count_nonzero(ep) + np.count_nonzero(et))


def draw_clicks(label: Volume, count: int, rng: np.random.Generator) -> np.ndarray:
    """RAS centres of `count` tumour voxels drawn uniformly with replacement (§6 step 3)."""
    voxels = np.argwhere(np.asarray(label.array) > 0)
    picks = voxels[rng.integers(0, len(voxels), size=count)]
    return label.kji_to_ras(picks.astype(float))


@dataclass
class CaseResult:
    case_id: str
    dice: float | None
    nsd: float | None
    tumour_voxels: int
    predicted_voxels: int
    seconds: float | None
    clicks_ras: list = field(default_factory=list)
    note: str = ""


def evaluate_case(case_id: str, image: Volume, label: Volume, predict: Callable[[Volume, np.ndarray], np.ndarray],
                  clicks: int, rng: np.random.Generator, tolerance_mm: float = NSD_TOLERANCE_MM) -> CaseResult:
    """One case: draw clicks, predict on the original grid, score. `predict(image, clicks_ras) -> uint8 KJI`."""
    truth = np.asarray(label.array) > 0
    if not truth.any():
        return CaseResult(case_id, None, None, 0, 0, None, note="skipped: no tumour in the ground truth")
    points = draw_clicks(label, clicks, rng)
    start = time.perf_counter()
    mask = np.asarray(predict(image, points)) > 0
    seconds = time.perf_counter() - start
    return CaseResult(case_id, dice(mask, truth), surface_dice(mask, truth, image.spacing_kji, tolerance_mm),
                      int(truth.sum()), int(mask.sum()), seconds, [list(map(float, p)) for p in points])


def session_predictor(model: str, device: str = "auto", text: str = "", backend_options: dict | None = None,
                      organ_for: Callable[[str], Volume | None] | None = None):
    """A `predict(image, clicks)` that runs a fresh `Session` per case with the given model (any backend)."""
    from .session import Session

    state = {"case": None}

    def predict(image: Volume, clicks: np.ndarray) -> np.ndarray:
        with Session(image, model=model, device=device, backend_options=backend_options) as session:
            if text:
                session.set_text(text)
            organ = organ_for(state["case"]) if organ_for and state["case"] else None
            if organ is not None:
                session.set_anatomy(organ)
            for point in clicks:
                session.add_point(point, positive=True)
            return np.asarray(session.predict().array)

    def for_case(case_id: str):
        state["case"] = case_id
        return predict

    return for_case


@dataclass
class Summary:
    cases: int
    scored: int
    skipped: int
    dice_mean: float
    dice_sd: float
    nsd_mean: float
    nsd_sd: float

    def line(self) -> str:
        return (f"{self.scored} cases scored ({self.skipped} skipped): Dice {self.dice_mean:.4f} ± {self.dice_sd:.4f}, "
                f"NSD@{NSD_TOLERANCE_MM:g}mm {self.nsd_mean:.4f} ± {self.nsd_sd:.4f}")


def summarise(results: Iterable[CaseResult]) -> Summary:
    results = list(results)
    scored = [r for r in results if r.dice is not None]
    dices = [r.dice for r in scored]
    nsds = [r.nsd for r in scored if r.nsd is not None and not math.isnan(r.nsd)]

    def mean_sd(values):
        if not values:
            return float("nan"), float("nan")
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    dm, ds = mean_sd(dices)
    nm, ns = mean_sd(nsds)
    return Summary(len(results), len(scored), len(results) - len(scored), dm, ds, nm, ns)


CSV_FIELDS = ("case_id", "dice", "nsd", "tumour_voxels", "predicted_voxels", "seconds", "clicks_ras", "note")


def write_results_csv(results: Iterable[CaseResult], path: str | os.PathLike, extra: dict | None = None) -> None:
    """Per-case rows (plus constant columns such as model and seed), written atomically."""
    path = Path(path)
    extra = dict(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*CSV_FIELDS, *extra])
            writer.writeheader()
            for r in results:
                row = asdict(r)
                row["clicks_ras"] = ";".join(",".join(f"{v:.2f}" for v in p) for p in r.clicks_ras)
                for key in ("dice", "nsd", "seconds"):
                    row[key] = "" if row[key] is None else f"{row[key]:.6f}"
                writer.writerow({**{k: row[k] for k in CSV_FIELDS}, **extra})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
