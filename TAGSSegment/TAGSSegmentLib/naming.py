"""Segment names, colours and terminology: the one place that decides what a TAGS segment is called.

`add_segment` makes a new segment for a description ("pancreatic tumor": that name, the pancreas colour, standard
codes); `adopt_description` gives a segment the Segment Editor named "Segment_1" the same name, colour and codes.
Importable without the engine, vtk or numpy (the effect's module imports it): those are imported where used.
"""

from __future__ import annotations

import colorsys
import re
import zlib
from collections.abc import Callable
from typing import Any

DEFAULT_SEGMENT_NAME = "Tumor"
GENERAL_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
TERMINOLOGY_TAG = "TerminologyEntry"

# Lesion colour per host anatomy (keys of tagseg.text.ANATOMY_WORDS): one fixed, distinguishable colour
# each, so "liver tumor" looks the same in every scene.
ANATOMY_COLORS: dict[str, tuple[float, float, float]] = {
    "liver": (0.90, 0.55, 0.20),
    "pancreas": (0.95, 0.80, 0.25),
    "kidney": (0.80, 0.30, 0.60),
    "lung": (0.30, 0.75, 0.95),
    "brain": (0.95, 0.35, 0.35),
    "breast": (0.95, 0.60, 0.75),
    "colon": (0.60, 0.45, 0.25),
    "prostate": (0.55, 0.35, 0.85),
    "bladder": (0.95, 0.90, 0.45),
    "stomach": (0.75, 0.55, 0.45),
    "adrenal": (0.40, 0.80, 0.45),
    "spleen": (0.65, 0.20, 0.30),
    "bone": (0.90, 0.90, 0.80),
    "lymph_node": (0.35, 0.85, 0.70),
    "head_neck": (0.45, 0.55, 0.95),
}

_DEFAULT_NAME = re.compile(r"^segment(?:[ _-]?\d+)?$", re.IGNORECASE)


def segment_color(description: str) -> tuple[float, float, float]:
    """The colour `add_segment` gives: fixed per anatomy, else derived from the name (stable across runs)."""
    from tagseg.text import parse_description

    desc = parse_description(description)
    if desc.anatomy in ANATOMY_COLORS:
        return ANATOMY_COLORS[desc.anatomy]
    name = (desc.text or DEFAULT_SEGMENT_NAME).lower()
    hue = (zlib.crc32(name.encode("utf-8")) % 360) / 360.0
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.95))


def _unique_segment_name(segmentation: Any, base: str) -> str:
    taken = {segmentation.GetNthSegment(i).GetName().lower() for i in range(segmentation.GetNumberOfSegments())}
    if base.lower() not in taken:
        return base
    number = 2
    while f"{base} {number}".lower() in taken:
        number += 1
    return f"{base} {number}"


def _terminology_logic() -> Any:
    """Slicer's terminology logic when the Terminologies module is loaded (real Slicer), else None."""
    import slicer

    modules = getattr(slicer, "modules", None)
    module = getattr(modules, "terminologies", None) if modules is not None else None
    if module is None:
        return None
    try:
        return module.logic()
    except Exception:
        return None


def _slicer_entry_for_name(segment: Any, name: str) -> bool:
    """Slicer's own General Anatomy entry when the whole name is one of its labels ("liver"); then also its
    colour. False when Slicer's Terminologies module is absent (headless) or has no such label."""
    logic = _terminology_logic()
    if logic is None:
        return False
    import slicer
    import vtk

    try:
        loaded = vtk.vtkStringArray()
        logic.GetLoadedTerminologyNames(loaded)
        names = [loaded.GetValue(i) for i in range(loaded.GetNumberOfValues())]
        if GENERAL_ANATOMY_CONTEXT not in names:
            return False
        entry = slicer.vtkSlicerTerminologyEntry()
        if not logic.FindTypeInTerminologyBy3dSlicerLabel(GENERAL_ANATOMY_CONTEXT, name.lower(), entry):
            return False
        _set_terminology(segment, logic.SerializeTerminologyEntry(entry))
        if entry.GetTypeObject() is not None:
            rgb = entry.GetTypeObject().GetRecommendedDisplayRGBValue()
            segment.SetColor(rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)
        return True
    except (AttributeError, TypeError):
        return False


def _apply_terminology(segment: Any, name: str, description: Any) -> bool:
    """Set standard codes: Slicer's entry for the exact name if it has one, else the reading of the
    description (`tagseg describe`: a lesion type and its anatomic region, tagseg.terminology) when it names
    an anatomy or a lesion. Returns True when a terminology entry was set."""
    if _slicer_entry_for_name(segment, name):
        return True
    if description.anatomy is None and description.lesion_word is None:
        return False
    _set_terminology(segment, description.terminology().serialized())
    return True


def add_segment(segmentation_node: Any, description: str) -> str:
    """A new empty segment named after the description ("Tumor" when empty, "… 2" when taken), coloured per
    anatomy, with terminology codes (Slicer's entry for the name, else the description's reading). Returns its
    ID."""
    from tagseg.errors import InputError
    from tagseg.text import parse_description

    if segmentation_node is None:
        raise InputError("no segmentation selected")
    desc = parse_description(description)
    segmentation = segmentation_node.GetSegmentation()
    name = _unique_segment_name(segmentation, desc.text or DEFAULT_SEGMENT_NAME)
    segment_id = segmentation.AddEmptySegment("", name, list(segment_color(description)))
    segment = segmentation.GetSegment(segment_id)
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    _apply_terminology(segment, name, desc)
    return segment_id


def is_default_segment_name(name: str) -> bool:
    """'Segment_1', 'Segment 2', 'Segment': names the Segment Editor invents, safe to replace."""
    return bool(_DEFAULT_NAME.match((name or "").strip()))


def adopt_description(
    segmentation_node: Any, segment_id: str, description: str, add_segment: Callable[[Any, str], str] = add_segment
) -> bool:
    """Give a still-default-named segment the name, colour and terminology `add_segment` would give a new
    segment for `description`: a temporary segment is made by `add_segment`, its metadata copied, and it is
    removed. Segments the user (or a loader) named are never renamed. Returns True when renamed.

    Not `vtkSegment.DeepCopyMetadata`: it also copies the label value, which would point the segment at the
    template's (empty) voxels in the shared labelmap layer."""
    description = (description or "").strip()
    segmentation = segmentation_node.GetSegmentation() if segmentation_node else None
    segment = segmentation.GetSegment(segment_id) if segmentation else None
    if not description or segment is None:
        return False
    if not (segment.GetNameAutoGenerated() and is_default_segment_name(segment.GetName())):
        return False
    template_id = add_segment(segmentation_node, description)
    template = segmentation.GetSegment(template_id) if template_id else None
    if template is None:
        return False
    try:
        segment.SetName(template.GetName())
        segment.SetColor(template.GetColor())
        terminology = _terminology_of(template)
        if terminology:
            _set_terminology(segment, terminology)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
    finally:
        segmentation.RemoveSegment(template_id)
    return True


def _terminology_of(segment: Any) -> str:
    if hasattr(segment, "GetTerminology"):  # vtkSegment::Get/SetTerminology: Slicer 5.10 and later
        return segment.GetTerminology() or ""
    import vtk  # older Slicer: the tag, read through an output reference

    value = vtk.reference("")
    return str(value) if segment.GetTag(TERMINOLOGY_TAG, value) else ""


def _set_terminology(segment: Any, terminology: str) -> None:
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(terminology)
    else:
        segment.SetTag(TERMINOLOGY_TAG, terminology)
