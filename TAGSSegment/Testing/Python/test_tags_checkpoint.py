"""TAGS checkpoint format, converter and installed registry: exact round trips, tamper and crash safety, and
refusal of pickles that would execute code. Everything runs on tiny synthetic tensors in well under a second."""

import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from tagseg.errors import ModelError
from tagseg.paths import sha256_file
from tagseg.tags import checkpoint as ckpt
from tagseg.tags.tasks import TASKS, task_for_anatomy


class Pwn:
    """Unpickling this runs a shell command; a safe loader must refuse it before that happens."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def metadata(task="kits", **overrides):
    config = {"depth": 2, "embed_dim": 8, "global_attn_indexes": [1]}
    meta = ckpt.task_metadata(
        TASKS[task], "tags-test", config, provenance={"training": {"epochs": 3, "data": "synthetic"}}
    )
    meta.update(overrides)
    return meta


def state_dict(seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(24, 8, generator=gen)
    return {
        "image_encoder.blocks.0.attn.qkv.weight": qkv,
        "image_encoder.blocks.0.attn.qkv.bias": qkv[0],  # a view into another tensor's storage
        "image_encoder.blocks.0.attn.rel_pos_d": torch.randn(15, 4, generator=gen).half(),
        "image_encoder.blocks.0.attn.lr": torch.tensor(1.0),
        "image_encoder.depth_embed": torch.randn(1, 4, 8, generator=gen).to(torch.bfloat16),
        "prompt_encoders.3.pe_layer.positional_encoding_gaussian_matrix": torch.randn(3, 4, generator=gen),
        "mask_decoder.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "mask_decoder.index_buffer": torch.arange(5, dtype=torch.int64) * (1 << 40),
        "mask_decoder.flags": torch.tensor([True, False, True]),
        "mask_decoder.empty": torch.zeros(0, 3),
    }


def data_offset(path):
    """Byte offset of the tensor data in a safetensors file (8-byte header length, then JSON header)."""
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
    return 8 + header_len


def flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x5A]))


# ---------------------------------------------------------------------------------------------------------------
# task table


def test_task_table_matches_the_spec():
    assert set(TASKS) == {"kits", "lits", "pancreas", "colon"}
    pancreas = TASKS["pancreas"]
    assert (pancreas.window, pancreas.mean, pancreas.std) == ((-39.0, 204.0), 68.45214, 63.422806)
    assert (TASKS["kits"].window, TASKS["kits"].mean, TASKS["kits"].std) == ((-54.0, 247.0), 59.53867, 55.457336)
    assert (TASKS["lits"].window, TASKS["lits"].mean, TASKS["lits"].std) == ((-48.0, 163.0), 60.057533, 40.198017)
    assert TASKS["kits"].spatial_index == (0, 1, 2) and TASKS["lits"].spatial_index == (2, 1, 0)
    assert TASKS["kits"].organ_labels == ("kidney_left", "kidney_right")
    assert TASKS["kits"].object_word("dataset-key") == "kits" and TASKS["kits"].object_word("organ") == "kidney"
    assert task_for_anatomy("Kidney").key == "kits" and task_for_anatomy("liver").key == "lits"
    assert task_for_anatomy("colon") is None and task_for_anatomy("lung") is None and task_for_anatomy(None) is None
    assert task_for_anatomy("colon", include_adapter_only=True).source == "3DSAM-adapter only"


# ---------------------------------------------------------------------------------------------------------------
# save / load


def test_round_trip_is_bit_exact(tmp_path):
    sd = state_dict()
    extra = {"text.class_embeddings": torch.randn(8, 2)}
    meta = metadata()
    path = tmp_path / "model.safetensors"
    digest = ckpt.save_checkpoint(path, sd, meta, extra_tensors=extra)

    loaded = ckpt.load_checkpoint(path)
    assert digest == sha256_file(path) == loaded.sha256 and loaded.path == path
    assert set(loaded.state_dict) == set(sd) and set(loaded.extra) == set(extra)
    for name, tensor in [*sd.items(), *extra.items()]:
        got = loaded.state_dict.get(name, loaded.extra.get(name))
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got, tensor), name
    expected = json.loads(json.dumps(meta))
    for key, value in expected.items():
        if key != "provenance":
            assert loaded.metadata[key] == value, key
    assert expected["provenance"].items() <= loaded.metadata["provenance"].items()
    assert {"created", "tagseg_version"} <= set(loaded.metadata["provenance"])
    assert loaded.metadata["format"] == "tagseg-tags" and loaded.metadata["format_version"] == 1
    stored = {**sd, **{"extra." + k: v for k, v in extra.items()}}
    assert loaded.metadata["tensors_sha256"] == ckpt.tensors_sha256(stored)
    assert ckpt.read_metadata(path) == loaded.metadata
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    # loaded tensors own their memory: rewriting the file afterwards cannot change them
    before = loaded.state_dict["image_encoder.blocks.0.attn.qkv.weight"].clone()
    flip_byte(path, data_offset(path) + 3)
    assert torch.equal(loaded.state_dict["image_encoder.blocks.0.attn.qkv.weight"], before)


def test_flipped_tensor_byte_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    ckpt.save_checkpoint(path, state_dict(), metadata())
    start, end = data_offset(path), path.stat().st_size
    flip_byte(path, (start + end) // 2)
    with pytest.raises(ModelError, match="damaged or was modified") as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    ckpt.load_checkpoint(path, verify=False)  # only the checksum notices


def test_foreign_and_damaged_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        ckpt.load_checkpoint(junk)

    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(ModelError, match="not a tagseg TAGS checkpoint"):
        ckpt.load_checkpoint(plain)

    newer = tmp_path / "newer.safetensors"
    meta = dict(metadata(), format="tagseg-tags", format_version=2, tensors_sha256="0" * 64)
    save_file({"w": torch.ones(2)}, str(newer), metadata={"tagseg": json.dumps(meta)})
    with pytest.raises(ModelError, match="format version 2"):
        ckpt.load_checkpoint(newer)

    with pytest.raises(ModelError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("suffix", [".pth", ".pth.tar", ".pt", ".ckpt", ".PTH"])
def test_pickle_paths_point_to_the_converter(tmp_path, suffix):
    path = tmp_path / f"best{suffix}"
    path.write_bytes(b"not even read")
    with pytest.raises(ModelError, match="convert-checkpoint"):
        ckpt.load_checkpoint(path)


def test_pickle_content_under_a_safetensors_name_points_to_the_converter(tmp_path):
    path = tmp_path / "renamed.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(ModelError, match="convert-checkpoint"):
        ckpt.load_checkpoint(path)


def test_metadata_is_validated_before_writing(tmp_path):
    path = tmp_path / "model.safetensors"
    bad = metadata()
    del bad["intensity"]
    with pytest.raises(ModelError, match="intensity"):
        ckpt.save_checkpoint(path, state_dict(), bad)
    with pytest.raises(ModelError, match="std"):
        ckpt.save_checkpoint(path, state_dict(), metadata(intensity={"window": [0, 1], "mean": 0, "std": 0}))
    with pytest.raises(ModelError, match="anatomy"):
        ckpt.save_checkpoint(path, state_dict(), metadata(anatomy="../etc"))
    with pytest.raises(ModelError, match="JSON"):
        ckpt.save_checkpoint(path, state_dict(), metadata(config={"x": object()}))
    with pytest.raises(ModelError, match="reserved prefix"):
        ckpt.save_checkpoint(path, {"extra.x": torch.ones(1)}, metadata())
    with pytest.raises(ModelError, match=".safetensors"):
        ckpt.save_checkpoint(tmp_path / "model.pth", state_dict(), metadata())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_leaves_nothing_behind(tmp_path, monkeypatch):
    real_writer = ckpt._write_tensors

    def crash_midway(path, tensors, header):
        real_writer(path, tensors, header)
        with open(path, "r+b") as handle:  # a partly written file, then the crash
            handle.truncate(os.path.getsize(path) // 2)
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(ckpt, "_write_tensors", crash_midway)
    fresh = tmp_path / "fresh.safetensors"
    with pytest.raises(RuntimeError, match="simulated crash"):
        ckpt.save_checkpoint(fresh, state_dict(), metadata())
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(ckpt, "_write_tensors", real_writer)
    existing = tmp_path / "existing.safetensors"
    ckpt.save_checkpoint(existing, state_dict(0), metadata())
    before = existing.read_bytes()
    monkeypatch.setattr(ckpt, "_write_tensors", crash_midway)
    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint(existing, state_dict(1), metadata())
    assert existing.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["existing.safetensors"]


# ---------------------------------------------------------------------------------------------------------------
# check_state_dict


def test_check_state_dict_names_the_first_mismatch():
    expected = {
        "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
        "mask_decoder.bias": (2,),
        "point_label_embed.weight": (2, 256),
    }
    good = {"image_encoder.blocks.0.attn.qkv.weight": torch.zeros(2304, 768), "mask_decoder.bias": torch.zeros(2)}
    ckpt.check_state_dict(expected, good, "tags-b", optional={"point_label_embed.weight"})

    wrong = dict(
        good, **{"image_encoder.blocks.0.attn.qkv.weight": torch.zeros(192, 64), "mask_decoder.bias": torch.zeros(3)}
    )
    with pytest.raises(ModelError) as info:
        ckpt.check_state_dict(expected, wrong, "tags-b", optional={"point_label_embed.weight"})
    assert str(info.value) == (
        "tensor image_encoder.blocks.0.attn.qkv.weight has shape (192, 64) but preset tags-b "
        "needs (2304, 768) — is this a checkpoint of another preset?"
    )

    with pytest.raises(ModelError, match=r"^tensor point_label_embed.weight is missing .*\(2, 256\)"):
        ckpt.check_state_dict(expected, good, "tags-b")
    with pytest.raises(ModelError, match=r"^tensor image_encoder.extra_block.weight is not part of preset tags-b"):
        ckpt.check_state_dict(
            expected,
            dict(good, **{"image_encoder.extra_block.weight": torch.zeros(1)}),
            "tags-b",
            optional={"point_label_embed.weight"},
        )


# ---------------------------------------------------------------------------------------------------------------
# the authors' checkpoints


AUTHORS_BEST_VAL_LOSS = np.float32(0.4321)


def authors_checkpoint(path, best_val_loss=AUTHORS_BEST_VAL_LOSS, **replace):
    """A small checkpoint with the structure of the authors' best.pth.tar, including optimiser states."""
    gen = torch.Generator().manual_seed(3)
    encoder = {
        "patch_embed.proj.weight": torch.randn(8, 3, 4, 4, generator=gen),
        "blocks.0.attn.qkv.weight": torch.randn(24, 8, generator=gen),
        "blocks.0.attn_mask": torch.full((8, 8), -100.0),
        "blocks.1.attn_mask": torch.zeros(8, 8),
        "blocks.0.attn.rel_pos_d": torch.randn(15, 4, generator=gen),
        "neck_3d.0.0.weight": torch.randn(4, 8, 1, 1, 1, generator=gen),
    }
    prompts = [
        {
            "pe_layer.positional_encoding_gaussian_matrix": torch.randn(3, 4, generator=gen),
            "transformer.layers.0.global_query": torch.randn(10, 4, generator=gen) + i,
        }
        for i in range(4)
    ]
    decoder = {"head.0.weight": torch.randn(2, 4, 3, 3, 3, generator=gen)}
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    raw = {
        "epoch": 17,
        "best_val_loss": best_val_loss,
        "encoder_dict": encoder,
        "decoder_dict": decoder,
        "feature_dict": prompts,
        "encoder_opt": opt.state_dict(),
        "feature_opt": opt.state_dict(),
        "decoder_opt": opt.state_dict(),
    }
    raw.update(replace)
    torch.save(raw, path)
    return raw


def test_convert_authors_checkpoint(tmp_path):
    src = tmp_path / "best.pth.tar"
    raw = authors_checkpoint(src)
    dst = tmp_path / "pancreas.safetensors"
    digest = ckpt.convert_authors_checkpoint(
        src,
        dst,
        task="pancreas",
        preset="tags-test",
        config={"depth": 2},
        extra_tensors={"text.class_embeddings": torch.ones(8, 2)},
        provenance={"note": "synthetic"},
    )
    loaded = ckpt.load_checkpoint(dst)
    assert loaded.sha256 == digest

    expected = {f"image_encoder.{k}": v for k, v in raw["encoder_dict"].items() if not k.endswith(".attn_mask")}
    for i, prompt in enumerate(raw["feature_dict"]):
        expected.update({f"prompt_encoders.{i}.{k}": v for k, v in prompt.items()})
    expected.update({f"mask_decoder.{k}": v for k, v in raw["decoder_dict"].items()})
    assert set(loaded.state_dict) == set(expected)
    assert not any("attn_mask" in k or "opt" in k for k in loaded.state_dict)
    for name, tensor in expected.items():
        assert torch.equal(loaded.state_dict[name], tensor), name
    assert torch.equal(loaded.extra["text.class_embeddings"], torch.ones(8, 2))

    meta, spec = loaded.metadata, TASKS["pancreas"]
    assert meta["intensity"] == {"window": list(spec.window), "mean": spec.mean, "std": spec.std}
    assert (meta["task"], meta["anatomy"], meta["organ_labels"], meta["tumour_label"]) == (
        "pancreas",
        "pancreas",
        ["pancreas"],
        2,
    )
    assert meta["preset"] == "tags-test" and meta["config"] == {"depth": 2}
    assert meta["text"] == {
        "encoder": "open_clip:ViT-L-14:openai",
        "object_word": "pancreas",
        "object_word_mode": "dataset-key",
    }
    prov = meta["provenance"]
    assert prov["source_file"] == "best.pth.tar" and prov["source_sha256"] == sha256_file(src)
    assert prov["epoch"] == 17 and prov["best_val_loss"] == pytest.approx(0.4321) and prov["note"] == "synthetic"

    organ = tmp_path / "kits.safetensors"
    ckpt.convert_authors_checkpoint(src, organ, task="kits", config={}, object_word_mode="organ")
    meta = ckpt.read_metadata(organ)
    assert meta["text"]["object_word"] == "kidney" and meta["organ_labels"] == ["kidney_left", "kidney_right"]
    assert meta["intensity"]["window"] == [-54.0, 247.0]


def test_convert_accepts_numpy_1_scalar_names(tmp_path):
    """Checkpoints written under numpy 1.x name numpy.core.multiarray.scalar; they must still load safely."""
    buffer = io.BytesIO()
    torch.save({"best_val_loss": np.float32(0.25), "t": torch.arange(3)}, buffer)
    archive, rewritten = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_STORED) as out:
        for info in archive.infolist():
            data = archive.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            out.writestr(info.filename, data)
    src = tmp_path / "old_numpy.pth.tar"
    src.write_bytes(rewritten.getvalue())
    loaded = ckpt.safe_torch_load(src)
    assert float(loaded["best_val_loss"]) == 0.25 and torch.equal(loaded["t"], torch.arange(3))


def test_convert_names_what_is_missing(tmp_path):
    src = tmp_path / "partial.pth.tar"
    torch.save({"epoch": 1, "decoder_dict": {"w": torch.ones(1)}}, src)
    with pytest.raises(ModelError, match="lacks encoder_dict, feature_dict"):
        ckpt.convert_authors_checkpoint(src, tmp_path / "out.safetensors", task="kits", config={})

    three = tmp_path / "three.pth.tar"
    authors_checkpoint(three, feature_dict=[{"w": torch.ones(1)}] * 3)
    with pytest.raises(ModelError, match="4 prompt-encoder state dicts but holds 3 entries"):
        ckpt.convert_authors_checkpoint(three, tmp_path / "out.safetensors", task="kits", config={})
    with pytest.raises(ModelError, match="unknown task"):
        ckpt.convert_authors_checkpoint(three, tmp_path / "out.safetensors", task="brats", config={})
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_checkpoint_that_cannot_load_keeps_the_earlier_file(tmp_path, capsys):
    """`tagseg convert-checkpoint` loads the converted file before it replaces anything: an authors' file whose
    weights do not fit the preset is refused, and a good file already at the output path stays byte for byte."""
    from tagseg.commands import main

    src = tmp_path / "best.pth.tar"
    authors_checkpoint(src)  # converts, but its toy tensors are no tags-tiny network
    dst = tmp_path / "model.safetensors"
    earlier = b"an earlier conversion the user keeps"
    dst.write_bytes(earlier)
    code = main(["convert-checkpoint", str(src), str(dst), "--task", "lits", "--preset", "tags-tiny"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert dst.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth.tar", "model.safetensors"]  # no temp file left
    dst.unlink()
    assert main(["convert-checkpoint", str(src), str(dst), "--task", "lits", "--preset", "tags-tiny"]) == 2
    assert not dst.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {
        "epoch": 1,
        "encoder_dict": {"w": torch.ones(1)},
        "decoder_dict": {},
        "feature_dict": [{}] * 4,
        "encoder_opt": Pwn(marker),
    }
    src = tmp_path / "evil.pth.tar"
    if writer == "torch.save":
        torch.save(payload, src)
    else:
        with open(src, "wb") as handle:
            pickle.dump(payload, handle)

    with pytest.raises(ModelError, match="contains Python objects that would have to be executed") as info:
        ckpt.safe_torch_load(src)
    assert "refused" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()

    dst = tmp_path / "out.safetensors"
    with pytest.raises(ModelError, match="refused"):
        ckpt.convert_authors_checkpoint(src, dst, task="kits", config={})
    assert not marker.exists() and not dst.exists()


def test_damaged_pickle_is_a_model_error(tmp_path):
    src = tmp_path / "cut.pth.tar"
    authors_checkpoint(src)
    src.write_bytes(src.read_bytes()[:200])
    with pytest.raises(ModelError):
        ckpt.safe_torch_load(src)


# ---------------------------------------------------------------------------------------------------------------
# installed registry


def test_models_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TAGSEG_MODELS_DIR", raising=False)
    monkeypatch.setenv("TAGSEG_CACHE_DIR", str(tmp_path / "cache"))
    assert ckpt.models_dir() == tmp_path / "cache" / "models"
    monkeypatch.setenv("TAGSEG_MODELS_DIR", str(tmp_path / "models"))
    assert ckpt.models_dir() == tmp_path / "models"


def test_install_find_uninstall(tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("TAGSEG_MODELS_DIR", str(models))
    assert ckpt.installed_checkpoints() == [] and ckpt.find_installed("kidney") is None

    files = {}
    for name, task, seed in [("k1", "kits", 1), ("k2", "kits", 2), ("l1", "lits", 3)]:
        files[name] = tmp_path / f"{name}.safetensors"
        ckpt.save_checkpoint(files[name], state_dict(seed), metadata(task))
    k1 = ckpt.install_checkpoint(files["k1"])
    k2 = ckpt.install_checkpoint(files["k2"])
    l1 = ckpt.install_checkpoint(files["l1"])
    sha_k1 = sha256_file(files["k1"])
    assert k1 == models / f"kidney-{sha_k1[:12]}.safetensors" and k1.read_bytes() == files["k1"].read_bytes()
    assert l1.name.startswith("liver-")

    listed = ckpt.installed_checkpoints()
    assert [e["file"] for e in listed] == [k1.name, k2.name, l1.name]
    assert {"file", "sha256", "anatomy", "task", "preset", "installed_at", "path"} <= set(listed[0])
    assert (listed[0]["sha256"], listed[0]["task"], listed[0]["preset"]) == (sha_k1, "kits", "tags-test")
    assert ckpt.find_installed("kidney") == k2 and ckpt.find_installed("liver") == l1
    assert ckpt.find_installed("pancreas") is None

    assert ckpt.install_checkpoint(files["k1"]) == k1  # reinstalling makes it the newest, without a duplicate
    assert ckpt.find_installed("Kidney") == k1 and len(ckpt.installed_checkpoints()) == 3

    assert ckpt.uninstall(sha_k1[:10]) == k1
    assert not k1.exists() and ckpt.find_installed("kidney") == k2
    ckpt.uninstall(k2.name)
    assert ckpt.find_installed("kidney") is None and [e["file"] for e in ckpt.installed_checkpoints()] == [l1.name]
    with pytest.raises(ModelError, match="no installed checkpoint"):
        ckpt.uninstall("deadbeef")
    assert sorted(p.name for p in models.iterdir()) == ["index.json", l1.name]


def test_registry_tolerates_a_damaged_index(tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("TAGSEG_MODELS_DIR", str(models))
    source = tmp_path / "k.safetensors"
    ckpt.save_checkpoint(source, state_dict(), metadata())
    ckpt.install_checkpoint(source)
    for junk in ("{not json", "[1, 2, 3]", '{"checkpoints": [{"file": "../../etc/passwd", "sha256": 5}]}', ""):
        (models / "index.json").write_text(junk, encoding="utf-8")
        assert ckpt.installed_checkpoints() == [] and ckpt.find_installed("kidney") is None
    (models / "index.json").write_bytes(b"\xff\xfe\x00garbage")
    assert ckpt.installed_checkpoints() == []
    installed = ckpt.install_checkpoint(source)  # a fresh install rewrites the index
    assert ckpt.find_installed("kidney") == installed


def test_registry_detects_a_modified_installed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGSEG_MODELS_DIR", str(tmp_path / "models"))
    source = tmp_path / "k.safetensors"
    ckpt.save_checkpoint(source, state_dict(), metadata())
    installed = ckpt.install_checkpoint(source)
    assert ckpt.find_installed("kidney") == installed
    flip_byte(installed, installed.stat().st_size - 1)
    with pytest.raises(ModelError, match="modified or damaged"):
        ckpt.find_installed("kidney")
    installed.unlink()
    with pytest.raises(ModelError, match="missing"):
        ckpt.find_installed("kidney")


def test_install_refuses_a_damaged_checkpoint(tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv("TAGSEG_MODELS_DIR", str(models))
    source = tmp_path / "k.safetensors"
    ckpt.save_checkpoint(source, state_dict(), metadata())
    flip_byte(source, data_offset(source) + 1)
    with pytest.raises(ModelError, match="damaged"):
        ckpt.install_checkpoint(source)
    assert ckpt.installed_checkpoints() == [] and not models.exists()


def test_a_header_length_whose_first_byte_is_0x80_still_loads(tmp_path):
    """safetensors starts with the header length; 128 mod 256 makes byte 0 equal pickle's 0x80 magic."""
    from tagseg.tags.checkpoint import load_checkpoint, save_checkpoint

    tensors = {"image_encoder.x": torch.zeros(2)}
    for pad in range(0, 400, 8):
        path = tmp_path / f"c{pad}.safetensors"
        meta = {
            "format": "tagseg-tags",
            "format_version": 1,
            "preset": "p",
            "config": {},
            "task": "t",
            "anatomy": "liver",
            "organ_labels": ["liver"],
            "tumour_label": 2,
            "intensity": {"window": [-1, 1], "mean": 0.0, "std": 1.0},
            "spacing_mm": [1.0, 1.0, 1.0],
            "text": {"encoder": "e", "object_word": "liver", "object_word_mode": "anatomy"},
            "provenance": {"note": "x" * pad},
        }
        save_checkpoint(path, tensors, meta)
        if path.read_bytes()[0] == 0x80:
            assert torch.equal(load_checkpoint(path).state_dict["image_encoder.x"], tensors["image_encoder.x"])
            return
    pytest.fail("no padding produced a header length with first byte 0x80")
