"""scripts/gpu_check.py runs end to end (CPU, --tiny) and says "unmeasured" instead of guessing without CUDA."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gpu_check.py"


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})),
        timeout=900,
    )


def test_cpu_tiny_run_measures_both_models():
    proc = _run("--device", "cpu", "--tiny", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    default = result["default_backend"]
    assert default["model"] == "litemedsam-3d" and default["lesion_slices"] >= 1
    assert default["first_prediction_s"] > 0 and default["refine_s"]["n"] == 2 and default["voxels"] > 0
    assert result["preset"] == "tags-tiny" and result["first_prediction_warm_s"] > 0
    assert result["refine_s"]["n"] == 2 and result["finite"]
    assert all(math.isfinite(v) for v in result["first_prediction_warm_stages_s"].values())


def test_without_cuda_it_reports_unmeasured():
    proc = _run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "unmeasured: no CUDA device"
