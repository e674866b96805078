"""DICOM SEG output: the result as a DICOM Segmentation object, the format PACS and radiology systems store,
written with highdicom (optional: `pip install "tagseg[dicom]"`).

Only for DICOM input. A SEG belongs to its source series: it carries that patient and study and references
the source images. For a NIfTI or NRRD input there is none, and a synthesized one would invent a patient and
study that a PACS would file the result under, so such inputs are refused with one line (write `.seg.nrrd` or
`.nii.gz` instead).

Frames are the result's own slices with their positions written explicitly (from the Volume's grid, not copied
from the source headers), so the SEG covers exactly the voxels of the label-map outputs, also for a series
resampled onto a regular grid (`resample_uneven`). Every write is read back with pydicom and placed on the
result's grid again (`read_dicom_seg`); it must match voxel for voxel before the file is renamed into place.
The segment is named after the description and coded with its terminology entry (`tagseg.terminology`:
SNOMED CT category, type and anatomic region).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import LPS_TO_RAS
from .terminology import Code, TerminologyEntry
from .volume import Volume

INSTALL_HINT = 'DICOM SEG output needs highdicom; install it with: pip install "tagseg[dicom]"'
MANUFACTURER = "TAGSSegment"
POSITION_TOLERANCE_VOXELS = 0.01


def available() -> bool:
    return importlib.util.find_spec("highdicom") is not None


def new_uid() -> str:
    """A fresh DICOM UID (the SEG's SOP Instance UID names its file in a folder output)."""
    from pydicom.uid import generate_uid

    return str(generate_uid())


def check_source(image: Volume, what: str = "DICOM SEG output") -> tuple[str, ...]:
    """The source series' files, or a one-line InputError when the input was not a DICOM series."""
    files = tuple(image.meta.get("dicom_files", ()))
    if not files:
        raise InputError(
            f"{what} needs a DICOM series as the input image (the SEG references its source "
            "images); this input is not DICOM: write .seg.nrrd or .nii.gz instead"
        )
    if not available():
        raise InputError(INSTALL_HINT)
    return files


def _concept(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _geometry(volume: Volume):
    """(image orientation, pixel spacing [row, column], slice spacing, LPS position of each k slice)."""
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras
    linear = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)  # i (along a row), j (down a column), k
    orientation = np.concatenate([linear[:, 0] / spacing[0], linear[:, 1] / spacing[1]])
    count = volume.shape_kji[0]
    positions = (ijk_to_lps @ np.stack([np.zeros(count), np.zeros(count), np.arange(count), np.ones(count)]))[:3].T
    return orientation, (float(spacing[1]), float(spacing[0])), float(spacing[2]), positions


def segmentation_dataset(
    mask: Volume,
    source: Volume,
    segment_name: str,
    entry: TerminologyEntry,
    sop_instance_uid: str | None = None,
    algorithm: str = "tagseg",
):
    """The SEG dataset (highdicom `Segmentation`) of a binary `mask` on `source`'s grid."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from . import __version__

    files = check_source(source)
    if not mask.same_grid(source):
        raise InputError("DICOM SEG output: the mask is not on the source series' grid")
    sources = []
    for file in files:
        try:
            sources.append(pydicom.dcmread(file, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(f"{file}: cannot be read again for the SEG's references ({exc})") from None
    orientation, pixel_spacing, slice_spacing, positions = _geometry(mask)
    for file, dataset in zip(files, sources, strict=False):
        if "SliceThickness" not in dataset or dataset.SliceThickness in (None, ""):
            dataset.SliceThickness = slice_spacing  # optional in CT headers, yet highdicom reads it from each source
        # anonymisers blank the dataset's own SOP Class/Instance UIDs and keep them in the file meta: the SEG's
        # references need them, so they are taken from there (in memory only; the source files are untouched)
        meta = getattr(dataset, "file_meta", None)
        for own, stored in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not str(dataset.get(own, "") or "").strip():
                value = str(meta.get(stored, "") or "").strip() if meta is not None else ""
                if not value:
                    raise InputError(
                        f"{file}: has no {own}, which a DICOM SEG needs to reference its source; "
                        "write .seg.nrrd or .nii.gz instead"
                    )
                setattr(dataset, own, value)
    if "FrameOfReferenceUID" not in sources[0]:
        raise InputError(
            f"{files[0]}: the source series has no Frame of Reference UID, which a DICOM SEG must "
            "share with it; write .seg.nrrd or .nii.gz instead"
        )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=(" ".join(segment_name.split()) or "tumor")[:64],
        segmented_property_category=_concept(entry.category),
        segmented_property_type=_concept(entry.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm[:64], family=codes.cid7162.ArtificialIntelligence, version=__version__
        ),
        anatomic_regions=[_concept(entry.region)] if entry.region else None,
    )
    binary = (np.asarray(mask.array) > 0).astype(np.uint8)
    coordinate = hd.CoordinateSystemNames.PATIENT
    series_number = int(getattr(sources[0], "SeriesNumber", None) or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=binary,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="tagseg",
        software_versions=__version__,
        device_serial_number="none",
        series_description=f"tagseg: {segment_name}"[:64],
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=pixel_spacing, slice_thickness=slice_spacing, spacing_between_slices=slice_spacing
        ),
        plane_orientation=hd.PlaneOrientationSequence(coordinate, [float(v) for v in orientation]),
        plane_positions=[hd.PlanePositionSequence(coordinate, [float(v) for v in p]) for p in positions],
        omit_empty_frames=bool(binary.any()),  # an empty result keeps its (empty) frames
    )
    # Seen once with a source whose headers disagreed with its pixel grid: highdicom's spacing between slices
    # taken from elsewhere. The grid written is ours, always.
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared:
        measures = shared.PixelMeasuresSequence[0]
        measures.PixelSpacing = [round(v, 6) for v in pixel_spacing]
        measures.SliceThickness = round(slice_spacing, 6)
        measures.SpacingBetweenSlices = round(slice_spacing, 6)
    return seg


def read_dicom_seg(path: str | os.PathLike, like: Volume, segment_number: int = 1) -> np.ndarray:
    """A SEG's segment as a uint8 KJI array on `like`'s grid, each frame placed by its own plane position."""
    import pydicom

    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64)
    expected_orientation, _, _, _ = _geometry(like)
    if not np.allclose(orientation, expected_orientation, atol=1e-4):
        raise ValueError(f"{path}: frame orientation {orientation.round(4).tolist()} is not the volume's")
    k_count, rows, cols = like.shape_kji
    _, pixel_spacing, slice_spacing, _ = _geometry(like)
    measures = shared.PixelMeasuresSequence[0]
    written = [float(v) for v in measures.PixelSpacing] + [float(measures.SpacingBetweenSlices)]
    if not np.allclose(written, [*pixel_spacing, slice_spacing], rtol=1e-4, atol=1e-5):
        raise ValueError(f"{path}: pixel measures {written} are not the volume's spacing")
    if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
        raise ValueError(f"{path}: frames of {ds.Rows}x{ds.Columns}, the volume's slices are {rows}x{cols}")
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), rows, cols)
    out = np.zeros(like.shape_kji, np.uint8)
    for frame, group in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=False):
        identified = group if "SegmentIdentificationSequence" in group else shared  # one segment: shared
        if int(identified.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment_number:
            continue
        placed = group if "PlanePositionSequence" in group else shared
        lps = np.array(placed.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        kji = like.ras_to_kji([LPS_TO_RAS[:3, :3] @ lps])[0]
        k = int(np.rint(kji[0]))
        if np.max(np.abs(kji - (k, 0, 0))) > POSITION_TOLERANCE_VOXELS or not 0 <= k < k_count:
            raise ValueError(f"{path}: a frame at {lps.round(3).tolist()} mm is not on a slice of the volume")
        out[k] |= (frame > 0).astype(np.uint8)
    return out


def write_verified(dataset, tmp: Path, mask: Volume) -> None:
    """Save `dataset` into `tmp`, read it back and require every voxel of `mask` in place (OSError otherwise)."""
    dataset.save_as(str(tmp), enforce_file_format=True)
    try:
        again = read_dicom_seg(tmp, mask)
    except Exception as exc:  # noqa: BLE001 - whatever fails, the file is not right
        raise OSError(f"the DICOM SEG read back is unusable ({exc})") from None
    if not np.array_equal(again, np.asarray(mask.array) > 0):
        raise OSError("the DICOM SEG read back differs from the mask")


def save_dicom_seg(
    mask: Volume, source: Volume, path: str | os.PathLike, segment_name: str, entry: TerminologyEntry | None = None
) -> Path:
    """Write `mask` as a DICOM SEG referencing `source`'s series (a Volume loaded from a DICOM folder); a
    folder `path` gets `<SOP Instance UID>.dcm`. Returns the file written."""
    from .fs import atomic_write
    from .text import parse_description

    path = Path(path)
    uid = new_uid()
    if path.is_dir():
        path = path / f"{uid}.dcm"
    entry = entry or parse_description(segment_name).terminology()
    dataset = segmentation_dataset(mask, source, segment_name, entry, sop_instance_uid=uid)
    atomic_write(path, lambda tmp: write_verified(dataset, tmp, mask), suffix=".dcm", what="the DICOM SEG")
    return path
