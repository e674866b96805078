"""Synthetic training datasets in the MSD layout, so the whole training path runs without patient data.

`write_synthetic_dataset` writes seeded phantoms (tagseg.synth) whose tumours vary in size, contrast
(hyper- or hypodense) and shape; `insert_into_ct` puts seeded tumours into the organ of a real CT
(e.g. TotalSegmentator's example CT in ../shared/data/ct_organs). Both write what `discover_cases(...,
layout="msd")` reads: dataset.json, imagesTr/<id>.nii.gz, labelsTr/<id>.nii.gz (1 organ, 2 tumour) and
organsTr/<id>/<organ>.nii.gz, plus suggested intensity settings measured as published (§4.2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fs import write_json_atomic
from ..io import load_volume, save_volume
from ..synth import insert_tumour, make_phantom
from ..text import ORGAN_LABELS
from ..volume import Volume

DEFAULT_DIRECTIONS = np.diag([-1.0, -1.0, 1.0])  # LPS-stored axial, the common CT storage order


def _case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _foreground_intensity(samples: list[np.ndarray]) -> dict:
    """Window = 0.5/99.5 percentiles of labelled voxels, mean/std of them after clipping (3DSAM-adapter#40)."""
    values = np.concatenate(samples).astype(np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, lo, hi)
    return {"window": [float(lo), float(hi)], "mean": float(clipped.mean()), "std": float(max(clipped.std(), 1e-3))}


def _sample(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, limit: int = 50_000) -> np.ndarray:
    values = np.asarray(image)[np.asarray(mask) > 0]
    return values if len(values) <= limit else rng.choice(values, limit, replace=False)


def _write_case(out: Path, case_id: str, image: Volume, organ: np.ndarray, tumour: np.ndarray, organ_name: str) -> dict:
    label = np.where(tumour > 0, 2, np.where(organ > 0, 1, 0)).astype(np.uint8)
    save_volume(image, out / "imagesTr" / f"{case_id}.nii.gz")
    save_volume(image.with_array(label, name="label"), out / "labelsTr" / f"{case_id}.nii.gz")
    save_volume(
        image.with_array((organ > 0).astype(np.uint8), name=organ_name),
        out / "organsTr" / case_id / f"{organ_name}.nii.gz",
    )
    return {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"}


def _write_dataset(out: Path, name: str, description: str, organ: str, seed: int, stream: int, cases) -> Path:
    """Write each (case id, image, organ mask, tumour mask, details) of `cases` in the MSD layout as it comes, then
    the dataset.json listing them, with the intensity settings measured on a sample of their organ voxels."""
    rng = np.random.default_rng([int(seed), stream])
    training, details, samples = [], [], []
    for case_id, image, organ_mask, tumour, detail in cases:
        training.append(_write_case(out, case_id, image, organ_mask, tumour, organ))
        samples.append(_sample(image.array, organ_mask, rng))
        details.append(detail)
    write_json_atomic(
        out / "dataset.json",
        {
            "name": name,
            "description": description,
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": organ, "2": "tumour"},
            "numTraining": len(training),
            "numTest": 0,
            "training": training,
            "test": [],
            "tagseg": {
                "generator": "tagseg.data.synthetic",
                "seed": int(seed),
                "intensity": _foreground_intensity(samples),
                "cases": details,
            },
        },
    )
    return out


def write_synthetic_dataset(
    out: str | os.PathLike,
    cases: int = 8,
    seed: int = 0,
    organ: str = "pancreas",
    shape_kji: Sequence[int] = (48, 128, 128),
    spacing_ijk: Sequence[float] = (1.25, 1.25, 2.0),
    directions=None,
) -> Path:
    """`cases` phantoms with one tumour in `organ` (pancreas, liver or kidney), MSD layout; same seed, same data.

    The default grid covers the phantom's 160 x 160 x 96 mm anatomy; smaller shapes (e.g. (24, 64, 64)
    at (2.5, 2.5, 4) mm) keep that field of view and write in well under a second per case.
    """
    if cases < 1:
        raise InputError(f"a synthetic dataset needs at least one case, got {cases}")
    out = Path(out)
    dirs = DEFAULT_DIRECTIONS if directions is None else np.asarray(directions, float)
    organ_key = organ.strip().lower()

    def phantoms():
        for index in range(cases):
            case_seed = _case_seed(seed, index)
            try:
                phantom = make_phantom(
                    case_seed,
                    shape_kji=tuple(shape_kji),
                    spacing_ijk=tuple(spacing_ijk),
                    directions=dirs,
                    tumour_organ=organ_key,
                )
            except ValueError as exc:
                raise InputError(f"synthetic {organ} case {index}: {exc}") from None
            parts = [m for name, m in phantom.organs.items() if name == organ_key or name.startswith(organ_key + "_")]
            organ_mask = np.any([np.asarray(m.array) > 0 for m in parts], axis=0)
            detail = {
                "case_id": f"{organ_key}_{index:03d}",
                "phantom_seed": case_seed,
                "tumour_organ": phantom.tumour_organ,
                "radius_mm": round(phantom.radius_mm, 3),
                "contrast_hu": round(phantom.contrast_hu, 3),
                "centre_ras": [round(v, 3) for v in phantom.centre_ras],
            }
            yield detail["case_id"], phantom.image, organ_mask, np.asarray(phantom.label.array), detail

    title = f"tagseg synthetic {organ_key} tumours"
    description = "Seeded CT-like phantoms (tagseg.synth); not patient data"
    return _write_dataset(out, title, description, organ_key, seed, 99, phantoms())


def _organ_from_mask(mask: Volume, path: Path, organ: str, organ_labels) -> np.ndarray:
    """The organ's voxels in a binary mask or a multi-label map (values given, or named in a
    TotalSegmentator `total_class_map.json` next to it)."""
    array = np.asarray(mask.array)
    if organ_labels is not None:
        values = [int(v) for v in np.atleast_1d(organ_labels)]
        return np.isin(array, values)
    present = np.unique(array)
    if set(present.tolist()) <= {0, 1}:
        return array > 0
    class_map = path.parent / "total_class_map.json"
    if class_map.is_file():
        names = ORGAN_LABELS.get(organ, (organ,))
        try:
            table = json.loads(class_map.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            table = {}
        values = [int(k) for k, v in table.items() if v in names]
        if values:
            return np.isin(array, values)
    raise InputError(
        f"{path}: a label map with values {present[:8].tolist()}…; pass organ_labels (the values of the "
        f"{organ}) or a binary mask"
    )


def insert_into_ct(
    ct_image_path: str | os.PathLike,
    organ_mask_path: str | os.PathLike,
    out: str | os.PathLike,
    cases: int = 4,
    seed: int = 0,
    *,
    organ: str = "liver",
    organ_labels=None,
) -> Path:
    """`cases` copies of a real CT, each with one seeded synthetic tumour inside `organ`, MSD layout."""
    ct_path, mask_path, out = Path(ct_image_path), Path(organ_mask_path), Path(out)
    image, mask = load_volume(ct_path), load_volume(mask_path)
    if not image.same_grid(mask):
        raise InputError(f"{mask_path}: the organ mask is not on the CT's grid ({ct_path.name})")
    organ_key = organ.strip().lower()
    organ_mask = _organ_from_mask(mask, mask_path, organ_key, organ_labels)
    if not organ_mask.any():
        raise InputError(f"{mask_path}: no {organ} voxels")
    organ_volume = image.with_array(organ_mask.astype(np.uint8), name=organ_key)

    def copies():
        for index in range(cases):
            case_seed = _case_seed(seed, index)
            try:
                new_image, tumour = insert_tumour(image, organ_volume, seed=case_seed)
            except ValueError as exc:
                raise InputError(f"{ct_path.name}: {exc}") from None
            detail = {
                "case_id": f"{organ_key}_ct_{index:03d}",
                "seed": case_seed,
                "source_ct": ct_path.name,
                "tumour_voxels": int(np.count_nonzero(tumour.array)),
            }
            yield detail["case_id"], new_image, organ_mask, np.asarray(tumour.array), detail

    title = f"tagseg synthetic {organ_key} tumours in {ct_path.name}"
    description = "Synthetic tumours inserted into a real CT's organ mask; the tumours are not real"
    return _write_dataset(out, title, description, organ_key, seed, 98, copies())


def dataset_intensity(root: str | os.PathLike) -> dict | None:
    """The intensity settings a synthetic dataset suggests (dataset.json "tagseg" block), or None."""
    try:
        meta = json.loads((Path(root) / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    intensity = meta.get("tagseg", {}).get("intensity") if isinstance(meta, dict) else None
    return dict(intensity) if isinstance(intensity, dict) else None
