"""The paper's evaluation protocol (TAGS_SPEC.md §6-7) for any backend, and its metrics.

Per case: `clicks` include points drawn uniformly (with replacement, as published) from the
ground-truth tumour voxels with one seeded generator for the whole run, one prediction, Dice and
normalised surface Dice (NSD) at 5 mm on the original grid. Cases without tumour are skipped with a
note (the published code crashes on them). A case that fails (unreadable file, model error) becomes
a row with its error; it never ends the run.

NSD is the authors' metric: DeepMind's area-weighted surface Dice (`surface_distance`'s
`compute_surface_distances` + `compute_surface_dice_at_tolerance`), re-implemented here on NumPy and
SciPy with the surface-element area table of the `surface-distance` package.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import one_line
from .volume import Volume

NSD_TOLERANCE_MM = 5.0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|), any nonzero voxel counting as inside; the one Dice in tagseg, the Slicer module, the
    tests and the benches.

    Both masks empty scores 1.0: the prediction agrees perfectly with a reference that has nothing to find.
    (`evaluate_case` skips tumour-free cases before scoring, so the protocol never reports that 1.0.)
    """
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    total = int(p.sum() + t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(p & t)) / total


@functools.lru_cache(maxsize=32)
def _surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm² of the surface inside one 2x2x2 cell, for each of the 256 occupancy codes.

    The table is DeepMind's (marching-cubes triangles per code, scaled to the voxel spacing), taken
    from the `surface-distance` package so the numbers are the authors' own.
    """
    try:
        from surface_distance.lookup_tables import create_table_neighbour_code_to_surface_area
    except ImportError:
        from .errors import ModelError

        raise ModelError(
            "the surface Dice (NSD) needs the surface-distance package: pip install surface-distance"
        ) from None
    return np.asarray(create_table_neighbour_code_to_surface_area(spacing), np.float64)


# bit of each corner of a 2x2x2 cell, indexed by its offset (dk, dj, di): (0,0,0) -> 128 ... (1,1,1) -> 1,
# the encoding the area table is built for
_CORNER_BITS = {(a, b, c): 1 << (7 - (4 * a + 2 * b + c)) for a in (0, 1) for b in (0, 1) for c in (0, 1)}


def _cell_codes(mask: np.ndarray) -> np.ndarray:
    """Occupancy code of every 2x2x2 cell whose corners are voxel centres of `mask` padded by one
    empty voxel on each side: shape (n + 1) per axis, cell c spanning voxels c - 1 and c."""
    padded = np.pad(mask.astype(np.int16), 1)
    n = np.array(mask.shape) + 1
    codes = np.zeros(tuple(n), np.int16)
    for (a, b, c), bit in _CORNER_BITS.items():
        codes += bit * padded[a : a + n[0], b : b + n[1], c : c + n[2]]
    return codes


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing_kji) -> dict[str, np.ndarray]:
    """Surface elements of both masks with their areas (mm²) and distances (mm) to the other surface.

    A surface element is a 2x2x2 cell of voxel centres that is neither empty nor full; its area comes
    from DeepMind's table, and its distance is the Euclidean distance (in mm) from its position to the
    nearest surface element of the other mask. Both masks are cropped to the bounding box of their
    union first. Keys: areas_pred, areas_truth, pred_to_truth, truth_to_pred (empty arrays for an
    empty mask; distances are inf when the other mask is empty).
    """
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"surface distances need two 3D masks of one shape, got {p.shape} and {t.shape}")
    spacing = tuple(float(s) for s in spacing_kji)
    either = p | t
    if not either.any():
        empty = np.zeros(0)
        return {"areas_pred": empty, "areas_truth": empty, "pred_to_truth": empty, "truth_to_pred": empty}
    where = np.argwhere(either)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(where.min(0), where.max(0), strict=False))
    table = _surfel_area_table(spacing)
    out = {}
    surfaces = {}
    for name, mask in (("pred", p[box]), ("truth", t[box])):
        codes = _cell_codes(mask)
        surface = (codes != 0) & (codes != 255)
        surfaces[name] = surface
        out[f"areas_{name}"] = table[codes[surface]]
    for name, other in (("pred", "truth"), ("truth", "pred")):
        if surfaces[other].any():
            distance = ndimage.distance_transform_edt(~surfaces[other], sampling=spacing)[surfaces[name]]
        else:
            distance = np.full(int(surfaces[name].sum()), np.inf)
        out[f"{name}_to_{other}"] = distance
    return out


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing_kji, tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice as the TAGS authors compute it (DeepMind's `surface_distance`).

    The area of both surfaces lying within `tolerance_mm` of the other surface, over the total area
    of both surfaces; surface elements are weighted by their area (MONAI: `use_subvoxels=True`).
    `spacing_kji` is the voxel size in mm along the array axes. NaN when both masks are empty; 0 when
    exactly one is.
    """
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if not p.any() and not t.any():
        return float("nan")
    if not p.any() or not t.any():
        return 0.0
    s = surface_distances(p, t, spacing_kji)
    close = (
        s["areas_pred"][s["pred_to_truth"] <= tolerance_mm].sum()
        + s["areas_truth"][s["truth_to_pred"] <= tolerance_mm].sum()
    )
    total = s["areas_pred"].sum() + s["areas_truth"].sum()
    return float(close / total)


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
    protocol: str = ""  # what this case actually ran: "paper", or "extended: <what differed>"
    inference: str = ""  # the details: crops, precision, organ channel, text fusion, ...
    error: str = ""  # why the case failed (then dice/nsd are empty)

    @property
    def failed(self) -> bool:
        return bool(self.error)


def evaluate_case(
    case_id: str,
    image: Volume,
    label: Volume,
    predict: Callable[[Volume, np.ndarray], np.ndarray],
    clicks: int,
    rng: np.random.Generator,
    tolerance_mm: float = NSD_TOLERANCE_MM,
) -> CaseResult:
    """One case: draw clicks, predict on the original grid, score. `predict(image, clicks_ras) -> uint8 KJI`.

    `predict` may return (mask, protocol, inference) to record what the model actually ran. An
    exception from `predict` or the metrics becomes a failed row (`error`); the clicks are drawn
    first, so later cases get the same clicks whether or not this one fails.
    """
    truth = np.asarray(label.array) > 0
    if not truth.any():
        return CaseResult(case_id, None, None, 0, 0, None, note="skipped: no tumour in the ground truth")
    points = draw_clicks(label, clicks, rng)
    clicks_ras = [list(map(float, p)) for p in points]
    start = time.perf_counter()
    try:
        answer = predict(image, points)
        protocol, inference = "", ""
        if isinstance(answer, tuple):
            answer, protocol, inference = answer
        mask = np.asarray(answer) > 0
        seconds = time.perf_counter() - start
        if mask.shape != truth.shape:
            raise ValueError(f"the prediction has shape {mask.shape}, the label {truth.shape}")
        return CaseResult(
            case_id,
            dice(mask, truth),
            surface_dice(mask, truth, image.spacing_kji, tolerance_mm),
            int(truth.sum()),
            int(mask.sum()),
            seconds,
            clicks_ras,
            protocol=protocol,
            inference=inference,
        )
    except Exception as exc:  # noqa: BLE001 - one case must never end the run
        return CaseResult(
            case_id,
            None,
            None,
            int(truth.sum()),
            0,
            time.perf_counter() - start,
            clicks_ras,
            error=one_line(exc, 300, with_type=True),
        )


def failed_case(case_id: str, exc: BaseException) -> CaseResult:
    """A case that could not even be loaded."""
    return CaseResult(case_id, None, None, 0, 0, None, error=one_line(exc, 300, with_type=True))


# ---- protocols ------------------------------------------------------------------------------------------
# TagsOptions for each protocol. "paper" reproduces the authors' test.py: one crop at the floored midpoint
# of the clicks whatever their spread (clicks outside it still go to the prompt encoder), fp32, text unused,
# zeros in the organ channel when the mask misses the crop. "interactive" is what the app does.
PROTOCOLS = {
    "paper": {
        "sliding_window": False,
        "wide_prompts": "one-crop",
        "autocast": "off",
        "text_fusion": 0.0,
        "anatomy_fallback": "zeros",
    },
    "interactive": {
        "sliding_window": True,
        "wide_prompts": "refuse",
        "autocast": "auto",
        "text_fusion": 0.0,
        "anatomy_fallback": "prompt-box",
    },
}


def protocol_options(protocol: str, **overrides) -> dict:
    """Backend options of a protocol with the explicitly given extensions (None = the protocol's value)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}' (known: {', '.join(PROTOCOLS)})")
    options = dict(PROTOCOLS[protocol])
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


def describe_run(run: Mapping[str, Any] | None) -> tuple[str, str]:
    """(protocol, inference) columns from a TAGS backend's `last_run`: "paper" when the case ran exactly
    the authors' inference, else "extended: ..." naming each difference."""
    if not run:
        return "other-model", "not a TAGS model: the paper's clicks and metrics, the model's own inference"
    differences = []
    if run.get("crops", 1) != 1:
        differences.append(f"{run['crops']} crops (sliding window)")
    if run.get("precision", "fp32") != "fp32":
        differences.append(run["precision"])
    if run.get("text_fusion", 0.0) > 0:
        differences.append(f"text fusion {run['text_fusion']:g}")
    organ = run.get("organ_channel", "mask")
    if not set(organ.split("/")) <= {"mask", "zeros (mask misses the crop)"}:
        differences.append(f"organ channel {organ}")
    inference = "; ".join(f"{k}={v}" for k, v in run.items())
    return ("paper" if not differences else "extended: " + ", ".join(differences)), inference


def session_predictor(
    model: str,
    device: str = "auto",
    text: str = "",
    backend_options: dict | None = None,
    organ_for: Callable[[str], Volume | None] | None = None,
):
    """A `predict(image, clicks)` that runs a fresh `Session` per case with the given model (any backend).

    It returns (mask, protocol, inference): what the case actually ran, read from the backend.
    """
    from .backends import acquire_backend, options_for
    from .session import Session

    state: dict[str, str | None] = {"case": None}

    def predict(image: Volume, clicks: np.ndarray):
        with Session(image, model=model, device=device, backend_options=backend_options, work_ahead=False) as session:
            if text:
                session.set_text(text)
            organ = organ_for(state["case"]) if organ_for and state["case"] else None
            if organ is not None:
                session.set_anatomy(organ)
            for point in clicks:
                session.add_point(point, positive=True)
            mask = np.asarray(session.predict().array)
            name = session.backend_name()  # the backend the session ran, with the options it got
            backend, _ = acquire_backend(name, session.device, options_for(name, session.backend_options))
            return (mask, *describe_run(backend.last_run))

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
    failed: int = 0

    def line(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.scored} cases scored ({self.skipped} skipped{failed}): Dice {self.dice_mean:.4f} ± "
            f"{self.dice_sd:.4f}, NSD@{NSD_TOLERANCE_MM:g}mm {self.nsd_mean:.4f} ± {self.nsd_sd:.4f}"
        )


def summarise(results: Iterable[CaseResult]) -> Summary:
    results = list(results)
    scored = [r for r in results if r.dice is not None]
    failed = [r for r in results if r.failed]
    dices = [r.dice for r in scored]
    nsds = [r.nsd for r in scored if r.nsd is not None and not math.isnan(r.nsd)]

    def mean_sd(values):
        if not values:
            return float("nan"), float("nan")
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    dm, ds = mean_sd(dices)
    nm, ns = mean_sd(nsds)
    return Summary(len(results), len(scored), len(results) - len(scored) - len(failed), dm, ds, nm, ns, len(failed))


CSV_FIELDS = (
    "case_id",
    "dice",
    "nsd",
    "tumour_voxels",
    "predicted_voxels",
    "seconds",
    "clicks_ras",
    "protocol",
    "inference",
    "note",
    "error",
)


def _csv_row(r: CaseResult, extra: dict) -> dict:
    row = asdict(r)
    row["clicks_ras"] = ";".join(",".join(f"{v:.2f}" for v in p) for p in r.clicks_ras)
    for key in ("dice", "nsd", "seconds"):
        row[key] = "" if row[key] is None else f"{row[key]:.6f}"
    return {**{k: row[k] for k in CSV_FIELDS}, **extra}


class ResultsWriter:
    """Per-case rows written as each case finishes, so a run that dies keeps its finished rows.

    Every row rewrites the whole CSV through the one atomic writer (`tagseg.paths`): a reader mid-run sees a
    complete table, and a full disk leaves the previous table, never half a row (a few hundred rows of ~200
    bytes: the rewrite costs far less than one case). Nothing replaces an earlier file until the first row, or
    a clean exit with none. Use as a context manager; `extra` adds constant columns (model, seed, ...).
    """

    def __init__(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        self.path = Path(path)
        self.extra = dict(extra or {})
        self._buffer = io.StringIO()
        self._writer = csv.DictWriter(self._buffer, fieldnames=[*CSV_FIELDS, *self.extra])
        self._writer.writeheader()
        self._rows = 0

    def __enter__(self) -> ResultsWriter:
        return self

    def write(self, result: CaseResult) -> None:
        self._writer.writerow(_csv_row(result, self.extra))
        self._rows += 1
        self._flush()

    def write_all(self, results: Iterable[CaseResult]) -> None:
        for result in results:
            self._writer.writerow(_csv_row(result, self.extra))
            self._rows += 1
        self._flush()

    def _flush(self) -> None:
        from .fs import write_text_atomic

        write_text_atomic(self.path, self._buffer.getvalue(), what="the results file")

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None and self._rows == 0:
            self._flush()


def write_results_csv(results: Iterable[CaseResult], path: str | os.PathLike, extra: dict | None = None) -> None:
    """All rows at once, written atomically (for results computed elsewhere)."""
    ResultsWriter(path, extra).write_all(results)
