"""`tagseg synth`: synthetic CT-like cases with tumours (MSD layout) or lesion phantoms (one folder per case),
written into a temporary sibling and renamed into place, so a failure leaves no half dataset."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..errors import InputError
from .common import Command, Reporter, option

# lesion phantoms: the choices of tagseg.synth (not imported here: numpy stays out of parsing)
LESION_EDGES = ("sharp", "soft")
LESION_MODALITIES = ("ct", "mr", "mr-zscored")
LESION_SLICES = ("thick", "isotropic")
LESION_DEFAULTS = {"radius_mm": "10", "edge": "sharp", "modality": "ct", "slices": "thick"}
LESION_RADIUS_MM = (3.0, 40.0)
# a phantom holds a float image, a label and organ masks plus float64 working copies: about this many bytes a voxel
SYNTH_BYTES_PER_VOXEL = 32


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Check the options, write the cases into a temporary sibling folder, rename it into place."""
    import shutil
    import tempfile

    from ..fs import make_parents, remove_folders, replace_folder

    out = Path(args.out).expanduser()
    if args.cases < 1:
        raise InputError("--cases must be at least 1")
    lesion = _lesion_options(args)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty folder")
    if not args.from_ct and not lesion:
        _synth_shape(args)  # refused before any folder is made
    final, parent = out, out.parent
    created = make_parents(out)  # every folder made here goes again on failure
    work = Path(tempfile.mkdtemp(prefix=".tagseg-synth-", dir=parent))
    done = False
    try:
        if lesion:
            from ..synth import write_lesion_cases

            write_lesion_cases(work, cases=args.cases, seed=args.seed, **lesion)
        else:
            _write_synth(args, work)
        replace_folder(work, final)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not done:
            remove_folders(created)
    if lesion:
        print(
            f"wrote {args.cases} lesion phantoms to {final} ({lesion['radius_mm']:g} mm, {lesion['edge']} edge, "
            f"{lesion['modality']}, {lesion['slices']} slices; one folder per case: image, label, organ masks)"
        )
        return 0
    print(f"wrote {args.cases} cases to {final} (MSD layout: dataset.json, imagesTr, labelsTr, organsTr)")
    return 0


def _lesion_options(args: argparse.Namespace) -> dict | None:
    """The lesion-phantom options when any is given (defaults for the rest), checked; None otherwise."""
    given = {name: getattr(args, name) for name in LESION_DEFAULTS if getattr(args, name, None) is not None}
    if not given:
        return None
    if args.from_ct or args.organ_mask:
        raise InputError(
            "--radius-mm/--edge/--modality/--slices write lesion phantoms; they cannot be combined "
            "with --from-ct or --organ-mask"
        )
    if args.shape != "48,128,128" or args.organ != "pancreas":
        raise InputError(
            "--shape and --organ do not apply to lesion phantoms (their grid follows --slices and "
            "--radius-mm, their host follows --modality)"
        )
    if args.cases > 500:
        raise InputError(f"--cases {args.cases}: at most 500 lesion phantoms at a time")
    options = {**LESION_DEFAULTS, **given}
    text = str(options["radius_mm"]).strip()
    lo, hi = LESION_RADIUS_MM
    try:
        radius = float(text)
    except ValueError:
        raise InputError(f"--radius-mm {text}: expected a number of mm from {lo:g} to {hi:g}") from None
    if not math.isfinite(radius) or not lo <= radius <= hi:
        raise InputError(f"--radius-mm {text}: lesion phantoms take a radius from {lo:g} to {hi:g} mm")
    options["radius_mm"] = radius
    return options


def _write_synth(args: argparse.Namespace, out: Path) -> Path:
    from ..data.synthetic import insert_into_ct, write_synthetic_dataset

    if args.from_ct:
        if not args.organ_mask:
            raise InputError("--from-ct needs --organ-mask")
        return insert_into_ct(
            Path(args.from_ct).expanduser(),
            Path(args.organ_mask).expanduser(),
            out,
            cases=args.cases,
            seed=args.seed,
            organ=args.organ,
        )
    return write_synthetic_dataset(
        out, cases=args.cases, seed=args.seed, organ=args.organ, shape_kji=_synth_shape(args)
    )


def _synth_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """--shape K,J,I: three integers >= 8 whose phantom fits the memory budget."""
    from .. import budget

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise InputError(f"--shape {args.shape}: expected three integers K,J,I") from None
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"--shape {args.shape}: expected three integers >= 8")
    budget.check_voxels(shape, SYNTH_BYTES_PER_VOXEL, f"--shape {args.shape}: a phantom")
    return shape


COMMANDS = (
    Command(
        "synth",
        help="write synthetic CT-like cases with tumours (MSD layout)",
        run=run,
        options=(
            option("--out", required=True, metavar="DIR"),
            option("--cases", type=int, default=8),
            option("--seed", type=int, default=0),
            option("--organ", default="pancreas"),
            option("--shape", default="48,128,128", metavar="K,J,I", help="voxels per case (slices,rows,cols)"),
            option("--from-ct", metavar="CT", help="insert tumours into this real CT instead of phantoms"),
            option("--organ-mask", metavar="MASK", help="with --from-ct: the organ mask (label map) to use"),
            # Lesion phantoms (any of these four): one folder per case with image, label and organ masks, the
            # layout of ../shared/data/lesions_dev; tagseg.synth.make_lesion_phantom describes them.
            option("--radius-mm", metavar="MM", help="lesion phantoms: lesion radius, 3-40 mm (default 10)"),
            option(
                "--edge",
                choices=LESION_EDGES,
                help="lesion phantoms: sharp, or soft (irregular, infiltrating, a gradual intensity ramp) "
                "(default sharp)",
            ),
            option(
                "--modality",
                choices=LESION_MODALITIES,
                help="lesion phantoms: ct (HU), mr (raw, positive) "
                "or mr-zscored (skull-stripped, z-scored, background at the minimum) (default ct)",
            ),
            option(
                "--slices",
                choices=LESION_SLICES,
                help="lesion phantoms: thick (5 mm, 0.7-0.8 mm pixels) or isotropic (1 mm) (default thick)",
            ),
        ),
    ),
)
