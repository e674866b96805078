"""TAGS checkpoints: one self-checking .safetensors file, the converter from the authors' .pth.tar, and the
registry of installed checkpoints that `model="auto"` searches.

Why this format: a pickled .pth can run arbitrary code when loaded, and a half-copied or edited file would load
silently. A safetensors file holds only tensors, and the checksum in its metadata catches damage to them.

File format (format_version 1)
------------------------------
A standard safetensors file. Its tensors are

* the network's state dict under the network's own names: ``image_encoder.…``, ``prompt_encoders.<i>.…``
  (i = 0..3), ``mask_decoder.…`` and optionally ``point_label_embed.weight``;
* optional extra tensors under ``extra.<name>``, e.g. ``extra.text.class_embeddings`` [768, 2].

The header's ``__metadata__`` has one key, ``"tagseg"``, whose value is a JSON object:

==================  ==========================================================================================
``format``          ``"tagseg-tags"``
``format_version``  ``1``
``preset``          network preset, e.g. ``"tags-b"``
``config``          dict: the full network config the tensors belong to
``task``            task key (``"kits"``, ``"lits"``, ``"pancreas"``, …; see ``tagseg.tags.tasks``)
``anatomy``         tagseg anatomy key (``"kidney"``, …): lower-case letters, digits, ``_`` and ``-``
``organ_labels``    list of organ names whose union is the organ-mask input channel
``tumour_label``    int: the tumour's value in the training ground truth
``intensity``       ``{"window": [lo, hi], "mean": m, "std": s}``: clip to the HU window, then (x - m) / s
``spacing_mm``      ``[d, h, w]``: the voxel spacing the network works at
``text``            ``{"encoder": str, "object_word": str, "object_word_mode": str}``
``provenance``      free dict: ``created``, ``tagseg_version`` (filled in when absent), ``source_file``,
                    ``source_sha256``, training data, epochs, …
``tensors_sha256``  hex SHA-256 over every tensor in the file (extras included, under their ``extra.`` names),
                    in sorted-name order; for each tensor: the UTF-8 line ``json.dumps([name, dtype, shape])``
                    plus ``"\\n"`` (dtype as in ``"float32"``), then its raw bytes in C order
==================  ==========================================================================================

The checksum covers the tensors only; the registry's whole-file SHA-256 also covers the metadata.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ModelError, one_line
from ..paths import sha256_file
from .installed import INDEX_NAME, _read_index, _valid_entry, find_installed, models_dir  # noqa: F401
from .tasks import OBJECT_WORD_MODES, TASKS, Task
from .text_encoder import PAPER_TEXT_ENCODER

FORMAT = "tagseg-tags"
FORMAT_VERSION = 1
METADATA_KEY = "tagseg"
EXTRA_PREFIX = "extra."
SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pth.tar", ".pth", ".pt", ".ckpt")
REQUIRED_METADATA = (
    "preset",
    "config",
    "task",
    "anatomy",
    "organ_labels",
    "tumour_label",
    "intensity",
    "spacing_mm",
    "text",
)
AUTHORS_KEYS = ("encoder_dict", "decoder_dict", "feature_dict")
N_PROMPT_ENCODERS = 4

_ANATOMY_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")  # used with .match; \Z, not $ ("liver\n" must fail)
_SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
_CONVERT_HINT = "convert it first with `tagseg convert-checkpoint`"


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _now(timespec: str = "seconds") -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


def _tagseg_version() -> str:
    package = sys.modules.get("tagseg")
    return str(getattr(package, "__version__", "unknown"))


def _fmt_shape(shape: Collection[int]) -> str:
    return "(" + ", ".join(str(int(n)) for n in shape) + ")"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_pickle_name(path: Path) -> bool:
    return path.name.lower().endswith(PICKLE_SUFFIXES)


def _fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _atomic_write(
    dest: Path, write: Callable[[str], object], what: str, check: Callable[[Path], object] | None = None
) -> str:
    """Through the one atomic writer (tagseg.fs): a crash or an error never leaves a half-written dest nor
    the temp file; the file is read back (safetensors header, then `check`) before the rename, so a file that
    fails never replaces what was there. Returns its SHA-256."""
    from ..fs import WriteError, atomic_write

    digest: list[str] = []

    def verify(tmp: Path) -> None:
        if dest.name.endswith(SUFFIX):
            with safe_open(str(tmp), framework="pt", device="cpu") as reader:
                list(reader.keys())
        if check is not None:
            check(tmp)
        digest.append(sha256_file(tmp))

    try:
        atomic_write(dest, lambda tmp: write(str(tmp)), verify, suffix=dest.suffix, what=what)
    except WriteError as exc:
        raise ModelError(str(exc)) from None
    except SafetensorError as exc:
        raise ModelError(f"cannot write {what} {dest}: {one_line(exc, 200)}") from exc
    return digest[0]


# ----------------------------------------------------------------------------------------------------------------
# tensors and their checksum


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The `tensors_sha256` of the format: over name, dtype, shape and raw bytes, in sorted-name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        digest.update(json.dumps([name, _dtype_name(tensor.dtype), list(tensor.shape)]).encode("utf-8") + b"\n")
        if tensor.numel():
            # an ndarray is a buffer; numpy's stubs declare it only for Python >= 3.12
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    return digest.hexdigest()


def _cpu_tensors(tensors: Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that own their memory (safetensors refuses views and shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ModelError(f"{what} has an unusable tensor name {name!r}")
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"{what} entry {name} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.device.type == "meta":
            raise ModelError(f"{what} entry {name} is not a dense tensor with data ({value.layout}, {value.device})")
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage()
        if (
            storage.nbytes() != tensor.numel() * tensor.element_size()
            or storage.data_ptr() in seen
            or tensor.numel() == 0
        ):
            tensor = tensor.clone()
            storage = tensor.untyped_storage()
        if tensor.numel():
            seen.add(storage.data_ptr())
        out[name] = tensor
    return out


# ----------------------------------------------------------------------------------------------------------------
# metadata


def _metadata_problem(meta: Mapping[str, Any]) -> str | None:
    """What is wrong with a metadata dict (None when it is fine). Shared by save and load."""
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        return f"metadata lacks {', '.join(missing)}"
    if not isinstance(meta["preset"], str) or not meta["preset"]:
        return "metadata preset must be a non-empty string"
    if not isinstance(meta["config"], Mapping):
        return "metadata config must be a dict"
    if not isinstance(meta["task"], str) or not meta["task"]:
        return "metadata task must be a non-empty string"
    if not isinstance(meta["anatomy"], str) or not _ANATOMY_RE.match(meta["anatomy"]):
        return f"metadata anatomy {meta['anatomy']!r} must be a lower-case key such as 'kidney'"
    labels = meta["organ_labels"]
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) and x for x in labels):
        return "metadata organ_labels must be a non-empty list of organ names"
    if not isinstance(meta["tumour_label"], int) or isinstance(meta["tumour_label"], bool):
        return "metadata tumour_label must be an integer"
    intensity = meta["intensity"]
    if not isinstance(intensity, Mapping):
        return "metadata intensity must be a dict with window, mean and std"
    window = intensity.get("window")
    if (
        not isinstance(window, (list, tuple))
        or len(window) != 2
        or not all(_is_number(v) for v in window)
        or not window[0] < window[1]
    ):
        return "metadata intensity.window must be [lo, hi] with lo < hi"
    if not _is_number(intensity.get("mean")):
        return "metadata intensity.mean must be a number"
    if not _is_number(intensity.get("std")) or not intensity["std"] > 0:
        return "metadata intensity.std must be a positive number"
    spacing = meta["spacing_mm"]
    if not isinstance(spacing, (list, tuple)) or len(spacing) != 3 or not all(_is_number(v) and v > 0 for v in spacing):
        return "metadata spacing_mm must be three positive numbers"
    text = meta["text"]
    if not isinstance(text, Mapping) or not all(
        isinstance(text.get(k), str) for k in ("encoder", "object_word", "object_word_mode")
    ):
        return "metadata text must be a dict with string encoder, object_word and object_word_mode"
    if not isinstance(meta.get("provenance", {}), Mapping):
        return "metadata provenance must be a dict"
    return None


def _parse_header(header: Mapping[str, str] | None, where: Path) -> dict:
    """Our metadata out of a safetensors header, or a ModelError that says why the file is not ours."""
    raw = (header or {}).get(METADATA_KEY)
    if raw is None:
        raise ModelError(
            f"{where} is a safetensors file but not a tagseg TAGS checkpoint (no '{METADATA_KEY}' metadata)"
        )
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"{where} has unreadable tagseg metadata ({one_line(exc, 200)})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelError(f"{where} is not a tagseg TAGS checkpoint (metadata format {found!r}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise ModelError(
            f"{where} uses checkpoint format version {version}, but this tagseg reads version "
            f"{FORMAT_VERSION}; update tagseg"
        )
    if version != FORMAT_VERSION or type(version) is not int:
        raise ModelError(
            f"{where} has unknown checkpoint format version {version!r} (this tagseg reads {FORMAT_VERSION})"
        )
    problem = _metadata_problem(meta)
    if problem is None and not (isinstance(meta.get("tensors_sha256"), str) and _SHA_RE.match(meta["tensors_sha256"])):
        problem = "metadata lacks a valid tensors_sha256"
    if problem:
        raise ModelError(f"{where} is damaged or incomplete: {problem}")
    return meta


# ----------------------------------------------------------------------------------------------------------------
# save / load


def _write_tensors(path: str, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """The one place that writes the file body (tests replace it to simulate a crash mid-write)."""
    save_file(tensors, path, metadata=header)


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    check: Callable[[Path], object] | None = None,
) -> str:
    """Write a TAGS checkpoint atomically (temp file + rename, mode 0o644) and return the file's SHA-256.
    `check(temp file)` may refuse it (raise) before it replaces anything.

    `format`, `format_version` and `tensors_sha256` are set here; `provenance.created` and
    `provenance.tagseg_version` are filled in when absent. `extra_tensors` are stored as ``extra.<name>``.
    """
    dest = Path(path)
    if not dest.name.lower().endswith(SUFFIX):
        raise ModelError(f"cannot save {dest}: a TAGS checkpoint file name must end with {SUFFIX}")
    meta = dict(metadata)
    if meta.get("format", FORMAT) != FORMAT or meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ModelError(
            f"cannot save {dest}: metadata says format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}; this tagseg writes {FORMAT!r} version {FORMAT_VERSION}"
        )
    meta["format"], meta["format_version"] = FORMAT, FORMAT_VERSION
    provenance = meta.get("provenance")
    provenance = {} if provenance is None else provenance
    if isinstance(provenance, Mapping):
        provenance = dict(provenance)
        provenance.setdefault("created", _now())
        provenance.setdefault("tagseg_version", _tagseg_version())
    meta["provenance"] = provenance
    meta.pop("tensors_sha256", None)
    problem = _metadata_problem(meta)
    if problem:
        raise ModelError(f"cannot save {dest}: {problem}")

    clash = next((name for name in state_dict if isinstance(name, str) and name.startswith(EXTRA_PREFIX)), None)
    if clash:
        raise ModelError(f"cannot save {dest}: state-dict tensor {clash} uses the reserved prefix {EXTRA_PREFIX!r}")
    if not state_dict:
        raise ModelError(f"cannot save {dest}: the state dict is empty")
    combined = dict(state_dict)
    combined.update({EXTRA_PREFIX + str(name): tensor for name, tensor in (extra_tensors or {}).items()})
    tensors = _cpu_tensors(combined, f"checkpoint {dest.name}")
    meta["tensors_sha256"] = tensors_sha256(tensors)
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot save {dest}: metadata is not plain JSON ({one_line(exc, 200)})") from exc
    return _atomic_write(dest, lambda tmp: _write_tensors(tmp, tensors, {METADATA_KEY: text}), "checkpoint", check)


@dataclass
class TagsCheckpoint:
    """A loaded checkpoint: the network state dict, the ``extra.`` tensors (prefix removed) and the metadata."""

    state_dict: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor]
    metadata: dict
    path: Path
    sha256: str

    @property
    def preset(self) -> str:
        return self.metadata["preset"]

    @property
    def anatomy(self) -> str:
        return self.metadata["anatomy"]

    @property
    def task(self) -> str:
        return self.metadata["task"]


def _refuse_unloadable(src: Path) -> None:
    """Refuse pickles by name (never unpickled here) and paths that are not files."""
    if _is_pickle_name(src):
        raise ModelError(
            f"{src} is a PyTorch pickle checkpoint; tagseg loads only {SUFFIX} checkpoints — {_CONVERT_HINT}"
        )
    from ..paths import file_kind, note_input

    kind = file_kind(src)
    if kind != "file":
        raise ModelError(
            f"checkpoint {src} not found"
            if kind == "missing"
            else f"checkpoint {src} is {'a folder' if kind == 'folder' else kind}, not a file"
        )
    note_input(src)
    with src.open("rb") as handle:
        head = handle.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Its first byte can be 0x80
    # (a length of 128 mod 256), so look for pickle/zip magic only when the file is not laid out that way.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < src.stat().st_size:
        return
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise ModelError(f"{src} looks like a PyTorch pickle checkpoint, not a {SUFFIX} file — {_CONVERT_HINT}")


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a TAGS checkpoint without loading or verifying its tensors (for listings)."""
    src = Path(path)
    _refuse_unloadable(src)
    try:
        with safe_open(str(src), framework="pt", device="cpu") as reader:
            return _parse_header(reader.metadata(), src)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{src} is not a readable safetensors file ({one_line(exc, 200)})") from exc


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> TagsCheckpoint:
    """Load a TAGS checkpoint into memory; with `verify`, refuse it unless its tensors match `tensors_sha256`."""
    src = Path(path)
    _refuse_unloadable(src)
    try:
        with safe_open(str(src), framework="pt", device="cpu") as reader:
            meta = _parse_header(reader.metadata(), src)
            # get_tensor maps the file; clone so later changes to the file cannot alter what was verified.
            tensors = {name: reader.get_tensor(name).clone() for name in reader.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{src} is not a readable safetensors file ({one_line(exc, 200)})") from exc
    if verify and tensors_sha256(tensors) != meta["tensors_sha256"]:
        raise ModelError(
            f"{src} is damaged or was modified: its tensors do not match the checksum in its metadata; "
            "download or convert it again"
        )
    extra = {name[len(EXTRA_PREFIX) :]: t for name, t in tensors.items() if name.startswith(EXTRA_PREFIX)}
    state = {name: t for name, t in tensors.items() if not name.startswith(EXTRA_PREFIX)}
    return TagsCheckpoint(state_dict=state, extra=extra, metadata=meta, path=src, sha256=sha256_file(src))


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    got: Mapping[str, torch.Tensor],
    preset: str,
    *,
    optional: Collection[str] = (),
) -> None:
    """Raise ModelError naming the first tensor that does not fit the preset: missing or mis-shaped (in the
    order of `expected`), then unexpected (in the order of `got`). Names in `optional` may be missing."""
    hint = "is this a checkpoint of another preset?"
    for name, shape in expected.items():
        if name not in got:
            if name in optional:
                continue
            raise ModelError(
                f"tensor {name} is missing but preset {preset} needs it with shape {_fmt_shape(shape)} — {hint}"
            )
        tensor = got[name]
        if not isinstance(tensor, torch.Tensor):
            raise ModelError(f"tensor {name} is a {type(tensor).__name__}, not a tensor — {hint}")
        if tuple(tensor.shape) != tuple(shape):
            raise ModelError(
                f"tensor {name} has shape {_fmt_shape(tensor.shape)} but preset {preset} needs "
                f"{_fmt_shape(shape)} — {hint}"
            )
    for name in got:
        if name not in expected:
            raise ModelError(f"tensor {name} is not part of preset {preset} — {hint}")


# ----------------------------------------------------------------------------------------------------------------
# the authors' .pth.tar


def _numpy_safe_globals() -> list:
    """numpy scalars and dtypes, which the authors' `best_val_loss` (np.mean of losses) pickles as; building
    them runs no user code, so allowing them keeps `weights_only` loading safe."""
    try:
        import numpy as np
    except ImportError:
        return []
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # the same function, numpy 1.x path
    allowed: list = [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed += sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}, key=str)
    return allowed


def safe_torch_load(path: str | os.PathLike) -> object:
    """torch.load restricted to tensors and plain containers (never `weights_only=False`): a file that needs
    arbitrary unpickling is refused with ModelError instead of being executed."""
    src = Path(path)
    if not src.is_file():
        raise ModelError(f"checkpoint {src} not found" if not src.exists() else f"checkpoint {src} is not a file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        detail = f" (it references {found.group(1)})" if found else ""
        raise ModelError(
            f"{src} contains Python objects that would have to be executed to load it{detail}; "
            "refused (only tensors/plain containers are loaded)"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise ModelError(f"{src} is not a readable PyTorch checkpoint ({one_line(exc, 200)})") from exc


def _plain_state_dict(value: Any, what: str, src: Path) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping):
        raise ModelError(f"{src}: {what} is a {type(value).__name__}, not a state dict")
    names = list(value)
    strip = bool(names) and all(isinstance(n, str) and n.startswith("module.") for n in names)  # DataParallel
    out: dict[str, torch.Tensor] = {}
    for name, tensor in value.items():
        if not isinstance(name, str):
            raise ModelError(f"{src}: {what} has a non-string key {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise ModelError(f"{src}: {what}[{name}] is a {type(tensor).__name__}, not a tensor")
        out[name[len("module.") :] if strip else name] = tensor
    return out


def authors_state_dict(raw: Mapping[str, Any], src: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """Map the authors' checkpoint dict onto our network's state-dict names (optimiser states are ignored;
    the per-block `attn_mask` buffers are dropped because the network rebuilds them)."""
    where = Path(src)
    missing = [key for key in AUTHORS_KEYS if key not in raw]
    if missing:
        raise ModelError(
            f"{where} lacks {', '.join(missing)} — is it a TAGS training checkpoint (best.pth.tar / last.pth.tar)?"
        )
    state: dict[str, torch.Tensor] = {}
    for name, tensor in _plain_state_dict(raw["encoder_dict"], "encoder_dict", where).items():
        if not name.endswith(".attn_mask"):
            state["image_encoder." + name] = tensor
    prompts = raw["feature_dict"]
    if not isinstance(prompts, (list, tuple)) or len(prompts) != N_PROMPT_ENCODERS:
        found = f"{len(prompts)} entries" if isinstance(prompts, (list, tuple)) else f"a {type(prompts).__name__}"
        raise ModelError(
            f"{where}: feature_dict should list {N_PROMPT_ENCODERS} prompt-encoder state dicts but holds {found}"
        )
    for index, encoder in enumerate(prompts):
        for name, tensor in _plain_state_dict(encoder, f"feature_dict[{index}]", where).items():
            state[f"prompt_encoders.{index}.{name}"] = tensor
    for name, tensor in _plain_state_dict(raw["decoder_dict"], "decoder_dict", where).items():
        state["mask_decoder." + name] = tensor
    return state


def _plain_number(value: Any) -> float | None:
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


def convert_authors_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    task: str,
    preset: str = "tags-b",
    config: Mapping[str, Any],
    object_word_mode: str = "dataset-key",
    text_encoder: str = PAPER_TEXT_ENCODER,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    provenance: Mapping[str, Any] | None = None,
    check: Callable[[Path], object] | None = None,
) -> str:
    """Convert the authors' `best.pth.tar` into a TAGS checkpoint, stamping the task table's preprocessing into
    its metadata. Returns the new file's SHA-256. `check`: as in `save_checkpoint`."""
    source = Path(src)
    spec = TASKS.get(task)
    if spec is None:
        raise ModelError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if object_word_mode not in OBJECT_WORD_MODES:
        raise ModelError(f"unknown object-word mode {object_word_mode!r}; choose one of {', '.join(OBJECT_WORD_MODES)}")
    if not isinstance(config, Mapping):
        raise ModelError("the network config must be a dict")
    raw = safe_torch_load(source)
    if not isinstance(raw, Mapping):
        raise ModelError(
            f"{source} is not a TAGS training checkpoint: it holds a {type(raw).__name__}, not a dict "
            f"with {', '.join(AUTHORS_KEYS)}"
        )
    state = authors_state_dict(raw, source)

    info: dict[str, Any] = {"source": "authors' TAGS training checkpoint", "converted": _now()}
    epoch = _plain_number(raw.get("epoch"))
    if epoch is not None:
        info["epoch"] = int(epoch)
    loss = _plain_number(raw.get("best_val_loss"))
    if loss is not None:
        info["best_val_loss"] = loss
    info.update(provenance or {})
    info["source_file"] = source.name
    info["source_sha256"] = sha256_file(source)

    metadata = task_metadata(
        spec, preset, config, text_encoder=text_encoder, object_word_mode=object_word_mode, provenance=info
    )
    return save_checkpoint(dst, state, metadata, extra_tensors, check)


def task_metadata(
    spec: Task,
    preset: str,
    config: Mapping[str, Any],
    *,
    text_encoder: str = PAPER_TEXT_ENCODER,
    object_word_mode: str = "dataset-key",
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of a checkpoint trained on a published task: the task table's preprocessing, organ and CLIP
    object word stamped in, so inference checks the data against what the weights were trained on."""
    return {
        "preset": preset,
        "config": dict(config),
        "task": spec.key,
        "anatomy": spec.anatomy,
        "organ_labels": list(spec.organ_labels),
        "tumour_label": spec.tumour_label,
        "intensity": spec.intensity(),
        "spacing_mm": [1.0, 1.0, 1.0],
        "text": {
            "encoder": text_encoder,
            "object_word": spec.object_word(object_word_mode),
            "object_word_mode": object_word_mode,
        },
        "provenance": dict(provenance or {}),
    }


# ----------------------------------------------------------------------------------------------------------------
# installed checkpoints


def _write_index(root: Path, entries: list[dict]) -> None:
    payload = json.dumps({"format": "tagseg-models-index", "version": 1, "checkpoints": entries}, indent=2) + "\n"
    _atomic_write(root / INDEX_NAME, lambda tmp: Path(tmp).write_text(payload, encoding="utf-8"), "model index")


def install_checkpoint(path: str | os.PathLike) -> Path:
    """Verify a TAGS checkpoint, copy it into models_dir() as `<anatomy>-<sha12>.safetensors` and record it in
    the index, so `model="auto"` finds it for its anatomy. Reinstalling the same file makes it the newest."""
    src = Path(path)
    checkpoint = load_checkpoint(src, verify=True)
    meta, sha = checkpoint.metadata, checkpoint.sha256
    del checkpoint
    root = models_dir()
    name = f"{meta['anatomy']}-{sha[:12]}{SUFFIX}"
    dest = root / name
    if not (dest.is_file() and sha256_file(dest) == sha):
        copied = _atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp), "installed checkpoint")
        if copied != sha:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise ModelError(f"{src} changed while it was being installed; install it again")
    entries = [e for e in _read_index(root) if e["sha256"] != sha and e["file"] != name]
    entries.append(
        {
            "file": name,
            "sha256": sha,
            "anatomy": meta["anatomy"],
            "task": meta["task"],
            "preset": meta["preset"],
            "installed_at": _now("microseconds"),
        }
    )
    _write_index(root, entries)
    return dest


def installed_checkpoints() -> list[dict]:
    """Index entries, oldest first, each with the file's absolute `path` added."""
    root = models_dir()
    return [dict(entry, path=str(root / entry["file"])) for entry in _read_index(root)]


def uninstall(sha_or_file: str | os.PathLike) -> Path:
    """Remove one installed checkpoint, named by its SHA-256 (or a prefix of at least 6 characters) or its file
    name, from the index and the models folder. Returns the removed file's path."""
    root = models_dir()
    key = str(sha_or_file).strip()
    name, digest = Path(key).name, key.lower()
    entries = _read_index(root)
    hits = [
        e
        for e in entries
        if e["file"] == name or e["sha256"] == digest or (len(digest) >= 6 and e["sha256"].startswith(digest))
    ]
    if not hits:
        raise ModelError(f"no installed checkpoint matches {key!r}")
    if len({e["sha256"] for e in hits}) > 1:
        raise ModelError(f"{key!r} matches {len(hits)} installed checkpoints; give more of the SHA-256")
    gone = {e["file"] for e in hits}
    _write_index(root, [e for e in entries if e["file"] not in gone])  # index first: a crash leaves a stray file
    for file in gone:
        with contextlib.suppress(FileNotFoundError):
            (root / file).unlink()
    return root / hits[0]["file"]


# -- a TagsNet in and out of the format ------------------------------------------------------------


def save_model(
    model,
    path: str | os.PathLike,
    *,
    task: str,
    anatomy: str,
    intensity: Mapping[str, Any],
    text: Mapping[str, str],
    organ_labels: Collection[str] = (),
    tumour_label: int = 2,
    class_embeddings: torch.Tensor | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """Write a `TagsNet` with everything inference needs, so the file drops straight into Slicer or the CLI.
    `class_embeddings` (T for `text["object_word"]`) lets inference run without the CLIP weights."""
    config = model.config
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": config.name,
        "config": config.to_dict(),
        "task": task,
        "anatomy": anatomy,
        "organ_labels": list(organ_labels),
        "tumour_label": int(tumour_label),
        "intensity": dict(intensity),
        "spacing_mm": [config.spacing_mm] * 3,
        "text": dict(text),
        "provenance": dict(provenance or {}),
    }
    extra = {"text.class_embeddings": class_embeddings.detach().float().cpu()} if class_embeddings is not None else None
    return save_checkpoint(path, model.state_dict(), metadata, extra_tensors=extra)


def load_model(path: str | os.PathLike):
    """Checkpoint file -> (TagsNet with its weights, TagsCheckpoint). Shapes are checked tensor by tensor first,
    so a checkpoint of another preset is named, not loaded half-way."""
    from .. import budget
    from ..errors import InputError
    from .config import TagsConfig
    from .model import TagsNet

    ckpt = load_checkpoint(path)
    config = TagsConfig.from_dict(ckpt.metadata["config"])
    # the network is first built on the meta device (shapes, no memory): its size is checked against the budget
    # and its shapes against the file's before a single parameter is allocated
    with torch.device("meta"):
        skeleton = TagsNet(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    parameters = sum(math.prod(shape) for shape in expected.values())
    del skeleton
    try:
        budget.check(parameters * 4 * 2, f"the network ({parameters:,} parameters)")
        check_state_dict(expected, ckpt.state_dict, config.name)
    except (ModelError, InputError) as exc:
        raise ModelError(f"{Path(path).name}: {exc}") from None
    model = TagsNet(config)
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model, ckpt
