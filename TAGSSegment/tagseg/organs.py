"""Organ masks for the anatomy prompt, produced by TotalSegmentator when the user has it installed.

TAGS was trained with machine-generated organ masks (TAGS_SPEC.md §4.4, §10 #2); TotalSegmentator's
per-organ output folder (`<case>/<organ>.nii.gz`) is exactly the layout `tagseg` reads. It is an
optional dependency with its own licence and weights, so it is never installed or run implicitly.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from pathlib import Path

from .errors import InputError, ModelError
from .fs import atomic_write
from .text import ORGAN_LABELS

INSTALL_HINT = (
    "TotalSegmentator is not installed; install it with `pip install TotalSegmentator` (it downloads its "
    "own weights on first use) or provide organ masks as <case>/<organ>.nii.gz"
)


def totalsegmentator_available() -> bool:
    return importlib.util.find_spec("totalsegmentator") is not None


def organ_names(anatomy: str) -> tuple[str, ...]:
    try:
        return ORGAN_LABELS[anatomy]
    except KeyError:
        raise InputError(f"no organ list for anatomy '{anatomy}' (known: {', '.join(sorted(ORGAN_LABELS))})") from None


def _readable_mask(path: Path) -> None:
    from .io import load_volume

    try:
        load_volume(path)
    except InputError as exc:
        raise OSError(str(exc)) from None


def run_totalsegmentator(
    image: Path, out_dir: Path, anatomy: str, device: str = "gpu", fast: bool = False
) -> list[Path]:
    """Write `<out_dir>/<organ>.nii.gz` for the organs that make up `anatomy`; returns the files."""
    if not totalsegmentator_available():
        raise ModelError(INSTALL_HINT)
    if not Path(image).is_file():
        raise InputError(f"{image}: file not found")
    from totalsegmentator.python_api import totalsegmentator

    names = list(organ_names(anatomy))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".totalseg-tmp"
    try:
        totalsegmentator(str(image), str(work), roi_subset=names, device=device, fast=fast, quiet=True)
        written = []
        for name in names:
            source = work / f"{name}.nii.gz"
            if source.is_file():
                target = out_dir / source.name
                # through the one atomic writer: a mask appears under its name only once it reads back whole
                atomic_write(
                    target,
                    functools.partial(shutil.copyfile, source),
                    _readable_mask,
                    suffix=".nii.gz",
                    what="the organ mask",
                )
                written.append(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not written:
        raise ModelError(f"TotalSegmentator wrote none of {', '.join(names)} for {image}")
    return written
