"""Finding training cases on disk, checking them before a long run, and the train/val/test splits.

A training run that dies on case 187 of 300 after an hour wastes the hour, so `check_cases` reads every
header (and every label) up front and reports all problems in ONE error. Cases are plain paths: nothing
is loaded until the preprocessing cache needs it. Layouts follow the public releases (TAGS_SPEC §4.1):
MSD (`imagesTr/`, `labelsTr/`), KiTS (`case_xxxxx/imaging.nii.gz`), LiTS (`volume-N.nii`), plus two
generic ones. Organ masks are found where the authors kept them (`<case dir>/<organ>.nii.gz`) or in a
TotalSegmentator output folder per case; several files are united (kidney = kidney_left + kidney_right).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fs import write_json_atomic
from ..io import LPS_TO_RAS, load_mask_union, load_volume
from ..text import ORGAN_LABELS
from ..volume import Volume

VOLUME_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha")
LAYOUTS = ("auto", "msd", "kits", "lits", "folder", "case-folder")
SPLITS = ("train", "val", "test")
LIST_LIMIT = 10
_DEFAULT_ORGAN = {"kits": "kidney", "lits": "liver"}


@dataclass(frozen=True)
class Case:
    """One training case as paths; `organ_masks` are united into the organ channel."""

    case_id: str
    image: Path
    label: Path | None
    organ_masks: tuple[Path, ...] = ()


# ---------------------------------------------------------------------------------------------- discovery
def _strip_ext(name: str) -> str | None:
    lower = name.lower()
    for ext in VOLUME_EXTS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def _volume_files(folder: Path) -> list[Path]:
    """Volume files in a folder; hidden files (e.g. macOS `._x.nii.gz` in the MSD tarballs) are skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _strip_ext(p.name) is not None
    )


def _find_volume(folder: Path, stem: str) -> Path | None:
    for ext in VOLUME_EXTS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _case_id_from_image(path: Path) -> str:
    stem = _strip_ext(path.name) or path.name
    return stem[:-5] if stem.endswith("_0000") else stem  # nnU-Net's channel suffix


def _relative(entry: str) -> str:
    return entry[2:] if entry.startswith("./") else entry.lstrip("/")


def _msd(root: Path) -> list[tuple[str, Path, Path | None, Path | None]]:
    found: list[tuple[str, Path, Path | None, Path | None]] = []
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            training = json.loads(meta.read_text(encoding="utf-8")).get("training")
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{meta}: not a readable MSD dataset.json ({exc})") from None
        if isinstance(training, list):
            for item in training:
                if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                    continue
                image = root / _relative(item["image"])
                label = root / _relative(item["label"]) if isinstance(item.get("label"), str) else None
                found.append((_case_id_from_image(image), image, label if label and label.is_file() else None, None))
    if not found:
        for image in _volume_files(root / "imagesTr"):
            case_id = _case_id_from_image(image)
            found.append((case_id, image, _find_volume(root / "labelsTr", case_id), None))
    return found


def _kits(root: Path):
    found = []
    for base in (root, root / "data", root / "dataset"):
        for folder in sorted(base.glob("case_*")) if base.is_dir() else []:
            image = _find_volume(folder, "imaging")
            if folder.is_dir() and image is not None:
                label = _find_volume(folder, "aggregated_MAJ_seg") or _find_volume(folder, "segmentation")
                found.append((folder.name, image, label, folder))
        if found:
            break
    return found


def _walk_files(root: Path, pattern: str, depth: int = 3) -> list[Path]:
    out: list[Path] = []
    for level in range(depth + 1):
        out.extend(
            p for p in root.glob("/".join(["*"] * level + [pattern])) if p.is_file() and not p.name.startswith(".")
        )
    return out


def _lits(root: Path):
    segmentations = {}
    for path in _walk_files(root, "segmentation-*.nii*"):
        match = re.fullmatch(r"segmentation-(\d+)", _strip_ext(path.name) or "")
        if match:
            segmentations[match.group(1)] = path
    found = []
    for image in _walk_files(root, "volume-*.nii*"):
        match = re.fullmatch(r"volume-(\d+)", _strip_ext(image.name) or "")
        if match:  # the case id is the image's name, as in 3DSAM-adapter's lits split.pkl
            found.append((f"volume-{match.group(1)}", image, segmentations.get(match.group(1)), None))
    return found


def _folder(root: Path):
    found = []
    if (root / "images").is_dir():
        for image in _volume_files(root / "images"):
            case_id = _strip_ext(image.name) or image.name  # a volume file: it has an extension
            found.append((case_id, image, _find_volume(root / "labels", case_id), None))
        return found
    for image in _volume_files(root):
        stem = _strip_ext(image.name) or image.name
        if stem.endswith("_image"):
            case_id = stem[: -len("_image")]
            found.append((case_id, image, _find_volume(root, f"{case_id}_label"), None))
    return found


def _case_folders(root: Path):
    """`<case>/image.*` + `<case>/segmentation.*` (or label.*): the authors' rearranged pancreas/LiTS
    folders (`Training/pancreas_331/image.nii.gz`) and tagseg's own phantom cases."""
    found = []
    for depth in (1, 2):
        for folder in sorted(p for p in root.glob("/".join(["*"] * depth)) if p.is_dir()):
            image = _find_volume(folder, "image")
            if image is not None:
                label = _find_volume(folder, "segmentation") or _find_volume(folder, "label")
                found.append((folder.name, image, label, folder))
        if found:
            break
    return found


_BUILDERS = {"msd": _msd, "kits": _kits, "lits": _lits, "folder": _folder, "case-folder": _case_folders}


def detect_layout(root: str | os.PathLike) -> str:
    """The layout of a dataset folder; InputError naming what was looked for when none matches."""
    root = Path(root)
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "msd"
    if _kits(root):
        return "kits"
    if (root / "images").is_dir() or any(
        (_strip_ext(p.name) or p.name).endswith("_image") for p in _volume_files(root)
    ):
        return "folder"
    if _lits(root):
        return "lits"
    if _case_folders(root):
        return "case-folder"
    raise InputError(
        f"{root}: no known dataset layout (looked for dataset.json/imagesTr, case_*/imaging.nii.gz, "
        "images/ or <id>_image.nii.gz, volume-N.nii, <case>/image.nii.gz)"
    )


def _organ_groups(organ: str | Sequence[str] | None) -> list[tuple[str, ...]]:
    """File-name groups to try, in order: the authors' single file, then TotalSegmentator's parts."""
    if organ is None:
        return []
    if isinstance(organ, str):
        groups: list[tuple[str, ...]] = [(organ,)]
        parts = ORGAN_LABELS.get(organ.lower())
        if parts and tuple(parts) != (organ,):
            groups.append(tuple(parts))
        return groups
    return [tuple(organ)]


def _find_organ_masks(folders: Iterable[Path | None], groups: list[tuple[str, ...]]) -> tuple[Path, ...]:
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for group in groups:
            found = tuple(p for p in (_find_volume(folder, name) for name in group) if p is not None)
            if found:
                return found
    return ()


def _organ_folders(root: Path, case_id: str, case_dir: Path | None, organ_dir: Path | None) -> list[Path | None]:
    return [
        organ_dir / case_id if organ_dir else None,
        case_dir,
        root / "organsTr" / case_id,
        root / "organs" / case_id,
    ]


def _msd_organ(root: Path) -> str | None:
    try:
        labels = json.loads((root / "dataset.json").read_text(encoding="utf-8")).get("labels", {})
        name = str(labels.get("1", "")).strip().lower()
    except (OSError, ValueError, AttributeError):
        return None
    return name or None


def discover_cases(
    root: str | os.PathLike,
    layout: str = "auto",
    organ: str | Sequence[str] | None = "auto",
    organ_dir: str | os.PathLike | None = None,
) -> list[Case]:
    """Cases of a dataset folder, sorted naturally by id.

    `organ`: mask file name(s) without extension; "auto" = the layout's organ (KiTS kidney, LiTS liver,
    MSD the dataset.json name of label 1); None = look for no masks. A name with TotalSegmentator parts
    (kidney) falls back to their union. `organ_dir` holds one TotalSegmentator folder per case id.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if layout not in LAYOUTS:
        raise InputError(f"unknown dataset layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    layout = detect_layout(root) if layout == "auto" else layout
    if organ == "auto":
        organ = _msd_organ(root) if layout == "msd" else _DEFAULT_ORGAN.get(layout)
    groups = _organ_groups(organ)
    organ_root = Path(organ_dir) if organ_dir is not None else None
    cases = []
    for case_id, image, label, case_dir in _BUILDERS[layout](root):
        masks = _find_organ_masks(_organ_folders(root, case_id, case_dir, organ_root), groups) if groups else ()
        cases.append(Case(case_id, image, label, masks))
    if not cases:
        raise InputError(f"{root}: no cases found for the {layout!r} layout")
    return sorted(cases, key=lambda c: _natural_key(c.case_id))


def load_organ_union(paths: Sequence[Path], name: str = "organ") -> Volume:
    """The union of several binary masks on one grid (kidney = kidney_left + kidney_right)."""
    return load_mask_union(paths, name)


def load_case(case: Case) -> tuple[Volume, Volume | None, Volume | None]:
    """(image, label, organ union) of a case, each on its own file's grid."""
    image = load_volume(case.image)
    label = load_volume(case.label) if case.label is not None else None
    organ = load_organ_union(case.organ_masks, f"{case.case_id} organ") if case.organ_masks else None
    return image, label, organ


# ---------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class _Header:
    size_ijk: tuple[int, ...]
    spacing: np.ndarray
    origin_ras: np.ndarray
    directions_ras: np.ndarray


def _read_header(path: Path) -> _Header:
    """Geometry from the header only (no voxels), in RAS as everywhere in tagseg."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path.name} cannot be read as an image") from None
    dim = reader.GetDimension()
    size = tuple(int(n) for n in reader.GetSize())
    if dim == 4 and size[3] == 1:
        dim, size = 3, size[:3]
    if dim != 3:
        raise InputError(f"{path.name} is {dim}D, a 3D volume is needed")
    n = reader.GetDimension()
    direction = np.array(reader.GetDirection(), float).reshape(n, n)[:3, :3]
    flip = LPS_TO_RAS[:3, :3]
    return _Header(
        size, np.array(reader.GetSpacing()[:3], float), flip @ np.array(reader.GetOrigin()[:3], float), flip @ direction
    )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in np.ravel(values)) + ")"


def _geometry_difference(what: str, other: _Header, image: _Header) -> str | None:
    """The first geometry aspect where `other` differs from the image, worded for the user."""
    if other.size_ijk != image.size_ijk:
        return f"{what} size {'x'.join(map(str, other.size_ijk))} vs image {'x'.join(map(str, image.size_ijk))}"
    if not np.allclose(other.spacing, image.spacing, rtol=1e-3, atol=1e-4):
        return f"{what} spacing {_fmt(other.spacing)} vs image {_fmt(image.spacing)} mm"
    if not np.allclose(other.origin_ras, image.origin_ras, atol=max(0.05 * float(image.spacing.min()), 1e-3)):
        return f"{what} origin {_fmt(other.origin_ras)} vs image {_fmt(image.origin_ras)} (RAS mm)"
    if not np.allclose(other.directions_ras, image.directions_ras, atol=1e-3):
        return f"{what} direction {_fmt(other.directions_ras)} vs image {_fmt(image.directions_ras)}"
    return None


def _label_values(path: Path) -> tuple[np.ndarray, _Header]:
    volume = load_volume(path)
    array = np.asarray(volume.array)
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 and array.max() < 1 << 16:
        values = np.flatnonzero(np.bincount(array.ravel().astype(np.int64, copy=False)))
    else:
        values = np.unique(array[np.isfinite(array)]) if np.issubdtype(array.dtype, np.floating) else np.unique(array)
    return values, _read_header(path)


def _listing(title: str, items: list[str], limit: int = LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): {shown}{more}"


def check_cases(
    cases: Sequence[Case], tumour_label: int = 2, require_organs: bool = True, check_geometry: bool = True
) -> None:
    """Refuse unusable cases before training, with ONE InputError listing every problem by case id."""
    if not cases:
        raise InputError("no cases to check: the dataset is empty")
    problems: dict[str, list[str]] = {
        key: []
        for key in (
            "duplicate case ids",
            "missing images",
            "missing labels",
            "missing organ masks",
            "unreadable files",
            f"labels without the tumour value {tumour_label}",
            "geometry differs from the image",
        )
    }
    seen: set[str] = set()
    bad: set[str] = set()

    def flag(kind: str, case_id: str, text: str | None = None) -> None:
        problems[kind].append(text or case_id)
        bad.add(case_id)

    for case in cases:
        cid = case.case_id
        if cid in seen:
            flag("duplicate case ids", cid)
        seen.add(cid)
        if not Path(case.image).is_file():
            flag("missing images", cid)
            continue
        has_label = case.label is not None and Path(case.label).is_file()
        if not has_label:
            flag("missing labels", cid)
        organs = [Path(p) for p in case.organ_masks]
        if require_organs and (not organs or not all(p.is_file() for p in organs)):
            flag("missing organ masks", cid)
        try:
            image = _read_header(Path(case.image)) if check_geometry else None
            if has_label and case.label is not None:
                values, label = _label_values(Path(case.label))
                if not np.any(np.isclose(values, tumour_label)):
                    shown = ", ".join(f"{v:g}" for v in values[:12]) + (", …" if len(values) > 12 else "")
                    flag(f"labels without the tumour value {tumour_label}", cid, f"{cid} (values {shown})")
                if image is not None:
                    diff = _geometry_difference("label", label, image)
                    if diff:
                        flag("geometry differs from the image", cid, f"{cid}: {diff}")
            if image is not None:
                for path in (p for p in organs if p.is_file()):
                    diff = _geometry_difference(f"organ {path.name}", _read_header(path), image)
                    if diff:
                        flag("geometry differs from the image", cid, f"{cid}: {diff}")
                        break
        except InputError as exc:
            flag("unreadable files", cid, f"{cid}: {str(exc).splitlines()[0]}")
    listings = [_listing(kind, items) for kind, items in problems.items() if items]
    if listings:
        raise InputError(f"{len(bad)} of {len(cases)} cases cannot be used: " + "; ".join(listings))


# ---------------------------------------------------------------------------------------------- splits
class _SplitUnpickler(pickle.Unpickler):
    """Unpickles plain containers only: a split.pkl from the internet must not run code on load."""

    _ALLOWED = frozenset({"dict", "list", "str", "tuple", "int"})

    def find_class(self, module: str, name: str):
        if module == "builtins" and name in self._ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a persistent object")


def read_split_pkl(path: str | os.PathLike, fold: int = 0) -> dict[str, dict[str, tuple[str, str]]]:
    """A 3DSAM-adapter `split.pkl` fold: {split: {case: (image_rel, label_rel)}}, without running pickle code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found")
    try:
        data = path.read_bytes()
        folds = _SplitUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"{path}: refused: the file asks to load {exc}, but a split.pkl holds only dicts, lists and "
            "strings (it may be malicious; use a split JSON instead)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure means "not a split file"
        raise InputError(f"{path}: cannot be read as a split.pkl ({type(exc).__name__})") from None
    if isinstance(folds, dict):
        chosen = folds.get(fold)
    elif isinstance(folds, (list, tuple)) and 0 <= fold < len(folds):
        chosen = folds[fold]
    else:
        chosen = None
    if not isinstance(chosen, dict):
        count = len(folds) if isinstance(folds, (list, tuple, dict)) else 0
        raise InputError(f"{path}: has no fold {fold} ({count} fold(s); expected [fold]['train'|'val'|'test'])")
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for split, entries in chosen.items():
        if not isinstance(split, str) or not isinstance(entries, dict):
            raise InputError(f"{path}: fold {fold} is not {{'train'|'val'|'test': {{case: [image, label]}}}}")
        out[split] = {}
        for case, files in entries.items():
            if not (
                isinstance(case, str)
                and isinstance(files, (list, tuple))
                and len(files) >= 2
                and all(isinstance(f, str) for f in files[:2])
            ):
                raise InputError(f"{path}: fold {fold} {split} entry {case!r} is not [image_path, label_path]")
            out[split][case] = (files[0], files[1])
    if "train" not in out:
        raise InputError(f"{path}: fold {fold} has no 'train' split (has {', '.join(out) or 'nothing'})")
    return out


def load_split_pkl(path: str | os.PathLike, fold: int = 0) -> dict[str, list[str]]:
    """Case ids per split of a 3DSAM-adapter `split.pkl` fold (the published TAGS splits, §4.1)."""
    return {split: list(entries) for split, entries in read_split_pkl(path, fold).items()}


def cases_from_split(
    root: str | os.PathLike,
    entries: Mapping[str, Sequence[str]],
    organ: str | Sequence[str] | None = None,
    organ_dir: str | os.PathLike | None = None,
) -> list[Case]:
    """Cases from split.pkl entries {case: (image_rel, label_rel)} under the authors' `data_prefix`;
    organ masks next to the image when it sits in a per-case folder (the authors' layout)."""
    root = Path(root)
    organ_root = Path(organ_dir) if organ_dir is not None else None
    cases = []
    for case_id, files in entries.items():
        image, label = root / files[0].strip("/"), root / files[1].strip("/")
        per_case = image.parent.name == case_id or (_strip_ext(image.name) or "") in ("image", "imaging")
        folders = _organ_folders(root, case_id, image.parent if per_case else None, organ_root)
        cases.append(Case(case_id, image, label, _find_organ_masks(folders, _organ_groups(organ))))
    return cases


def make_split(
    case_ids: Iterable[str], seed: int, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, list[str]]:
    """A seeded train/val/test split; it depends on the set of ids, not on their order."""
    ids = sorted(set(case_ids), key=_natural_key)
    fr = np.asarray(fractions, float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0, atol=1e-6):
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val, n_test = int(round(len(ids) * fr[1])), int(round(len(ids) * fr[2]))
    if len(ids) and fr[0] > 0 and n_val + n_test >= len(ids):  # keep at least one training case
        n_test = max(len(ids) - 1 - n_val, 0)
        n_val = min(n_val, len(ids) - 1 - n_test)
    shuffled = [ids[i] for i in order]
    test, val, train = shuffled[:n_test], shuffled[n_test : n_test + n_val], shuffled[n_test + n_val :]
    return {
        "train": sorted(train, key=_natural_key),
        "val": sorted(val, key=_natural_key),
        "test": sorted(test, key=_natural_key),
    }


def _validate_split(split: Mapping, where: str) -> dict[str, list[str]]:
    out = {}
    for name in SPLITS:
        ids = split.get(name, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError(f"{where}: '{name}' must be a list of case ids")
        out[name] = list(ids)
    owners: dict[str, str] = {}
    clashes = []
    for name in SPLITS:
        for case_id in out[name]:
            if case_id in owners:
                clashes.append(f"{case_id} ({owners[case_id]}+{name})")
            owners.setdefault(case_id, name)
    if clashes:
        raise InputError(f"{where}: " + _listing("case ids in more than one split", clashes))
    return out


def save_split_json(path: str | os.PathLike, split: Mapping[str, Sequence[str]], meta: Mapping | None = None) -> Path:
    """Write a split (plus e.g. its seed) as JSON, atomically; JSON because it cannot carry code."""
    path = Path(path)
    clean = _validate_split({k: list(v) for k, v in split.items()}, str(path))
    payload = {"format": "tagseg-split/1", **({"meta": dict(meta)} if meta else {}), **clean}
    write_json_atomic(path, payload)
    return path


def load_split_json(path: str | os.PathLike) -> dict[str, list[str]]:
    """{'train', 'val', 'test'} case-id lists from `save_split_json`'s file (or any JSON with those lists)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: split file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable split JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a split JSON must be an object with train/val/test lists")
    return _validate_split(data, str(path))


def split_cases(cases: Sequence[Case], split: Mapping[str, Sequence[str]]) -> dict[str, list[Case]]:
    """The Case objects of each split, in split order; InputError listing split ids with no case."""
    by_id = {case.case_id: case for case in cases}
    missing = [cid for ids in split.values() for cid in ids if cid not in by_id]
    if missing:
        raise InputError(_listing("split case ids not found in the dataset", missing))
    return {name: [by_id[cid] for cid in ids] for name, ids in split.items()}


def dataset_anatomy(root: str | os.PathLike) -> str:
    """The organ a dataset folder is about: label 1's name in its dataset.json (lower case), else "organ"."""
    meta = Path(root) / "dataset.json"
    if meta.is_file():
        labels = json.loads(meta.read_text(encoding="utf-8")).get("labels", {})
        name = labels.get("1") or labels.get(1)
        if isinstance(name, str) and name:
            return name.lower()
    return "organ"


def find_cases(
    root: str | os.PathLike,
    layout: str = "auto",
    organ: str | Sequence[str] | None = "auto",
    organ_dir: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
    fold: int = 0,
) -> tuple[list[Case], dict[str, list[str]] | None]:
    """The cases of a dataset folder and, when `split_file` is given, its subsets (a 3DSAM-adapter .pkl fold or a
    tagseg .json); what `train` and `evaluate` start from."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    cases = discover_cases(root, layout=layout, organ=organ, organ_dir=organ_dir)
    split = None
    if split_file:
        path = Path(split_file).expanduser()
        split = load_split_pkl(path, fold) if path.suffix == ".pkl" else load_split_json(path)
    return cases, split
