"""Output files of the commands: which names are accepted, checks before any work starts (so a typo costs a
second, not a minute), and the mask + overlay written through the one atomic writer (tagseg.fs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError, one_line

OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")


def output_suffix(path: Path) -> str | None:
    """The mask format a file name asks for (its known suffix), or None."""
    name = path.name.lower()
    return next((s for s in OUTPUT_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def check_writable(path: Path, what: str) -> None:
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


def check_outputs(image: Path, output: Path, png: Path | None, inputs: Sequence[Path] = ()) -> str:
    """The mask (and overlay) names are usable and replace no input; returns the mask's suffix."""
    from ..paths import same_file

    suffix = output_suffix(output)
    if suffix is None:
        raise InputError(f"{output}: unsupported output type (use {', '.join(OUTPUT_SUFFIXES)})")
    check_writable(output, "the output")
    targets = [output]
    if png is not None:
        if png.suffix.lower() != ".png":
            raise InputError(f"{png}: the overlay must be a .png file")
        check_writable(png, "the overlay")
        targets.append(png)
    if png is not None and png.resolve() == output.resolve():
        raise InputError(f"{output}: the mask and the overlay would be the same file")
    for target in targets:
        for source, what in [(image, "the input image"), *((p, f"the input {p}") for p in inputs)]:
            if source.exists() and same_file(target, source):
                raise InputError(f"{target}: would overwrite {what}; choose another output name")
    return suffix


def dicom_seg_file(output: Path) -> Path:
    """`--dicom-seg`: OUT is a folder (existing or new) that receives `<new UID>.dcm`; a `.dcm` OUT stays as given."""
    from ..dicomseg import INSTALL_HINT, available, new_uid

    if not available():
        raise InputError(INSTALL_HINT)
    if output.name.lower().endswith(".dcm"):
        return output
    if output_suffix(output) is not None or (output.exists() and not output.is_dir()):
        raise InputError(f"{output}: --dicom-seg writes into a folder (or give OUT.dcm)")
    return output / f"{new_uid()}.dcm"


def write_outputs(
    mask,
    image,
    output: Path,
    suffix: str,
    segment_name: str,
    png: Path | None,
    points_ras,
    reference=None,
    neg_points_ras=(),
    boxes_ras=(),
) -> None:
    """Write the mask under a temporary name, then the overlay, then rename the mask into place."""
    from ..fs import AtomicFile
    from ..io import output_image, write_verified
    from ..overlay import save_overlay_png
    from ..text import parse_description

    if suffix == ".dcm":  # DICOM SEG, coded with the description's terminology entry
        from ..dicomseg import segmentation_dataset
        from ..dicomseg import write_verified as write_seg

        dataset = segmentation_dataset(mask, image, segment_name, parse_description(segment_name).terminology())

        def write(tmp: Path) -> None:
            write_seg(dataset, tmp, mask)
    else:
        picture = output_image(mask, output, segment_name=segment_name)

        def write(tmp: Path) -> None:
            write_verified(picture, tmp)

    with AtomicFile(output, suffix=suffix, what="the mask") as part:  # one writer: checked, then renamed
        try:
            write(part.path)
        except (RuntimeError, OSError, TypeError) as exc:
            raise part.fail(exc) from None
        if png is not None:
            try:
                save_overlay_png(
                    image,
                    mask,
                    png,
                    points_ras=points_ras,
                    reference=reference,
                    neg_points_ras=neg_points_ras,
                    boxes_ras=boxes_ras,
                    text=segment_name,
                )
            except OSError as exc:
                raise InputError(f"{png}: cannot write the overlay ({one_line(exc)[:200]})") from None
        part.commit()
