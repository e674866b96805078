"""The backend registry: one entry per kind of model (builder, options, capabilities); options checked by name;
capabilities declared and tested instead of probed."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from tagseg import Session, Volume, backends
from tagseg.backends.base import ANATOMY, BOXES, NEGATIVE_POINTS, PROPOSE_POINT, Backend
from tagseg.errors import ModelError, PromptError
from tagseg.text import parse_description

ROOT = Path(__file__).resolve().parents[2]


def _volume() -> Volume:
    return Volume(np.zeros((6, 16, 16), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), name="blank")


class Blank(Backend):
    """Takes clicks only: no boxes, exclude clicks or organ mask."""

    name = "blank-points-only"
    capabilities = frozenset()

    def set_image(self, volume):
        self.shape = volume.shape_kji

    def predict(self, prompts):
        return np.zeros(self.shape, np.uint8)


@pytest.fixture()
def blank():
    instance = Blank()
    backends.register_backend(Blank.name, lambda device, options: instance)
    yield instance
    backends.BACKENDS.pop(Blank.name, None)
    backends.release_shared_backends()


def test_an_unknown_option_is_a_model_error_naming_it_and_the_known_ones():
    with pytest.raises(ModelError) as exc:
        backends.create_backend(backends.DEFAULT_BACKEND, "cpu", {"min_iou": 0.3, "text_fusion": 0.5})
    message = str(exc.value)
    assert "\n" not in message and "'text_fusion'" in message and "min_iou" in message and "encoder" in message
    with pytest.raises(ModelError, match="'sliding_windows'.*known: .*sliding_window"):
        backends.create_backend(f"{backends.TAGS_PREFIX}/nowhere.safetensors", "cpu", {"sliding_windows": True})
    with pytest.raises(ModelError, match="no model has the option 'txt_fusion'"):
        Session(_volume(), model=backends.DEFAULT_BACKEND, device="cpu", backend_options={"txt_fusion": 0.5})


def test_each_kind_declares_its_options_and_capabilities():
    from tagseg.backends.litemedsam3d import LiteMedSAM3D, Options
    from tagseg.backends.tags import TagsBackend, TagsOptions

    default = backends.kind_of(backends.DEFAULT_BACKEND)
    assert default.option_names() == {f for f in Options.__dataclass_fields__} | {"runtime", "encoder"}
    assert default.capabilities == LiteMedSAM3D.capabilities == {ANATOMY, BOXES, NEGATIVE_POINTS}
    tags = backends.kind_of(f"{backends.TAGS_PREFIX}/any/model.safetensors")
    assert tags is backends.CHECKPOINT_KINDS["tags"]
    assert tags.option_names() == set(TagsOptions.__dataclass_fields__)
    assert tags.capabilities == TagsBackend.capabilities and PROPOSE_POINT in tags.capabilities
    assert backends.options_for(backends.DEFAULT_BACKEND, {"text_fusion": 0.2, "min_iou": 0.3}) == {"min_iou": 0.3}


def test_default_options_reach_the_model_through_the_registry(monkeypatch):
    import tagseg.backends.litemedsam3d as lm

    built = {}

    class Recorded:
        def __init__(self, device, options=None, **engine):
            built.update(device=device, options=options, engine=engine)

    monkeypatch.setattr(lm, "LiteMedSAM3D", Recorded)
    backends.create_backend(backends.DEFAULT_BACKEND, "cpu", {"min_iou": 0.25, "runtime": "torch"})
    assert built["options"] == lm.Options(min_iou=0.25) and built["engine"] == {"runtime": "torch"}


def test_a_tags_checkpoint_path_resolves_and_builds_through_the_registry(tmp_path, monkeypatch):
    checkpoint = tmp_path / "liver.safetensors"
    checkpoint.write_bytes(b"not read by the resolver")
    name = backends.resolve_model_name(str(checkpoint), parse_description("liver tumor"))
    assert name == f"{backends.TAGS_PREFIX}{checkpoint.resolve()}"
    assert backends.checkpoint_of(name) == str(checkpoint.resolve())
    assert backends.checkpoint_of(backends.DEFAULT_BACKEND) is None

    calls = []
    kind = backends.CHECKPOINT_KINDS["tags"]
    monkeypatch.setitem(
        backends.CHECKPOINT_KINDS,
        "tags",
        replace(kind, build=lambda path, device, options: calls.append((path, device, options))),
    )
    backends.create_backend(name, "cpu", {"text_fusion": 0.5})
    assert calls == [(str(checkpoint.resolve()), "cpu", {"text_fusion": 0.5})]

    monkeypatch.setitem(backends.CHECKPOINT_KINDS, "tags", replace(kind, installed=lambda anatomy: checkpoint))
    assert backends.resolve_model_name("auto", parse_description("liver tumor")) == name


def test_a_registered_option_dataclass_is_checked():
    @dataclass
    class Knobs:
        level: int = 1

    backends.register_backend("knobbed", lambda device, options: options, options=Knobs)
    try:
        assert backends.create_backend("knobbed", "cpu", {"level": 3}) == {"level": 3}
        with pytest.raises(ModelError, match="model 'knobbed' has no option 'volume' \\(known: level\\)"):
            backends.create_backend("knobbed", "cpu", {"volume": 3})
    finally:
        backends.BACKENDS.pop("knobbed", None)


def test_session_checks_capabilities(blank):
    volume = _volume()
    with Session(volume, model=Blank.name, device="cpu") as session:
        session.add_point(volume.kji_to_ras([[3, 8, 8]])[0])
        assert session.predict().array.shape == volume.shape_kji
        with pytest.raises(PromptError, match="has no text branch"):
            session.propose_point()
        session.add_point(volume.kji_to_ras([[3, 2, 2]])[0], positive=False)
        with pytest.raises(PromptError, match=f"model '{Blank.name}' does not take negative points"):
            session.predict()


# backend capabilities are declared (`Backend.capabilities`), never probed with hasattr/getattr on a backend
PROBE = re.compile(r"\b(hasattr|getattr)\(\s*(self\.)?_?backend\b|hasattr\([^)]*[\"']propose_point[\"']")


def test_no_capability_probing_in_the_session_server_client_or_slicer_logic():
    files = [ROOT / "tagseg" / name for name in ("session.py", "server.py", "client.py")]
    files += sorted((ROOT / "TAGSSegmentLib").glob("*.py")) + [ROOT / "TAGSSegment.py"]
    found = [
        f"{path.name}:{n}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PROBE.search(line)
    ]
    assert found == []
