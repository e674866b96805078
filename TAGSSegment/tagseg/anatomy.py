"""The anatomy prompt from what users have: a binary organ mask, a folder of per-organ masks, or a multi-label
map with its class names. The organ is always chosen the same way, from the description's anatomy
(`tagseg.text.ORGAN_LABELS`: "kidney tumor" -> kidney_left + kidney_right).

Class names of a label map come from, in this order: what the caller gives (`classes=`: "totalsegmentator", a
JSON file or a {label: name} dict), a JSON sidecar beside the map (`organs.nii.gz` -> `organs.json`,
{"1": "spleen", ...}), or the segment names of a `.seg.nrrd`. A map with several labels and no names is refused:
merging every label would make "any organ" the anatomy, silently.

Names are compared by their words, case and order ignored, so Slicer's "Kidney left" or "left kidney" match
TotalSegmentator's "kidney_left".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .errors import InputError, PromptError
from .paths import note_input, require_regular_file
from .text import ORGAN_LABELS
from .volume import Volume

# TotalSegmentator v2, task "total" (CT): the label values of the organs tagseg knows. Source: the
# class_map["total"] table in wasserth/TotalSegmentator, totalsegmentator/map_to_binary.py (read 2026-12-02);
# v1 numbered them differently (pancreas was 10), so only v2 multi-label output (`--ml`) matches.
TOTALSEGMENTATOR_V2: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_gland_right",
    9: "adrenal_gland_left",
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
    20: "colon",
    21: "urinary_bladder",
    22: "prostate",
    90: "brain",
}
NAMED_CLASSES = {"totalsegmentator": TOTALSEGMENTATOR_V2}
CLASSES_HINT = "classes='totalsegmentator' or a JSON file {label: name}"
_FILLER_WORDS = frozenset({"of", "the"})
_MASK_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def name_key(name: str) -> frozenset[str]:
    """A class name as its set of words: "Kidney left", "left kidney" and "kidney_left" are one class."""
    return frozenset(w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w and w not in _FILLER_WORDS)


def read_classes(spec: str | os.PathLike | Mapping) -> dict[int, str]:
    """Class names from "totalsegmentator", a {label: name} dict, or a JSON file holding one."""
    if isinstance(spec, Mapping):
        return _checked_classes(spec, "classes")
    if str(spec).strip().lower() in NAMED_CLASSES:
        return dict(NAMED_CLASSES[str(spec).strip().lower()])
    path = Path(spec)
    require_regular_file(path, "class names file")
    note_input(path)
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as JSON class names {{label: name}} ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f'{path}: class names must be a JSON object {{label: name}}, e.g. {{"1": "liver"}}')
    return _checked_classes(data, str(path))


def _checked_classes(data: Mapping, where: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for key, value in data.items():
        if isinstance(value, int) and not isinstance(key, int) and not str(key).strip().lstrip("-").isdigit():
            key, value = value, key  # {name: label} is accepted too
        try:
            label = int(str(key).strip())
        except ValueError:
            raise InputError(f"{where}: class label '{key}' is not a whole number") from None
        if label == 0 or not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}: class {key!r}: need a non-zero label and a name")
        out[label] = value.strip()
    if not out:
        raise InputError(f"{where}: no class names")
    return out


def sidecar_path(path: str | os.PathLike) -> Path:
    """`organs.nii.gz` -> `organs.json` beside it."""
    path = Path(path)
    name = path.name
    for suffix in _MASK_SUFFIXES:
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def label_values(volume: Volume) -> np.ndarray | None:
    """The distinct non-zero labels of an integer-valued map; None for a mask of fractions (probabilities)."""
    array = np.asarray(volume.array)
    if array.dtype == bool:
        return np.array([1]) if array.any() else np.zeros(0, np.int64)
    if np.issubdtype(array.dtype, np.floating):
        finite = array[np.isfinite(array)]
        if not np.array_equal(finite, np.round(finite)):
            return None
        array = finite.astype(np.int64)
    if array.size and array.min() >= 0 and array.max() < (1 << 20):
        present = np.flatnonzero(np.bincount(array.ravel()))
        return present[present != 0]
    values = np.unique(array)
    return values[values != 0]


def organ_from_labels(
    labels: Volume, classes: Mapping[int, str], anatomy: str | None, what: str = "the label map"
) -> Volume:
    """The union of the labels whose class names make up `anatomy` (e.g. kidney_left + kidney_right)."""
    wanted = _organ_names(anatomy, what)
    keys = {name_key(n): n for n in wanted}
    chosen = {label: name for label, name in classes.items() if name_key(name) in keys}
    if not chosen:
        shown = ", ".join(sorted(set(classes.values()))[:12]) + (" ..." if len(classes) > 12 else "")
        raise InputError(f"{what}: no class named {' or '.join(wanted)} among its class names ({shown})")
    array = np.asarray(labels.array)
    binary = np.isin(array, np.array(sorted(chosen), dtype=array.dtype if array.dtype != bool else np.int64))
    return labels.with_array(binary.astype(np.uint8), name="+".join(chosen[k] for k in sorted(chosen)))


def _organ_names(anatomy: str | None, what: str) -> tuple[str, ...]:
    if not anatomy or anatomy not in ORGAN_LABELS:
        read = f" (it reads as {anatomy.replace('_', ' ')}, which has no organ mask)" if anatomy else ""
        raise PromptError(
            f"{what}: picking the organ needs a description naming the organ (e.g. 'kidney tumor')"
            f"{read}; organs known: {', '.join(sorted(ORGAN_LABELS))}"
        )
    return ORGAN_LABELS[anatomy]


def select_organ(
    mask: Volume, anatomy: str | None, classes: str | os.PathLike | Mapping | None = None, what: str | None = None
) -> Volume:
    """The organ mask to use: the organ's labels when class names are given, else `mask` itself when it is
    binary (one label); a map with several labels and no names raises `PromptError`."""
    what = what or (mask.name or "the anatomy mask")
    if classes is not None:
        return organ_from_labels(mask, read_classes(classes), anatomy, what)
    values = label_values(mask)
    if values is not None and len(values) > 1:
        shown = ", ".join(str(int(v)) for v in values[:8]) + (" ..." if len(values) > 8 else "")
        raise PromptError(
            f"{what}: a label map with {len(values)} labels ({shown}) and no class names; give them "
            f"({CLASSES_HINT}) or a binary organ mask, rather than every label as the organ"
        )
    return mask


def load_anatomy(
    path: str | os.PathLike,
    anatomy: str | None,
    classes: str | os.PathLike | Mapping | None = None,
    warn: Callable[[str], None] | None = None,
) -> Volume:
    """The organ mask for `--anatomy PATH`: a binary mask file, a folder of per-organ masks, a label map with class
    names (given, or a JSON sidecar), or a `.seg.nrrd` whose segment names are the classes. `anatomy` is the
    description's anatomy key (`parse_description(text).anatomy`)."""
    from .io import load_organ_mask, load_segmentation, load_volume

    path = Path(path)
    if path.is_dir() and not _looks_like_dicom_folder(path):
        return load_organ_mask(path, _organ_names(anatomy, f"{path}: a folder of organ masks"))
    if classes is None and path.name.lower().endswith(".seg.nrrd"):
        layers, segments = load_segmentation(path)
        if len(segments) > 1:
            return _organ_from_segments(path, layers, segments, anatomy)
    if classes is None and path.is_file() and sidecar_path(path).is_file():
        classes = sidecar_path(path)
    volume = load_volume(path)
    for message in volume.meta.pop("warnings", ()):
        if warn is not None:
            warn(message)
    return select_organ(volume, anatomy, classes, what=str(path))


def _organ_from_segments(path: Path, layers: list[Volume], segments, anatomy: str | None) -> Volume:
    wanted = _organ_names(anatomy, str(path))
    keys = {name_key(n) for n in wanted}
    chosen = [(name, layer, label) for name, layer, label in segments if name_key(name) in keys]
    if not chosen:
        shown = ", ".join(name for name, _, _ in segments[:12]) + (" ..." if len(segments) > 12 else "")
        raise InputError(f"{path}: no segment named {' or '.join(wanted)} (segments: {shown})")
    union = np.zeros(layers[0].shape_kji, np.uint8)
    for name, layer, label in chosen:
        if not 0 <= layer < len(layers):
            raise InputError(f"{path}: segment '{name}' is on layer {layer}; the file has {len(layers)}")
        union |= (np.asarray(layers[layer].array) == label).astype(np.uint8)
    return layers[0].with_array(union, name="+".join(name for name, _, _ in chosen))


def _looks_like_dicom_folder(path: Path) -> bool:
    """A folder with no mask files in it is read as a DICOM series (an organ mask stored as DICOM)."""
    return not any(p.name.lower().endswith(_MASK_SUFFIXES) for p in path.iterdir())
