"""PNG previews of a mask over its image, laid out like Slicer's axial view, for reports and quick checks.

Only Pillow is used. Axes are permuted and flipped, never interpolated, so every pixel shows a
voxel as stored: screen-right is the patient's Left, screen-down is Posterior, as in Slicer.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .volume import Volume

CT_WINDOW_HU = (-160.0, 240.0)
MIN_PANEL_PX = 256
MAX_PANEL_PX = 1024
PANEL_GAP_PX = 4
MASK_RGB = (255, 0, 0)
REFERENCE_RGB = (0, 255, 0)
POINT_RGB = (255, 255, 0)
TEXT_RGB = (255, 255, 255)
_AXIS_LETTER = ("k", "j", "i")


@dataclass(frozen=True)
class _Layout:
    """How KJI array axes map to the screen: slices, rows (down = P) and columns (right = L)."""

    slice_axis: int
    row_axis: int
    col_axis: int
    flip_row: bool
    flip_col: bool
    slices_ascend_superior: bool

    @classmethod
    def axial(cls, volume: Volume) -> "_Layout":
        dirs = volume.directions_ijk[:, ::-1]  # columns: RAS direction of array axes k, j, i
        slice_axis = int(np.argmax(np.abs(dirs[2])))
        rest = [a for a in range(3) if a != slice_axis]
        col_axis = max(rest, key=lambda a: abs(dirs[0, a]))
        row_axis = rest[0] if rest[1] == col_axis else rest[1]
        return cls(slice_axis, row_axis, col_axis, bool(dirs[1, row_axis] > 0), bool(dirs[0, col_axis] > 0),
                   bool(dirs[2, slice_axis] >= 0))

    def view(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, (self.slice_axis, self.row_axis, self.col_axis))
        if self.flip_row:
            out = out[:, ::-1, :]
        if self.flip_col:
            out = out[:, :, ::-1]
        return out

    def to_screen(self, kji: np.ndarray, shape_kji) -> np.ndarray:
        """Continuous KJI indices -> (slice, row, column) in the view."""
        kji = np.atleast_2d(kji)
        out = kji[:, [self.slice_axis, self.row_axis, self.col_axis]].astype(np.float64)
        if self.flip_row:
            out[:, 1] = shape_kji[self.row_axis] - 1 - out[:, 1]
        if self.flip_col:
            out[:, 2] = shape_kji[self.col_axis] - 1 - out[:, 2]
        return out


def _window(array: np.ndarray) -> tuple[float, float]:
    """CT soft-tissue window for HU data, else the 1-99 percentile range."""
    sample = np.asarray(array).ravel()[:: max(1, array.size // 500_000)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    if sample.min() < -100:
        return CT_WINDOW_HU
    lo, hi = (float(v) for v in np.percentile(sample, (1, 99)))
    return lo, hi if hi > lo else lo + 1.0


def _spread(indices: np.ndarray, count: int) -> list[int]:
    """Up to `count` values evenly spread over sorted `indices`, centred rather than hugging the ends."""
    if len(indices) <= count:
        return [int(v) for v in indices]
    picks = ((np.arange(count) + 0.5) * len(indices) / count).astype(int)
    return [int(indices[p]) for p in picks]


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=width)


def _check_grid(image: Volume, other: Volume | None, what: str) -> np.ndarray | None:
    if other is None:
        return None
    if not image.same_grid(other):
        raise ValueError(f"{what} must be on the image's voxel grid (shape {image.shape_kji}, same geometry); "
                         f"got shape {other.shape_kji}")
    return np.asarray(other.array) > 0


def _write_png_atomically(picture: Image.Image, path: Path) -> None:
    """Through the one atomic writer; the PNG is decoded again before the rename."""
    from .paths import write_atomic

    def write(tmp: Path) -> None:
        picture.save(tmp, format="PNG")

    def verify(tmp: Path) -> None:
        with Image.open(tmp) as again:
            again.load()
            if again.size != picture.size:
                raise OSError(f"the PNG read back is {again.size}, not {picture.size}")

    write_atomic(path, write, verify, suffix=".png", what="the overlay")


def save_overlay_png(image: Volume, mask: Volume | None, path: str | os.PathLike, points_ras=(),
                     max_slices: int = 6, reference: Volume | None = None) -> None:
    """Write axial panels of `image` with the mask outline (red), `reference` outline (green), points (yellow).

    Panels go through the slices holding the mask; with an empty mask, through the points, then the
    reference, then the middle slice. Each point is drawn on the displayed slice nearest to it.
    """
    if max_slices < 1:
        raise ValueError(f"max_slices must be at least 1, got {max_slices}")
    shape = image.shape_kji
    mask_arr = _check_grid(image, mask, "mask")
    ref_arr = _check_grid(image, reference, "reference")
    layout = _Layout.axial(image)
    grey = layout.view(np.asarray(image.array))
    mask_view = None if mask_arr is None else layout.view(mask_arr)
    ref_view = None if ref_arr is None else layout.view(ref_arr)
    n_slices, n_rows, n_cols = grey.shape

    points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    screen = layout.to_screen(image.ras_to_kji(points), shape) if len(points) else np.zeros((0, 3))
    inside = np.all((screen >= -0.5) & (screen <= np.array([n_slices, n_rows, n_cols]) - 0.5), axis=1)
    screen = screen[inside]

    def slices_of(view: np.ndarray | None) -> np.ndarray:
        return np.zeros(0, int) if view is None else np.flatnonzero(view.any(axis=(1, 2)))

    if len(slices_of(mask_view)):
        chosen = _spread(slices_of(mask_view), max_slices)
    elif len(screen):
        chosen = _spread(np.unique(np.clip(np.rint(screen[:, 0]), 0, n_slices - 1).astype(int)), max_slices)
    elif len(slices_of(ref_view)):
        chosen = _spread(slices_of(ref_view), max_slices)
    else:
        chosen = [n_slices // 2]
    chosen = sorted(chosen, reverse=not layout.slices_ascend_superior)

    spacing = image.spacing_kji
    row_mm, col_mm = n_rows * spacing[layout.row_axis], n_cols * spacing[layout.col_axis]
    native = 1.0 / min(spacing[layout.row_axis], spacing[layout.col_axis])
    px_per_mm = max(MIN_PANEL_PX / max(row_mm, col_mm), min(native, MAX_PANEL_PX / max(row_mm, col_mm)))
    panel_w = max(1, int(round(col_mm * px_per_mm)))
    panel_h = max(1, int(round(row_mm * px_per_mm)))
    line = 2 if min(panel_w / n_cols, panel_h / n_rows) >= 3 else 1
    lo, hi = _window(np.asarray(image.array))
    font = ImageFont.load_default()

    sheet = Image.new("RGB", (len(chosen) * panel_w + (len(chosen) - 1) * PANEL_GAP_PX, panel_h))
    nearest_panel = (np.argmin(np.abs(screen[:, :1] - np.array(chosen)[None, :]), axis=1)
                     if len(screen) else np.zeros(0, int))
    for slot, index in enumerate(chosen):
        values = np.nan_to_num(grey[index].astype(np.float64), nan=lo, posinf=hi, neginf=lo)
        pixels = (np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
        panel = Image.fromarray(pixels).resize((panel_w, panel_h), Image.Resampling.NEAREST).convert("RGB")
        rgb = np.array(panel)
        for view, colour in ((ref_view, REFERENCE_RGB), (mask_view, MASK_RGB)):
            if view is None or not view[index].any():
                continue
            layer = Image.fromarray(view[index].astype(np.uint8) * 255)
            big = np.array(layer.resize((panel_w, panel_h), Image.Resampling.NEAREST)) > 0
            rgb[_outline(big, line)] = colour
        panel = Image.fromarray(rgb)
        draw = ImageDraw.Draw(panel)
        for row, col in screen[nearest_panel == slot][:, 1:]:
            x, y = (col + 0.5) * panel_w / n_cols, (row + 0.5) * panel_h / n_rows
            arm = 5
            draw.line([(x - arm, y), (x + arm, y)], fill=POINT_RGB, width=line)
            draw.line([(x, y - arm), (x, y + arm)], fill=POINT_RGB, width=line)
        text = f"{_AXIS_LETTER[layout.slice_axis]}={index}"
        box = draw.textbbox((3, 2), text, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((3, 2), text, fill=TEXT_RGB, font=font)
        sheet.paste(panel, (slot * (panel_w + PANEL_GAP_PX), 0))
    _write_png_atomically(sheet, Path(path))
