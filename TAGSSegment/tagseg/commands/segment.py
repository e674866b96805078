"""`tagseg segment`: a mask from clicks, boxes, a description and an organ mask, checked before the model loads."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import PromptError, one_line
from .common import DEVICE, Command, Reporter, close, load_image, mask_stats, option, predict, tags_extensions
from .outputs import check_outputs, dicom_seg_file, write_outputs

# The coordinate options, each repeatable: option -> (metavar, help).
COORDINATES = {
    "--point": ("R,A,S", "include click"),
    "--neg-point": ("R,A,S", "exclude click"),
    "--box": ("R1,A1,S1,R2,A2,S2", "box by two opposite corners"),
}
COORDINATE_OPTIONS = tuple(COORDINATES)
_NUMBER_LIST = re.compile(r"^-[\d.]")


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """`--point -12,30,5` -> `--point=-12,30,5`: argparse would take the value for an option flag."""
    out: list[str] = []
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in COORDINATE_OPTIONS and index + 1 < len(args) and _NUMBER_LIST.match(args[index + 1]):
            out.append(f"{arg}={args[index + 1]}")
            index += 2
            continue
        out.append(arg)
        index += 1
    return out


def parse_coordinates(text: str, count: int, option: str) -> tuple[float, ...]:
    """`"1.5,-2,30"` -> (1.5, -2.0, 30.0); exactly `count` finite numbers, separated by commas or spaces."""
    expected = "R,A,S" if count == 3 else "R1,A1,S1,R2,A2,S2"
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise PromptError(f"{option} {text!r}: expected {count} comma-separated numbers {expected} in mm") from None
    if len(values) != count:
        raise PromptError(f"{option} {text!r}: expected {count} numbers {expected} in mm, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise PromptError(f"{option} {text!r}: coordinates must be finite numbers")
    return values


def _check_prompts_inside(volume, points, neg_points, boxes) -> None:
    """The Session's own checks, run before it starts (and before torch is imported) so a typo fails fast."""
    from ..prompts import make_box, make_point

    for p in points:
        make_point(volume, p, positive=True)
    for p in neg_points:
        make_point(volume, p, positive=False)
    for b in boxes:
        make_box(volume, b[:3], b[3:])


def _load_anatomy(path: Path, description, reporter: Reporter, classes: str | None = None):
    """The organ mask (tagseg.anatomy): a mask file, a folder of per-organ masks or a label map with class names;
    the organ the description names is picked from the last two."""
    from ..anatomy import load_anatomy

    return load_anatomy(path, description.anatomy, classes=classes, warn=reporter.warn)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Check every input, predict once, write the mask (and overlay), print a summary."""
    from ..backends import resolve_model_name
    from ..text import parse_description

    image_path = Path(args.image).expanduser()
    output = Path(args.output).expanduser()
    png = Path(args.png).expanduser() if args.png else None
    points = [parse_coordinates(p, 3, "--point") for p in args.point]
    neg_points = [parse_coordinates(p, 3, "--neg-point") for p in args.neg_point]
    boxes = [parse_coordinates(b, 6, "--box") for b in args.box]
    if not points and not boxes and not args.text_only:
        if neg_points:
            raise PromptError("only exclude points given; add an include point (--point) or a box (--box)")
        raise PromptError("no prompt given; add an include point (--point R,A,S) or a box (--box R1,A1,S1,R2,A2,S2)")
    if args.dicom_seg:
        output = dicom_seg_file(output)
    anatomy_path = Path(args.anatomy).expanduser() if args.anatomy else None
    classes = args.anatomy_classes
    if classes and not anatomy_path:
        raise PromptError("--anatomy-classes names the classes of an --anatomy label map; give --anatomy too")
    classes_file = [Path(classes).expanduser()] if classes and Path(classes).expanduser().exists() else []
    suffix = check_outputs(image_path, output, png, ([anatomy_path] if anatomy_path else []) + classes_file)
    description = parse_description(args.text)
    model_name = resolve_model_name(args.model, description)

    t0 = time.perf_counter()
    volume = load_image(image_path, reporter, series=args.series, resample_uneven=args.resample_uneven_dicom)
    if suffix == ".dcm":
        from ..dicomseg import check_source

        check_source(volume, f"{output}: a DICOM SEG")  # refused before the model runs
    anatomy = _load_anatomy(anatomy_path, description, reporter, classes) if anatomy_path else None
    if args.text_only and not points and not boxes and anatomy is None:
        raise PromptError("--text-only needs --anatomy: the first click is searched inside the organ")
    stages = {"load": time.perf_counter() - t0}
    _check_prompts_inside(volume, points, neg_points, boxes)

    from ..backends import PROPOSE_POINT, kind_of
    from ..session import Session

    kind = kind_of(model_name)
    takes = kind.option_names() or frozenset()
    options = {
        "text_fusion": args.text_fusion,
        "sliding_window": args.sliding_window,
        "negatives": args.negatives,
        "anatomy_fallback": args.anatomy_fallback,
        "allow_download": args.allow_download,
        "autocast": args.autocast,
    }
    needs_tags = (
        (args.text_fusion and "text_fusion" not in takes)
        or (args.sliding_window and "sliding_window" not in takes)
        or (args.text_only and PROPOSE_POINT not in (kind.capabilities or frozenset()))
    )
    if needs_tags:
        raise PromptError(f"--text-fusion/--text-only/--sliding-window need a TAGS checkpoint (model: {model_name})")
    from ..progress import TerminalProgress

    progress = TerminalProgress(enabled=not args.quiet)
    session = Session(
        volume,
        model=model_name,
        device=args.device,
        warn=reporter.warn,
        backend_options={k: v for k, v in options.items() if k in takes},  # the chosen model's own
        progress=progress,
        work_ahead=False,
    )  # one prediction: nothing to prepare for
    interrupted: list[bool] = []
    proposed = None
    try:
        if args.text:
            session.set_text(args.text)
        if anatomy is not None:
            try:
                session.set_anatomy(anatomy)
            except PromptError as exc:
                if "anatomy_fallback" not in takes:
                    raise
                reporter.warn(f"{exc}; using the {args.anatomy_fallback} fallback for the organ channel")
        if args.text_only and not points and not boxes:
            proposed = session.propose_point()
            session.add_point(proposed, positive=True)
        for p in points:
            session.add_point(p, positive=True)
        for p in neg_points:
            session.add_point(p, positive=False)
        for b in boxes:
            session.add_box(b[:3], b[3:])
        t1 = time.perf_counter()
        mask = predict(session, interrupted)
        stages["predict"] = time.perf_counter() - t1
        load_s = session.model_load_seconds
    finally:
        progress.close()
        close(session, interrupted)
    result_warnings = list(mask.meta.get("warnings", ()))
    for warning in result_warnings:  # what the result checks doubt (tagseg.checks), one line each
        reporter.warn(f"{warning.message} [{warning.code}]")

    t2 = time.perf_counter()
    write_outputs(
        mask, volume, output, suffix, description.segment_name, png, points, neg_points_ras=neg_points, boxes_ras=boxes
    )
    stages["write"] = time.perf_counter() - t2
    stats = mask_stats(mask)
    summary = {
        "image": str(image_path),
        "output": str(output),
        "overlay": str(png) if png else None,
        "segment_name": description.segment_name,
        "model": model_name,
        "device": session.device,
        **stats,
        "timings_s": {k: round(v, 3) for k, v in stages.items()},
        "model_load_s": None if load_s is None else round(load_s, 3),
        "backend_timings_s": {k: round(float(v), 3) for k, v in mask.meta.get("timings", {}).items()},
        "prompts": {
            "points": points,
            "neg_points": neg_points,
            "boxes": boxes,
            "text": description.text,
            "anatomy": args.anatomy,
            "proposed_point": proposed,
        },
        "reading": description.as_dict(),
        "warnings": reporter.warnings,
        "result_warnings": [w.to_dict() for w in result_warnings],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    k, j, i = volume.shape_kji
    sp = volume.spacing_ijk
    print(
        f"load     {stages['load']:7.2f} s  {image_path.name} ({i}x{j}x{k} voxels, "
        f"{sp[0]:.2f}x{sp[1]:.2f}x{sp[2]:.2f} mm)"
    )
    extra = f"; model load {load_s:.2f} s" if load_s is not None else ""
    print(f"predict  {stages['predict']:7.2f} s  {model_name} on {session.device} (first prediction{extra})")
    written = output.name + (f", {png.name}" if png else "")
    print(f"write    {stages['write']:7.2f} s  {written}")
    if proposed is not None:
        print(f"text-only start: first click proposed at R,A,S = {proposed[0]:.1f},{proposed[1]:.1f},{proposed[2]:.1f}")
    if description.text:
        print(f"text     read as {one_line(description.summary())}")
    print(f"{description.segment_name}: {stats['volume_ml']:.2f} ml ({stats['voxels']} voxels)")
    return 0


COMMANDS = (
    Command(
        "segment",
        help="segment IMAGE from clicks/boxes (RAS mm) and write a mask",
        description="Segment a tumour in IMAGE. Coordinates are RAS millimetres, as 3D Slicer shows them at the "
        "mouse cursor. Write negative numbers as --point=-12,30,5 or --point -12,30,5.",
        run=run,
        options=(
            option("image", metavar="IMAGE", help="input volume (.nii/.nii.gz/.nrrd/.mha/.mhd or a DICOM folder)"),
            option(
                "-o",
                "--output",
                required=True,
                metavar="OUT",
                help="mask to write: .nii.gz/.nii/.nrrd/.mha (uint8 label map, 1 = tumour) or .seg.nrrd "
                "(Slicer segmentation) or .dcm (DICOM SEG; needs a DICOM series as IMAGE)",
            ),
            option(
                "--dicom-seg",
                action="store_true",
                help="OUT is a folder: write the result there as a DICOM SEG, named <new UID>.dcm",
            ),
            *(
                option(flag, action="append", default=[], metavar=metavar, help=f"{text} (repeatable)")
                for flag, (metavar, text) in COORDINATES.items()
            ),
            option("--text", default="", help='description, e.g. "pancreatic tumor" (names the segment)'),
            option(
                "--anatomy",
                metavar="MASK",
                help="organ mask file (any grid), or a folder of per-organ masks (TotalSegmentator output: "
                "the organ is picked from --text). Default model: the result stays inside it; "
                "TAGS: the organ-mask input channel",
            ),
            option(
                "--anatomy-classes",
                metavar="totalsegmentator|CLASSES.json",
                help="class names of a multi-label --anatomy map: TotalSegmentator v2's numbering or a JSON "
                "file {label: name} (default: MAP.json beside it, or a .seg.nrrd's segment names); the "
                "organ is picked from --text",
            ),
            option("--model", default="auto", metavar="NAME|PATH", help="model name or checkpoint (default: auto)"),
            DEVICE,
            option("--png", metavar="OVERLAY.png", help="also write an axial overlay preview"),
            option("--series", metavar="UID", help="the DICOM series to read when the IMAGE folder holds several"),
            option(
                "--resample-uneven-dicom",
                action="store_true",
                help="interpolate a DICOM series with unevenly spaced slices onto a regular grid (default: refuse it)",
            ),
            option("--json", action="store_true", help="print a JSON summary instead of text"),
            option(
                "--quiet",
                action="store_true",
                help="no progress bar (it is shown on stderr only when it is a terminal and a step takes over 2 s)",
            ),
        ),
        groups={
            "TAGS checkpoints (extensions beyond the paper; defaults = the paper)": (
                *tags_extensions(paper_defaults=False),
                option(
                    "--text-only",
                    action="store_true",
                    help="without clicks: start from the text map's peak inside the --anatomy organ",
                ),
                option(
                    "--negatives",
                    choices=("auto", "constraint"),
                    default="auto",
                    help="exclude clicks as model tokens when the checkpoint supports it (auto) or only as "
                    "constraints on the result",
                ),
                option(
                    "--allow-download",
                    action="store_true",
                    help="let the text encoder download CLIP weights for a new description",
                ),
            )
        },
    ),
)
