"""`tagseg train` / `tagseg evaluate` on `tagseg synth` data: learning, exact resume, two-process DDP."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tagseg import commands

MODULE_DIR = Path(__file__).resolve().parents[2]
SYNTH = ["--cases", "6", "--shape", "24,64,64", "--organ", "liver", "--seed", "0"]
TRAIN = [
    "--task",
    "custom",
    "--preset",
    "tags-tiny",
    "--lr",
    "1e-3",
    "--point-labels",
    "--device",
    "cpu",
    "--from-scratch",
]
MIN_VAL_DICE = 0.4


def run(*args):
    return commands.main([str(a) for a in args])


def read_log(run_dir: Path) -> list[dict]:
    with (run_dir / "log.csv").open(encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "data"
    assert run("synth", "--out", folder, *SYNTH) == 0
    return folder


def test_training_on_synthetic_data_learns(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--data", data, "--out", out, "--epochs", "12", *TRAIN) == 0
    log = read_log(out)
    assert len(log) == 12
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert max(r["val_dice"] for r in log[-4:]) >= MIN_VAL_DICE > log[0]["val_dice"]
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["intensity"]["std"] > 0 and meta["anatomy"] == "liver"
    # the checkpoint drops straight into evaluation (any backend, the paper's protocol)
    results = tmp_path / "results.csv"
    assert run("evaluate", "--data", data, "--model", out / "best.safetensors", "--limit", "2", "--out", results) == 0
    rows = list(csv.DictReader(results.open(encoding="utf-8")))
    assert len(rows) == 2 and all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert "Dice" in capsys.readouterr().out


def test_resume_continues_exactly_like_an_uninterrupted_run(data, tmp_path, monkeypatch):
    from tagseg import train

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--data", data, *TRAIN, "--epochs", "3", "--max-steps-per-epoch", "2", "--cache", tmp_path / "cache"]
    assert run("train", "--out", straight, *common) == 0
    original = train.Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # the run dies during its third epoch
        return original(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "train_epoch", interrupted)
        assert run("train", "--out", resumed, *common) == 130
    assert len(read_log(resumed)) == 2 and not [p for p in resumed.rglob("*") if ".part" in p.name]
    assert run("train", "--out", resumed, "--resume", *common) == 0
    a, b = read_log(straight), read_log(resumed)
    assert len(b) == 3
    for key in ("train_loss", "train_main", "train_alignment", "val_loss", "val_dice"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-6, abs=1e-7), key


def test_an_existing_run_is_not_overwritten_without_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", data, *TRAIN, "--max-steps-per-epoch", "1", "--cache", tmp_path / "cache"]
    assert run("train", "--out", out, "--epochs", "1", *common) == 0
    capsys.readouterr()
    assert run("train", "--out", out, "--epochs", "1", *common) == 2
    assert "--resume" in capsys.readouterr().err


DDP_SCRIPT = textwrap.dedent("""
    import hashlib, os, sys
    import numpy as np, torch
    sys.path.insert(0, {module_dir!r})
    from tagseg.synth import make_phantom
    from tagseg.tags.crop import Intensity
    from tagseg.tags.fit import Case, training_crop, tumour_centre_ras
    from tagseg.tags import build_tags
    from tagseg.train import Trainer, TrainConfig

    INTENSITY = {{"window": [-160.0, 240.0], "mean": 40.0, "std": 60.0}}

    class Crops(torch.utils.data.Dataset):
        def __init__(self, cases):
            self.cases, self.rng, self.net = cases, np.random.default_rng(0), build_tags("tags-tiny")
        def set_random_state(self, seed):
            self.rng = np.random.default_rng(seed)
        def __len__(self):
            return len(self.cases)
        def __getitem__(self, i):
            case = self.cases[i]
            centre = tumour_centre_ras(case.label) + self.rng.uniform(-4, 4, 3)
            crop, label = training_crop(case, centre, self.net, Intensity.from_metadata(INTENSITY))
            return {{"image": crop[:1], "organ": crop[2:3], "label": label[None], "case_id": str(i)}}

    phantoms = [make_phantom(seed=s, shape_kji=(20, 56, 56), spacing_ijk=(1.5, 1.5, 2.0), tumour_radius_mm=8)
                for s in range(4)]
    cases = [Case(p.image, p.label, p.organs[p.tumour_organ]) for p in phantoms]
    config = TrainConfig(out={out!r}, preset="tags-tiny", epochs=2, lr=1e-3, device="cpu", object_word="liver",
                         text_encoder="open_clip-random:tagseg-tiny-clip:0", intensity=INTENSITY)
    trainer = Trainer(config, Crops(cases), Crops(cases[:2]))
    before = {{k: v.clone() for k, v in trainer.model.state_dict().items()}}
    trainer.fit()
    state = trainer.model.state_dict()
    assert any(not torch.equal(state[k], before[k]) for k in state), "weights did not change"
    digest = hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()
    rank = int(os.environ["RANK"])
    steps = trainer.history[-1]["steps"]
    open(os.path.join({out!r}, f"rank{{rank}}.sha"), "w", encoding="utf-8").write(f"{{digest}} {{steps}}")
""")


def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    out = tmp_path / "run"
    script.write_text(DDP_SCRIPT.format(module_dir=str(MODULE_DIR), out=str(out)), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [(out / f"rank{r}.sha").read_text(encoding="utf-8").split() for r in (0, 1)]
    assert digests[0][0] == digests[1][0]
    assert digests[0][1] == digests[1][1] == "2"  # 4 cases over 2 ranks: 2 steps each per epoch
    assert (out / "best.safetensors").is_file() and (out / "last.train-state.pt").is_file()


def test_bad_datasets_give_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("train", "--data", empty, "--out", tmp_path / "r", *TRAIN) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert run("evaluate", "--data", tmp_path / "missing", "--model", "litemedsam-3d", "--out", tmp_path / "x.csv") == 2
    assert run("evaluate", "--data", empty, "--model", "litemedsam-3d", "--out", tmp_path / "x.txt") == 2
    assert run("synth", "--out", tmp_path / "s", "--cases", "0") == 2


def test_training_without_sam_weights_needs_from_scratch(data, tmp_path, capsys):
    common = ["--data", data, "--task", "custom", "--preset", "tags-tiny", "--device", "cpu", "--epochs", "1"]
    assert run("train", "--out", tmp_path / "r", *common) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--sam-weights" in err and "--from-scratch" in err
    assert not (tmp_path / "r").exists()
    assert run("train", "--out", tmp_path / "r", *common, "--from-scratch", "--sam-weights", tmp_path / "x.pth") == 2
    assert "contradict" in capsys.readouterr().err


def test_training_without_split_says_whose_split_it_uses(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        run(
            "train",
            "--data",
            data,
            "--out",
            out,
            *TRAIN,
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "1",
            "--cache",
            tmp_path / "cache",
        )
        == 0
    )
    assert "no --split" in capsys.readouterr().err and (out / "split.json").is_file()
