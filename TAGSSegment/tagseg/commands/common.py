"""What several commands share: the program name, the warning reporter, the version, how a command and its
options are declared (and the options several commands take), and the steps around a Session (load an image,
predict, close, measure). A leaf module: it imports no command module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import one_line

PROG = "tagseg"


class Reporter:
    """Collects warnings (for --json) while printing them as one line each on stderr."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        message = one_line(message)
        self.warnings.append(message)
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def tagseg_version() -> str:
    """The package's version: the imported tagseg's, else the installed distribution's."""
    import importlib.metadata

    version = getattr(sys.modules.get("tagseg"), "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("tagseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (source tree, not installed)"


@dataclass(frozen=True)
class Option:
    """One argument as data: its names (flags, or a positional's name) and `add_argument`'s keywords."""

    names: tuple[str, ...]
    settings: Mapping[str, Any]


def option(*names: str, **settings: Any) -> Option:
    """An `add_argument(*names, **settings)` call, kept until `add_command` makes the parser."""
    return Option(names, settings)


@dataclass(frozen=True)
class Command:
    """A subcommand as data (each command module exports its own in COMMANDS), so that one function,
    `add_command`, registers every command the same way. `groups` maps a title to the options shown under it."""

    name: str
    help: str
    run: Callable[[argparse.Namespace, Reporter], int]
    options: tuple[Option, ...] = ()
    description: str | None = None
    groups: Mapping[str, tuple[Option, ...]] = field(default_factory=dict)


def add_command(commands: argparse._SubParsersAction, command: Command) -> None:
    """Add `command` to the subcommands: its parser, its options (and titled groups), its handler as `func`."""
    parser = commands.add_parser(command.name, help=command.help, description=command.description)
    for title, options in (("", command.options), *command.groups.items()):
        target = parser.add_argument_group(title) if title else parser
        for item in options:
            target.add_argument(*item.names, **item.settings)
    parser.set_defaults(func=command.run)


# Options several commands take, defined once.
JSON = option("--json", action="store_true", help="print JSON")
DEVICE = option("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
PRESET = option("--preset", default="tags-b")
# a dataset folder and how its cases are found (tagseg.data.datasets.find_cases)
DATA = option("--data", required=True, metavar="DIR")
LAYOUT = option("--layout", default="auto", help="auto, msd, kits, lits, folder, case-folder")
ORGAN_DIR = option("--organ-dir", metavar="DIR", help="organ masks as DIR/<case>/<organ>.nii.gz")
FOLD = option("--fold", type=int, default=0)
AUTOCAST_CHOICES = ("auto", "off", "bf16", "fp16")
ANATOMY_FALLBACK_CHOICES = ("prompt-box", "zeros", "ct", "ones")


def tags_extensions(paper_defaults: bool) -> tuple[Option, ...]:
    """The TAGS inference extensions that `segment` and `evaluate` share. `segment` gives each the app's default;
    `evaluate` (paper_defaults) leaves each None, so that its --protocol decides, and names only the paper's."""

    def pick(app: object, app_note: str, paper_note: str) -> tuple[object, str]:
        return (None, f"(paper: {paper_note})") if paper_defaults else (app, f"({app_note})")

    fusion, fusion_note = pick(0.0, "default 0", "0")
    autocast, autocast_note = pick("auto", "default auto; the paper: off = fp32", "off = fp32")
    fallback, fallback_note = pick("prompt-box", "default: a box around the prompts + 20 mm; the paper: zeros", "zeros")
    return (
        option(
            "--text-fusion",
            type=float,
            default=fusion,
            metavar="W",
            help=f"mix the text-conditioned tumour map into the result with weight W in 0..1 {fusion_note}",
        ),
        option(
            "--sliding-window",
            action="store_true",
            default=None if paper_defaults else False,
            help="cover prompts wider than one crop with overlapping crops",
        ),
        option(
            "--autocast",
            choices=AUTOCAST_CHOICES,
            default=autocast,
            help=f"mixed precision: auto = bf16 on CUDA, fp32 elsewhere {autocast_note}",
        ),
        option(
            "--anatomy-fallback",
            choices=ANATOMY_FALLBACK_CHOICES,
            default=fallback,
            help=f"organ channel without an organ mask or when it misses the crop {fallback_note}",
        ),
    )


def load_image(path: Path, reporter: Reporter, series: str | None = None, resample_uneven: bool = False):
    """Load and check a volume; NaN/inf voxels are allowed (treated as the lowest finite value) with a warning."""
    import numpy as np

    from ..io import load_volume
    from ..volume import check_volume

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


def mask_stats(mask) -> dict:
    """Voxel count and volume (ml) of a mask."""
    import numpy as np

    voxels = int(np.count_nonzero(np.asarray(mask.array)))
    voxel_ml = float(np.prod(mask.spacing_ijk)) / 1000.0
    return {"voxels": voxels, "volume_ml": round(voxels * voxel_ml, 4)}


def predict(session, interrupted: list[bool]):
    """`session.predict()`, noting a Ctrl-C so `close` knows not to wait for the model thread."""
    try:
        return session.predict()
    except KeyboardInterrupt:
        interrupted.append(True)
        raise


def close(session, interrupted: list[bool]) -> None:
    """Close unless interrupted: closing waits for the model thread, which cannot be stopped mid-pass."""
    if not interrupted:
        session.close()
