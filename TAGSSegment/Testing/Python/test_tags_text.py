"""CLIP text branch (TAGS_SPEC.md §3.4): the prompt ensemble, encoder specs, T = [normal, tumour] and its cache.

Everything runs on the tiny random-weight open_clip model (64-d); no test touches the network. Each test gets its own
cache and weights folder, so results never depend on what an earlier run left behind.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tagseg.errors import ModelError
from tagseg.tags import text_encoder as te

TINY = te.TINY_TEXT_ENCODER
SRC = Path(te.__file__).resolve().parents[2]  # the folder holding the tagseg package


@pytest.fixture(autouse=True)
def private_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TAGSEG_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    return te.make_text_encoder(TINY)


@pytest.fixture(scope="module")
def tiny_pancreas(tiny):
    return te.class_embeddings(tiny, "pancreas", use_cache=False)


class CountingEncoder:
    """A fast stand-in with the encoder interface: a fixed random vector per sentence; counts encode() calls."""

    def __init__(self, id="fake-encoder:v1", dim=16):
        self.id, self.dim, self.calls = id, dim, 0

    def encode(self, sentences):
        self.calls += 1
        rows = []
        for sentence in sentences:
            seed = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


# --- prompt ensemble --------------------------------------------------------------------------------------------------


def test_ensemble_sizes_and_exact_sentences():
    assert (len(te.NORMAL_STATES), len(te.TUMOUR_STATES), len(te.TEMPLATES)) == (8, 6, 34)
    assert len(set(te.TEMPLATES)) == 34
    normal, tumour = te.ensemble_sentences("pancreas")
    assert (len(normal), len(tumour)) == (272, 204)
    assert len(set(normal)) == 272 and len(set(tumour)) == 204 and not set(normal) & set(tumour)
    for sentence in (
        "this is one pancreas in the scene.",
        "a 3D photo of the flawless pancreas.",
        "there is a pancreas without tumor in the scene.",
        "a 3D photo of a large healthy pancreas.",
        "a low resolution 3D photo of the perfect pancreas.",
        "a cropped 3D photo of a pancreas without lesion.",
    ):
        assert sentence in normal, sentence
    for sentence in (
        "a bright 3D photo of the pancreas with tumor.",
        "this is a diseased pancreas in the scene.",
        "a close-up 3D photo of a anomalous pancreas.",
        "a 3D photo of the rotated pancreas with illness.",
        "a 3D photo of one pancreas with flaw.",
        "a corrupted 3D photo of the pancreas with tumor.",
    ):
        assert sentence in tumour, sentence
    # the object word is the only thing that changes between organs
    kidney_normal, _ = te.ensemble_sentences("kidney")
    assert [s.replace("kidney", "pancreas") for s in kidney_normal] == normal
    with pytest.raises(ModelError):
        te.ensemble_sentences("  ")


def test_object_word_modes():
    assert te.object_word("kidney") == "kidney"
    assert te.object_word("liver", "anatomy") == "liver"
    assert te.object_word(None) == "organ"
    assert te.object_word("lymph_node") == "lymph node"
    assert te.object_word("kidney", "dataset-key") == "kits"
    assert te.object_word("liver", "dataset-key") == "lits"
    assert te.object_word("pancreas", "dataset-key") == "pancreas"
    assert te.object_word("kidney", "dataset-key", task="kits23") == "kits23"
    assert te.object_word("kidney", "anatomy", task="kits23") == "kidney"
    assert te.object_word("lung", "dataset-key") == "lung"  # no authors' dataset: falls back to the organ
    with pytest.raises(ModelError, match="mode"):
        te.object_word("kidney", "dataset")


# --- encoders ---------------------------------------------------------------------------------------------------------


def test_tiny_encoder_builds_and_leaves_global_rng_alone(tiny):
    assert tiny.id == TINY and tiny.dim == 64
    rng = torch.get_rng_state()
    encoder = te.make_text_encoder(TINY)  # open_clip is already imported by the fixture
    out = encoder.encode(["a 3D photo of a kidney.", "a 3D photo of a kidney with tumor."])
    assert torch.equal(torch.get_rng_state(), rng)
    assert out.shape == (2, 64) and out.dtype == torch.float32 and not out.requires_grad
    assert not torch.allclose(out[0], out[1])


def test_class_embeddings_shape_norm_and_classes(tiny, tiny_pancreas):
    t = tiny_pancreas
    assert t.shape == (64, 2) and t.dtype == torch.float32
    assert torch.allclose(t.norm(dim=0), torch.ones(2), atol=1e-5)
    assert not torch.allclose(t[:, 0], t[:, 1], atol=1e-3)
    # column 0 is built from the normal sentences: recompute it by hand
    normal, tumour = te.ensemble_sentences("pancreas")
    feats = torch.nn.functional.normalize(tiny.encode(normal), dim=-1).mean(0)
    assert torch.allclose(t[:, 0], feats / feats.norm(), atol=1e-5)
    other = te.class_embeddings(tiny, "kidney", use_cache=False)
    assert not torch.allclose(t, other, atol=1e-4)


def test_random_encoder_is_deterministic_in_process_and_across_processes(tiny, tiny_pancreas):
    again = te.make_text_encoder(TINY)
    assert torch.equal(tiny_pancreas, te.class_embeddings(again, "pancreas", use_cache=False))
    other_seed = te.make_text_encoder("open_clip-random:tagseg-tiny-clip:1")
    assert other_seed.id != tiny.id
    assert not torch.allclose(tiny_pancreas, te.class_embeddings(other_seed, "pancreas", use_cache=False), atol=1e-4)
    sentences = ["a 3D photo of a liver.", "a bad 3D photo of the liver with tumor."]
    code = (
        "import sys, torch; from tagseg.tags import text_encoder as te; "
        f"e = te.make_text_encoder(te.TINY_TEXT_ENCODER).encode({sentences!r}); "
        "sys.stdout.write(' '.join(repr(v) for v in e.flatten().tolist()))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = torch.tensor([float(v) for v in out.stdout.split()]).reshape(2, 64)
    assert torch.equal(theirs, tiny.encode(sentences))


def test_cache_is_written_reused_and_keyed(private_folders):
    counting = CountingEncoder()
    first = te.class_embeddings(counting, "kidney")
    path = te.embeddings_cache_path(counting, "kidney")
    assert path.is_file() and path.parent == private_folders / "cache" / "text_embeddings"
    assert counting.calls == 1
    second = te.class_embeddings(counting, "kidney")
    assert counting.calls == 1 and torch.equal(first, second)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    te.class_embeddings(counting, "kidney", use_cache=False)
    assert counting.calls == 2
    # another encoder id or another word never reuses this entry
    renamed = CountingEncoder(id="fake-encoder:v2")
    te.class_embeddings(renamed, "kidney")
    te.class_embeddings(counting, "liver")
    assert renamed.calls == 1 and counting.calls == 3
    assert len(list(path.parent.glob("*.safetensors"))) == 3


def test_cache_round_trip_with_the_tiny_clip(tiny, tiny_pancreas):
    class Wrapped:
        id, dim, calls = tiny.id, tiny.dim, 0

        def encode(self, sentences):
            self.calls += 1
            return tiny.encode(sentences)

    wrapped = Wrapped()
    assert torch.equal(te.class_embeddings(wrapped, "pancreas"), tiny_pancreas)
    assert torch.equal(te.class_embeddings(wrapped, "pancreas"), tiny_pancreas)
    assert wrapped.calls == 1 and te.embeddings_cache_path(tiny, "pancreas").is_file()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong_tensor"])
def test_corrupt_cache_is_recomputed(damage):
    counting = CountingEncoder()
    good = te.class_embeddings(counting, "pancreas")
    path = te.embeddings_cache_path(counting, "pancreas")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file with a tensor of the wrong shape and the right metadata
        from safetensors.torch import save_file

        save_file(
            {"T": torch.ones(counting.dim, 3)},
            str(path),
            metadata={"encoder_id": counting.id, "object_word": "pancreas", "ensemble": te.ENSEMBLE_VERSION},
        )
    again = te.class_embeddings(counting, "pancreas")
    assert counting.calls == 2 and torch.equal(again, good)
    te.class_embeddings(counting, "pancreas")
    assert counting.calls == 2  # the rewritten file is good again


def test_encoder_returning_wrong_shape_is_a_model_error():
    class Broken(CountingEncoder):
        def encode(self, sentences):
            return torch.zeros(len(sentences), self.dim + 1)

    with pytest.raises(ModelError, match="shape"):
        te.class_embeddings(Broken(), "liver", use_cache=False)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "open_clip",
        "open_clip:ViT-L-14",
        "open_clip::openai",
        "clip:ViT-L-14:openai",
        "open_clip-random:tagseg-tiny-clip:zero",
        "open_clip-random:no-such-model:0",
        "open_clip:ViT-L-14:no-such-tag",
        "open_clip-file:tagseg-tiny-clip:/no/such/file.pt",
        "open_clip:ViT-L-14:/some/file.pt",
    ],
)
def test_bad_spec_is_one_line_model_error(spec):
    with pytest.raises(ModelError) as info:
        te.make_text_encoder(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("env, allow", [("HF_HUB_OFFLINE", False), ("HF_HUB_OFFLINE", True), ("TAGSEG_OFFLINE", True)])
def test_paper_encoder_refused_offline_quickly_with_instructions(monkeypatch, private_folders, env, allow):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(env, "1")
    start = time.perf_counter()
    with pytest.raises(ModelError) as info:
        te.make_text_encoder(te.PAPER_TEXT_ENCODER, allow_download=allow)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert "ViT-L-14.pt" in message and str(private_folders / "weights") in message
    assert "tagseg weights download clip-vit-l-14" in message and "\n" not in message
    assert not (private_folders / "weights").exists()


def test_paper_encoder_refused_without_allow_download_even_online(monkeypatch, private_folders):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TAGSEG_OFFLINE", raising=False)
    with pytest.raises(ModelError, match="ViT-L-14.pt"):
        te.make_text_encoder(te.PAPER_TEXT_ENCODER)


def test_paper_encoder_uses_a_file_already_in_the_weights_folder(private_folders):
    folder = private_folders / "weights"
    folder.mkdir()
    (folder / "ViT-L-14.pt").write_bytes(b"placeholder; not loaded until encode()")
    encoder = te.make_text_encoder(te.PAPER_TEXT_ENCODER)
    assert encoder.id == te.PAPER_TEXT_ENCODER and encoder.dim == 768
    assert encoder.weights_file == folder / "ViT-L-14.pt"


def _tiny_model(quick_gelu):
    open_clip = te._open_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return open_clip.create_model(te.TINY_MODEL_NAME, pretrained=None, force_quick_gelu=quick_gelu)


def test_file_encoder_reads_a_state_dict(tmp_path):
    model = _tiny_model(quick_gelu=False)
    path = tmp_path / "tiny_state.pt"
    torch.save(model.state_dict(), path)
    encoder = te.make_text_encoder(f"open_clip-file:{te.TINY_MODEL_NAME}:{path}")
    assert encoder.id.startswith(f"open_clip-file:{te.TINY_MODEL_NAME}:sha256=")
    sentences = ["a 3D photo of a liver.", "a dark 3D photo of the liver with lesion."]
    tokens = te._open_clip().get_tokenizer(te.TINY_MODEL_NAME)(sentences)
    with torch.no_grad():
        expected = model.encode_text(tokens)
    assert torch.allclose(encoder.encode(sentences), expected, atol=1e-5)


def test_file_encoder_reads_an_openai_style_torchscript_archive_with_quick_gelu(tmp_path):
    """OpenAI ships ViT-L-14.pt as TorchScript, trained with QuickGELU; both must be honoured."""
    import warnings

    model = _tiny_model(quick_gelu=True)
    path = tmp_path / "tiny_openai_style.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))
    encoder = te.make_text_encoder(f"open_clip-file:{te.TINY_MODEL_NAME}:{path}")
    sentences = ["this is one kidney in the scene.", "a blurry 3D photo of a kidney with tumor."]
    tokens = te._open_clip().get_tokenizer(te.TINY_MODEL_NAME)(sentences)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        with_gelu = _tiny_model(quick_gelu=False)
        with_gelu.load_state_dict(model.state_dict())
        wrong = with_gelu.encode_text(tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = encoder.encode(sentences)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-4)


def test_file_that_does_not_fit_the_model_is_a_model_error(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save({"something": torch.zeros(3)}, path)
    encoder = te.make_text_encoder(f"open_clip-file:{te.TINY_MODEL_NAME}:{path}")
    with pytest.raises(ModelError) as info:
        encoder.encode(["x"])
    assert "\n" not in str(info.value) and "junk.pt" in str(info.value)
