"""What `tagseg segment` tells the user besides the mask: result warnings (one `tagseg: warning:` line each,
listed by --json) and a progress bar on stderr (only on a terminal, never with --quiet).

A scripted backend (registered like any model) gives exact masks and progress reports in milliseconds;
one run with the real default model checks a warning it really earns (a lesion cut by the image edge).
"""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tagseg import commands, progress, synth
from tagseg.backends.base import Backend
from tagseg.io import save_volume
from tagseg.volume import Volume, make_ijk_to_ras

SHAPE = (12, 48, 48)
MATRIX = make_ijk_to_ras((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
CENTRE_KJI = (6, 24, 24)


def run(capsys, *args) -> SimpleNamespace:
    code = commands.main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(code=code, out=captured.out, err=captured.err)


class ScriptedBackend(Backend):
    name = "scripted-cli"

    def __init__(self):
        super().__init__()
        self.mask = None

    def set_image(self, volume):
        pass

    def predict(self, prompts):
        for done in range(1, 4):
            self.report_progress("slices", done, 3)
        return self.mask.copy()


@pytest.fixture()
def scripted(register_backend):
    return register_backend(ScriptedBackend())


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "image.nii.gz"
    save_volume(Volume(np.zeros(SHAPE, np.int16), MATRIX, "zeros"), path)
    return path


def click_args() -> list[str]:
    ras = Volume(np.zeros(SHAPE, np.int16), MATRIX).kji_to_ras([CENTRE_KJI])[0]
    return ["--point=" + ",".join(f"{v:.3f}" for v in ras)]


def test_an_empty_result_is_written_with_one_warning_line_and_listed_by_json(capsys, scripted, image, tmp_path):
    scripted.mask = np.zeros(SHAPE, np.uint8)
    out = tmp_path / "mask.nii.gz"
    result = run(
        capsys, "segment", image, "-o", out, *click_args(), "--model", ScriptedBackend.name, "--device", "cpu", "--json"
    )
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if "[empty]" in line]
    assert len(lines) == 1 and lines[0].startswith("tagseg: warning: the result is empty"), result.err
    summary = json.loads(result.out)
    assert [w["code"] for w in summary["result_warnings"]] == ["empty"]
    assert summary["voxels"] == 0 and out.is_file()


def test_a_plausible_result_prints_no_warning(capsys, scripted, image, tmp_path):
    grid = np.indices(SHAPE).reshape(3, -1).T
    scripted.mask = (np.linalg.norm((grid - CENTRE_KJI) * (2.0, 1.0, 1.0), axis=1) <= 6).reshape(SHAPE).astype(np.uint8)
    result = run(
        capsys,
        "segment",
        image,
        "-o",
        tmp_path / "mask.nii.gz",
        *click_args(),
        "--model",
        ScriptedBackend.name,
        "--device",
        "cpu",
        "--json",
    )
    assert result.code == 0 and "warning" not in result.err, result.err
    assert json.loads(result.out)["result_warnings"] == []


def draw_at_once(monkeypatch) -> None:
    """Bars drawn at the first report (a user gets them after 2 s, redrawn at most 10 times a second)."""
    monkeypatch.setattr(progress, "BAR_DELAY_S", 0.0)
    monkeypatch.setattr(progress, "BAR_MIN_INTERVAL_S", 0.0)


def test_progress_bar_on_a_terminal_and_none_with_quiet(capsys, scripted, image, tmp_path, monkeypatch):
    draw_at_once(monkeypatch)
    # capsys's stream is in place once the test body runs: make it say it is a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    scripted.mask = np.zeros(SHAPE, np.uint8)
    args = [
        "segment",
        image,
        "-o",
        tmp_path / "mask.nii.gz",
        *click_args(),
        "--model",
        ScriptedBackend.name,
        "--device",
        "cpu",
    ]
    shown = run(capsys, *args)
    assert shown.code == 0 and "slices" in shown.err and "3/3" in shown.err, shown.err
    quiet = run(capsys, *args, "--quiet")
    assert quiet.code == 0 and "slices" not in quiet.err, quiet.err


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys, scripted, image, tmp_path, monkeypatch):
    draw_at_once(monkeypatch)
    scripted.mask = np.zeros(SHAPE, np.uint8)
    result = run(
        capsys,
        "segment",
        image,
        "-o",
        tmp_path / "mask.nii.gz",
        *click_args(),
        "--model",
        ScriptedBackend.name,
        "--device",
        "cpu",
    )
    assert result.code == 0 and "slices" not in result.err, result.err


def test_the_real_model_warns_when_the_lesion_is_cut_by_the_image_edge(capsys, shared_backend, tmp_path):
    """Three slices through the middle of a phantom tumour: the lesion runs out through the top and bottom."""
    phantom = synth.make_phantom(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
    label = np.asarray(phantom.label.array)
    k = int(np.median(np.argwhere(label > 0)[:, 0]))
    matrix = np.array(phantom.image.ijk_to_ras)
    matrix[:3, 3] = phantom.image.kji_to_ras([[k - 1, 0, 0]])[0]
    image = Volume(np.asarray(phantom.image.array)[k - 1 : k + 2], matrix, "slab")
    save_volume(image, tmp_path / "slab.nii.gz")
    voxels = np.argwhere(label[k - 1 : k + 2] > 0)
    click = image.kji_to_ras(voxels[np.random.default_rng(0).choice(len(voxels), 1)])[0]
    result = run(
        capsys,
        "segment",
        tmp_path / "slab.nii.gz",
        "-o",
        tmp_path / "mask.nii.gz",
        "--point=" + ",".join(f"{v:.3f}" for v in click),
        "--text",
        phantom.description,
        "--model",
        "litemedsam-3d",
        "--device",
        "cpu",
        "--json",
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["voxels"] > 0
    assert "volume_border" in [w["code"] for w in summary["result_warnings"]]
    assert any(
        line.startswith("tagseg: warning: the result touches the") and line.endswith("[volume_border]")
        for line in result.err.splitlines()
    ), result.err
