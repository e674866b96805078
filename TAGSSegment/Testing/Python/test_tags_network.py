"""The TAGS network: parameter split against TAGS_SPEC.md §3.8, SAM key mapping, attention maths,
freeze pattern under training, overfitting a phantom, and checkpoint round trips."""

import math
import pickle

import numpy as np
import pytest
import torch

from conftest import dice
from tagseg.errors import ModelError
from tagseg.tags import build_tags, get_preset
from tagseg.tags.checkpoint import load_model, safe_torch_load, save_checkpoint
from tagseg.tags.image_encoder import (
    Attention3d,
    relative_positions,
    shifted_window_mask,
    window_partition_3d,
    window_unpartition_3d,
)
from tagseg.tags.model import TagsNet

# TAGS_SPEC.md §3.8 (counts derived there from the shapes)
SPEC_MILLIONS = {
    "frozen": 88.8,
    "trainable_adapters_3d": 7.2,
    "trainable_necks": 7.9,
    "trainable_alignment_adapters": 2.36,
    "trainable_prompt_encoders": 12.7,
    "trainable_mask_decoder": 7.1,
}
SPEC_SMALL = {"rel_pos_d": 46e3, "depth_embed": 25e3, "slice_embed": 13e3}


@pytest.fixture(scope="module")
def tags_b():
    return build_tags("tags-b", seed=0)


def test_tags_b_parameter_split_matches_the_spec(tags_b):
    counts = tags_b.parameter_counts()
    for key, millions in SPEC_MILLIONS.items():
        assert counts[key] == pytest.approx(millions * 1e6, rel=0.01), key
    spec_trainable = sum(v for k, v in SPEC_MILLIONS.items() if k != "frozen") + 0.1
    assert counts["trainable"] == pytest.approx(spec_trainable * 1e6, rel=0.01)
    enc = tags_b.image_encoder
    small = {
        "rel_pos_d": sum(b.attn.rel_pos_d.numel() for b in enc.blocks),
        "depth_embed": enc.depth_embed.numel(),
        "slice_embed": sum(p.numel() for p in enc.slice_embed.parameters()),
    }
    for key, expected in SPEC_SMALL.items():
        assert small[key] == pytest.approx(expected, rel=0.05), key
    assert counts["total"] == counts["trainable"] + counts["frozen"]


def test_tags_b_shapes_follow_the_paper(tags_b):
    enc = tags_b.image_encoder
    assert tags_b.config.token_grid == 32 and enc.pos_embed.shape == (1, 64, 64, 768)
    assert [b.attn.rel_pos_h.shape[0] for b in enc.blocks] == [127 if i in (2, 5, 8, 11) else 27 for i in range(12)]
    assert [b.shift for b in enc.blocks] == [4 if i % 2 == 0 else 0 for i in range(12)]
    assert tags_b.config.alignment_blocks == (3, 6, 9, 12)
    assert torch.equal(enc.depth_embed, torch.ones_like(enc.depth_embed))
    assert not enc.patch_embed.proj.weight.requires_grad and enc.slice_embed.weight.requires_grad
    assert enc.blocks[0].attn.rel_pos_d.requires_grad and not enc.blocks[0].attn.rel_pos_h.requires_grad
    assert tags_b.point_label_embed is None  # the paper: points carry no label


def test_sam_vit_b_checkpoint_maps_onto_the_encoder(tmp_path, tags_b):
    """A checkpoint written by segment_anything's own vit_b builder (the sam_vit_b_01ec64.pth layout)."""
    from segment_anything import sam_model_registry

    from tagseg.tags.sam_weights import load_sam_weights

    torch.manual_seed(1)
    sam = sam_model_registry["vit_b"]()
    with torch.no_grad():  # SAM zero-initialises rel_pos; make them distinguishable
        for block in sam.image_encoder.blocks:
            block.attn.rel_pos_h.normal_()
            block.attn.rel_pos_w.normal_()
    path = tmp_path / "sam_vit_b_local.pth"
    torch.save(sam.state_dict(), path)
    before = {k: v.clone() for k, v in tags_b.state_dict().items()}
    report = load_sam_weights(tags_b, path)
    after = tags_b.state_dict()
    sam_enc = sam.image_encoder.state_dict()
    mapped = [k for k in sam_enc if not k.startswith("neck.")]
    assert sorted(report["loaded"]) == sorted(mapped)
    for key in mapped:
        assert torch.equal(after[f"image_encoder.{key}"], sam_enc[key]), key
    for block in tags_b.image_encoder.blocks:
        assert torch.allclose(block.attn.rel_pos_d, 0.5 * (block.attn.rel_pos_h + block.attn.rel_pos_w))
    untouched = [
        k
        for k in after
        if not k.startswith("image_encoder.") or k.split(".", 1)[1] not in sam_enc and ".rel_pos_d" not in k
    ]
    assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)
    frozen = set(tags_b.image_encoder.frozen_parameter_names())
    assert frozen - {k for k in frozen if k.endswith(".attn.lr")} <= set(mapped)


def test_sam_checkpoint_of_the_wrong_size_is_refused_by_tensor_name():
    from tagseg.tags.sam_weights import load_sam_weights

    tiny = build_tags("tags-tiny", seed=0)
    fake = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    with pytest.raises(ModelError, match="patch_embed.proj.weight has shape"):
        load_sam_weights(tiny, fake)
    with pytest.raises(ModelError, match="not a SAM checkpoint"):
        load_sam_weights(tiny, {"something": torch.zeros(1)})


def test_window_partition_round_trips_and_shift_mask_is_block_structured():
    x = torch.randn(2, 8, 8, 8, 5)
    windows = window_partition_3d(x, 4)
    assert windows.shape == (16, 4, 4, 4, 5)
    assert torch.equal(window_unpartition_3d(windows, 4, (8, 8, 8)), x)
    mask = shifted_window_mask(8, 4, 2)
    assert mask.shape == (8, 64, 64) and torch.equal(mask, mask.transpose(1, 2))
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all()  # the first window lies inside one region
    assert (mask[-1] == -100).any()  # the last one straddles the wrap-around


def test_window_attention_equals_the_explicit_formula():
    """SDPA with an additive bias must equal softmax(q k^T / sqrt(d) + lr * (rel_h + rel_w + rel_d) + mask) v."""
    torch.manual_seed(0)
    attn = Attention3d(dim=16, num_heads=2, rel_pos_size=7)
    with torch.no_grad():
        for p in (attn.rel_pos_h, attn.rel_pos_w, attn.rel_pos_d):
            p.normal_()
        attn.lr.fill_(0.7)
    x = torch.randn(8, 4, 4, 4, 16)
    mask = shifted_window_mask(8, 4, 2)
    got = attn(x, mask)
    b, n, heads, hd = 8, 64, 2, 8
    qkv = attn.qkv(x).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv
    logits = (q / math.sqrt(hd)) @ k.transpose(-2, -1)
    coords = torch.stack(torch.meshgrid(*(torch.arange(4),) * 3, indexing="ij"), -1).reshape(n, 3)
    rel = [relative_positions(4, t) for t in (attn.rel_pos_h, attn.rel_pos_w, attn.rel_pos_d)]
    for axis in range(3):
        table = rel[axis][coords[:, axis][:, None], coords[:, axis][None, :]]  # [n, n, hd]
        logits = logits + attn.lr * torch.einsum("bhqc,qkc->bhqk", q, table)
    logits = logits + mask[:, None]
    expected = attn.proj((logits.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, 4, 4, 4, 16))
    assert torch.allclose(got, expected, atol=1e-5)


def test_only_positive_points_reproduce_the_paper_and_labels_matter_only_with_the_extension():
    torch.manual_seed(0)
    crops = torch.randn(1, 3, 32, 32, 32)
    points = torch.tensor([[[10.0, 12.0, 14.0], [20.0, 18.0, 9.0]]])
    paper = build_tags(
        get_preset("tags-tiny").__class__(
            **{**get_preset("tags-tiny").to_dict(), "global_attn_indexes": (1, 3), "point_labels": False}
        ),
        seed=0,
    )
    paper.eval()
    with torch.no_grad():
        enc = paper.encode(crops)
        a = paper.decode(enc, points)
        b = paper.decode(enc, points, torch.tensor([[1, 0]]))
        c = paper.decode(enc, points[:, :1])
    assert torch.equal(a, b)  # labels are ignored without the extension
    assert not torch.allclose(a, c)  # the points do steer the decoder
    ext = build_tags("tags-tiny", seed=0).eval()
    with torch.no_grad():
        enc = ext.encode(crops)
        assert torch.equal(ext.decode(enc, points), ext.decode(enc, points, torch.tensor([[1, 1]])))
        assert not torch.allclose(ext.decode(enc, points), ext.decode(enc, points, torch.tensor([[1, 0]])))


def test_training_reaches_exactly_the_trainable_parts_and_overfits(tiny_trained):
    model, initial = tiny_trained.model, tiny_trained.initial
    params = dict(model.named_parameters())
    for name, param in params.items():
        changed = not torch.equal(param.detach(), initial[name])
        unused_prompt_encoder = name.startswith(("prompt_encoders.0.", "prompt_encoders.1.", "prompt_encoders.2."))
        unused_query = "cross_attn_token_to_image" in name
        if not param.requires_grad:
            assert not changed, f"frozen {name} changed"
        elif unused_prompt_encoder or unused_query:
            assert not changed, f"{name} gets no gradient in the published forward, yet changed"
        else:
            assert changed, f"trainable {name} did not change"
    assert tiny_trained.history[-1]["main"] < 0.5 * tiny_trained.history[0]["main"]
    # overfit: Dice on the training phantom, three clicks from its label, through the real backend
    from tagseg.backends.base import GridPrompts
    from tagseg.backends.tags import TagsBackend

    phantom = tiny_trained.phantom
    backend = TagsBackend(tiny_trained.checkpoint, "cpu")
    backend.set_image(phantom.image)
    label = np.asarray(phantom.label.array) > 0
    voxels = np.argwhere(label)
    clicks = voxels[np.random.default_rng(2).choice(len(voxels), 3, replace=False)].astype(float)
    mask = backend.predict(
        GridPrompts(clicks, np.zeros((0, 3)), (), phantom.description, np.asarray(tiny_trained.organ.array) > 0)
    )
    assert dice(mask, label) >= 0.9


def test_checkpoint_round_trip_is_bit_exact(tiny_trained, tmp_path):
    from tagseg.tags.checkpoint import save_model

    model = tiny_trained.model
    path = tmp_path / "again.safetensors"
    save_model(
        model,
        path,
        task="synthetic-liver",
        anatomy="liver",
        intensity={"window": [-1, 1], "mean": 0, "std": 1},
        text={"encoder": model.config.text_encoder, "object_word": "liver", "object_word_mode": "anatomy"},
        organ_labels=["liver"],
    )
    loaded, ckpt = load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.config == model.config and ckpt.metadata["preset"] == "tags-tiny"
    crops = torch.randn(1, 3, 32, 32, 32)
    points = torch.tensor([[[16.0, 16.0, 16.0]]])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(crops, points)[0], model.eval()(crops, points)[0])


def test_checkpoint_of_another_shape_names_the_first_mismatched_tensor(tiny_trained, tmp_path):
    model = tiny_trained.model
    config = {**model.config.to_dict(), "neck_dim": 48, "prompt_heads": 4}
    meta = {
        "format": "tagseg-tags",
        "format_version": 1,
        "preset": "tags-tiny",
        "config": config,
        "task": "x",
        "anatomy": "liver",
        "organ_labels": ["liver"],
        "tumour_label": 2,
        "intensity": {"window": [-1, 1], "mean": 0.0, "std": 1.0},
        "spacing_mm": [1.5] * 3,
        "text": {"encoder": "e", "object_word": "liver", "object_word_mode": "anatomy"},
        "provenance": {},
    }
    path = tmp_path / "other.safetensors"
    save_checkpoint(path, model.state_dict(), meta)
    with pytest.raises(ModelError, match=r"other.safetensors: tensor image_encoder\.neck_3d\.0\.0\.weight has shape"):
        load_model(path)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    with open(path, "wb") as handle:
        pickle.dump({"encoder_dict": _Exploit(sentinel)}, handle)
    with pytest.raises(ModelError, match="refused"):
        safe_torch_load(path)
    from tagseg import commands

    code = commands.main(["convert-checkpoint", str(path), str(tmp_path / "out.safetensors"), "--task", "pancreas"])
    assert code == 2 and not sentinel.exists() and not (tmp_path / "out.safetensors").exists()


def test_authors_pth_tar_converts_and_predicts_identically(tiny_trained, tmp_path, capsys):
    """An authors-style checkpoint (encoder/decoder/feature dicts, attn_mask buffers, optimiser states)."""
    from tagseg import commands

    model = tiny_trained.model
    state = model.state_dict()
    # the authors' network has no label embedding: convert a paper-config twin of the trained model
    config = {**model.config.to_dict(), "point_labels": False}
    twin = TagsNet(type(model.config).from_dict(config))
    twin.load_state_dict({k: v for k, v in state.items() if not k.startswith("point_label_embed.")})
    enc = {k[len("image_encoder.") :]: v for k, v in twin.state_dict().items() if k.startswith("image_encoder.")}
    for i, block in enumerate(twin.image_encoder.blocks):
        if block.attn_mask is not None:
            enc[f"blocks.{i}.attn_mask"] = block.attn_mask.clone()
    raw = {
        "epoch": 7,
        "best_val_loss": 0.25,
        "encoder_dict": enc,
        "decoder_dict": {
            k[len("mask_decoder.") :]: v for k, v in twin.state_dict().items() if k.startswith("mask_decoder.")
        },
        "feature_dict": [
            {
                k[len(f"prompt_encoders.{i}.") :]: v
                for k, v in twin.state_dict().items()
                if k.startswith(f"prompt_encoders.{i}.")
            }
            for i in range(4)
        ],
        "encoder_opt": {"state": {}, "param_groups": []},
    }
    src = tmp_path / "best.pth.tar"
    torch.save(raw, src)
    import tagseg.tags.config as config_module

    with pytest.MonkeyPatch.context() as patch:
        paper_tiny = type(model.config).from_dict({**config, "name": "tags-tiny-paper"})
        patch.setitem(config_module.PRESETS, "tags-tiny-paper", paper_tiny)
        code = commands.main(
            [
                "convert-checkpoint",
                str(src),
                str(tmp_path / "best.safetensors"),
                "--task",
                "pancreas",
                "--preset",
                "tags-tiny-paper",
            ]
        )
    out = capsys.readouterr()
    assert code == 0, out.err
    loaded, ckpt = load_model(tmp_path / "best.safetensors")
    assert ckpt.metadata["intensity"]["window"] == [-39, 204] and ckpt.metadata["text"]["object_word"] == "pancreas"
    crops = torch.randn(1, 3, 32, 32, 32)
    points = torch.tensor([[[12.0, 16.0, 20.0]]])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(crops, points)[0], twin.eval()(crops, points)[0])
