"""The `tags` backend end to end: a tags-tiny checkpoint trained inside the test session (conftest) driven
through the CLI and the Session, with text, anatomy, refinement, exclude clicks, boxes, crops and bad input."""

import json

import numpy as np
import pytest

from conftest import dice
from tagseg import commands
from tagseg.backends.base import GridPrompts
from tagseg.backends.tags import TagsBackend, TagsOptions
from tagseg.errors import ModelError, PromptError
from tagseg.io import load_volume, save_volume
from tagseg.session import Session


def run(capsys, *args):
    code = commands.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def label_clicks(tiny, count=3, seed=2):
    label = tiny.phantom.label
    voxels = np.argwhere(np.asarray(label.array) > 0)
    picks = voxels[np.random.default_rng(seed).choice(len(voxels), count, replace=False)]
    return label.kji_to_ras(picks)


def coords(values):
    return ",".join(f"{v:.3f}" for v in values)


def test_cli_segments_with_a_tags_checkpoint_text_and_anatomy(tiny_trained, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    points = [f"--point={coords(p)}" for p in label_clicks(tiny_trained)]
    code, stdout, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        out,
        *points,
        "--text",
        "liver tumor",
        "--anatomy",
        tiny_trained.organ_path,
        "--model",
        tiny_trained.checkpoint,
        "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["model"].startswith("tags:") and summary["segment_name"]
    assert dice(load_volume(out).array, tiny_trained.phantom.label.array) >= 0.85


def test_anatomy_folder_picks_the_organ_named_by_the_text(tiny_trained, tmp_path, capsys):
    out = tmp_path / "mask.seg.nrrd"
    points = [f"--point={coords(p)}" for p in label_clicks(tiny_trained)]
    code, _, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        out,
        *points,
        "--text",
        "hepatic lesion",
        "--anatomy",
        tiny_trained.organ_dir,
        "--model",
        tiny_trained.checkpoint,
    )
    assert code == 0, err
    assert dice(load_volume(out).array, tiny_trained.phantom.label.array) >= 0.85
    code, _, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        tmp_path / "x.nii.gz",
        *points,
        "--text",
        "tumor",
        "--anatomy",
        tiny_trained.organ_dir,
        "--model",
        tiny_trained.checkpoint,
    )
    assert code == 2 and "needs --text naming the organ" in err and not (tmp_path / "x.nii.gz").exists()


def test_text_only_start_proposes_a_click_inside_the_organ(tiny_trained, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    code, stdout, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        out,
        "--text",
        "liver tumor",
        "--anatomy",
        tiny_trained.organ_path,
        "--model",
        tiny_trained.checkpoint,
        "--text-only",
        "--json",
    )
    assert code == 0, err
    proposed = json.loads(stdout)["prompts"]["proposed_point"]
    organ = tiny_trained.organ
    k, j, i = np.round(organ.ras_to_kji(proposed)[0]).astype(int)
    assert np.asarray(organ.array)[k, j, i] > 0
    code, _, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        tmp_path / "y.nii.gz",
        "--text",
        "liver tumor",
        "--model",
        tiny_trained.checkpoint,
        "--text-only",
    )
    assert code == 2 and "--text-only needs --anatomy" in err


def test_tags_options_are_refused_for_the_default_model(tiny_trained, tmp_path, capsys):
    points = [f"--point={coords(p)}" for p in label_clicks(tiny_trained, 1)]
    code, _, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        tmp_path / "m.nii.gz",
        *points,
        "--model",
        "litemedsam-3d",
        "--text-fusion",
        "0.3",
    )
    assert code == 2 and "need a TAGS checkpoint" in err


@pytest.fixture()
def backend(tiny_trained):
    b = TagsBackend(tiny_trained.checkpoint, "cpu")
    b.set_image(tiny_trained.phantom.image)
    return b


def grid_prompts(tiny, positive_kji, negative_kji=(), boxes=(), text="liver tumor", anatomy=True):
    organ = np.asarray(tiny.organ.array) > 0 if anatomy else None
    return GridPrompts(
        np.asarray(positive_kji, float).reshape(-1, 3),
        np.asarray(negative_kji, float).reshape(-1, 3),
        tuple(boxes),
        text,
        organ,
    )


def label_kji(tiny):
    return np.argwhere(np.asarray(tiny.phantom.label.array) > 0)


def test_a_click_inside_the_crop_reuses_the_encoding(tiny_trained, backend):
    voxels = label_kji(tiny_trained)
    rng = np.random.default_rng(0)
    first = voxels[rng.choice(len(voxels), 2, replace=False)]
    backend.predict(grid_prompts(tiny_trained, first))
    assert "encode" in backend.timings
    backend.predict(grid_prompts(tiny_trained, np.vstack([first, voxels[:1]])))
    assert "encode" not in backend.timings and "decode" in backend.timings


def test_exclude_click_removes_what_it_touches(tiny_trained, backend):
    phantom = tiny_trained.phantom
    voxels = label_kji(tiny_trained)
    clicks = voxels[np.random.default_rng(2).choice(len(voxels), 3, replace=False)]
    base = backend.predict(grid_prompts(tiny_trained, clicks))
    inside = np.argwhere(base > 0)
    # an exclude click on a predicted voxel far from the include clicks
    far = inside[np.argmax(np.min(np.linalg.norm(inside[:, None] - clicks[None], axis=2), axis=1))]
    for negatives in ("auto", "constraint"):
        b = TagsBackend(tiny_trained.checkpoint, "cpu", options=TagsOptions(negatives=negatives))
        b.set_image(phantom.image)
        refined = b.predict(grid_prompts(tiny_trained, clicks, [far]))
        assert refined[tuple(far)] == 0
        assert all(refined[tuple(c)] == base[tuple(c)] for c in clicks)  # include clicks are protected


def test_box_prompt_segments_and_stays_inside_the_box(tiny_trained, backend):
    voxels = label_kji(tiny_trained)
    lo, hi = voxels.min(0).astype(float) - 1, voxels.max(0).astype(float) + 1
    mask = backend.predict(grid_prompts(tiny_trained, np.zeros((0, 3)), boxes=[(lo, hi)]))
    assert dice(mask, tiny_trained.phantom.label.array) >= 0.7
    margin = np.ceil(5.0 / tiny_trained.phantom.image.spacing_kji).astype(int) + 1
    outside = np.ones(mask.shape, bool)
    a, b = np.maximum(lo.astype(int) - margin, 0), (hi.astype(int) + margin + 1)
    outside[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = False
    assert not mask[outside].any()


def test_prompts_wider_than_a_crop_need_the_sliding_window(tiny_trained, backend):
    image = tiny_trained.phantom.image
    k, j, i = image.shape_kji
    far_apart = np.array([[k // 2, 5, 5], [k // 2, j - 6, i - 6]], float)  # ~100 mm apart, crop is 48 mm
    with pytest.raises(PromptError, match="sliding window"):
        backend.predict(grid_prompts(tiny_trained, far_apart))
    wide = TagsBackend(tiny_trained.checkpoint, "cpu", options=TagsOptions(sliding_window=True))
    wide.set_image(image)
    reports = []
    wide.progress = lambda *report: reports.append(report)
    mask = wide.predict(grid_prompts(tiny_trained, far_apart))
    assert mask.shape == image.shape_kji and "sliding window" in " ".join(wide.trace)
    # one progress report per crop, and the crops kept for the result checks (tagseg.checks: crop_border)
    crops = len(wide.crops)
    assert crops > 1 and reports == [("crops", n, crops) for n in range(crops + 1)]
    assert all(c.shape_kji == (wide.config.crop_size,) * 3 for c in wide.crops)


def test_without_an_organ_mask_the_documented_fallback_is_used(tiny_trained, backend):
    voxels = label_kji(tiny_trained)
    clicks = voxels[np.random.default_rng(2).choice(len(voxels), 3, replace=False)]
    mask = backend.predict(grid_prompts(tiny_trained, clicks, anatomy=False))
    assert "degraded" in " ".join(backend.trace) and mask.any()


def test_empty_organ_mask_warns_and_falls_back(tiny_trained, tmp_path, capsys):
    empty = tmp_path / "empty.nii.gz"
    save_volume(tiny_trained.organ.with_array(np.zeros(tiny_trained.organ.shape_kji, np.uint8)), empty)
    points = [f"--point={coords(p)}" for p in label_clicks(tiny_trained)]
    code, _, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        tmp_path / "m.nii.gz",
        *points,
        "--anatomy",
        empty,
        "--model",
        tiny_trained.checkpoint,
    )
    assert code == 0 and "warning" in err and "fallback" in err


def test_organ_mask_on_another_grid_is_resampled(tiny_trained):
    from tagseg.geometry import resample
    from tagseg.volume import make_ijk_to_ras

    organ = tiny_trained.organ
    coarse = resample(organ, make_ijk_to_ras((2.5, 2.5, 3.0), organ.ijk_to_ras[:3, 3] - 1.0), (16, 40, 40), order=0)
    clicks = label_clicks(tiny_trained)
    with Session(tiny_trained.phantom.image, model=str(tiny_trained.checkpoint), device="cpu") as session:
        session.set_text("liver tumor")
        session.set_anatomy(coarse)
        for p in clicks:
            session.add_point(p)
        assert dice(session.predict().array, tiny_trained.phantom.label.array) >= 0.8


def test_input_volume_is_never_modified(tiny_trained, backend):
    before = np.array(tiny_trained.phantom.image.array, copy=True)
    backend.predict(grid_prompts(tiny_trained, label_kji(tiny_trained)[:2]))
    assert np.array_equal(before, tiny_trained.phantom.image.array)


def test_model_auto_picks_an_installed_checkpoint_for_the_described_anatomy(
    tiny_trained, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TAGSEG_MODELS_DIR", str(tmp_path / "models"))
    code, stdout, err = run(capsys, "models", "install", tiny_trained.checkpoint)
    assert code == 0, err
    code, stdout, _ = run(capsys, "models", "list", "--json")
    assert json.loads(stdout)["installed"][0]["anatomy"] == "liver"
    points = [f"--point={coords(p)}" for p in label_clicks(tiny_trained, 2)]
    code, stdout, err = run(
        capsys,
        "segment",
        tiny_trained.image_path,
        "-o",
        tmp_path / "m.nii.gz",
        *points,
        "--text",
        "liver tumor",
        "--json",
    )
    assert code == 0, err
    assert json.loads(stdout)["model"].startswith("tags:")


def test_pickled_checkpoints_are_not_loaded_as_models(tmp_path, capsys, tiny_trained):
    fake = tmp_path / "best.pth.tar"
    fake.write_bytes(b"not really")
    points = [f"--point={coords(p)}" for p in label_clicks(tiny_trained, 1)]
    code, _, err = run(
        capsys, "segment", tiny_trained.image_path, "-o", tmp_path / "m.nii.gz", *points, "--model", fake
    )
    assert code == 2 and "convert-checkpoint" in err and len(err.strip().splitlines()) == 1


def test_info_reports_tags_b_parameter_counts(capsys):
    code, stdout, err = run(capsys, "info", "--model", "tags-b", "--json")
    assert code == 0, err
    params = json.loads(stdout)["model"]["parameters"]
    assert params["frozen"] == pytest.approx(88.8e6, rel=0.01) and params["trainable"] == pytest.approx(
        37.3e6, rel=0.01
    )


def test_checkpoint_metadata_drives_preprocessing(tiny_trained):
    b = TagsBackend(tiny_trained.checkpoint, "cpu")
    assert b.intensity.window == (-160.0, 240.0) and b.config.name == "tags-tiny"
    with pytest.raises(ModelError):
        TagsOptions(text_fusion=1.5).validate()


def test_weights_command_lists_and_refuses_downloads_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TAGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    code, stdout, err = run(capsys, "weights", "list", "--json")
    assert code == 0, err
    assert "sam-vit-b" in stdout and "clip-vit-l-14" in stdout
    code, _, err = run(capsys, "weights", "download", "sam-vit-b")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sam_vit_b_01ec64.pth" in err
    assert not any((tmp_path / "weights").rglob("*")) if (tmp_path / "weights").exists() else True


def test_out_of_memory_while_encoding_becomes_a_device_error(tiny_trained, monkeypatch):
    from tagseg.errors import DeviceError

    b = TagsBackend(tiny_trained.checkpoint, "cpu")
    b.set_image(tiny_trained.phantom.image)

    def exhausted(crops):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(b.model, "encode", exhausted)
    with pytest.raises(DeviceError, match="out of memory"):
        b.predict(grid_prompts(tiny_trained, label_kji(tiny_trained)[:1]))


@pytest.mark.parametrize(
    "directions",
    [
        np.diag([-1.0, -1.0, 1.0]),
        np.diag([1.0, -1.0, -1.0]),
        np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    ],
)
def test_crop_covers_the_authors_floored_crop(directions):
    """test.py resamples to 1 mm with F.interpolate (voxel n at (n + 0.5) mm from the volume's edge), takes
    c = (max + min) // 2 of the clicks' 1 mm voxels and crops [c - P/2, c + P/2). Our crop must cover
    exactly those 1 mm voxels, whichever way the volume's axes run."""
    from tagseg.tags.crop import CropGrid, floored_centre_ras
    from tagseg.volume import Volume, make_ijk_to_ras

    spacing_ijk = np.array([0.7, 0.9, 2.5])
    volume = Volume(
        np.zeros((40, 60, 70), np.int16), make_ijk_to_ras(spacing_ijk, (12.3, -40.1, 7.7), directions), "v", {}
    )
    size = 16
    rng = np.random.default_rng(0)
    for _ in range(5):
        kji = rng.uniform(0, np.array(volume.shape_kji) - 1, (3, 3))
        spacing_kji = spacing_ijk[::-1]
        one_mm = np.floor((kji + 0.5) * spacing_kji)  # the 1 mm voxel holding each click
        c = (one_mm.max(0) + one_mm.min(0)) // 2
        grid = CropGrid.centred(floored_centre_ras(volume, volume.kji_to_ras(kji), 1.0), size, 1.0)
        corners = np.array([[a, b, d] for a in (0, size - 1) for b in (0, size - 1) for d in (0, size - 1)], float)
        covered = (volume.ras_to_kji(grid.kji_to_ras(corners)) + 0.5) * spacing_kji - 0.5  # 1 mm voxel indices
        assert np.allclose(covered, np.round(covered), atol=1e-6)  # crop voxels sit on the 1 mm grid
        assert np.allclose(covered.min(0), c - size // 2) and np.allclose(covered.max(0), c + size // 2 - 1)


def test_one_crop_mode_segments_whatever_the_spread_as_published(tiny_trained):
    image = tiny_trained.phantom.image
    k, j, i = image.shape_kji
    far_apart = np.array([[k // 2, 5, 5], [k // 2, j - 6, i - 6]], float)  # ~100 mm apart, crop is 48 mm
    paper = TagsBackend(
        tiny_trained.checkpoint,
        "cpu",
        options=TagsOptions(wide_prompts="one-crop", anatomy_fallback="zeros", autocast="off"),
    )
    paper.set_image(image)
    mask = paper.predict(grid_prompts(tiny_trained, far_apart))
    assert mask.shape == image.shape_kji and "one crop" in " ".join(paper.trace)
    assert paper.last_run["crops"] == 1 and paper.last_run["precision"] == "fp32"
    assert paper.last_run["organ_channel"] in ("mask", "zeros (mask misses the crop)")


def test_paper_organ_channel_is_zeros_when_the_mask_misses_the_crop(tiny_trained):
    from tagseg.tags.crop import CropGrid

    paper = TagsBackend(tiny_trained.checkpoint, "cpu", options=TagsOptions(anatomy_fallback="zeros"))
    image = tiny_trained.phantom.image
    paper.set_image(image)
    far = np.zeros(image.shape_kji, bool)
    far[0, 0, 0] = True  # an organ mask nowhere near the crop
    prompts = GridPrompts(np.zeros((0, 3)), np.zeros((0, 3)), (), "", far)
    grid = CropGrid.centred(image.kji_to_ras(np.array(image.shape_kji, float) / 2)[0], 32, 1.5)
    assert not paper._organ_channel(grid, prompts, None).any()
    box = TagsBackend(tiny_trained.checkpoint, "cpu")  # the app's default: a box around the prompts
    box.set_image(image)
    extent = (image.kji_to_ras(np.array(image.shape_kji, float) / 2)[0],) * 2
    assert box._organ_channel(grid, prompts, extent).any()
