"""`tagseg demo`: segment a synthetic phantom (a typical and a large tumour) and, when present, a real case from
../shared/data, the way a user would: three clicks, a prediction, one corrective click, another prediction."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import DEVICE, Command, Option, Reporter, close, mask_stats, option, predict
from .outputs import check_writable, write_outputs

DEMO_CLICKS = 3
REAL_CASE = ("lesions_dev", "deeplesion_000002_ct")
REAL_CASE_TEXT = "lesion"
# A typical lesion size (the dev lesions are 7-17 mm in equivalent radius); see the README for larger ones.
DEMO_TUMOUR_RADIUS_MM = 10.0
# ...and a large soft-edged one, like the gliomas on isotropic FLAIR (tagseg.synth.make_lesion_phantom)
DEMO_LARGE_PHANTOM: dict[str, Any] = {"radius_mm": 30.0, "edge": "soft", "modality": "mr", "slices": "isotropic"}


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout, or $TAGSEG_SHARED_DATA."""
    env = os.environ.get("TAGSEG_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _clicks_from_label(label, count: int, rng) -> list[tuple[float, float, float]]:
    """RAS centres of `count` label voxels drawn uniformly without replacement (the paper's click protocol)."""
    import numpy as np

    voxels = np.argwhere(np.asarray(label.array) > 0)
    if len(voxels) == 0:
        raise InputError(f"{label.name or 'label'}: the reference label is empty")
    picks = voxels[rng.choice(len(voxels), size=min(count, len(voxels)), replace=False)]
    return [(float(r), float(a), float(s)) for r, a, s in label.kji_to_ras(picks)]


class _Steps:
    """A step counter on stderr (only on a terminal): the demo's model passes take seconds each."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, desc="demo", unit="step", file=sys.stderr, leave=False, disable=not sys.stderr.isatty()
        )
        self._open = False

    def start(self, what: str) -> None:
        self.finish()
        self._bar.set_postfix_str(what)
        self._open = True

    def finish(self) -> None:
        if self._open:
            self._bar.update(1)
            self._open = False

    def close(self) -> None:
        self.finish()
        self._bar.close()


def _demo_case(
    name: str, image, label, text: str, seed: int, out: Path, device: str, reporter: Reporter, steps: _Steps
) -> dict:
    """Three clicks, predict, one corrective click where the first result is most wrong (the field's simulated
    correction, `tagseg.corrective`), predict again; writes the mask and an overlay."""
    import numpy as np

    from ..corrective import next_corrective_click
    from ..evaluate import dice
    from ..session import Session

    rng = np.random.default_rng(seed)
    clicks = _clicks_from_label(label, DEMO_CLICKS, rng)
    refine_click, refine_positive = None, None
    session = Session(image, model="auto", device=device, warn=reporter.warn)
    interrupted: list[bool] = []
    try:
        session.set_text(text)
        for click in clicks:
            session.add_point(click)
        steps.start(f"{name}: first prediction")
        t0 = time.perf_counter()
        first = predict(session, interrupted)
        first_s = time.perf_counter() - t0
        load_s = session.model_load_seconds
        correction = next_corrective_click(first.array > 0, label.array > 0, label.spacing_kji)
        refined, refine_s = first, 0.0
        if correction is not None:  # an exact first result needs no correction
            refine_click = tuple(float(v) for v in image.kji_to_ras(correction[0][None])[0])
            refine_positive = correction[1]
            session.add_point(refine_click, positive=refine_positive)
            steps.start(f"{name}: corrective click")
            t1 = time.perf_counter()
            refined = predict(session, interrupted)
            refine_s = time.perf_counter() - t1
    finally:
        close(session, interrupted)
    mask_path = out / f"{name}_mask.nii.gz"
    include: list[tuple[float, ...]] = list(clicks)
    exclude: list[tuple[float, ...]] = []
    if refine_click is not None:
        (include if refine_positive else exclude).append(refine_click)
    write_outputs(
        refined,
        image,
        mask_path,
        ".nii.gz",
        text,
        out / f"{name}_overlay.png",
        include,
        reference=label,
        neg_points_ras=exclude,
    )
    return {
        "case": name,
        "text": text,
        "clicks_ras": clicks,
        "refine_click_ras": refine_click,
        "refine_click_include": refine_positive,
        "dice_first": round(dice(first.array, label.array), 4),
        "dice": round(dice(refined.array, label.array), 4),
        "first_prediction_s": round(first_s, 3),
        "model_load_s": None if load_s is None else round(load_s, 3),
        "refinement_s": round(refine_s, 3),
        "refinement_ratio": round(refine_s / max(first_s, 1e-9), 4),
        "mask": str(mask_path),
        "overlay": str(out / f"{name}_overlay.png"),
        **mask_stats(refined),
    }


def _print_case(result: dict) -> None:
    load = f" (incl. model load {result['model_load_s']:.2f} s)" if result.get("model_load_s") else ""
    kind = {True: "include", False: "exclude"}.get(result["refine_click_include"])
    after = f"after a corrective {kind} click" if kind else "(exact: no correction to make)"
    print(
        f"{result['case']}: Dice {result['dice_first']:.3f} after {DEMO_CLICKS} clicks, {result['dice']:.3f} {after}; "
        f"{result['volume_ml']:.2f} ml"
    )
    print(
        f"{result['case']}: first prediction {result['first_prediction_s']:.2f} s{load}, "
        f"refinement {result['refinement_s']:.2f} s (ratio {result['refinement_ratio']:.2f})"
    )
    print(f"{result['case']}: wrote {result['mask']} and {result['overlay']}")


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """The phantom, the large phantom and the real case, each with its Dice and timings."""
    from .. import synth
    from ..devices import resolve_device
    from ..io import load_volume

    out = Path(args.out).expanduser() if args.out else Path(tempfile.mkdtemp(prefix="tagseg-demo-"))
    check_writable(out / "phantom_mask.nii.gz", "the demo output")
    device = resolve_device(args.device, reporter.warn)
    case_dir = shared_data_dir().joinpath(*REAL_CASE)
    run_real = args.real and (case_dir / "image.nii.gz").is_file() and (case_dir / "label.nii.gz").is_file()
    steps = _Steps(3 + (2 if run_real else 0) + (3 if args.large else 0))
    try:
        steps.start("phantom")
        phantom = synth.make_phantom(seed=args.seed, tumour_radius_mm=DEMO_TUMOUR_RADIUS_MM)
        written = synth.write_case(phantom, out / "phantom")
        result = _demo_case(
            "phantom", phantom.image, phantom.label, phantom.description, args.seed, out, device, reporter, steps
        )
        print(
            f"phantom: seed {args.seed}, {phantom.description}, {phantom.radius_mm:.1f} mm radius, "
            f"contrast {phantom.contrast_hu:+.0f} HU; case written to {written['image'].parent}"
        )
        _print_case(result)
        if args.large:
            steps.start("large phantom")
            large = synth.make_lesion_phantom(seed=args.seed, **DEMO_LARGE_PHANTOM)
            written = synth.write_case(large, out / "large_phantom")
            print(
                f"large_phantom: seed {args.seed}, {large.description}, {large.radius_mm:g} mm radius, "
                f"{large.extra['edge']} edge ({large.extra['ramp_mm']:.1f} mm ramp), {large.extra['modality']}, "
                f"{large.extra['slices']} slices {'x'.join(str(n) for n in large.image.shape_kji[::-1])}; "
                f"case written to {written['image'].parent}"
            )
            _print_case(
                _demo_case(
                    "large_phantom",
                    large.image,
                    large.label,
                    large.description,
                    args.seed,
                    out,
                    device,
                    reporter,
                    steps,
                )
            )
        if run_real:
            image = load_volume(case_dir / "image.nii.gz")
            label = load_volume(case_dir / "label.nii.gz")
            _print_case(_demo_case(REAL_CASE[1], image, label, REAL_CASE_TEXT, 0, out, device, reporter, steps))
        elif args.real:
            print(f"real case skipped: {case_dir} not found (set TAGSEG_SHARED_DATA to the shared data folder)")
        else:
            print("real case skipped: --no-real given")
    finally:
        steps.close()
    return 0


def _optional_case(flag: str, what: str) -> Option:
    """--FLAG/--no-FLAG: one more case the demo runs unless told not to."""
    return option(flag, action=argparse.BooleanOptionalAction, default=True, help=f"also {what} (default: yes)")


COMMANDS = (
    Command(
        "demo",
        help="segment a synthetic phantom (and a real case if available)",
        run=run,
        options=(
            option("--out", metavar="DIR", help="output folder (default: a new temporary folder)"),
            option("--seed", type=int, default=0, help="phantom and click seed (default: 0)"),
            _optional_case("--real", "run a real case from ../shared/data when present"),
            DEVICE,
            _optional_case("--large", "segment a large soft-edged tumour phantom, 30 mm radius, isotropic MR"),
        ),
    ),
)
