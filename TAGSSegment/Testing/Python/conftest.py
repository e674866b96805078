"""Fixtures shared by the TAGS tests: a tags-tiny network trained inside the test session on a synthetic
phantom (no pretrained TAGS weights exist anywhere), saved as a real checkpoint file."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from tagseg.evaluate import dice  # noqa: F401  (the one Dice; test files import it from here)

TINY_PHANTOM = dict(seed=1, shape_kji=(24, 80, 80), spacing_ijk=(1.2, 1.2, 2.0), tumour_radius_mm=9.0)
# a soft-tissue window with statistics near the phantom's organs (what `tagseg train` would measure)
TINY_INTENSITY = {"window": [-160.0, 240.0], "mean": 40.0, "std": 60.0}
TRAIN_STEPS = 60
DEFAULT_MODEL = "litemedsam-3d"


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """tags-tiny trained for TRAIN_STEPS steps on one phantom, plus its checkpoint and the phantom on disk."""
    import torch

    from tagseg.io import save_volume
    from tagseg.synth import make_phantom
    from tagseg.tags import build_tags
    from tagseg.tags import text_encoder as te
    from tagseg.tags.checkpoint import save_model
    from tagseg.tags.crop import Intensity
    from tagseg.tags.fit import Case, fit

    folder = tmp_path_factory.mktemp("tags_tiny")
    phantom = make_phantom(**TINY_PHANTOM)
    organ = phantom.organs[phantom.tumour_organ]
    model = build_tags("tags-tiny", seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = te.make_text_encoder(model.config.text_encoder)
    word = te.object_word(phantom.tumour_organ, mode="anatomy")
    class_embeddings = te.class_embeddings(encoder, word)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        history = fit(
            model,
            [Case(phantom.image, phantom.label, organ)],
            Intensity.from_metadata(TINY_INTENSITY),
            class_embeddings,
            steps=TRAIN_STEPS,
            lr=1e-3,
            seed=0,
        )
    checkpoint = folder / "liver-tiny.safetensors"
    save_model(
        model,
        checkpoint,
        task="synthetic-liver",
        anatomy=phantom.tumour_organ,
        intensity=TINY_INTENSITY,
        text={"encoder": model.config.text_encoder, "object_word": word, "object_word_mode": "anatomy"},
        organ_labels=[phantom.tumour_organ],
        class_embeddings=class_embeddings,
        provenance={"trained_on": "tagseg.synth phantom seed 1", "steps": TRAIN_STEPS},
    )
    image_path, label_path, organ_path = folder / "image.nii.gz", folder / "label.nii.gz", folder / "organ.nii.gz"
    save_volume(phantom.image, image_path)
    save_volume(phantom.label, label_path)
    save_volume(organ, organ_path)
    organ_dir = folder / "organs"
    organ_dir.mkdir()
    for name, mask in phantom.organs.items():
        save_volume(mask, organ_dir / f"{name}.nii.gz")
    trained = dict(model=model, initial=initial, history=history, checkpoint=Path(checkpoint), word=word)
    files = dict(image_path=image_path, label_path=label_path, organ_path=organ_path, organ_dir=organ_dir)
    return SimpleNamespace(**trained, **files, phantom=phantom, organ=organ, class_embeddings=class_embeddings)


@pytest.fixture(scope="module")
def shared_backend():
    """The real default backend, loaded once per test module; every Session the module opens gets it."""
    from dataclasses import replace

    from tagseg import backends

    backend = backends.create_backend(DEFAULT_MODEL, "cpu")
    with pytest.MonkeyPatch.context() as patch:  # the same kind (its options and capabilities), this instance
        patch.setitem(backends.BACKENDS, DEFAULT_MODEL, replace(backends.LITEMEDSAM_3D, build=lambda d, o: backend))
        yield backend


@pytest.fixture()
def register_backend():
    """`register_backend(instance)`: a scripted Backend becomes the model named `instance.name`, for one test."""
    from tagseg import backends

    names = []

    def register(instance):
        backends.register_backend(instance.name, lambda device, options: instance)
        names.append(instance.name)
        return instance

    yield register
    for name in names:
        backends.BACKENDS.pop(name, None)
    backends.release_shared_backends()


@pytest.fixture()
def in_process_engine_url():
    """`tagseg serve`'s app in this process (uvicorn on a thread, loopback), so it runs backends the test
    registered; its URL. Shut down after the test."""
    import threading

    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from tagseg.server import Engine, _bind, build_app

    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(build_app(Engine("cpu", None, 1 << 24)), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started:
        assert thread.is_alive(), "the in-process server did not start"
        started.wait(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(60)
