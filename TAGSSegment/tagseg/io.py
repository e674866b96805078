"""Reading and writing volumes. The only place where ITK's LPS geometry meets our RAS `Volume`."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np

from . import budget
from .errors import InputError
from .fs import AtomicFile
from .geometry import LPS_TO_RAS  # noqa: F401  (tagseg.io.LPS_TO_RAS, as before)
from .paths import file_kind, note_input, require_regular_file
from .volume import Volume

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
    if 1 <= dims[0] <= 7 and any(n == 0 for n in dims[1 : dims[0] + 1]):
        return -1  # a declared size of zero: no voxels at all
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or bitpix % 8 or any(n < 1 for n in dims[1 : dims[0] + 1]):
        return None
    return max(offset, header_size) + int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64)) * bitpix // 8


def _check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file: ITK reads one without complaint and fills the missing voxels with garbage."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    end = None
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            end = _nifti_data_end(header)
            if end is None:
                return
            if end < 0:
                raise InputError(f"{path}: the header declares an empty volume (a dimension of size 0)")
            budget.check(end, f"{path}: the volume")
            if not compressed:
                missing = end - path.stat().st_size
            else:
                with open(path, "rb") as raw:
                    raw.seek(-4, os.SEEK_END)
                    stored_size = struct.unpack("<I", raw.read(4))[0]
                if stored_size == end % 2**32:
                    return
                missing = end - len(header) - budget.read_capped(stream, end - len(header), str(path))
    except InputError as exc:
        if "decompresses to more than" in str(exc) and end is not None and end > 0:
            return  # longer than declared: ITK reads only what the header says
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: the file is truncated or corrupt ({exc})") from None
    if missing > 0:
        raise InputError(f"{path}: the file is truncated ({missing} bytes of voxel data missing)")


def _sitk():
    import SimpleITK as sitk

    return sitk


_capture_lock = threading.RLock()


@contextlib.contextmanager
def native_output_captured():
    """What ITK, GDCM, teem or nifticlib print on the process's stderr (file descriptor 2) goes to a buffer
    instead of the user's terminal; the yielded list receives it on exit, for our one-line messages."""
    captured: list[str] = []
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):
        yield captured
        return
    with _capture_lock:
        try:
            sink = tempfile.TemporaryFile()
        except OSError:  # no room for a temporary file: discard instead
            sink = open(os.devnull, "w+b")
        with sink:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(sink.fileno(), fd)
            try:
                yield captured
            finally:
                os.dup2(saved, fd)
                os.close(saved)
                with contextlib.suppress(OSError):
                    sink.seek(0)
                    captured.append(sink.read(1 << 16).decode("utf-8", "replace"))


def _noise_detail(captured: list[str]) -> str:
    """The first line of library output that says what went wrong (for the one-line message)."""
    lines = [" ".join(line.split()) for text in captured for line in text.splitlines() if line.strip()]
    wanted = [line for line in lines if "ERROR" in line.upper() or "rror" in line]
    return (wanted or lines or [""])[0][:160]


_PIXEL_BYTES = {"8-bit": 1, "16-bit": 2, "32-bit": 4, "64-bit": 8}


def _read_image(path: Path, problem: str):
    """`sitk.ReadImage` with the libraries' own output kept off the terminal; a failure is one InputError line,
    `<path>: <problem> (<what the library said>)`."""
    sitk = _sitk()
    with native_output_captured():
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: {problem} ({_noise_detail([str(exc)])})") from None


def _header_bytes(reader) -> tuple[tuple[int, ...], int]:
    """(size, bytes per voxel) from a reader after ReadImageInformation: nothing allocated yet."""
    sitk = _sitk()
    name = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    per = next((n for key, n in _PIXEL_BYTES.items() if key in name), 8)
    if "complex" in name:
        per *= 2
    return tuple(int(n) for n in reader.GetSize()), per * max(int(reader.GetNumberOfComponents()), 1)


def _check_header_budget(path: Path) -> None:
    """Refuse a file whose header declares more voxels than the memory limit allows, before reading them."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with native_output_captured() as noise:
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return  # unreadable header: the full read names the problem
    del noise
    size, per_voxel = _header_bytes(reader)
    budget.check_voxels(size, per_voxel, f"{path}: the volume")


def _detached_data_file(path: Path) -> Path | None:
    """The data file a `.mhd`/`.nhdr` header points to (checked by type before ITK opens it)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(1 << 16).decode("latin-1")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=" if path.name.lower().endswith(".mhd") else ":")
        key = key.strip().lower()
        if sep and key in ("elementdatafile", "data file", "datafile"):
            value = value.strip()
            if not value or value.upper() in ("LOCAL", "LIST") or value.upper().startswith("LIST") or "%" in value:
                return None
            candidate = Path(value.split()[0])
            return candidate if candidate.is_absolute() else path.parent / candidate
    return None


def _image_to_volume(image, name: str) -> Volume:
    sitk = _sitk()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(RGB or vector image); a single-channel 3D volume is needed"
        )
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


def load_volume(path: str | os.PathLike, series: str | None = None, resample_uneven: bool = False) -> Volume:
    """Load NIfTI, NRRD (incl. `.seg.nrrd`, merged to one label map), MHA/MHD or a DICOM series folder.

    Before any voxel is read: the path's type (a FIFO or device is refused without opening it) and the
    header's declared size against the memory budget (`tagseg.budget`). DICOM series are checked slice by
    slice (`series` picks one UID in a folder holding several; unevenly spaced slices are refused unless
    `resample_uneven`); NIfTI follows the standard's sform/qform precedence. Warnings for the caller are in
    `volume.meta["warnings"]`.
    """
    sitk = _sitk()
    path = Path(path)
    name = path.name
    kind = file_kind(path)
    if kind == "missing":
        raise InputError(f"{path}: file not found")
    if kind not in ("file", "folder"):
        raise InputError(f"{path}: is {kind}, not an image file or a DICOM folder")
    warnings: list[str] = []
    dicom_files: list[Path] = []
    try:
        if kind == "folder":
            image = _read_dicom_series(path, series, warnings, resample_uneven, dicom_files)
        else:
            if _suffix(path) not in VOLUME_SUFFIXES and _suffix(path) != ".dcm":
                raise InputError(
                    f"{path}: unsupported file type '{_suffix(path) or path.name}' "
                    f"(use {', '.join(VOLUME_SUFFIXES)} or a DICOM folder)"
                )
            note_input(path)
            if _suffix(path) in (".mhd", ".nhdr"):
                data_file = _detached_data_file(path)
                if data_file is not None:
                    data_kind = file_kind(data_file)
                    if data_kind != "file":
                        shown = "not found" if data_kind == "missing" else f"is {data_kind}, not a regular file"
                        raise InputError(f"{path}: the data file its header names, {data_file}, {shown}")
                    note_input(data_file)
            _check_header_budget(path)
            if _suffix(path) in (".nii", ".nii.gz"):
                _check_nifti_complete(path)
            with native_output_captured() as noise:
                try:
                    image = sitk.ReadImage(str(path))
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}\n{''.join(noise)}") from None
    except InputError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "ERROR" in line or "rror" in line), first[0] if first else "")
        raise InputError(f"{path}: cannot be read as an image ({detail[:160]})") from None
    if path.name.lower().endswith(".seg.nrrd") and image.GetNumberOfComponentsPerPixel() > 1:
        image = _merge_segmentation_layers(image)
    volume = _image_to_volume(image, name)
    if kind == "file" and _suffix(path) in (".nii", ".nii.gz"):
        volume = _apply_nifti_precedence(path, volume, warnings)
    if warnings:
        volume.meta["warnings"] = warnings
    if dicom_files:  # the source a DICOM SEG output references (tagseg.dicomseg)
        volume.meta["dicom_files"] = tuple(str(f) for f in dicom_files)
    return volume


# ---- NIfTI: sform and qform --------------------------------------------------------------------------------------
NIFTI_XFORM_TOLERANCE_MM = 0.01
# sizeof_hdr -> (struct letter of its reals, of its xform codes, byte offsets of pixdim, qform_code, quatern_b, srow_x)
NIFTI_LAYOUTS = {
    348: ("f", "h", (76, 252, 256, 280)),  # NIfTI-1
    540: ("d", "i", (104, 344, 352, 400)),  # NIfTI-2
}


def _nifti_transforms(path: Path) -> tuple[int, np.ndarray | None, int, np.ndarray | None] | None:
    """(qform_code, qform 4x4, sform_code, sform 4x4) in RAS from a NIfTI-1/-2 header, or None."""
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if size in NIFTI_LAYOUTS and len(header) >= size:
            real, code, (at_pixdim, at_codes, at_quatern, at_srow) = NIFTI_LAYOUTS[size]
            pixdim = struct.unpack_from(f"{endian}8{real}", header, at_pixdim)
            qcode, scode = struct.unpack_from(f"{endian}2{code}", header, at_codes)
            quat = struct.unpack_from(f"{endian}6{real}", header, at_quatern)
            srow = struct.unpack_from(f"{endian}12{real}", header, at_srow)
            break
    else:
        return None
    qform = None
    if qcode > 0:
        b, c, d, qx, qy, qz = (float(v) for v in quat)
        a2 = 1.0 - (b * b + c * c + d * d)
        a = np.sqrt(a2) if a2 > 1e-7 else 0.0
        rot = np.array(
            [
                [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
            ]
        )
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        zooms = np.array([pixdim[1], pixdim[2], pixdim[3] * qfac], dtype=np.float64)
        qform = np.eye(4)
        qform[:3, :3] = rot * zooms[None, :]
        qform[:3, 3] = (qx, qy, qz)
    sform = None
    if scode > 0:
        sform = np.eye(4)
        sform[:3, :] = np.asarray(srow, dtype=np.float64).reshape(3, 4)
    return int(qcode), qform, int(scode), sform


def _apply_nifti_precedence(path: Path, volume: Volume, warnings: list[str]) -> Volume:
    """The NIfTI standard: the sform when its code is > 0, else the qform. When the file's two disagree and
    the reader used the other one, the volume is put on the sform's grid, with a one-line warning; outputs are
    then written with a qform and an sform that both describe that grid."""
    found = _nifti_transforms(path)
    if found is None or volume.array.ndim != 3:
        return volume
    qcode, qform, scode, sform = found
    if sform is None or qform is None or not np.all(np.isfinite(sform)):
        return volume
    if np.allclose(qform, sform, atol=NIFTI_XFORM_TOLERANCE_MM, rtol=0):
        return volume
    offset = float(np.linalg.norm(qform[:3, 3] - sform[:3, 3]))
    used_sform = np.allclose(volume.ijk_to_ras, sform, atol=NIFTI_XFORM_TOLERANCE_MM, rtol=0)
    message = (
        f"{path.name}: the header's qform and sform disagree (origins {offset:.1f} mm apart); "
        f"using the sform (code {scode}), as the NIfTI standard says"
    )
    warnings.append(message)
    if used_sform:
        return volume
    return Volume(volume.array, sform, volume.name, dict(volume.meta))


# ---- DICOM series ------------------------------------------------------------------------------------------------
DICOM_POSITION_TOLERANCE = 0.01  # a step may differ from the median step by 1 % ...
DICOM_POSITION_TOLERANCE_MM = 0.005  # ... or 5 micrometres, whichever is larger


def _dicom_tag(reader, tag: str) -> str:
    try:
        return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
    except RuntimeError:
        return ""


def _looks_like_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _read_dicom_series(
    folder: Path,
    series: str | None,
    warnings: list[str],
    resample_uneven: bool = False,
    files_read: list[Path] | None = None,
):
    """One series, every slice read and checked: same size and orientation, positions evenly spaced along
    the slice normal (or resampled, when asked), no duplicates. Returns a SimpleITK image."""
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    with native_output_captured():
        ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    with native_output_captured():
        members = {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}
    if series is not None and series not in members:
        raise InputError(f"{folder}: no DICOM series {series}; the folder holds {_list_series(members)}")
    if series is None and len(ids) > 1:
        raise InputError(f"{folder}: holds {len(ids)} DICOM series; pick one with series=UID: {_list_series(members)}")
    uid = series or ids[0]
    files = [Path(f) for f in members[uid]]
    in_series = {str(Path(f).resolve()) for names in members.values() for f in names}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and str(entry.resolve()) not in in_series and _looks_like_dicom_file(entry):
            raise InputError(
                f"{entry}: a DICOM slice that cannot be read (truncated or corrupt); the series would have a gap"
            )
    for file in files:
        require_regular_file(file, "DICOM slice")
    if files_read is not None:
        files_read.extend(files)
    if len(files) == 1:
        note_input(files[0])
        _check_header_budget(files[0])
        return _read_image(files[0], "cannot be read as a DICOM slice")
    first = sitk.ImageFileReader()
    first.SetFileName(str(files[0]))
    with native_output_captured():
        try:
            first.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{files[0]}: cannot be read as a DICOM slice ({_noise_detail([str(exc)])})") from None
    size, per_voxel = _header_bytes(first)
    budget.check_voxels((size[0], size[1], len(files)), max(per_voxel, 4), f"{folder}: the series")
    slices = []
    for file in files:
        note_input(file)
        image = _read_image(file, "a DICOM slice that cannot be read")
        if image.GetDimension() == 3 and image.GetSize()[2] != 1 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"{file}: not a single-channel 2D slice (size {image.GetSize()}); one slice per file "
                "is needed in a series folder"
            )
        slices.append(image)
    return _stack_slices(folder, files, slices, warnings, resample_uneven)


def _list_series(members: dict) -> str:
    sitk = _sitk()
    shown = []
    for uid, names in members.items():
        description = ""
        if names:
            reader = sitk.ImageFileReader()
            reader.SetFileName(names[0])
            with native_output_captured():
                with contextlib.suppress(RuntimeError):
                    reader.ReadImageInformation()
                    description = _dicom_tag(reader, "0008|103e")
        shown.append(f"{uid} ('{description}', {len(names)} slice{'s' if len(names) != 1 else ''})")
    return "; ".join(shown)


def _stack_slices(folder: Path, files: list[Path], slices: list, warnings: list[str], resample_uneven: bool = False):
    sitk = _sitk()
    size0 = slices[0].GetSize()[:2]
    direction0 = np.array(slices[0].GetDirection(), dtype=np.float64).reshape(slices[0].GetDimension(), -1)[:3, :3]
    spacing0 = np.array(slices[0].GetSpacing()[:2], dtype=np.float64)
    row, col = direction0[:, 0], direction0[:, 1]
    normal = np.cross(row, col)
    if not np.all(np.isfinite(normal)) or np.linalg.norm(normal) < 1e-6:
        raise InputError(f"{files[0]}: degenerate slice orientation in the header")
    normal /= np.linalg.norm(normal)
    positions = []
    for file, image in zip(files, slices, strict=False):
        if image.GetSize()[:2] != size0:
            raise InputError(f"{file}: slice of size {image.GetSize()[:2]} in a series of {size0}")
        direction = np.array(image.GetDirection(), dtype=np.float64).reshape(image.GetDimension(), -1)[:3, :3]
        if np.max(np.abs(direction[:, :2] - direction0[:, :2])) > 1e-4:
            raise InputError(f"{file}: slice orientation differs from {files[0].name}'s")
        if np.max(np.abs(np.array(image.GetSpacing()[:2]) - spacing0)) > 1e-4 * max(float(spacing0.max()), 1.0):
            raise InputError(f"{file}: pixel spacing differs from {files[0].name}'s")
        positions.append(float(np.dot(np.array(image.GetOrigin()[:3], dtype=np.float64), normal)))
    order = np.argsort(positions, kind="stable")
    pos = np.array(positions)[order]
    steps = np.diff(pos)
    median = float(np.median(steps))
    tolerance = max(DICOM_POSITION_TOLERANCE * abs(median), DICOM_POSITION_TOLERANCE_MM)
    shown = ", ".join(f"{p:g}" for p in pos[:24]) + (" ..." if len(pos) > 24 else "")
    duplicate = np.flatnonzero(steps <= DICOM_POSITION_TOLERANCE_MM)
    if len(duplicate):
        a, b = files[order[duplicate[0]]], files[order[duplicate[0] + 1]]
        raise InputError(
            f"{folder}: duplicate slice position {pos[duplicate[0]]:g} mm ({a.name} and {b.name}); "
            f"positions found: {shown} mm"
        )
    uneven = bool(np.max(np.abs(steps - median)) > tolerance)
    if uneven and not resample_uneven:
        raise InputError(
            f"{folder}: slices are not evenly spaced (positions along the slice normal: {shown} mm); "
            "a missing or extra slice would put the mask in the wrong place (resample_uneven=True "
            "interpolates them onto a regular grid)"
        )
    arrays = [sitk.GetArrayFromImage(slices[i]).reshape(size0[1], size0[0]) for i in order]
    dtype = np.result_type(*[a.dtype for a in arrays])
    step = median
    if uneven:
        volume, step = _resample_slices(arrays, pos, dtype, median, (size0[0], size0[1]), folder)
        warnings.append(
            f"{folder.name}: slices were unevenly spaced ({shown} mm; largest gap {steps.max():g} mm); "
            f"resampled onto {len(volume)} slices {step:g} mm apart, interpolating linearly between "
            "neighbouring slices"
        )
    else:
        volume = np.stack([a.astype(dtype, copy=False) for a in arrays])
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((float(spacing0[0]), float(spacing0[1]), step))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    image.SetOrigin(tuple(float(v) for v in slices[order[0]].GetOrigin()[:3]))
    return image


def _resample_slices(
    arrays: list[np.ndarray], pos: np.ndarray, dtype, median: float, size_ij: tuple[int, int], folder: Path
) -> tuple[np.ndarray, float]:
    """Slices at sorted positions `pos` interpolated linearly onto a regular grid from the first to the last
    position, its step the median step rounded so both end slices stay where they were; integer voxels are
    rounded back to their type."""
    count = int(round((pos[-1] - pos[0]) / median)) + 1
    budget.check_voxels(
        (size_ij[0], size_ij[1], count), max(np.dtype(dtype).itemsize, 4), f"{folder}: the resampled series"
    )
    step = float(pos[-1] - pos[0]) / (count - 1)
    out = np.empty((count, size_ij[1], size_ij[0]), dtype)
    for k in range(count):
        target = pos[0] + k * step
        below = int(np.clip(np.searchsorted(pos, target, side="right") - 1, 0, len(pos) - 2))
        weight = float(np.clip((target - pos[below]) / (pos[below + 1] - pos[below]), 0.0, 1.0))
        mixed = (1.0 - weight) * arrays[below].astype(np.float64) + weight * arrays[below + 1].astype(np.float64)
        out[k] = np.rint(mixed) if np.issubdtype(dtype, np.integer) else mixed
    return out, step


def load_mask_union(paths, name: str = "organ") -> Volume:
    """The union of binary masks stored on one grid (kidney = kidney_left + kidney_right)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError(f"{name}: no organ mask files")
    masks = [load_volume(p) for p in paths]
    union = np.zeros(masks[0].shape_kji, np.uint8)
    for path, mask in zip(paths, masks, strict=False):
        if not mask.same_grid(masks[0]):
            raise InputError(f"{path}: organ mask not on the grid of {paths[0].name}")
        union |= (np.asarray(mask.array) > 0).astype(np.uint8)
    return masks[0].with_array(union, name=name)


def load_organ_mask(folder: str | os.PathLike, organ_names) -> Volume:
    """The union of `<organ>.nii.gz` masks from a folder of per-organ masks (TotalSegmentator's layout)."""
    folder = Path(folder)
    found = [
        folder / f"{name}{ext}"
        for name in organ_names
        for ext in (".nii.gz", ".nii", ".nrrd")
        if (folder / f"{name}{ext}").is_file()
    ]
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


def load_segmentation(path: str | os.PathLike) -> tuple[list[Volume], list[tuple[str, int, int]]]:
    """A Slicer `.seg.nrrd` kept apart by segment: its label layers (one Volume each; Slicer stores
    overlapping segments on separate layers) and each segment's (name, layer, label value), from the header
    keys vtkMRMLSegmentationStorageNode writes (`SegmentN_Name`, `_Layer`, `_LabelValue`)."""
    sitk = _sitk()
    path = Path(path)
    require_regular_file(path, "segmentation")
    note_input(path)
    _check_header_budget(path)
    image = _read_image(path, "cannot be read as a segmentation")

    def field(key: str, default: str) -> str:
        return image.GetMetaData(key).strip() if image.HasMetaDataKey(key) else default

    segments: list[tuple[str, int, int]] = []
    while image.HasMetaDataKey(f"Segment{len(segments)}_ID") or image.HasMetaDataKey(f"Segment{len(segments)}_Name"):
        n = len(segments)
        try:
            layer, label = int(field(f"Segment{n}_Layer", "0")), int(field(f"Segment{n}_LabelValue", "1"))
        except ValueError:
            raise InputError(f"{path}: segment {n} has a layer or label value that is not a whole number") from None
        segments.append((field(f"Segment{n}_Name", f"Segment_{n + 1}"), layer, label))
    components = image.GetNumberOfComponentsPerPixel()
    layers = [image] if components == 1 else [sitk.VectorIndexSelectionCast(image, c) for c in range(components)]
    return [_image_to_volume(layer, path.name) for layer in layers], segments


def _same_image(written, expected) -> str | None:
    """What differs between an image read back and the one meant to be written (None: identical)."""
    sitk = _sitk()
    if tuple(written.GetSize()) != tuple(expected.GetSize()):
        return f"size {written.GetSize()} instead of {expected.GetSize()}"
    for what, a, b in (
        ("spacing", written.GetSpacing(), expected.GetSpacing()),
        ("origin", written.GetOrigin(), expected.GetOrigin()),
        ("direction", written.GetDirection(), expected.GetDirection()),
    ):
        if not np.allclose(a, b, atol=1e-4, rtol=1e-5):
            return f"{what} {tuple(round(v, 4) for v in a)} instead of {tuple(round(v, 4) for v in b)}"
    got, want = sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(expected)
    floating = np.issubdtype(want.dtype, np.floating) or np.issubdtype(want.dtype, np.complexfloating)
    if got.shape != want.shape or not np.array_equal(got, want, equal_nan=floating):
        return "voxel values differ from what was written"
    return None


def write_verified(image, tmp: Path, compress: bool = True) -> None:
    """Write `image` into the temporary file `tmp` and check it by reading it back in full; raises on a short
    write (a full disk makes nifticlib print an error and return normally, so its output is checked too)."""
    sitk = _sitk()
    with native_output_captured() as noise:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:
            raise OSError(f"{_noise_detail([str(exc)])}") from None
    detail = _noise_detail(noise)
    if "ERROR" in detail.upper():
        raise OSError(detail)
    if _suffix(tmp) in (".nii", ".nii.gz"):
        try:
            _check_nifti_complete(tmp)
        except InputError as exc:
            raise OSError(str(exc).split(": ", 1)[-1]) from None
    with native_output_captured():
        try:
            written = sitk.ReadImage(str(tmp))
        except RuntimeError as exc:
            raise OSError(f"the file read back is incomplete ({_noise_detail([str(exc)])})") from None
    problem = _same_image(written, image)
    if problem:
        raise OSError(f"the file read back is wrong: {problem}")


def _write_atomically(image, path: Path, compress: bool = True, what: str = "the output") -> None:
    """Write beside the target, check every byte, then rename: no partial or silently short output, ever."""
    with AtomicFile(path, suffix=_suffix(path), what=what) as part:
        try:
            write_verified(image, part.path, compress)
        except (OSError, RuntimeError) as exc:
            raise part.fail(exc) from None
        part.commit()


def output_image(volume: Volume, path: str | os.PathLike, segment_name: str | None = None):
    """The SimpleITK image `save_volume` would write at `path` (a `.seg.nrrd` gets the segmentation header)."""
    path = Path(path)
    if _suffix(path) not in LABEL_SUFFIXES:
        raise InputError(f"{path}: unsupported output type (use .nii.gz, .nrrd, .seg.nrrd or .mha)")
    if _suffix(path) == ".seg.nrrd":
        return _segmentation_image(volume, segment_name or volume.name or "Segment_1")
    return _volume_to_image(volume)


def save_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Write a volume (e.g. a label map) as NIfTI, NRRD or MHA, on its own grid."""
    path = Path(path)
    _write_atomically(output_image(volume, path), path)


def save_segmentation(
    mask: Volume,
    path: str | os.PathLike,
    segment_name: str,
    color_rgb: tuple[float, float, float] = (0.9, 0.3, 0.2),
    terminology: str | None = None,
) -> None:
    """Write a one-segment Slicer segmentation file (`.seg.nrrd`) on the mask's grid."""
    _write_atomically(_segmentation_image(mask, segment_name, color_rgb, terminology), Path(path))


def _segmentation_image(
    mask: Volume,
    segment_name: str,
    color_rgb: tuple[float, float, float] = (0.9, 0.3, 0.2),
    terminology: str | None = None,
):
    """A one-segment Slicer segmentation image on the mask's grid.

    The header keys follow Slicer's vtkMRMLSegmentationStorageNode (a binary labelmap master
    representation, one layer, label value 1), so Slicer and slicer-core open it as a segmentation.
    """
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
    return image
