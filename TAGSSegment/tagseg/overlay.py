"""PNG previews of a mask over its image, laid out like Slicer's axial view, for reports and quick checks.

Only Pillow is used. Axes are permuted and flipped, never interpolated, so every pixel shows a
voxel as stored: screen-right is the patient's Left, screen-down is Posterior, as in Slicer.

A sheet holds up to `max_slices` axial panels through the result, then one panel zoomed on the lesion (its
largest cross-section), in rows of `COLUMNS` (5 + 1 panels of at most 512 px: 1544 x 1066 px with the legend,
inside a 1920 x 1080 screen). Each panel is labelled with its position in mm (S, as Slicer's slice offset);
the legend below names every colour drawn and the intensity window: the one the description selects for CT
(`Description.ct_preset`, e.g. lung -1000..400 HU for "lung nodule"), the engine's percentiles otherwise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from . import intensity
from .text import Description, parse_description
from .volume import Volume

MIN_PANEL_PX = 256
MAX_PANEL_PX = 512
PANEL_GAP_PX = 4
COLUMNS = 3
LEGEND_LINE_PX = 16
ZOOM_MARGIN_MM = 10.0
MASK_RGB = (255, 0, 0)
REFERENCE_RGB = (0, 255, 0)
POINT_RGB = (255, 255, 0)
EXCLUDE_RGB = (0, 200, 255)
BOX_RGB = (255, 160, 0)
TEXT_RGB = (255, 255, 255)


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
    def axial(cls, volume: Volume) -> _Layout:
        dirs = volume.directions_ijk[:, ::-1]  # columns: RAS direction of array axes k, j, i
        slice_axis = int(np.argmax(np.abs(dirs[2])))
        rest = [a for a in range(3) if a != slice_axis]
        col_axis = max(rest, key=lambda a: abs(dirs[0, a]))
        row_axis = rest[0] if rest[1] == col_axis else rest[1]
        return cls(
            slice_axis,
            row_axis,
            col_axis,
            bool(dirs[1, row_axis] > 0),
            bool(dirs[0, col_axis] > 0),
            bool(dirs[2, slice_axis] >= 0),
        )

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
        raise ValueError(
            f"{what} must be on the image's voxel grid (shape {image.shape_kji}, same geometry); "
            f"got shape {other.shape_kji}"
        )
    return np.asarray(other.array) > 0


def _write_png_atomically(picture: Image.Image, path: Path) -> None:
    """Through the one atomic writer; the PNG is decoded again before the rename."""
    from .fs import atomic_write

    def write(tmp: Path) -> None:
        picture.save(tmp, format="PNG")

    def verify(tmp: Path) -> None:
        with Image.open(tmp) as again:
            again.load()
            if again.size != picture.size:
                raise OSError(f"the PNG read back is {again.size}, not {picture.size}")

    atomic_write(path, write, verify, suffix=".png", what="the overlay")


@dataclass(frozen=True)
class Panel:
    """Where one panel lies on the sheet (pixels) and what it shows: a view slice, rows r0:r1, columns c0:c1."""

    x: int
    y: int
    width: int
    height: int
    label: str
    slice_index: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    zoomed: bool = False


@dataclass(frozen=True)
class OverlaySheet:
    size: tuple[int, int]  # (width, height) in pixels
    panels: tuple[Panel, ...]
    window: str  # the intensity window, as the legend shows it
    legend: tuple[str, ...]


def display_window(image: Volume, text: str | Description | None = None) -> tuple[float, float, str]:
    """(low, high, label): the CT preset the description selects when the image is CT in HU, else the engine's
    percentiles (the fill of a masked MR left out, as `tagseg.intensity` does)."""
    array = np.asarray(image.array)
    if intensity.looks_like_ct(array):
        desc = text if isinstance(text, Description) else parse_description(text)
        preset = desc.ct_preset()
        assert preset.window_hu is not None  # a CT preset always has its window
        lo, hi = preset.window_hu
        return lo, hi, f"{preset.name} {lo:g}..{hi:g} HU"
    sample = array.ravel()[:: max(1, array.size // 500_000)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0, "no finite voxels"
    background = intensity.constant_background(sample)
    if background is not None and np.any(sample != background):
        sample = sample[sample != background]
    p_lo, p_hi = intensity.PERCENTILE.percentiles
    lo, hi = (float(v) for v in np.percentile(sample, (p_lo, p_hi)))
    return lo, (hi if hi > lo else lo + 1.0), f"percentiles {p_lo:g}..{p_hi:g}"


def _slice_label(image: Volume, layout: _Layout, index: int) -> str:
    """The slice's superior coordinate (RAS mm) at its centre, as Slicer labels an axial slice offset."""
    centre = (np.asarray(image.shape_kji, float) - 1) / 2
    centre[layout.slice_axis] = index
    s_mm = float(image.kji_to_ras([centre])[0][2])
    return f"S {s_mm:.1f} mm"


def save_overlay_png(
    image: Volume,
    mask: Volume | None,
    path: str | os.PathLike,
    points_ras=(),
    max_slices: int = 5,
    reference: Volume | None = None,
    neg_points_ras=(),
    boxes_ras=(),
    text: str | Description | None = None,
    zoom: bool = True,
) -> OverlaySheet:
    """Write axial panels of `image`: the mask outline (red), `reference` outline (green), include points
    (yellow +), exclude points (cyan x), boxes (orange; each given as 6 numbers or two RAS corners).

    Panels go through the slices holding the mask; with an empty mask, through the prompts, then the
    reference, then the middle slice. A point is drawn on the displayed slice nearest to it, a box on every
    displayed slice it spans. `text` (the description) picks the CT window. Returns the layout written.
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
    limits = np.array([n_slices, n_rows, n_cols]) - 0.5

    def on_screen(ras) -> np.ndarray:
        ras = np.asarray(ras, dtype=np.float64).reshape(-1, 3)
        if not len(ras):
            return np.zeros((0, 3))
        screen = layout.to_screen(image.ras_to_kji(ras), shape)
        return screen[np.all((screen >= -0.5) & (screen <= limits), axis=1)]

    include, exclude = on_screen(points_ras), on_screen(neg_points_ras)
    boxes = []
    for box in boxes_ras:
        corners = layout.to_screen(image.ras_to_kji(np.asarray(box, np.float64).reshape(2, 3)), shape)
        lo_box, hi_box = np.clip(corners.min(0), -0.5, limits), np.clip(corners.max(0), -0.5, limits)
        if np.all(hi_box >= lo_box):
            boxes.append((lo_box, hi_box))

    def slices_of(view: np.ndarray | None) -> np.ndarray:
        return np.zeros(0, int) if view is None else np.flatnonzero(view.any(axis=(1, 2)))

    prompt_slices = np.unique(
        np.clip(
            np.rint(
                np.concatenate(
                    [include[:, 0], exclude[:, 0]]
                    + [np.arange(math.ceil(lo[0]), math.floor(hi[0]) + 1) for lo, hi in boxes]
                )
            ),
            0,
            n_slices - 1,
        ).astype(int)
    )
    if len(slices_of(mask_view)):
        chosen = _spread(slices_of(mask_view), max_slices)
    elif len(prompt_slices):
        chosen = _spread(prompt_slices, max_slices)
    elif len(slices_of(ref_view)):
        chosen = _spread(slices_of(ref_view), max_slices)
    else:
        chosen = [n_slices // 2]
    chosen = sorted(chosen, reverse=not layout.slices_ascend_superior)

    spacing = image.spacing_kji
    row_sp, col_sp = spacing[layout.row_axis], spacing[layout.col_axis]
    row_mm, col_mm = n_rows * row_sp, n_cols * col_sp
    native = 1.0 / min(row_sp, col_sp)
    px_per_mm = max(MIN_PANEL_PX / max(row_mm, col_mm), min(native, MAX_PANEL_PX / max(row_mm, col_mm)))
    panel_w = max(1, int(round(col_mm * px_per_mm)))
    panel_h = max(1, int(round(row_mm * px_per_mm)))
    lo, hi, window_label = display_window(image, text)
    font = ImageFont.load_default()

    regions = [(index, (0, n_rows), (0, n_cols), _slice_label(image, layout, index), False) for index in chosen]
    focus = _zoom_region(mask_view, include, row_sp, col_sp) if zoom else None
    if focus is not None:
        index, rows, cols = focus
        factor = min(n_rows / (rows[1] - rows[0]), n_cols / (cols[1] - cols[0]))
        regions.append((index, rows, cols, f"zoom {factor:.1f}x, {_slice_label(image, layout, index)}", True))

    columns = min(COLUMNS, len(regions))
    grid_rows = math.ceil(len(regions) / columns)
    width = columns * panel_w + (columns - 1) * PANEL_GAP_PX
    entries = [("result", MASK_RGB, "outline")] if mask is not None else []
    entries += [("reference", REFERENCE_RGB, "outline")] if reference is not None else []
    entries += [("include", POINT_RGB, "plus")] if len(include) else []
    entries += [("exclude", EXCLUDE_RGB, "cross")] if len(exclude) else []
    entries += [("box", BOX_RGB, "outline")] if boxes else []
    legend_lines = _legend_lines(entries, [f"window {window_label}", "patient L = screen right, A = up"], width, font)
    height = grid_rows * panel_h + (grid_rows - 1) * PANEL_GAP_PX + len(legend_lines) * LEGEND_LINE_PX + 4
    sheet = Image.new("RGB", (width, height))
    nearest = {}
    for kind, points in (("include", include), ("exclude", exclude)):
        nearest[kind] = (
            np.argmin(np.abs(points[:, :1] - np.array(chosen)[None, :]), axis=1) if len(points) else np.zeros(0, int)
        )
    panels = []
    for slot, (index, rows, cols, label, zoomed) in enumerate(regions):
        w = panel_w
        x, y = (slot % columns) * (panel_w + PANEL_GAP_PX), (slot // columns) * (panel_h + PANEL_GAP_PX)
        crop = (slice(rows[0], rows[1]), slice(cols[0], cols[1]))
        # zoomed: the region fills the panel with square pixels (letterboxed)
        sy, sx = panel_h / (rows[1] - rows[0]), w / (cols[1] - cols[0])
        if zoomed:
            scale_mm = min(panel_h / ((rows[1] - rows[0]) * row_sp), w / ((cols[1] - cols[0]) * col_sp))
            sy, sx = scale_mm * row_sp, scale_mm * col_sp
        out_w, out_h = max(1, int(round((cols[1] - cols[0]) * sx))), max(1, int(round((rows[1] - rows[0]) * sy)))
        values = np.nan_to_num(grey[index][crop].astype(np.float64), nan=lo, posinf=hi, neginf=lo)
        pixels = (np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
        rgb = np.array(Image.fromarray(pixels).resize((out_w, out_h), Image.Resampling.NEAREST).convert("RGB"))
        line = 2 if min(sx, sy) >= 3 else 1
        for view, colour in ((ref_view, REFERENCE_RGB), (mask_view, MASK_RGB)):
            if view is None or not view[index][crop].any():
                continue
            layer = Image.fromarray(view[index][crop].astype(np.uint8) * 255)
            big = np.array(layer.resize((out_w, out_h), Image.Resampling.NEAREST)) > 0
            rgb[_outline(big, line)] = colour
        panel = Image.fromarray(rgb)
        draw = ImageDraw.Draw(panel)

        def xy(row: float, col: float) -> tuple[float, float]:
            return (col - cols[0] + 0.5) * sx, (row - rows[0] + 0.5) * sy  # noqa: B023 (runs within this iteration)

        for lo_box, hi_box in boxes:
            if lo_box[0] - 0.5 <= index <= hi_box[0] + 0.5:
                (x0, y0), (x1, y1) = xy(lo_box[1], lo_box[2]), xy(hi_box[1], hi_box[2])
                draw.rectangle((x0, y0, x1, y1), outline=BOX_RGB, width=line)
        arm = 5 if not zoomed else 8
        for kind, points, colour in (("include", include, POINT_RGB), ("exclude", exclude, EXCLUDE_RGB)):
            shown = (np.abs(points[:, 0] - index) <= 1.0) if zoomed else (nearest[kind] == slot)
            for row, col in points[shown][:, 1:]:
                px, py = xy(row, col)
                if kind == "include":
                    draw.line([(px - arm, py), (px + arm, py)], fill=colour, width=line)
                    draw.line([(px, py - arm), (px, py + arm)], fill=colour, width=line)
                else:
                    draw.line([(px - arm, py - arm), (px + arm, py + arm)], fill=colour, width=line)
                    draw.line([(px - arm, py + arm), (px + arm, py - arm)], fill=colour, width=line)
        text_box = draw.textbbox((3, 2), label, font=font)
        draw.rectangle((text_box[0] - 2, text_box[1] - 1, text_box[2] + 2, text_box[3] + 1), fill=(0, 0, 0))
        draw.text((3, 2), label, fill=TEXT_RGB, font=font)
        ox, oy = x + (w - out_w) // 2, y + (panel_h - out_h) // 2
        sheet.paste(panel, (ox, oy))
        panels.append(Panel(ox, oy, out_w, out_h, label, index, rows, cols, zoomed))
    _draw_legend(sheet, legend_lines, grid_rows * panel_h + (grid_rows - 1) * PANEL_GAP_PX + 2, font)
    _write_png_atomically(sheet, Path(path))
    return OverlaySheet((width, height), tuple(panels), window_label, tuple(name for name, _, _ in entries))


def _zoom_region(mask_view: np.ndarray | None, include: np.ndarray, row_sp: float, col_sp: float):
    """(slice, rows, cols) around the lesion's largest cross-section (or the first include point), with
    `ZOOM_MARGIN_MM` or half the lesion's size around it, whichever is larger; None when there is nothing."""
    n_slices, n_rows, n_cols = mask_view.shape if mask_view is not None else (0, 0, 0)
    if mask_view is not None and mask_view.any():
        index = int(np.argmax(mask_view.sum(axis=(1, 2))))
        found = np.argwhere(mask_view[index])
        (r0, c0), (r1, c1) = found.min(0), found.max(0) + 1
    elif len(include) and mask_view is not None:
        index = int(np.clip(np.rint(include[0, 0]), 0, n_slices - 1))
        r0, c0 = (int(np.rint(v)) for v in include[0, 1:])
        r1, c1 = r0 + 1, c0 + 1
    else:
        return None
    size_mm = max((r1 - r0) * row_sp, (c1 - c0) * col_sp)
    half_mm = size_mm / 2 + max(ZOOM_MARGIN_MM, size_mm / 2)
    centre_r, centre_c = (r0 + r1) / 2, (c0 + c1) / 2
    rows = (
        max(0, int(math.floor(centre_r - half_mm / row_sp))),
        min(n_rows, int(math.ceil(centre_r + half_mm / row_sp))),
    )
    cols = (
        max(0, int(math.floor(centre_c - half_mm / col_sp))),
        min(n_cols, int(math.ceil(centre_c + half_mm / col_sp))),
    )
    if rows == (0, n_rows) and cols == (0, n_cols):
        return None  # the lesion fills the slice: a zoom would repeat a panel
    return index, rows, cols


def _legend_lines(entries, notes, width: int, font) -> list[list]:
    """Legend items flowed into lines that fit `width`: (name, colour, symbol) swatches, then the notes."""
    items = [(name, colour, symbol) for name, colour, symbol in entries] + [(note, None, None) for note in notes]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[list] = []
    current: list = []
    used = 4
    for item in items:
        need = (16 if item[1] else 0) + int(probe.textlength(item[0], font=font)) + 12
        if current and used + need > width:
            lines.append(current)
            current, used = [], 4
        current.append(item)
        used += need
    if current:
        lines.append(current)
    return lines


def _draw_legend(sheet: Image.Image, lines, top: int, font) -> None:
    draw = ImageDraw.Draw(sheet)
    for number, line in enumerate(lines):
        x, y = 4, top + number * LEGEND_LINE_PX
        for name, colour, symbol in line:
            if colour is not None:
                cx, cy = x + 6, y + 7
                if symbol == "plus":
                    draw.line([(cx - 5, cy), (cx + 5, cy)], fill=colour, width=2)
                    draw.line([(cx, cy - 5), (cx, cy + 5)], fill=colour, width=2)
                elif symbol == "cross":
                    draw.line([(cx - 4, cy - 4), (cx + 4, cy + 4)], fill=colour, width=2)
                    draw.line([(cx - 4, cy + 4), (cx + 4, cy - 4)], fill=colour, width=2)
                else:
                    draw.rectangle((cx - 5, cy - 5, cx + 5, cy + 5), outline=colour, width=2)
                x += 16
            draw.text((x, y + 1), name, fill=TEXT_RGB, font=font)
            x += int(draw.textlength(name, font=font)) + 12
