"""Reading and writing volumes. The only place where ITK's LPS geometry meets our RAS `Volume`."""
from __future__ import annotations

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".seg.nrrd", ".mha", ".mhd")
LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _nifti_data_end(header: bytes) -> int | None:
    """Byte offset where a NIfTI-1/-2 file's voxel data ends, or None if the header is not one we understand."""
    for endian in "<>":
        header_size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if header_size == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if header_size == 540 and len(header) >= 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    if 1 <= dims[0] <= 7 and any(n == 0 for n in dims[1:dims[0] + 1]):
        return -1                                   # a declared size of zero: no voxels at all
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or bitpix % 8 or any(n < 1 for n in dims[1:dims[0] + 1]):
        return None
    return max(offset, header_size) + int(np.prod(dims[1:dims[0] + 1], dtype=np.int64)) * bitpix // 8


def _check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file: ITK reads one without complaint and fills the missing voxels with garbage."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            end = _nifti_data_end(header)
            if end is None:
                return
            if end < 0:
                raise InputError(f"{path}: the header declares an empty volume (a dimension of size 0)")
            if not compressed:
                missing = end - path.stat().st_size
            else:
                with open(path, "rb") as raw:
                    raw.seek(-4, os.SEEK_END)
                    stored_size = struct.unpack("<I", raw.read(4))[0]
                if stored_size == end % 2**32:
                    return
                missing = end - len(header)
                while missing > 0:
                    chunk = stream.read(min(missing, 1 << 24))
                    if not chunk:
                        break
                    missing -= len(chunk)
    except InputError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: the file is truncated or corrupt ({exc})") from None
    if missing > 0:
        raise InputError(f"{path}: the file is truncated ({missing} bytes of voxel data missing)")


def _sitk():
    import SimpleITK as sitk

    return sitk


def _image_to_volume(image, name: str) -> Volume:
    sitk = _sitk()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(RGB or vector image); a single-channel 3D volume is needed")
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim == 2:
        raise InputError(f"{name}: is a 2D image ({image.GetSize()[0]}x{image.GetSize()[1]}); a 3D volume is needed")
    if dim != 3:
        raise InputError(f"{name}: is a {dim}D image of size {image.GetSize()}; a 3D volume is needed")
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{name}: invalid voxel spacing {tuple(spacing)} (must be positive)")
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{name}: degenerate direction matrix in the header")
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing[None, :]
    ijk_to_lps[:3, 3] = image.GetOrigin()
    array = sitk.GetArrayFromImage(image)
    if array.size == 0:
        raise InputError(f"{name}: the volume is empty (size {image.GetSize()})")
    return Volume(array, LPS_TO_RAS @ ijk_to_lps, name=name)


def _volume_to_image(volume: Volume, array: np.ndarray | None = None):
    sitk = _sitk()
    data = volume.array if array is None else array
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (ijk_to_lps[:3, :3] / spacing[None, :]).ravel()))
    image.SetOrigin(tuple(float(v) for v in ijk_to_lps[:3, 3]))
    return image


def load_volume(path: str | os.PathLike) -> Volume:
    """Load NIfTI, NRRD (incl. `.seg.nrrd`, merged to one label map), MHA/MHD or a DICOM series folder."""
    sitk = _sitk()
    path = Path(path)
    name = path.name
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{path}: folder holds no DICOM series")
            files = reader.GetGDCMSeriesFileNames(str(path), series[0])
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            if _suffix(path) not in VOLUME_SUFFIXES and _suffix(path) != ".dcm":
                raise InputError(f"{path}: unsupported file type '{_suffix(path) or path.name}' "
                                 f"(use {', '.join(VOLUME_SUFFIXES)} or a DICOM folder)")
            if _suffix(path) in (".nii", ".nii.gz"):
                _check_nifti_complete(path)
            image = sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "ERROR" in line or "rror" in line), first[0] if first else "")
        raise InputError(f"{path}: cannot be read as an image ({detail[:160]})") from None
    if path.name.lower().endswith(".seg.nrrd") and image.GetNumberOfComponentsPerPixel() > 1:
        image = _merge_segmentation_layers(image)
    return _image_to_volume(image, name)


def load_mask_union(paths, name: str = "organ") -> Volume:
    """The union of binary masks stored on one grid (kidney = kidney_left + kidney_right)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError(f"{name}: no organ mask files")
    masks = [load_volume(p) for p in paths]
    union = np.zeros(masks[0].shape_kji, np.uint8)
    for path, mask in zip(paths, masks):
        if not mask.same_grid(masks[0]):
            raise InputError(f"{path}: organ mask not on the grid of {paths[0].name}")
        union |= (np.asarray(mask.array) > 0).astype(np.uint8)
    return masks[0].with_array(union, name=name)


def load_organ_mask(folder: str | os.PathLike, organ_names) -> Volume:
    """The union of `<organ>.nii.gz` masks from a folder of per-organ masks (TotalSegmentator's layout)."""
    folder = Path(folder)
    found = [folder / f"{name}{ext}" for name in organ_names for ext in (".nii.gz", ".nii", ".nrrd")
             if (folder / f"{name}{ext}").is_file()]
    if not found:
        raise InputError(f"{folder}: no organ mask named {', '.join(n + '.nii.gz' for n in organ_names)}")
    return load_mask_union(found, name="+".join(p.name.split(".")[0] for p in found))


def _merge_segmentation_layers(image):
    """Slicer stores overlapping segments as layers (vector voxels); any non-zero layer value marks a segment."""
    sitk = _sitk()
    array = sitk.GetArrayFromImage(image)
    merged = (array != 0).any(axis=-1).astype(np.uint8)
    out = sitk.GetImageFromArray(merged)
    out.CopyInformation(sitk.VectorIndexSelectionCast(image, 0))
    return out


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path)
    # a short temporary name: `.<long name>.part` could exceed the file system's 255-byte limit
    fd, tmp = tempfile.mkstemp(prefix=".tagseg-", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _write_atomically(image, path: Path, compress: bool = True) -> None:
    """Write next to the target and rename, so a crash never leaves a half-written output."""
    sitk = _sitk()
    tmp = _atomic_target(path)
    try:
        sitk.WriteImage(image, str(tmp), compress)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; an output should be as readable as any other file
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Write a volume (e.g. a label map) as NIfTI, NRRD or MHA, on its own grid."""
    path = Path(path)
    if _suffix(path) not in LABEL_SUFFIXES:
        raise InputError(f"{path}: unsupported output type (use .nii.gz, .nrrd, .seg.nrrd or .mha)")
    if _suffix(path) == ".seg.nrrd":
        save_segmentation(volume, path, segment_name=volume.name or "Segment_1")
        return
    _write_atomically(_volume_to_image(volume), path)


def save_segmentation(mask: Volume, path: str | os.PathLike, segment_name: str,
                      color_rgb: tuple[float, float, float] = (0.9, 0.3, 0.2),
                      terminology: str | None = None) -> None:
    """Write a one-segment Slicer segmentation file (`.seg.nrrd`) on the mask's grid.

    The header keys follow Slicer's vtkMRMLSegmentationStorageNode (a binary labelmap master
    representation, one layer, label value 1), so Slicer and slicer-core open it as a segmentation.
    """
    path = Path(path)
    data = (np.asarray(mask.array) > 0).astype(np.uint8)
    image = _volume_to_image(mask, data)
    nonzero = np.argwhere(data)
    if len(nonzero):
        lo, hi = nonzero.min(0)[::-1], nonzero.max(0)[::-1]
        extent = f"{lo[0]} {hi[0]} {lo[1]} {hi[1]} {lo[2]} {hi[2]}"
    else:
        extent = "0 -1 0 -1 0 -1"
    clean_name = " ".join(segment_name.split()) or "Segment_1"
    tags = f"TerminologyEntry:{terminology}|" if terminology else ""
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ConversionParameters": "",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segment0_ID": "Segment_1",
        "Segment0_Name": clean_name,
        "Segment0_NameAutoGenerated": "0",
        "Segment0_Color": " ".join(f"{c:.6f}" for c in color_rgb),
        "Segment0_ColorAutoGenerated": "0",
        "Segment0_Extent": extent,
        "Segment0_Layer": "0",
        "Segment0_LabelValue": "1",
        "Segment0_Tags": tags,
    }
    for key, value in fields.items():
        image.SetMetaData(key, value)
    _write_atomically(image, path)
