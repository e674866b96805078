"""Overlay PNGs: people judge segmentations from these, so orientation and colours must be right."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tagseg.overlay import COLUMNS, MIN_PANEL_PX, PANEL_GAP_PX, save_overlay_png  # noqa: E402
from tagseg.volume import Volume, make_ijk_to_ras  # noqa: E402

RED, GREEN, YELLOW, CYAN, ORANGE = (255, 0, 0), (0, 255, 0), (255, 255, 0), (0, 200, 255), (255, 160, 0)
TO_A_S_R = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i -> A, j -> S, k -> R


def grid(directions=None, shape_ijk=(64, 64, 10), spacing_ijk=(2.0, 2.0, 3.0)) -> np.ndarray:
    """An index-to-RAS matrix centred on RAS (0, 0, 0)."""
    linear = make_ijk_to_ras(spacing_ijk, np.zeros(3), directions)[:3, :3]
    origin = -(linear @ ((np.asarray(shape_ijk, float) - 1) / 2))
    return make_ijk_to_ras(spacing_ijk, origin, directions)


def ct_with_ball(ijk_to_ras: np.ndarray, shape_ijk, centre_ras, radius_mm=12.0) -> tuple[Volume, Volume]:
    """A CT-like volume (air outside a soft-tissue body) and a ball mask at an RAS position."""
    shape_kji = tuple(shape_ijk[::-1])
    kji = np.indices(shape_kji).reshape(3, -1).T
    probe = Volume(np.zeros(shape_kji, np.int16), ijk_to_ras)
    ras = probe.kji_to_ras(kji).reshape(shape_kji + (3,))
    body = np.hypot(ras[..., 0] / 55, ras[..., 1] / 45) < 1
    ball = np.linalg.norm(ras - np.asarray(centre_ras), axis=-1) < radius_mm
    image = np.where(body, 40, -1000).astype(np.int16) + np.where(ball, 60, 0).astype(np.int16)
    return probe.with_array(image, name="ct"), probe.with_array(ball.astype(np.uint8), name="ball")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.array(picture.convert("RGB"))


def where(rgb: np.ndarray, colour) -> np.ndarray:
    return np.all(rgb == np.array(colour, np.uint8), axis=-1)


def crop(rgb: np.ndarray, panel) -> np.ndarray:
    return rgb[panel.y : panel.y + panel.height, panel.x : panel.x + panel.width]


def first_panel(path: Path, sheet) -> np.ndarray:
    return crop(pixels(path), sheet.panels[0])


def test_png_size_colours_and_no_temp_files(tmp_path):
    shape_ijk = (64, 64, 10)
    image, mask = ct_with_ball(grid(), shape_ijk, (0, 0, 0))
    target = tmp_path / "nested" / "folder" / "overlay.png"
    sheet = save_overlay_png(image, mask, target, max_slices=4)
    rgb = pixels(target)
    panel = MIN_PANEL_PX  # 64 voxels x 2 mm = 128 mm, upscaled to 256 px
    assert len(sheet.panels) == 5 and sheet.panels[-1].zoomed, "4 slices and the zoom"
    assert rgb.shape[1] == COLUMNS * panel + (COLUMNS - 1) * PANEL_GAP_PX, "rows of three, not a strip"
    assert rgb.shape[0] > 2 * panel and sheet.size == (rgb.shape[1], rgb.shape[0])
    assert where(rgb, RED).sum() > 100
    assert not where(rgb, GREEN).any() and not where(rgb, YELLOW).any()
    assert sheet.legend == ("result",)
    assert sorted(p.name for p in target.parent.iterdir()) == ["overlay.png"]


def test_red_only_where_the_mask_is(tmp_path):
    image, mask = ct_with_ball(grid(), (64, 64, 10), (0, 0, 0))
    sheet = save_overlay_png(image, mask, tmp_path / "one.png", max_slices=1, zoom=False)
    red = where(first_panel(tmp_path / "one.png", sheet), RED)
    ys, xs = np.nonzero(red)
    # a 12 mm ball at the centre of a 128 mm field spans about 24 px radius at 2 px/mm
    assert abs(xs.mean() - 128) < 4 and abs(ys.mean() - 128) < 4
    assert np.hypot(xs - 128, ys - 128).max() < 12 * 2 + 4


def test_empty_mask_draws_no_red_and_shows_the_middle_slice(tmp_path):
    image, mask = ct_with_ball(grid(), (64, 64, 10), (0, 0, 0))
    empty = mask.with_array(np.zeros(mask.shape_kji, np.uint8))
    sheet = save_overlay_png(image, empty, tmp_path / "empty.png")
    rgb = pixels(tmp_path / "empty.png")
    assert len(sheet.panels) == 1 and rgb.shape[1] == MIN_PANEL_PX, "one panel through the middle, no zoom"
    assert sheet.panels[0].label == "S 1.5 mm", "slice 5 of 10, 3 mm apart, centred on S = 0"
    assert not where(crop(rgb, sheet.panels[0]), RED).any()
    assert crop(rgb, sheet.panels[0])[..., 0].max() > 100, "the image itself is drawn"


def test_points_and_reference(tmp_path):
    image, mask = ct_with_ball(grid(), (64, 64, 10), (0, 0, 0))
    empty = mask.with_array(np.zeros(mask.shape_kji, np.uint8))
    sheet = save_overlay_png(
        image, empty, tmp_path / "points.png", points_ras=[(-20.0, 0.0, 0.0), (500.0, 0.0, 0.0)], zoom=False
    )
    rgb = first_panel(tmp_path / "points.png", sheet)
    ys, xs = np.nonzero(where(rgb, YELLOW))
    assert len(xs) > 0 and not where(rgb, RED).any()
    assert abs(xs.mean() - (128 + 20 * 2)) < 3, "a point at R = -20 mm (patient left) is drawn right of centre"
    save_overlay_png(image, mask, tmp_path / "ref.png", reference=mask, max_slices=2)
    rgb = pixels(tmp_path / "ref.png")
    assert where(rgb, RED).any(), "the mask is drawn over the reference where they coincide"
    shifted = mask.with_array(np.roll(mask.array, 8, axis=2))
    save_overlay_png(image, mask, tmp_path / "ref2.png", reference=shifted, max_slices=2)
    rgb = pixels(tmp_path / "ref2.png")
    assert where(rgb, GREEN).sum() > 50 and where(rgb, RED).sum() > 50


@pytest.mark.parametrize(
    "name, directions, shape_ijk, spacing_ijk",
    [
        ("RAS", None, (64, 64, 10), (2.0, 2.0, 3.0)),
        ("LPS", np.diag([-1.0, -1.0, 1.0]), (64, 64, 10), (2.0, 2.0, 3.0)),
        ("flipped S", np.diag([-1.0, 1.0, -1.0]), (64, 64, 10), (2.0, 2.0, 3.0)),
        ("permuted", TO_A_S_R, (64, 10, 64), (2.0, 3.0, 2.0)),
    ],
)
def test_patient_left_is_screen_right_and_anterior_is_up(tmp_path, name, directions, shape_ijk, spacing_ijk):
    ijk_to_ras = grid(directions, shape_ijk, spacing_ijk)
    image, mask = ct_with_ball(ijk_to_ras, shape_ijk, centre_ras=(-30.0, 25.0, 0.0), radius_mm=10.0)
    sheet = save_overlay_png(image, mask, tmp_path / "side.png", max_slices=1, zoom=False)
    rgb = first_panel(tmp_path / "side.png", sheet)
    assert rgb.shape[:2] == (MIN_PANEL_PX, MIN_PANEL_PX), name
    ys, xs = np.nonzero(where(rgb, RED))
    assert abs(xs.mean() - (128 + 30 * 2)) < 4, f"{name}: patient-left blob should be on the right"
    assert abs(ys.mean() - (128 - 25 * 2)) < 4, f"{name}: anterior blob should be at the top"


def test_small_slices_are_upscaled_and_aspect_kept(tmp_path):
    ijk_to_ras = grid(None, (20, 10, 6), (1.0, 2.0, 5.0))
    image, mask = ct_with_ball(ijk_to_ras, (20, 10, 6), (0, 0, 0), radius_mm=4)
    sheet = save_overlay_png(image, mask, tmp_path / "small.png", max_slices=1, zoom=False)
    rgb = first_panel(tmp_path / "small.png", sheet)
    assert rgb.shape[:2] == (MIN_PANEL_PX, MIN_PANEL_PX), "20 x 1 mm by 10 x 2 mm is square on screen"


def test_non_ct_uses_percentile_window(tmp_path):
    rng = np.random.default_rng(0)
    ijk_to_ras = grid(None, (32, 32, 4), (4.0, 4.0, 4.0))
    mr = Volume(rng.uniform(200, 1200, (4, 32, 32)).astype(np.float32), ijk_to_ras)
    mask = mr.with_array(np.zeros((4, 32, 32), np.uint8))
    sheet = save_overlay_png(mr, mask, tmp_path / "mr.png")
    grey = first_panel(tmp_path / "mr.png", sheet)[..., 0]
    assert sheet.window == "percentiles 0.5..99.5"
    assert grey.min() == 0 and grey.max() == 255 and 60 < grey.mean() < 200


def test_mismatched_grid_is_refused(tmp_path):
    image, mask = ct_with_ball(grid(), (64, 64, 10), (0, 0, 0))
    other = Volume(np.zeros((10, 32, 32), np.uint8), grid(None, (32, 32, 10)))
    with pytest.raises(ValueError, match="grid"):
        save_overlay_png(image, other, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    image, mask = ct_with_ball(grid(), (64, 64, 10), (0, 0, 0))
    target = tmp_path / "out.png"

    def broken_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    from tagseg.errors import InputError

    with pytest.raises(InputError, match="disk full"):  # the one writer's one-line error
        save_overlay_png(image, mask, target)
    assert list(tmp_path.iterdir()) == []


def test_the_window_is_the_one_the_description_selects(tmp_path):
    image, mask = ct_with_ball(grid(), (64, 64, 10), (0, 0, 0))
    lungish = image.with_array(np.where(np.asarray(image.array) == 40, -700, image.array).astype(np.int16))
    soft = save_overlay_png(lungish, mask, tmp_path / "soft.png", max_slices=1, zoom=False, text="liver tumor")
    lung = save_overlay_png(lungish, mask, tmp_path / "lung.png", max_slices=1, zoom=False, text="tumeur pulmonaire")
    assert soft.window == "ct-soft-tissue -160..240 HU" and lung.window == "ct-lung -1000..400 HU"
    at_centre_of_body = (128 + 40, 128)  # 20 mm anterior of the centre: body, outside the ball
    assert first_panel(tmp_path / "soft.png", soft)[at_centre_of_body][0] == 0, "-700 HU is black in soft tissue"
    assert 40 < first_panel(tmp_path / "lung.png", lung)[at_centre_of_body][0] < 100, "and grey in the lung window"


def test_exclude_points_and_boxes_are_drawn_and_named_in_the_legend(tmp_path):
    image, mask = ct_with_ball(grid(), (64, 64, 10), (0, 0, 0))
    sheet = save_overlay_png(
        image,
        mask,
        tmp_path / "prompts.png",
        max_slices=1,
        zoom=False,
        points_ras=[(0.0, 0.0, 0.0)],
        neg_points_ras=[(20.0, 0.0, 0.0)],
        boxes_ras=[(-16.0, -16.0, -6.0, 16.0, 16.0, 6.0)],
    )
    assert sheet.legend == ("result", "include", "exclude", "box")
    panel = first_panel(tmp_path / "prompts.png", sheet)
    ys, xs = np.nonzero(where(panel, CYAN))
    assert len(xs) and abs(xs.mean() - (128 - 20 * 2)) < 3, "exclude at R = +20 mm: left of centre on screen"
    ys, xs = np.nonzero(where(panel, ORANGE))
    assert abs(xs.min() - (128 - 32)) <= 2 and abs(xs.max() - (128 + 32)) <= 2, "a 32 mm box, 64 px wide"
    legend = pixels(tmp_path / "prompts.png")[sheet.panels[0].y + sheet.panels[0].height :]
    for colour in (RED, YELLOW, CYAN, ORANGE):
        assert where(legend, colour).any(), f"the legend shows {colour}"


def test_a_large_image_fits_a_screen_and_the_zoom_panel_magnifies_the_lesion(tmp_path):
    shape_ijk = (256, 256, 20)
    image, mask = ct_with_ball(grid(None, shape_ijk, (1.0, 1.0, 2.0)), shape_ijk, (30, -20, 0), radius_mm=8)
    sheet = save_overlay_png(image, mask, tmp_path / "big.png")
    width, height = sheet.size
    assert width <= 1920 and height <= 1080 and len(sheet.panels) == 6, sheet.size
    assert [p.label for p in sheet.panels[:5]] == sorted(
        (p.label for p in sheet.panels[:5]), key=lambda t: float(t.split()[1])
    )
    zoom = sheet.panels[-1]
    assert zoom.zoomed and zoom.label.startswith("zoom ") and zoom.label.endswith(" mm")
    rgb = pixels(tmp_path / "big.png")
    red_zoomed = where(crop(rgb, zoom), RED)
    red_normal = where(crop(rgb, sheet.panels[2]), RED)
    span = lambda red: np.ptp(np.nonzero(red)[1])  # noqa: E731
    assert span(red_zoomed) > 2.5 * span(red_normal), "the zoom shows the lesion larger"
