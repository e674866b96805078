"""`tagseg info`: versions, devices, models, the cache folder and the default weights' state."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import TagsegError
from .common import JSON, Command, Reporter, option, tagseg_version


def _weights_info() -> dict:
    from ..backends import litemedsam_net
    from ..paths import sha256_file

    try:
        path = litemedsam_net.checkpoint_path()
    except TagsegError as exc:
        return {"path": None, "sha256_ok": False, "problem": str(exc)}
    if not path.is_file():
        return {"path": str(path), "sha256_ok": False, "problem": "file missing"}
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256_ok": sha256_file(path) == litemedsam_net.EXPECTED_SHA256,
        "license": litemedsam_net.LICENSE,
    }


def _model_info(model: str) -> dict:
    from .. import backends
    from ..tags.config import PRESETS
    from ..text import parse_description

    if model in PRESETS:
        from ..tags import build_tags

        net = build_tags(model)
        return {
            "name": model,
            "kind": "TAGS preset (random weights: train it or load a checkpoint)",
            "config": net.config.to_dict(),
            "parameters": net.parameter_counts(),
        }
    name = backends.resolve_model_name(model, parse_description(""))
    checkpoint = backends.checkpoint_of(name)
    if checkpoint is not None:
        from ..tags.checkpoint import load_model

        net, ckpt = load_model(checkpoint)
        meta = {k: v for k, v in ckpt.metadata.items() if k != "config"}
        return {
            "name": name,
            "kind": "TAGS checkpoint",
            "sha256": ckpt.sha256,
            "metadata": meta,
            "config": net.config.to_dict(),
            "parameters": net.parameter_counts(),
        }
    return backends.create_backend(name, "cpu").info()


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Print the installation report, as text or JSON."""
    import numpy
    import SimpleITK
    import torch

    from .. import backends
    from ..devices import describe_devices
    from ..paths import cache_dir

    report: dict[str, Any] = {
        "versions": {
            "tagseg": tagseg_version(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "SimpleITK": SimpleITK.Version_VersionString(),
        },
        "devices": describe_devices(),
        "models": sorted(backends.BACKENDS),
        "default_model": backends.DEFAULT_BACKEND,
        "cache_dir": str(cache_dir()),
        "default_weights": _weights_info(),
    }
    if args.model:
        report["model"] = _model_info(args.model)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for key, value in report["versions"].items():
        print(f"{key:10s} {value}")
    dev = report["devices"]
    gpus = ", ".join(f"{d['name']} ({d['memory_gb']} GB)" for d in dev["cuda_devices"]) or "none"
    mps = "yes" if dev["mps_available"] else "no"
    print(f"{'devices':10s} CPU ({dev['cpu_threads']} threads); CUDA: {gpus}; MPS: {mps}")
    print(f"{'models':10s} {', '.join(report['models'])} (default {report['default_model']})")
    print(f"{'cache':10s} {report['cache_dir']}")
    weights = report["default_weights"]
    state = "SHA-256 OK" if weights["sha256_ok"] else f"NOT OK {weights.get('problem', 'SHA-256 mismatch')}"
    print(f"{'weights':10s} {weights['path']} ({state})")
    if "model" in report:
        for key, value in report["model"].items():
            print(f"{'  ' + key:10s} {value}")
    return 0


COMMANDS = (
    Command(
        "info",
        help="versions, devices, models and weights",
        run=run,
        options=(
            option(
                "--model",
                metavar="NAME|PATH",
                help="also report this model: a backend, a TAGS preset (tags-b, tags-tiny) or a checkpoint",
            ),
            JSON,
        ),
    ),
)
