"""The anatomy prompt from a multi-label map: the organ the text names is taken from its class names
(TotalSegmentator v2's numbering, a JSON sidecar, a `.seg.nrrd`'s segment names), and a map with several labels
and no names is refused instead of becoming "any organ". Label maps are generated here.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from tagseg import commands
from tagseg.anatomy import TOTALSEGMENTATOR_V2, load_anatomy, name_key, select_organ
from tagseg.backends.base import Backend
from tagseg.errors import InputError, PromptError
from tagseg.io import LPS_TO_RAS, save_volume
from tagseg.session import Session
from tagseg.volume import Volume, make_ijk_to_ras

SHAPE = (10, 40, 40)
MATRIX = make_ijk_to_ras((2.0, 2.0, 3.0), (-40.0, -40.0, -15.0))
# TotalSegmentator v2 numbering: 2 kidney_right, 3 kidney_left, 5 liver, 7 pancreas
BLOCKS = {
    2: (slice(2, 8), slice(5, 15), slice(5, 12)),
    3: (slice(2, 8), slice(5, 15), slice(28, 35)),
    5: (slice(1, 9), slice(20, 35), slice(5, 20)),
    7: (slice(3, 7), slice(22, 30), slice(24, 36)),
}


def label_map() -> Volume:
    array = np.zeros(SHAPE, np.uint8)
    for label, block in BLOCKS.items():
        array[block] = label
    return Volume(array, MATRIX, "organs")


def expected(*labels) -> np.ndarray:
    return np.isin(label_map().array, labels).astype(np.uint8)


def test_totalsegmentator_numbering_picks_both_kidneys(tmp_path):
    path = tmp_path / "organs.nii.gz"
    save_volume(label_map(), path)
    organ = load_anatomy(path, "kidney", classes="totalsegmentator")
    assert np.array_equal(organ.array, expected(2, 3))
    assert organ.name == "kidney_right+kidney_left"
    assert np.array_equal(load_anatomy(path, "pancreas", classes="totalsegmentator").array, expected(7))
    assert TOTALSEGMENTATOR_V2[7] == "pancreas" and TOTALSEGMENTATOR_V2[90] == "brain"


def test_json_sidecar_beside_the_map_is_used_without_asking(tmp_path):
    path = tmp_path / "mine.nii.gz"
    save_volume(label_map(), path)
    (tmp_path / "mine.json").write_text(
        json.dumps({"2": "Right kidney", "3": "left kidney", "5": "Liver", "7": "spleen"}), encoding="utf-8"
    )
    assert np.array_equal(load_anatomy(path, "liver").array, expected(5))
    assert np.array_equal(load_anatomy(path, "kidney").array, expected(2, 3)), "names match whatever the word order"
    assert np.array_equal(load_anatomy(path, "spleen").array, expected(7))
    with pytest.raises(InputError, match="no class named pancreas"):
        load_anatomy(path, "pancreas")


def write_seg_nrrd(path, layers, segments):
    """A Slicer-style segmentation: one component per layer, SegmentN_* header keys."""
    images = [sitk.GetImageFromArray(layer) for layer in layers]
    image = images[0] if len(images) == 1 else sitk.Compose(images)
    linear = (LPS_TO_RAS @ MATRIX)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple((linear / spacing).ravel()))
    image.SetOrigin(tuple((LPS_TO_RAS @ MATRIX)[:3, 3]))
    for n, (name, layer, label) in enumerate(segments):
        image.SetMetaData(f"Segment{n}_ID", f"Segment_{n + 1}")
        image.SetMetaData(f"Segment{n}_Name", name)
        image.SetMetaData(f"Segment{n}_Layer", str(layer))
        image.SetMetaData(f"Segment{n}_LabelValue", str(label))
    sitk.WriteImage(image, str(path), True)


def test_seg_nrrd_segment_names_are_the_classes_including_overlapping_layers(tmp_path):
    labels = label_map().array
    liver = (labels == 5).astype(np.uint8)
    kidneys = np.where(labels == 2, 1, 0) + np.where(labels == 3, 2, 0)
    path = tmp_path / "organs.seg.nrrd"
    write_seg_nrrd(
        path, [kidneys.astype(np.uint8), liver], [("Kidney right", 0, 1), ("Kidney left", 0, 2), ("Liver", 1, 1)]
    )
    assert np.array_equal(load_anatomy(path, "kidney").array, expected(2, 3))
    assert np.array_equal(load_anatomy(path, "liver").array, liver)
    with pytest.raises(InputError, match="no segment named pancreas"):
        load_anatomy(path, "pancreas")


def test_several_labels_without_names_are_refused_and_a_binary_mask_is_kept():
    with pytest.raises(PromptError, match="4 labels .* and no class names"):
        select_organ(label_map(), "kidney")
    binary = label_map().with_array(expected(5) * 255)
    assert select_organ(binary, "kidney") is binary, "one label is a binary mask, used as today"
    fractions = label_map().with_array(expected(5) * np.float32(0.7))
    assert select_organ(fractions, None) is fractions


def test_a_description_without_an_organ_cannot_pick_one(tmp_path):
    with pytest.raises(PromptError, match="needs a description naming the organ"):
        select_organ(label_map(), None, classes="totalsegmentator")
    assert name_key("lung_upper_lobe_left") == name_key("Upper lobe of the left lung")


def test_session_takes_the_organ_from_its_text():
    image = Volume(np.zeros(SHAPE, np.int16), MATRIX, "ct")
    with Session(image, model="litemedsam-3d", device="cpu") as session:
        session.set_text("tumeur du pancréas")
        session.set_anatomy(label_map(), classes={7: "pancreas", 5: "liver"})
        assert np.array_equal(session.prompts.anatomy.array, expected(7))
        with pytest.raises(PromptError, match="no class names"):
            session.set_anatomy(label_map())


class RecordingBackend(Backend):
    name = "recording-anatomy"

    def __init__(self):
        super().__init__()
        self.anatomy = None

    def set_image(self, volume):
        pass

    def predict(self, prompts):
        self.anatomy = prompts.anatomy
        return (np.asarray(prompts.anatomy) > 0).astype(np.uint8)


def run(capsys, *args):
    code = commands.main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(code=code, out=captured.out, err=captured.err)


def test_cli_picks_the_organ_from_a_label_map_and_refuses_one_without_names(capsys, tmp_path, register_backend):
    backend = register_backend(RecordingBackend())
    image = tmp_path / "ct.nii.gz"
    save_volume(Volume(np.zeros(SHAPE, np.int16), MATRIX, "ct"), image)
    organs = tmp_path / "total.nii.gz"
    save_volume(label_map(), organs)
    click = Volume(np.zeros(SHAPE, np.int16), MATRIX).kji_to_ras([(5, 10, 30)])[0]
    common = [
        image,
        "--point=" + ",".join(f"{v:.2f}" for v in click),
        "--model",
        RecordingBackend.name,
        "--device",
        "cpu",
        "--anatomy",
        organs,
    ]

    refused = run(capsys, "segment", *common, "-o", tmp_path / "a.nii.gz", "--text", "kidney tumor")
    assert refused.code == 2
    assert refused.err.strip().splitlines() == [refused.err.strip()], "one line"
    assert refused.err.startswith("tagseg: error:") and "--anatomy-classes totalsegmentator" in refused.err
    assert not (tmp_path / "a.nii.gz").exists() and backend.anatomy is None

    done = run(
        capsys,
        "segment",
        *common,
        "-o",
        tmp_path / "b.nii.gz",
        "--text",
        "Nierentumor links",
        "--anatomy-classes",
        "totalsegmentator",
    )
    assert done.code == 0, done.err
    assert np.array_equal(backend.anatomy > 0, expected(2, 3) > 0)

    no_organ = run(
        capsys,
        "segment",
        *common,
        "-o",
        tmp_path / "c.nii.gz",
        "--text",
        "lesion",
        "--anatomy-classes",
        "totalsegmentator",
    )
    assert no_organ.code == 2 and "--text naming the organ" in no_organ.err
