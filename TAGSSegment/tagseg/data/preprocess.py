"""Resampling training cases to 1 mm in the crop orientation, and caching the result on disk (TAGS_SPEC §4.2).

Why resample by geometry instead of the authors' array transpose: inference (`tags.crop`) builds crops
in array axes (D, H, W) = (S, A->P, R->L), i.e. IJK->RAS directions diag(-1, -1, 1). Training data must
arrive in that same convention whatever the file's storage order, or flips/rotations seen in training
would not match test time. For the usual LPS-stored axial CT this equals the authors' KJI array, and
the interpolation reproduces their `F.interpolate(scale_factor=spacing)` sample for sample (half-voxel
aligned, edge-clamped).

Why a cache: the published loader re-reads and re-resamples every full volume on every iteration,
which makes the loader the bottleneck (§5.5). Each case is resampled once and stored as .npy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import isotropic_grid, resample
from ..tags.crop import CROP_DIRECTIONS, Intensity
from ..tags.tasks import TASKS, Task
from ..volume import Volume

ANISOTROPY_RATIO = 8.0  # published: max/min spacing above this -> in-plane first, then along D
CACHE_VERSION = 1
_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def task_intensity(task: Task | str | Intensity | Mapping) -> Intensity:
    """Window + z-score statistics from a published task (or its key), an `Intensity`, or a
    {"window", "mean", "std"} dict (custom or synthetic tasks)."""
    if isinstance(task, Intensity):
        return task
    if isinstance(task, Task):
        return Intensity((task.window[0], task.window[1]), task.mean, task.std)
    if isinstance(task, str):
        if task not in TASKS:
            raise InputError(f"unknown task {task!r} (choose from {', '.join(TASKS)}, or give window/mean/std)")
        return task_intensity(TASKS[task])
    if isinstance(task, Mapping):
        try:
            intensity = Intensity.from_metadata(task)
        except (KeyError, TypeError, ValueError):
            raise InputError("intensity settings need 'window' [lo, hi], 'mean' and 'std'") from None
        if not intensity.window[0] < intensity.window[1] or not intensity.std > 0:
            raise InputError(f"invalid intensity settings: window {intensity.window}, std {intensity.std}")
        return intensity
    raise InputError(f"cannot take intensity settings from {type(task).__name__}")


# ---------------------------------------------------------------------------------------------- resampling
def crop_orientation_grid(volume: Volume, spacing_mm: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The grid a case is resampled onto: directions diag(-1, -1, 1), `spacing_mm`, covering the volume's
    RAS bounding box from its outer faces (floor(extent / spacing) voxels, as F.interpolate's size)."""
    lo, hi = volume.bounds_ras()
    n_ras = np.maximum(1, np.floor((hi - lo) / spacing_mm + 1e-4)).astype(int)
    matrix = np.eye(4)
    matrix[:3, :3] = CROP_DIRECTIONS * spacing_mm
    # i runs towards -R from the right face, j towards -A from the anterior face, k towards +S from the bottom
    matrix[:3, 3] = [hi[0] - spacing_mm / 2, hi[1] - spacing_mm / 2, lo[2] + spacing_mm / 2]
    return matrix, (int(n_ras[2]), int(n_ras[1]), int(n_ras[0]))


def _edge_padded(volume: Volume) -> Volume:
    """One replicated voxel around the grid, so linear sampling in the outer half voxel clamps to the edge
    value (as F.interpolate does) instead of blending with the fill value."""
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    return Volume(np.pad(np.asarray(volume.array), 1, mode="edge"), volume.ijk_to_ras @ shift, volume.name)


def _aligned_permutation(volume: Volume, matrix: np.ndarray) -> bool:
    cosines = np.abs((matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)).T @ volume.directions_ijk)
    return bool(np.all(np.isclose(np.sort(cosines, axis=1)[:, -1], 1.0, atol=1e-6)))


def _in_plane_grid(
    volume: Volume, thick: int, matrix: np.ndarray, shape_kji: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The intermediate grid of the anisotropic rule: target spacing in-plane, the source's own slices
    along the thick axis, so pass 1 interpolates only within slices and pass 2 only across them."""
    spacing = volume.spacing_ijk
    if _aligned_permutation(volume, matrix):
        # final grid with its axis parallel to the thick source axis replaced by the source slice positions
        target_dirs = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
        axis = int(np.argmax(np.abs(target_dirs.T @ volume.directions_ijk[:, thick])))
        along = target_dirs[:, axis]
        first = float(along @ volume.ijk_to_ras[:3, 3])
        step = float(along @ volume.ijk_to_ras[:3, thick])
        count = volume.shape_kji[2 - thick]
        start = min(first, first + step * (count - 1))
        inter = matrix.copy()
        inter[:3, axis] = along * abs(step)
        inter[:3, 3] = matrix[:3, 3] + along * (start - float(along @ matrix[:3, 3]))
        shape = list(shape_kji)
        shape[2 - axis] = count
        return inter, (shape[0], shape[1], shape[2])
    # oblique source: in-plane resampling on the source's own axes, then everything else in pass 2
    target = np.full(3, float(np.linalg.norm(matrix[:3, 0])))
    target[thick] = spacing[thick]
    return isotropic_grid(volume, target)


def resample_linear(volume: Volume, matrix: np.ndarray, shape_kji: tuple[int, int, int], fill: float = 0.0) -> Volume:
    """Trilinear resampling with the published anisotropy rule, realised with `tagseg.geometry.resample`:
    when max/min spacing > 8, pass 1 resamples onto `_in_plane_grid` (bilinear within the source slices,
    which it hits exactly), pass 2 onto the final grid (linear across slices only for axis-aligned data).
    Otherwise one trilinear pass. Both passes clamp at the volume's faces."""
    spacing = volume.spacing_ijk
    if spacing.max() / spacing.min() <= ANISOTROPY_RATIO:
        return resample(_edge_padded(volume), matrix, shape_kji, order=1, fill=fill)
    thick = int(np.argmax(spacing))
    inter_matrix, inter_shape = _in_plane_grid(volume, thick, matrix, shape_kji)
    first = resample(_edge_padded(volume), inter_matrix, inter_shape, order=1, fill=fill)
    return resample(_edge_padded(first), matrix, shape_kji, order=1, fill=fill)


def _binary_resampled(volume: Volume, binary: np.ndarray, matrix, shape, name: str) -> Volume:
    soft = resample_linear(volume.with_array(binary.astype(np.float32)), matrix, shape, fill=0.0)
    return Volume((np.asarray(soft.array) > 0.5).astype(np.uint8), matrix, name)


def resample_case(
    image: Volume,
    label: Volume | None,
    organ: Volume | None,
    spacing_mm: float = 1.0,
    *,
    tumour_label: int | None = 2,
    window: tuple[float, float] | None = None,
) -> tuple[Volume, Volume | None, Volume | None]:
    """(image, label, organ) on the 1 mm crop-orientation grid of the image (§4.2).

    Image: NaN -> 0, trilinear, then clipped to `window` (z-scoring is left to the transforms, as
    published). Label: (seg == tumour_label) before resampling (seg > 0 when tumour_label is None),
    organ: > 0; both trilinear then > 0.5, uint8. Label and organ may sit on other grids than the image:
    they are resampled by geometry onto the image's target grid.
    """
    if not spacing_mm > 0:
        raise InputError(f"target spacing must be positive, got {spacing_mm}")
    matrix, shape = crop_orientation_grid(image, spacing_mm)
    pixels = np.array(image.array, dtype=np.float32)
    pixels[~np.isfinite(pixels)] = 0.0
    fill = float(pixels.min())  # outside an oblique volume: its darkest value (air), cropped away later
    resampled = np.asarray(resample_linear(image.with_array(pixels), matrix, shape, fill=fill).array, np.float32)
    if window is not None:
        resampled = np.clip(resampled, float(window[0]), float(window[1]))
    image_out = Volume(resampled, matrix, image.name)
    label_out = organ_out = None
    if label is not None:
        seg = np.asarray(label.array)
        binary = seg > 0 if tumour_label is None else seg == tumour_label
        label_out = _binary_resampled(label, binary, matrix, shape, "label")
    if organ is not None:
        organ_out = _binary_resampled(organ, np.asarray(organ.array) > 0, matrix, shape, "organ")
    return image_out, label_out, organ_out


# ---------------------------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class Preprocessed:
    """A cached case on its 1 mm grid: image in the cache dtype (clipped HU), label/organ uint8 {0, 1}."""

    image: Volume
    label: Volume | None
    organ: Volume | None


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_record(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha1": _sha1(path)}


class PreprocessedCache:
    """Resampled cases on disk: `<root>/<settings>/<case>/{image,label,organ}.npy` + `meta.json`.

    An entry is valid while its sources keep their size and mtime, or (after a copy or touch) their
    SHA-1. Files are written to temporary names and renamed, `meta.json` last, so a crash or a full
    disk never leaves an entry that looks valid; a full disk removes what was written and raises
    InputError naming the cache folder. Safe for several processes (DDP ranks, loader workers).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        spacing_mm: float = 1.0,
        dtype: str = "float16",
        resample_fn: Callable | None = None,
    ) -> None:
        if np.dtype(dtype) not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise InputError(f"cache dtype must be float16 or float32, got {dtype}")
        self.root = Path(root)
        self.spacing_mm = float(spacing_mm)
        self.dtype = np.dtype(dtype).name
        self._resample = resample_fn or resample_case

    def _params(self, window, tumour_label) -> dict:
        return {
            "spacing_mm": self.spacing_mm,
            "dtype": self.dtype,
            "window": None if window is None else [float(window[0]), float(window[1])],
            "tumour_label": tumour_label,
        }

    def folder(self, case, window: tuple[float, float] | None, tumour_label: int | None = 2) -> Path:
        """Where a case's entry lives for these settings (settings in the folder name, readable)."""
        win = "none" if window is None else f"{float(window[0]):g}_{float(window[1]):g}"
        settings = f"{self.spacing_mm:g}mm-{self.dtype}-w{win}-t{tumour_label}"
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", case.case_id)
        if safe != case.case_id or safe.startswith("."):
            safe = f"{safe.lstrip('.')}-{hashlib.sha1(case.case_id.encode()).hexdigest()[:8]}"
        return self.root / settings / safe

    @staticmethod
    def _sources(case) -> list[Path]:
        return (
            [Path(case.image)]
            + ([Path(case.label)] if case.label is not None else [])
            + [Path(p) for p in case.organ_masks]
        )

    def _fresh(self, meta: dict, case, params: dict) -> tuple[bool, bool]:
        """(valid, meta needs a refresh because only stat data changed)."""
        sources = self._sources(case)
        recorded = meta.get("sources", [])
        if meta.get("version") != CACHE_VERSION or meta.get("params") != params or len(recorded) != len(sources):
            return False, False
        refresh = False
        for record, path in zip(recorded, sources, strict=False):
            try:
                stat = path.stat()
            except OSError:
                return False, False
            if (
                record.get("path") == str(path.resolve())
                and stat.st_size == record.get("size")
                and stat.st_mtime_ns == record.get("mtime_ns")
            ):
                continue
            if stat.st_size != record.get("size") or _sha1(path) != record.get("sha1"):
                return False, False
            refresh = True
        return True, refresh

    def _read(self, folder: Path, meta: dict) -> Preprocessed | None:
        matrix = np.asarray(meta["ijk_to_ras"], float)
        try:
            arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]}
        except (OSError, ValueError):
            return None
        return Preprocessed(
            Volume(arrays["image"], matrix, "image"),
            Volume(arrays["label"], matrix, "label") if "label" in arrays else None,
            Volume(arrays["organ"], matrix, "organ") if "organ" in arrays else None,
        )

    def load(self, case, window: tuple[float, float] | None, tumour_label: int | None = 2) -> Preprocessed:
        """The case resampled to the cache spacing and clipped to `window`, from disk when still valid."""
        folder = self.folder(case, window, tumour_label)
        params = self._params(window, tumour_label)
        meta_path = folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict):
            valid, refresh = self._fresh(meta, case, params)
            if valid:
                cached = self._read(folder, meta)
                if cached is not None:
                    if refresh:  # a copied/touched source: remember its new stat data, best effort
                        meta["sources"] = [_source_record(p) for p in self._sources(case)]
                        try:
                            self._write_file(folder, "meta.json", lambda f: f.write(json.dumps(meta).encode()))
                        except (OSError, InputError):
                            pass
                    return cached
        return self._compute(case, folder, params, window, tumour_label)

    def warm(
        self,
        cases: Sequence,
        window: tuple[float, float] | None,
        tumour_label: int | None = 2,
        progress: Callable[[int, int, str], None] | None = None,
        workers: int = 1,
    ) -> None:
        """Fill the cache before training (e.g. on rank 0 before the other ranks start). A 512x512x60 CT
        takes ~15 s on one core, so `workers` processes share the cases (entries are process-safe)."""
        if workers <= 1 or len(cases) <= 1:
            for index, case in enumerate(cases):
                self.load(case, window, tumour_label)
                if progress is not None:
                    progress(index + 1, len(cases), case.case_id)
            return
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            jobs = {pool.submit(_warm_one, self, case, window, tumour_label): case for case in cases}
            for done, job in enumerate(as_completed(jobs), start=1):
                job.result()
                if progress is not None:
                    progress(done, len(cases), jobs[job].case_id)

    def _compute(self, case, folder: Path, params: dict, window, tumour_label) -> Preprocessed:
        from .datasets import load_case

        sources = [_source_record(p) for p in self._sources(case)]  # before reading: a later edit invalidates
        image, label, organ = load_case(case)
        image, label, organ = self._resample(
            image, label, organ, self.spacing_mm, tumour_label=tumour_label, window=window
        )
        stored = Volume(np.asarray(image.array).astype(self.dtype), image.ijk_to_ras, "image")
        arrays = {"image": np.asarray(stored.array)}
        if label is not None:
            arrays["label"] = np.asarray(label.array, np.uint8)
        if organ is not None:
            arrays["organ"] = np.asarray(organ.array, np.uint8)
        meta = {
            "version": CACHE_VERSION,
            "case_id": case.case_id,
            "params": params,
            "sources": sources,
            "ijk_to_ras": np.asarray(image.ijk_to_ras).tolist(),
            "shape_kji": list(image.shape_kji),
            "arrays": list(arrays),
        }
        self._store(folder, arrays, meta, case.case_id)
        return Preprocessed(stored, label, organ)

    @staticmethod
    def _write_file(folder: Path, name: str, writer: Callable) -> None:
        """Through the one atomic writer; an array is read back (header and size) before the rename."""
        from ..fs import atomic_write

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as stream:
                writer(stream)

        def verify(tmp: Path) -> None:
            if name.endswith(".npy"):
                np.load(tmp, mmap_mode="r", allow_pickle=False).reshape(-1)[-1:].copy()  # mapped: whole length
            else:
                json.loads(tmp.read_text(encoding="utf-8"))

        atomic_write(folder / name, write, verify, suffix=Path(name).suffix, what="the cache entry")

    def _store(self, folder: Path, arrays: dict[str, np.ndarray], meta: dict, case_id: str) -> None:
        from ..fs import WriteError

        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "meta.json").unlink(missing_ok=True)  # the old entry is invalid before any array changes
            for name, array in arrays.items():
                self._write_file(folder, f"{name}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False))
            self._write_file(folder, "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
        except (OSError, WriteError) as exc:
            self._discard(folder)
            if exc.errno in _SPACE_ERRNOS:
                raise InputError(
                    f"no space left on the device for the preprocessing cache {self.root} "
                    f"(case {case_id}); free disk space or choose another cache folder"
                ) from None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputError(f"cannot write the preprocessing cache {self.root} (case {case_id}): {reason}") from None

    def _discard(self, folder: Path) -> None:
        """Remove an entry and the folders it leaves empty: no partial entry survives a failed write."""
        if folder.is_dir():
            for path in folder.iterdir():
                try:
                    path.unlink()
                except OSError:
                    pass
        for path in (folder, folder.parent):
            try:
                path.rmdir()
            except OSError:
                break


def _warm_one(cache: PreprocessedCache, case, window, tumour_label) -> None:
    """One case in a worker process; nothing but errors travels back."""
    cache.load(case, window, tumour_label)
