"""The `tagseg` command line: exit codes, one-line errors, nothing written on failure, and real runs.

Bad inputs must fail before any model work, so those tests take milliseconds. The end-to-end runs
use the real LiteMedSAM backend, built once for this module and shared through the registry.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import read_seg_nrrd, segment_names
from tagseg import commands, io, synth
from tagseg.commands import demo
from tagseg.evaluate import dice
from tagseg.io import load_volume, save_volume
from tagseg.session import Session

MODULE_DIR = Path(__file__).resolve().parents[2]  # TAGSSegment/
MODEL = "litemedsam-3d"
PHANTOM = dict(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
MIN_DICE = 0.6


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def coords(values) -> str:
    return ",".join(f"{v:.3f}" for v in values)


def run(capsys, *args) -> SimpleNamespace:
    code = commands.main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(code=code, out=captured.out, err=captured.err)


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    """Exit code, exactly one error line (warnings aside), no traceback; returns the error line."""
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line and not line.startswith("tagseg: warning:")]
    prefix = "tagseg: error:" if code == 2 else "tagseg: internal error:"
    assert len(lines) == 1 and lines[0].startswith(prefix), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The small phantom on disk plus three clicks drawn from its label."""
    folder = tmp_path_factory.mktemp("case")
    phantom = synth.make_phantom(**PHANTOM)
    paths = synth.write_case(phantom, folder)
    rng = np.random.default_rng(PHANTOM["seed"])
    voxels = np.argwhere(np.asarray(phantom.label.array) > 0)
    clicks = phantom.label.kji_to_ras(voxels[rng.choice(len(voxels), size=3, replace=False)])
    point_args = [f"--point={coords(c)}" for c in clicks]
    centre = phantom.image.kji_to_ras([np.array(phantom.image.shape_kji) / 2])[0]
    return SimpleNamespace(
        phantom=phantom, image=paths["image"], label=paths["label"], clicks=clicks, point_args=point_args, centre=centre
    )


@pytest.fixture()
def out_dir(tmp_path):
    return tmp_path / "out"


# ---- bad inputs: one line, exit 2, nothing written ----------------------------------------------------------
def write_image(path: Path, image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, case):
    folder = tmp_path_factory.mktemp("bad")
    garbage = folder / "garbage.nii.gz"
    garbage.write_bytes(os.urandom(2000))
    flat = write_image(folder / "flat.mha", sitk.Image(32, 32, sitk.sitkInt16))
    four_d = write_image(folder / "four_d.nii.gz", sitk.Image([8, 8, 8, 3], sitk.sitkFloat32))
    rgb = write_image(folder / "rgb.mha", sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3))
    # MetaImage keeps NaN; ITK's NIfTI reader turns non-finite floats into 0
    all_nan = write_image(folder / "all_nan.mha", sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, np.float32)))
    return SimpleNamespace(garbage=garbage, flat=flat, four_d=four_d, rgb=rgb, all_nan=all_nan, folder=folder)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("missing", "file not found"),
        ("garbage", "garbage.nii.gz"),
        ("flat", "2D image"),
        ("four_d", "4D image"),
        ("rgb", "components per voxel"),
        ("all_nan", "NaN or infinite"),
    ],
)
def test_unusable_images_are_refused(capsys, bad_images, out_dir, name, fragment):
    image = bad_images.folder / "missing.nii.gz" if name == "missing" else getattr(bad_images, name)
    result = run(capsys, "segment", image, "-o", out_dir / "mask.nii.gz", "--point", "0,0,0", "--device", "cpu")
    assert_one_line_error(result, fragment)
    assert not out_dir.exists()


def test_nan_and_inf_voxels_are_accepted_with_a_warning(capsys, tmp_path, case, out_dir):
    data = np.asarray(case.phantom.image.array, dtype=np.float32).copy()
    data[0, 0, :3] = (np.nan, np.inf, -np.inf)
    path = tmp_path / "nan.mha"
    save_volume(case.phantom.image.with_array(data), path)
    # a click outside the volume stops the run after loading, before any model work
    result = run(capsys, "segment", path, "-o", out_dir / "m.nii.gz", "--point", "900,0,0", "--device", "cpu")
    assert "tagseg: warning: nan.mha: 3 voxel(s) are NaN or infinite" in result.err
    assert_one_line_error(result, "outside the volume")


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ([], "no prompt given"),
        (["--neg-point", "0,0,0"], "only exclude points"),
        (["--point", "1,2"], "expected 3 numbers"),
        (["--point", "a,b,c"], "expected 3 comma-separated numbers"),
        (["--point", "1,2,nan"], "finite"),
        (["--point", "1,2,inf"], "finite"),
        (["--box", "1,2,3,4,5"], "expected 6 numbers"),
        (["--box", "1,2,3,1,2,3"], "zero size"),
        (["--point=0,0,0", "--box", "-5,-5,-5,5,5,5", "--neg-point", "1;2;3"], "--neg-point"),
    ],
)
def test_malformed_or_missing_prompts(capsys, case, out_dir, prompt, fragment):
    result = run(capsys, "segment", case.image, "-o", out_dir / "mask.nii.gz", *prompt, "--device", "cpu")
    assert_one_line_error(result, fragment)
    assert not out_dir.exists()


@pytest.mark.parametrize("prompt", [["--point", "500,0,0"], ["--box", "300,300,300,320,320,320"]])
def test_prompts_outside_the_volume_name_its_bounds(capsys, case, out_dir, prompt):
    result = run(capsys, "segment", case.image, "-o", out_dir / "mask.nii.gz", *prompt, "--device", "cpu")
    assert_one_line_error(result, "outside the volume", case.phantom.image.describe_bounds())
    assert not out_dir.exists()


def test_negative_coordinates_work_with_or_without_equals(capsys, case, out_dir):
    """`--point -12,3,4` would otherwise be taken for an option by argparse."""
    result = run(capsys, "segment", case.image, "-o", out_dir / "m.nii.gz", "--point", "-900,-1,-2", "--device", "cpu")
    assert_one_line_error(result, "include point (-900.0, -1.0, -2.0) is outside")


def test_unknown_model_and_corrupt_checkpoint(capsys, case, tmp_path, out_dir):
    result = run(capsys, "segment", case.image, "-o", out_dir / "m.nii.gz", "--point", "0,0,0", "--model", "nope")
    assert_one_line_error(result, "unknown model 'nope'")
    corrupt = tmp_path / "x.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    result = run(capsys, "segment", case.image, "-o", out_dir / "m.nii.gz", "--point", "0,0,0", "--model", corrupt)
    assert_one_line_error(result, "x.pth")
    assert not out_dir.exists()


def test_empty_anatomy_mask_is_refused(capsys, case, tmp_path, out_dir):
    empty = tmp_path / "organ.nii.gz"
    save_volume(case.phantom.label.with_array(np.zeros(case.phantom.label.shape_kji, np.uint8)), empty)
    result = run(
        capsys,
        "segment",
        case.image,
        "-o",
        out_dir / "m.nii.gz",
        *case.point_args,
        "--anatomy",
        empty,
        "--device",
        "cpu",
    )
    assert_one_line_error(result, "anatomy mask is empty")
    result = run(
        capsys,
        "segment",
        case.image,
        "-o",
        out_dir / "m.nii.gz",
        *case.point_args,
        "--anatomy",
        tmp_path / "nothing.nii.gz",
        "--device",
        "cpu",
    )
    assert_one_line_error(result, "nothing.nii.gz: file not found")
    assert not out_dir.exists()


def test_cuda_request_without_cuda_is_refused(capsys, case, out_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run(capsys, "segment", case.image, "-o", out_dir / "m.nii.gz", "--point", "0,0,0", "--device", "cuda")
    assert_one_line_error(result, "CUDA is not available", "--device cpu")


@pytest.mark.parametrize(
    "output, fragment",
    [
        ("mask.txt", "unsupported output type"),
        ("mask.png", "unsupported output type"),
        (".nii.gz", "unsupported output type"),
    ],
)
def test_unsupported_outputs(capsys, case, out_dir, output, fragment):
    result = run(capsys, "segment", case.image, "-o", out_dir / output, "--point", "0,0,0")
    assert_one_line_error(result, fragment)


def test_unwritable_outputs(capsys, case, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    result = run(capsys, "segment", case.image, "-o", blocker / "m.nii.gz", "--point", "0,0,0")
    assert_one_line_error(result, "not a folder")
    result = run(capsys, "segment", case.image, "-o", tmp_path, "--point", "0,0,0")
    assert_one_line_error(result, "unsupported output type")
    result = run(
        capsys, "segment", case.image, "-o", tmp_path / "m.nii.gz", "--png", tmp_path / "ov.jpg", "--point", "0,0,0"
    )
    assert_one_line_error(result, ".png")
    assert files_in(tmp_path) == {"a_file"}


def test_output_may_not_overwrite_the_input(capsys, case):
    before = sha256(case.image)
    result = run(capsys, "segment", case.image, "-o", case.image, "--point", "0,0,0", "--device", "cpu")
    assert_one_line_error(result, "overwrite the input")
    assert sha256(case.image) == before


def test_usage_errors_exit_2(capsys):
    assert (
        run(
            capsys,
        ).code
        == 2
    )
    result = run(capsys, "segment", "image.nii.gz")
    assert result.code == 2 and "-o" in result.err
    assert run(capsys, "segment", "a.nii.gz", "-o", "b.nii.gz", "--bogus").code == 2
    assert run(capsys, "frobnicate").code == 2
    assert run(capsys, "--help").code == 0


# ---- failures during or after prediction ----------------------------------------------------------------------
def fake_mask(session):
    """A stand-in prediction (a block at the centre) for the write-path tests: not the model's behaviour."""
    data = np.zeros(session.volume.shape_kji, np.uint8)
    data[6:10, 28:36, 28:36] = 1
    return session.volume.with_array(data, name="tumor")


@pytest.mark.parametrize(
    "exc, code, fragment",
    [
        (ValueError("something broke"), 1, "ValueError: something broke"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 2, "--device cpu"),
    ],
)
def test_prediction_failures(capsys, monkeypatch, case, out_dir, exc, code, fragment):
    def boom(self):
        raise exc

    monkeypatch.delenv("TAGSEG_DEBUG", raising=False)
    monkeypatch.setattr(Session, "predict", boom)
    result = run(
        capsys,
        "segment",
        case.image,
        "-o",
        out_dir / "m.nii.gz",
        "--png",
        out_dir / "o.png",
        *case.point_args,
        "--device",
        "cpu",
    )
    line = assert_one_line_error(result, fragment, code=code)
    if code == 1:
        assert "TAGSEG_DEBUG=1" in line
    assert not out_dir.exists()


def test_keyboard_interrupt_exits_130(capsys, monkeypatch, case, out_dir):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "predict", interrupted)
    result = run(capsys, "segment", case.image, "-o", out_dir / "m.nii.gz", *case.point_args, "--device", "cpu")
    assert result.code == 130 and "Traceback" not in result.err
    assert result.err.strip().splitlines() == ["tagseg: interrupted"]
    assert not out_dir.exists()


@pytest.mark.parametrize("output", ["m.nii.gz", "m.seg.nrrd"])
def test_write_errors_name_the_output_and_leave_nothing(capsys, monkeypatch, case, out_dir, output):
    def refuse(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: ITK ERROR: cannot write")

    monkeypatch.setattr(Session, "predict", fake_mask)
    monkeypatch.setattr(io, "write_verified", refuse)  # the one writer's write-and-check step
    result = run(
        capsys,
        "segment",
        case.image,
        "-o",
        out_dir / output,
        "--png",
        out_dir / "o.png",
        *case.point_args,
        "--device",
        "cpu",
    )
    assert_one_line_error(result, str(out_dir / output), "cannot write")
    assert files_in(out_dir) == set()


# ---- as a program ----------------------------------------------------------------------------------------------
def run_program(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(MODULE_DIR), HF_HUB_OFFLINE="1")
    env.pop("TAGSEG_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "tagseg", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_program_exit_codes_and_no_traceback(tmp_path, case):
    missing = run_program("segment", tmp_path / "missing.nii.gz", "-o", tmp_path / "m.nii.gz", "--point", "1,2,3")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == f"tagseg: error: {tmp_path / 'missing.nii.gz'}: file not found"

    malformed = run_program("segment", case.image, "-o", tmp_path / "m.nii.gz", "--point", "1,2")
    assert malformed.returncode == 2 and "Traceback" not in malformed.stderr
    assert malformed.stderr.strip().startswith("tagseg: error: --point '1,2'")

    usage = run_program()
    assert usage.returncode == 2 and "usage: tagseg" in usage.stderr

    device = run_program("segment", case.image, "-o", tmp_path / "m.nii.gz", "--point", "0,0,0", "--device", "cuda")
    assert device.returncode == 2 and "Traceback" not in device.stderr
    assert device.stderr.strip().splitlines()[-1].startswith("tagseg: error: device 'cuda'")
    assert files_in(tmp_path) == set()


def test_program_interrupted_exits_130_at_once(tmp_path, case):
    """Ctrl-C during model work: exit 130 without waiting for the model thread to finish its pass."""
    env = dict(os.environ, PYTHONPATH=str(MODULE_DIR), HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tagseg",
            "segment",
            str(case.image),
            "-o",
            str(tmp_path / "m.nii.gz"),
            *case.point_args,
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(4.0)
    if process.poll() is not None:
        process.communicate()
        pytest.skip("the run finished before it could be interrupted")
    process.send_signal(signal.SIGINT)
    start = time.perf_counter()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip() == "tagseg: interrupted"
    assert time.perf_counter() - start < 5.0
    assert files_in(tmp_path) == set()


# ---- real runs -------------------------------------------------------------------------------------------------
def read_segment_names(path: Path) -> list[str]:
    """Segment names as Slicer reads them (slicer-core's storage node), or skip when slicer-core is absent."""
    pytest.importorskip("slicer")
    return segment_names(read_seg_nrrd(path))


def test_segment_writes_a_slicer_segmentation_and_an_overlay(capsys, shared_backend, case, tmp_path):
    out = tmp_path / "results" / "nested"
    before = sha256(case.image)
    text = case.phantom.description
    result = run(
        capsys,
        "segment",
        case.image,
        "-o",
        out / "tumour.seg.nrrd",
        "--png",
        out / "overlay.png",
        *case.point_args,
        "--text",
        text,
        "--device",
        "cpu",
    )
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    stages = [line.split()[0] for line in result.out.splitlines()]
    assert stages[:3] == ["load", "predict", "write"]
    assert re.search(rf"^{text}: \d+\.\d\d ml \(\d+ voxels\)$", result.out, re.M)
    assert sha256(case.image) == before
    assert files_in(tmp_path / "results") == {"nested", "nested/tumour.seg.nrrd", "nested/overlay.png"}

    mask = load_volume(out / "tumour.seg.nrrd")
    assert mask.same_grid(case.phantom.image)
    score = dice(mask.array, case.phantom.label.array)
    assert score > MIN_DICE, f"Dice {score:.3f}"
    assert read_segment_names(out / "tumour.seg.nrrd") == [text]
    from PIL import Image

    with Image.open(out / "overlay.png") as png:
        assert png.format == "PNG" and png.width >= 256


def test_segment_json_summary_and_label_map(capsys, shared_backend, case, tmp_path):
    result = run(
        capsys, "segment", case.image, "-o", tmp_path / "mask.nii.gz", *case.point_args, "--device", "cpu", "--json"
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    mask = load_volume(tmp_path / "mask.nii.gz")
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) <= {0, 1}
    assert mask.same_grid(case.phantom.image)
    assert summary["voxels"] == int(np.count_nonzero(mask.array))
    assert summary["volume_ml"] == pytest.approx(summary["voxels"] * 2 * 2 * 4 / 1000, rel=1e-3)
    assert summary["segment_name"] == "tumor" and summary["model"] == MODEL and summary["device"] == "cpu"
    assert set(summary["timings_s"]) == {"load", "predict", "write"}
    assert dice(mask.array, case.phantom.label.array) > MIN_DICE
    assert files_in(tmp_path) == {"mask.nii.gz"}


def test_segment_shows_how_the_text_was_read(capsys, shared_backend, case, tmp_path):
    """`segment --json` carries the same reading as `tagseg describe --json`; the text output one line of it."""
    args = (
        "segment",
        case.image,
        "-o",
        tmp_path / "mask.nii.gz",
        *case.point_args,
        "--device",
        "cpu",
        "--text",
        "tumeur pulmonaire",
    )
    result = run(capsys, *args, "--json")
    assert result.code == 0, result.err
    reading = json.loads(result.out)["reading"]
    described = run(capsys, "describe", "tumeur pulmonaire", "--json")
    assert reading == json.loads(described.out)
    assert reading["anatomy"] == "lung" and reading["intensity"]["ct"]["preset"] == "ct-lung"
    result = run(capsys, *args[:-2], "--text", "pancreatik tumor")
    assert result.code == 0, result.err
    assert (
        "text     read as pancreas ('pancreatik' read as 'pancreatic', 1 edit); tumor; CT window -160..240 HU"
        in result.out
    )


def test_info_reports_the_model(capsys, shared_backend):
    result = run(capsys, "info", "--model", MODEL, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["model"]["params_total"] == pytest.approx(9.8e6, rel=0.01)
    assert "params_trainable" in report["model"]
    assert report["default_weights"]["sha256_ok"] is True
    assert MODEL in report["models"]
    assert {"tagseg", "torch", "numpy", "SimpleITK"} <= set(report["versions"])
    assert run(capsys, "info", "--model", "nope").code == 2


def test_demo_on_a_small_phantom(capsys, monkeypatch, shared_backend, tmp_path):
    monkeypatch.setattr(
        synth,
        "make_phantom",
        partial(synth.make_phantom, shape_kji=PHANTOM["shape_kji"], spacing_ijk=PHANTOM["spacing_ijk"]),
    )
    # the small test grid keeps the seed's own tumour size (the one the segment tests use)
    monkeypatch.setattr(demo, "DEMO_TUMOUR_RADIUS_MM", None)
    result = run(
        capsys, "demo", "--out", tmp_path, "--seed", str(PHANTOM["seed"]), "--no-real", "--no-large", "--device", "cpu"
    )
    assert result.code == 0, result.err
    scores = [float(s) for s in re.findall(r"Dice (\d\.\d+)", result.out)]
    assert len(scores) == 1 and scores[0] > MIN_DICE, result.out
    assert re.search(r"refinement \d+\.\d\d s \(ratio \d+\.\d\d\)", result.out)
    assert re.search(r"\d\.\d{3} after a corrective (include|exclude) click", result.out), result.out
    assert "real case skipped" in result.out
    assert {"phantom_mask.nii.gz", "phantom_overlay.png", "phantom/image.nii.gz", "phantom/label.nii.gz"} <= files_in(
        tmp_path
    )
