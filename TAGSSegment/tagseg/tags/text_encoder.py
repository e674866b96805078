"""CLIP text branch of TAGS (TAGS_SPEC.md §3.4): prompt ensemble, pluggable text encoders, cached T in R^{dim x 2}.

T is constant for a given (encoder, object word), so it is computed once and cached under
`cache_dir()/text_embeddings`. Encoders are built lazily: a cache hit never loads a text model. Nothing here downloads
anything unless the caller passes allow_download=True and the environment is not marked offline.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .. import weights
from ..errors import InputError, ModelError
from ..paths import cache_dir, sha256_file

# --- prompt ensemble (§3.4) -------------------------------------------------------------------------------------------

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "healthy {}",
    "{} without flaw",
    "{} without illness",
    "{} without lesion",
    "{} without tumor",
)
TUMOUR_STATES: tuple[str, ...] = (
    "diseased {}",
    "anomalous {}",
    "{} with flaw",
    "{} with illness",
    "{} with lesion",
    "{} with tumor",
)
TEMPLATES: tuple[str, ...] = (
    "this is one {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "a 3D photo of one {}.",
    "a 3D photo of a {}.",
    "a 3D photo of the {}.",
    "a 3D photo of a large {}.",
    "a 3D photo of the large {}.",
    "a 3D photo of a small {}.",
    "a 3D photo of the small {}.",
    "a 3D photo of a rotated {}.",
    "a 3D photo of the rotated {}.",
    "a flipped 3D photo of a {}.",
    "a flipped 3D photo of the {}.",
    "a bright 3D photo of a {}.",
    "a bright 3D photo of the {}.",
    "a dark 3D photo of a {}.",
    "a dark 3D photo of the {}.",
    "a good 3D photo of a {}.",
    "a good 3D photo of the {}.",
    "a bad 3D photo of a {}.",
    "a bad 3D photo of the {}.",
    "a corrupted 3D photo of a {}.",
    "a corrupted 3D photo of the {}.",
    "a blurry 3D photo of a {}.",
    "a blurry 3D photo of the {}.",
    "a low resolution 3D photo of a {}.",
    "a low resolution 3D photo of the {}.",
    "a close-up 3D photo of a {}.",
    "a close-up 3D photo of the {}.",
    "a cropped 3D photo of a {}.",
    "a cropped 3D photo of the {}.",
)
# Part of every cache key: change it whenever the sentences or the ensembling change.
ENSEMBLE_VERSION = "tags-3.4-v1"


def ensemble_sentences(object_word: str) -> tuple[list[str], list[str]]:
    """All sentences of the two classes: 34 templates x 8 normal states and x 6 tumour states (272 and 204)."""
    word = " ".join(str(object_word or "").split())
    if not word:
        raise ModelError("the CLIP object word is empty")
    normal = [template.format(state.format(word)) for template in TEMPLATES for state in NORMAL_STATES]
    tumour = [template.format(state.format(word)) for template in TEMPLATES for state in TUMOUR_STATES]
    return normal, tumour


# --- object word (§3.4, §10 rows 1 and 13) ---------------------------------------------------------------------------

OBJECT_WORD_MODES = ("anatomy", "dataset-key")
# tagseg.text anatomy keys whose natural phrase differs from the key
_ANATOMY_PHRASES = {"lymph_node": "lymph node", "head_neck": "head and neck", "adrenal": "adrenal gland"}
# the authors fill the prompts with their dataset key (`args.data`)
DATASET_KEYS = {"kidney": "kits", "liver": "lits", "pancreas": "pancreas"}


def object_word(anatomy: str | None, mode: str = "anatomy", task: str | None = None) -> str:
    """The word that fills {} in the states.

    "anatomy" names the organ ("kidney", "liver"; no anatomy -> "organ"). "dataset-key" reproduces the authors'
    code, which used the dataset key (`kits`, `lits`, `pancreas`); `task` overrides the key, and an anatomy the authors
    never trained falls back to its organ word.
    """
    key = (anatomy or "").strip().lower() or None
    organ = _ANATOMY_PHRASES.get(key, key.replace("_", " ")) if key else "organ"
    if mode == "anatomy":
        return organ
    if mode == "dataset-key":
        chosen = (task or "").strip()
        return chosen or DATASET_KEYS.get(key or "", organ)
    raise ModelError(f"unknown object-word mode {mode!r}; use one of {', '.join(OBJECT_WORD_MODES)}")


# --- encoders ---------------------------------------------------------------------------------------------------------


@runtime_checkable
class TextEncoder(Protocol):
    """What class_embeddings needs: a stable id (cache key, recorded in checkpoints), a width, and encode()."""

    id: str
    dim: int

    def encode(self, sentences: list[str]) -> torch.Tensor:
        """[N, dim] float32 on the CPU, no grad."""
        ...


PAPER_TEXT_ENCODER = "open_clip:ViT-L-14:openai"
TINY_MODEL_NAME = "tagseg-tiny-clip"
TINY_TEXT_ENCODER = f"open_clip-random:{TINY_MODEL_NAME}:0"
TINY_CONFIG_PATH = Path(__file__).resolve().parent / "resources" / f"{TINY_MODEL_NAME}.json"
# (open_clip model, pretrained tag) -> tagseg.weights entry holding the same file
CATALOGUE_TAGS = {("ViT-L-14", "openai"): "clip-vit-l-14"}
_SPEC_FORMS = "open_clip:<model>:<pretrained-tag>, open_clip-file:<model>:<path> or open_clip-random:<model>:<seed>"
_file_hashes: dict[tuple[str, int, int], str] = {}


def _open_clip():
    """Import open_clip on demand (it takes seconds) and make sure the tiny config is registered."""
    import open_clip

    if open_clip.get_model_config(TINY_MODEL_NAME) is None:
        open_clip.add_model_config(TINY_CONFIG_PATH)
    return open_clip


def _model_config(model_name: str) -> dict:
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ModelError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
    return cfg


def _is_torchscript(path: Path) -> bool:
    """OpenAI distributes CLIP as TorchScript archives; torch.load(weights_only=True) cannot read those."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        _file_hashes[key] = sha256_file(path)
    return _file_hashes[key]


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


@contextmanager
def _quiet_open_clip():
    """open_clip logs on the root logger (configuring it if bare); random init is intended here, so drop that notice."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    notice = _DropRandomInitNotice()
    if guard is not None:
        root.addHandler(guard)
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)
        if guard is not None:
            root.removeHandler(guard)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class OpenClipTextEncoder:
    """Text tower of an open_clip model, frozen, eval mode, no grad (autocast on CUDA only).

    pretrained: None (random weights from `seed`; tests and tiny presets), a local checkpoint file (anything
    open_clip reads, including OpenAI's TorchScript `ViT-L-14.pt`), or an open_clip pretrained tag such as
    "openai". A tag is served from the tagseg weights folder when its file is there; otherwise it needs
    allow_download=True and no HF_HUB_OFFLINE/TAGSEG_OFFLINE, else ModelError says which file to place where.
    The network is built on the first encode(), so a cached T never loads it.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | os.PathLike | None = None,
        *,
        seed: int = 0,
        allow_download: bool = False,
        device: str | torch.device = "cpu",
        batch_size: int = 128,
    ):
        self.model_name = str(model_name).strip().replace("/", "-")
        cfg = _model_config(self.model_name)
        self.dim = int(cfg["embed_dim"])
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.seed = int(seed)
        self._file: Path | None = None
        self._tag: str | None = None
        self._quick_gelu = False
        self._model: Any = None  # an open_clip CLIP text tower (open_clip has no type hints)
        self._tokenizer: Any = None
        if pretrained is None:
            self.id = f"open_clip-random:{self.model_name}:{self.seed}"
        elif isinstance(pretrained, os.PathLike) or _looks_like_path(str(pretrained)):
            self._use_file(Path(pretrained).expanduser())
        else:
            self._use_tag(str(pretrained).strip(), allow_download)

    @property
    def weights_file(self) -> Path | None:
        """The local checkpoint this encoder loads (None for random weights or an open_clip-managed tag)."""
        return self._file

    def _use_file(self, path: Path) -> None:
        if not path.is_file():
            raise ModelError(f"text encoder weights not found: {path}")
        self._file = path
        self._quick_gelu = _is_torchscript(path)  # OpenAI's archives were trained with QuickGELU
        sha = _file_sha256(path)
        catalogued = [
            (m, t)
            for (m, t), n in CATALOGUE_TAGS.items()
            if m == self.model_name and weights.CATALOGUE[n].sha256 == sha
        ]
        # the same bytes give the same embeddings however they were obtained, so they share the tag's id
        self.id = (
            f"open_clip:{catalogued[0][0]}:{catalogued[0][1]}"
            if catalogued
            else f"open_clip-file:{self.model_name}:sha256={sha}"
        )

    def _use_tag(self, tag: str, allow_download: bool) -> None:
        from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

        tag_cfg = get_pretrained_cfg(self.model_name, tag)
        if not tag_cfg:
            known = ", ".join(list_pretrained_tags_by_model(self.model_name)) or "none"
            raise ModelError(
                f"{tag!r} is neither a file nor an open_clip pretrained tag of {self.model_name} (tags: {known})"
            )
        self.id = f"open_clip:{self.model_name}:{tag}"
        self._quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        entry_name = CATALOGUE_TAGS.get((self.model_name, tag))
        if entry_name is not None:
            found = weights.find_weight(entry_name)
            if found is not None:
                self._file = found
                return
        if not allow_download or weights.offline_mode():
            why = "offline (HF_HUB_OFFLINE/TAGSEG_OFFLINE is set)" if weights.offline_mode() else "downloads are off"
            if entry_name is not None:
                item = weights.entry(entry_name)
                raise ModelError(
                    f"CLIP weights for {self.id} are missing and {why}: run `tagseg weights download "
                    f"{entry_name}` or place {item.file} in {weights.weights_dir()} ({item.url})"
                )
            raise ModelError(
                f"open_clip weights {self.model_name}/{tag} need a download and {why}; use "
                f"open_clip-file:{self.model_name}:<path> with a local checkpoint instead"
            )
        if entry_name is not None:
            self._file = weights.download(entry_name)  # verified, lands in the weights folder
        else:
            self._tag = tag  # open_clip fetches it itself, into the weights folder

    def _build(self):
        open_clip = _open_clip()
        kwargs = dict(force_quick_gelu=self._quick_gelu, weights_only=True)
        try:
            # fork_rng: random init must not disturb the caller's RNG, and must be the same in every process
            with torch.random.fork_rng(devices=[]), _quiet_open_clip():
                torch.manual_seed(self.seed)
                if self._tag is not None:
                    model = open_clip.create_model(
                        self.model_name,
                        pretrained=self._tag,
                        cache_dir=str(weights.weights_dir() / "open_clip"),
                        **kwargs,
                    )
                elif self._file is not None and not _is_torchscript(self._file):
                    model = open_clip.create_model(self.model_name, pretrained=str(self._file), **kwargs)
                else:
                    model = open_clip.create_model(self.model_name, pretrained=None, **kwargs)
            if self._file is not None and _is_torchscript(self._file):
                state = dict(torch.jit.load(str(self._file), map_location="cpu").state_dict())
                own, buffers = model.state_dict().keys(), dict(model.named_buffers())
                for key in list(state):
                    # OpenAI's scalar metadata, and non-persistent buffers (attn_mask) that scripting serialises
                    if key in ("input_resolution", "context_length", "vocab_size") or (
                        key not in own and key in buffers
                    ):
                        state.pop(key)
                model.load_state_dict(state, strict=True)
        except ModelError:
            raise
        except Exception as exc:  # open_clip and torch raise many kinds; the user needs one line
            source = self._file or self._tag or "random init"
            raise ModelError(f"cannot build open_clip {self.model_name} from {source}: {_first_line(exc)}") from None
        if hasattr(model, "visual"):
            model.visual = None  # only the text tower is used; frees most of the memory
        model.requires_grad_(False)
        self._model = model.to(self.device).eval()
        self._tokenizer = open_clip.get_tokenizer(self.model_name)

    def encode(self, sentences: list[str]) -> torch.Tensor:
        """[N, dim] float32 CPU embeddings (not normalised), computed without grad."""
        if self._model is None:
            self._build()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(sentences), self.batch_size):
                tokens = self._tokenizer(list(sentences[start : start + self.batch_size])).to(self.device)
                if self.device.type == "cuda":
                    with torch.autocast("cuda"):
                        features = self._model.encode_text(tokens)
                else:
                    features = self._model.encode_text(tokens)
                chunks.append(features.float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

    def __repr__(self) -> str:
        return f"OpenClipTextEncoder(id={self.id!r}, dim={self.dim}, device={self.device})"


def _looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or "\\" in value
        or value.startswith("~")
        or value.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))
        or os.path.isfile(value)
    )


def make_text_encoder(spec: str, allow_download: bool = False, *, device: str | torch.device = "cpu") -> TextEncoder:
    """Build an encoder from a spec string (see _SPEC_FORMS); a malformed spec is a one-line ModelError."""
    parts = str(spec or "").strip().split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ModelError(f"bad text encoder spec {spec!r}; expected {_SPEC_FORMS}")
    kind, model_name, arg = (p.strip() for p in parts)
    if kind == "open_clip":
        if _looks_like_path(arg):
            raise ModelError(
                f"bad text encoder spec {spec!r}: open_clip: takes a pretrained tag; "
                f"use open_clip-file:{model_name}:{arg} for a file"
            )
        return OpenClipTextEncoder(model_name, arg, allow_download=allow_download, device=device)
    if kind == "open_clip-file":
        return OpenClipTextEncoder(model_name, Path(arg), device=device)
    if kind == "open_clip-random":
        try:
            seed = int(arg)
        except ValueError:
            raise ModelError(f"bad text encoder spec {spec!r}: the seed must be an integer") from None
        return OpenClipTextEncoder(model_name, None, seed=seed, device=device)
    raise ModelError(f"bad text encoder spec {spec!r}; expected {_SPEC_FORMS}")


# --- class embeddings T and their cache -------------------------------------------------------------------------------


def _ensemble(features: torch.Tensor) -> torch.Tensor:
    """Normalise each sentence, average, normalise again (§3.4)."""
    return F.normalize(F.normalize(features.float(), dim=-1).mean(dim=0), dim=0)


def embeddings_cache_path(encoder: TextEncoder, word: str) -> Path:
    key = hashlib.sha256(f"{ENSEMBLE_VERSION}\n{encoder.id}\n{word}".encode()).hexdigest()
    return cache_dir() / "text_embeddings" / f"{key}.safetensors"


def _valid(t: torch.Tensor, dim: int) -> bool:
    return (
        t.dtype == torch.float32
        and tuple(t.shape) == (dim, 2)
        and bool(torch.isfinite(t).all())
        and bool(torch.allclose(t.norm(dim=0), torch.ones(2), atol=1e-3))
    )


def _read_cache(path: Path, encoder: TextEncoder, word: str) -> torch.Tensor | None:
    """The cached T, or None when absent, unreadable, corrupt or written for something else."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            t = handle.get_tensor("T")
    except Exception:  # any corruption means "recompute"
        return None
    if (
        meta.get("encoder_id") != encoder.id
        or meta.get("object_word") != word
        or meta.get("ensemble") != ENSEMBLE_VERSION
        or not _valid(t, int(encoder.dim))
    ):
        return None
    return t.clone()


def _write_cache(path: Path, t: torch.Tensor, encoder: TextEncoder, word: str) -> None:
    """Through the one atomic writer, read back before the rename. Failure only costs a recompute later."""
    from safetensors.torch import save

    from ..fs import atomic_write

    data = save(
        {"T": t.contiguous()}, metadata={"encoder_id": encoder.id, "object_word": word, "ensemble": ENSEMBLE_VERSION}
    )

    def verify(tmp: Path) -> None:
        if _read_cache(tmp, encoder, word) is None:
            raise OSError(errno.EIO, "the cached embeddings read back differ from what was written")

    try:
        atomic_write(
            path, lambda tmp: tmp.write_bytes(data), verify, suffix=".safetensors", what="the text-embedding cache"
        )
    except (OSError, InputError) as exc:
        warnings.warn(f"could not cache text embeddings at {path}: {exc}", RuntimeWarning, stacklevel=3)


def class_embeddings(encoder: TextEncoder, object_word: str, use_cache: bool = True) -> torch.Tensor:
    """T in R^{dim x 2} (float32, CPU): column 0 = normal, column 1 = tumour, each a unit vector."""
    normal, tumour = ensemble_sentences(object_word)
    word = " ".join(str(object_word).split())
    path = embeddings_cache_path(encoder, word)
    if use_cache:
        cached = _read_cache(path, encoder, word)
        if cached is not None:
            return cached
    features = encoder.encode(normal + tumour)
    expected = (len(normal) + len(tumour), int(encoder.dim))
    if tuple(features.shape) != expected:
        raise ModelError(f"text encoder {encoder.id} returned shape {tuple(features.shape)}, expected {expected}")
    t = torch.stack([_ensemble(features[: len(normal)]), _ensemble(features[len(normal) :])], dim=1)
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not _valid(t, int(encoder.dim)):
        raise ModelError(f"text encoder {encoder.id} produced non-finite or zero embeddings for {word!r}")
    if use_cache:
        _write_cache(path, t, encoder, word)
    return t
