"""Result checks: after each prediction the mask is compared with the prompts that asked for it, and what
looks wrong comes back as named warnings (`ResultWarning`) instead of a silent exit 0.

The thresholds come from the geometry of the prompts and of a compact lesion, never from particular
cases. Sizes are in mm on the source grid; `d_eq` is the mask's equivalent diameter (the diameter of
a ball of the same volume), `S` the span of the include prompts (largest distance between include
points and box centres, or a box's longest side).

| code            | when                                                                                     |
|-----------------|------------------------------------------------------------------------------------------|
| `empty`         | no voxel                                                                                 |
| `tiny`          | `d_eq` < 5 mm (0.065 ml): smaller than the lesions people segment (RECIST measures from  |
|                 | 10 mm; Fleischner 2017 follows solid nodules from 6 mm); right only for a micronodule     |
| `small`         | `d_eq` < `S` / 16^(1/3) (= 0.40 `S`): a lesion holding prompts `S` apart is that small   |
|                 | only if it is thinner than 1/4 of its length in both other directions (a needle or a     |
|                 | sheet), which tumours are not; most of the lesion was probably missed                    |
| `leak`          | some voxel lies farther than 3 `d_eq` from every include prompt: a compact object holds  |
|                 | every point within 1 `d_eq` of a click inside it, a prolate ellipsoid reaches 3 `d_eq`   |
|                 | only when longer than 5:1 and clicked at its tip; a spill along a vessel or through a    |
|                 | thin bridge into a neighbour does                                                        |
| `volume_border` | the mask touches an outer face of the image (axes of one voxel aside): the lesion may   |
|                 | continue outside it, so its size is underestimated                                      |
| `crop_border`   | the mask reaches the edge of the region the model saw (`Backend.crops`): within one      |
|                 | voxel of either grid of a crop face that is not also the image's edge                    |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Grid, mask_bbox

TINY_DIAMETER_MM = 5.0
SMALL_SPAN_FRACTION = 16.0 ** (-1.0 / 3.0)  # ellipsoid S x S/4 x S/4 has d_eq = S * 16^(-1/3)
LEAK_DIAMETERS = 3.0  # prolate ellipsoid 5.2:1:1 clicked at its tip reaches 3 d_eq
CODES = ("empty", "tiny", "small", "leak", "volume_border", "crop_border")


@dataclass(frozen=True)
class ResultWarning:
    """A named doubt about a result: `code` (one of `CODES`) for programs, `message` (one line) for people."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, obj) -> ResultWarning:
        if not isinstance(obj, dict):
            raise ValueError('a result warning is {"code": str, "message": str}')
        return cls(str(obj.get("code", "")), " ".join(str(obj.get("message", "")).split()))


# A region a backend ran the model on: its IJK->RAS matrix and KJI shape (the model grid), a `Grid`.
Crop = Grid


def _boundary(mask: np.ndarray) -> np.ndarray:
    """KJI indices of mask voxels with a 6-neighbour outside the mask (the farthest voxels are among them)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


def _distance_to_prompts(
    points_kji: np.ndarray, spacing_kji: np.ndarray, include_kji: np.ndarray, boxes_kji
) -> np.ndarray:
    """mm from each voxel to its nearest include point or box (0 inside a box); axis-aligned grids."""
    best = np.full(len(points_kji), np.inf)
    for p in include_kji:
        best = np.minimum(best, np.linalg.norm((points_kji - p) * spacing_kji, axis=1))
    for lo, hi in boxes_kji:
        gap = points_kji - np.clip(points_kji, lo, hi)
        best = np.minimum(best, np.linalg.norm(gap * spacing_kji, axis=1))
    return best


def prompt_span_mm(include_kji: np.ndarray, boxes_kji, spacing_kji: np.ndarray) -> float:
    """S: the largest distance between include points and box centres, or a box's longest side."""
    anchors = [np.asarray(p, float) for p in include_kji]
    span = 0.0
    for lo, hi in boxes_kji:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        anchors.append((lo + hi) / 2)
        span = max(span, float(np.max((hi - lo) * spacing_kji)))
    if len(anchors) > 1:
        pts = np.stack(anchors) * spacing_kji
        span = max(span, float(np.max(np.linalg.norm(pts[:, None] - pts[None], axis=2))))
    return span


def _face_names(ijk_to_ras: np.ndarray, faces: list[tuple[int, int]]) -> list[str]:
    """Anatomical names of KJI faces (axis, -1 low / +1 high): the dominant RAS direction of the outward normal."""
    names = []
    for axis, sign in faces:
        column = np.asarray(ijk_to_ras)[:3, 2 - axis] * sign
        r = int(np.argmax(np.abs(column)))
        names.append((("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))[r][int(column[r] > 0)])
    return list(dict.fromkeys(names))


def _crop_touched(boundary_kji: np.ndarray, volume: Grid, crops) -> bool:
    """True when a boundary voxel lies, in every crop that holds it, within one voxel (of either grid) of a face."""
    if len(boundary_kji) == 0 or not crops:
        return False
    ras = volume.kji_to_ras(boundary_kji)
    deep_somewhere = np.zeros(len(boundary_kji), bool)
    for crop in crops:
        crop = crop if isinstance(crop, Grid) else Grid(crop.ijk_to_ras, crop.shape_kji)
        crop_spacing = crop.spacing_ijk
        margin_mm = max(float(crop_spacing.min()), float(np.max(volume.spacing_kji)))
        kji = crop.ras_to_kji(ras)
        margin = margin_mm / crop.spacing_kji  # in crop voxels, per KJI axis
        size = np.asarray(crop.shape_kji, float)
        deep = np.all((kji >= -0.5 + margin) & (kji <= size - 0.5 - margin), axis=1)
        deep_somewhere |= deep
    return not bool(np.all(deep_somewhere))


def check_result(
    mask: np.ndarray, ijk_to_ras: np.ndarray, include_kji=(), boxes_kji=(), crops=()
) -> tuple[ResultWarning, ...]:
    """Warnings for `mask` (KJI, non-zero = result) given the include prompts that asked for it.

    include_kji: (N, 3) continuous KJI include points; boxes_kji: (lo, hi) continuous KJI corners;
    crops: the `Crop`s the model saw (empty: the whole volume). See the module docstring for the rules.
    """
    binary = np.asarray(mask) > 0
    grid = Grid(ijk_to_ras, binary.shape[:3])
    matrix, spacing_kji = grid.ijk_to_ras, grid.spacing_kji
    include = np.asarray(include_kji, float).reshape(-1, 3)
    boxes = [(np.asarray(lo, float), np.asarray(hi, float)) for lo, hi in boxes_kji]
    voxels = int(np.count_nonzero(binary))
    if voxels == 0:
        return (ResultWarning("empty", "the result is empty: nothing was found at these prompts"),)
    out: list[ResultWarning] = []
    volume_ml = voxels * float(np.prod(spacing_kji)) / 1000.0
    d_eq = float((6.0 * volume_ml * 1000.0 / np.pi) ** (1.0 / 3.0))
    size = f"{volume_ml:.3g} ml, {voxels} voxel{'s' if voxels != 1 else ''}, about {d_eq:.0f} mm across"
    if d_eq < TINY_DIAMETER_MM:
        out.append(ResultWarning("tiny", f"the result is tiny ({size}); check that the click is on the lesion"))
    span = prompt_span_mm(include, boxes, spacing_kji)
    if d_eq < SMALL_SPAN_FRACTION * span:
        out.append(
            ResultWarning(
                "small",
                f"the result ({size}) is far smaller than the {span:.0f} mm the prompts "
                "span; it probably misses most of the lesion",
            )
        )
    # the bounding box bounds every other pass to the result's neighbourhood
    extent = mask_bbox(binary)
    assert extent is not None  # not empty (above)
    lo, hi = np.array(extent[0]), np.array(extent[1])
    boundary = _boundary(binary[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]) + lo
    if len(include) or boxes:
        reach = float(np.max(_distance_to_prompts(boundary.astype(float), spacing_kji, include, boxes)))
        if reach > LEAK_DIAMETERS * d_eq:
            out.append(
                ResultWarning(
                    "leak",
                    f"the result reaches {reach:.0f} mm from the nearest include prompt, "
                    f"more than {LEAK_DIAMETERS:g}x its size ({d_eq:.0f} mm across): it may "
                    "have leaked into a neighbouring structure",
                )
            )
    shape = np.asarray(binary.shape)
    faces = [
        (axis, sign)
        for axis in range(3)
        if shape[axis] > 1
        for sign, touched in ((-1, lo[axis] == 0), (1, hi[axis] == shape[axis]))
        if touched
    ]
    if faces:
        names = _face_names(matrix, faces)
        where = f"{' and '.join(names)} edge{'s' if len(names) > 1 else ''}"
        out.append(
            ResultWarning(
                "volume_border", f"the result touches the {where} of the image: the lesion may continue outside it"
            )
        )
    at_edge = np.any((boundary == 0) | (boundary == shape - 1), axis=1)
    if _crop_touched(boundary[~at_edge], grid, crops):
        out.append(
            ResultWarning(
                "crop_border",
                "the result reaches the edge of the region the model looked at: "
                "the lesion may be larger than the model's crop",
            )
        )
    return tuple(out)
