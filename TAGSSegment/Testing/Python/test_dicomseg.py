"""DICOM SEG output (`-o OUT.dcm`, `-o DIR --dicom-seg`): it reads back with pydicom and highdicom, carries the
source series' patient, study and references and the description's terminology codes, and covers exactly the
voxels of the label map written from the same result. The DICOM series is generated here (SimpleITK), in a
coronal orientation and written in shuffled file order, so no axis convention can cancel out.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from tagseg import commands, dicomseg  # noqa: E402
from tagseg.backends.base import Backend  # noqa: E402
from tagseg.io import LPS_TO_RAS, load_volume, save_volume  # noqa: E402
from tagseg.text import parse_description  # noqa: E402

SERIES_UID = "1.2.826.0.1.3680043.2.1125.41"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.42"
ROWS, COLS, SLICES = 12, 16, 6


def write_series(folder):
    """Coronal slices (rows run inferior, normal anterior-posterior), 0.8 x 0.7 mm pixels, 2.5 mm apart."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in (3, 0, 5, 1, 4, 2):
        pixels = (np.arange(ROWS * COLS).reshape(ROWS, COLS) * 3 + index * 40 - 500).astype(np.int16)
        image = sitk.GetImageFromArray(pixels[None])
        image.SetSpacing((0.8, 0.7, 2.5))  # columns 0.8 mm apart, rows 0.7 mm
        for tag, value in (
            ("0008|0060", "CT"),
            ("0010|0010", "Phantom^Coronal"),
            ("0010|0020", "P-41"),
            ("0020|000d", STUDY_UID),
            ("0020|000e", SERIES_UID),
            ("0020|0052", SERIES_UID + ".9"),
            ("0020|0011", "7"),
            ("0020|0013", str(index + 1)),
            ("0020|0032", f"-10\\{index * 2.5 - 20}\\5"),
            ("0020|0037", "1\\0\\0\\0\\0\\-1"),
            ("0028|0030", "0.7\\0.8"),
            ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
            ("0008|0018", f"{SERIES_UID}.{index + 1}"),
        ):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"img{index * 7 % 6}.dcm"))
        writer.Execute(image)


class ScriptedBackend(Backend):
    name = "scripted-dicomseg"

    def __init__(self):
        super().__init__()
        self.mask = None
        self.calls = 0

    def set_image(self, volume):
        pass

    def predict(self, prompts):
        self.calls += 1
        return self.mask.copy()


@pytest.fixture()
def case(tmp_path, register_backend):
    write_series(tmp_path / "series")
    volume = load_volume(tmp_path / "series")
    mask = np.zeros(volume.shape_kji, np.uint8)
    mask[1:4, 2:7, 3:10] = 1
    mask[4, 9, 14] = 1  # one lone voxel near a corner
    backend = register_backend(ScriptedBackend())
    backend.mask = mask
    click = volume.kji_to_ras([(2, 4, 6)])[0]
    args = [
        "--point=" + ",".join(f"{v:.3f}" for v in click),
        "--model",
        ScriptedBackend.name,
        "--device",
        "cpu",
        "--text",
        "liver tumor",
    ]
    return SimpleNamespace(folder=tmp_path / "series", volume=volume, mask=mask, backend=backend, args=args)


def run(capsys, *args):
    code = commands.main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(code=code, out=captured.out, err=captured.err)


def seg_voxels_in(seg, volume) -> set:
    """The SEG's voxels as KJI indices of `volume`, placed by highdicom's own geometry (not tagseg's)."""
    hd_volume = seg.get_volume(combine_segments=True)
    frames = np.argwhere(hd_volume.array > 0)
    lps = (hd_volume.affine @ np.column_stack([frames, np.ones(len(frames))]).T)[:3].T
    kji = volume.ras_to_kji(lps @ LPS_TO_RAS[:3, :3].T)
    assert np.allclose(kji, np.rint(kji), atol=1e-3), "every SEG pixel sits on a voxel centre of the series"
    return {tuple(int(v) for v in row) for row in np.rint(kji)}


def test_seg_reads_back_with_the_source_references_codes_and_the_label_map_voxels(capsys, tmp_path, case):
    seg_path, nifti_path = tmp_path / "out" / "result.dcm", tmp_path / "result.nii.gz"
    done = run(capsys, "segment", case.folder, "-o", seg_path, *case.args)
    assert done.code == 0, done.err
    assert run(capsys, "segment", case.folder, "-o", nifti_path, *case.args).code == 0

    raw = pydicom.dcmread(seg_path)
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    seg = hd.seg.segread(seg_path)
    assert (str(seg.PatientName), seg.PatientID, seg.StudyInstanceUID) == ("Phantom^Coronal", "P-41", STUDY_UID)
    assert seg.FrameOfReferenceUID == SERIES_UID + ".9"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == SERIES_UID
    assert sorted(i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence) == sorted(
        f"{SERIES_UID}.{n}" for n in range(1, SLICES + 1)
    )

    segment = seg.get_segment_description(1)
    entry = parse_description("liver tumor").terminology()
    assert segment.segment_label == "liver tumor"
    assert (
        (segment.segmented_property_category.value, segment.segmented_property_type.value)
        == (entry.category.value, entry.type.value)
        == ("49755003", "4147007")
    )
    assert segment.anatomic_regions[0].value == entry.region.value == "10200004"
    assert segment.anatomic_regions[0].scheme_designator == "SCT"

    label_map = load_volume(nifti_path)
    expected = {tuple(int(v) for v in row) for row in np.argwhere(np.asarray(label_map.array) > 0)}
    assert expected == {tuple(int(v) for v in row) for row in np.argwhere(case.mask)}
    assert seg_voxels_in(seg, label_map) == expected, "the SEG covers exactly the label map's voxels"


def test_dicom_seg_flag_writes_into_a_folder(capsys, tmp_path, case):
    folder = tmp_path / "pacs-export"
    done = run(capsys, "segment", case.folder, "-o", folder, "--dicom-seg", *case.args, "--json")
    assert done.code == 0, done.err
    files = list(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".dcm"
    assert seg_voxels_in(hd.seg.segread(files[0]), case.volume) == {
        tuple(int(v) for v in row) for row in np.argwhere(case.mask)
    }


def test_non_dicom_input_is_refused_before_the_model_runs(capsys, tmp_path, case):
    image = tmp_path / "ct.nii.gz"
    save_volume(case.volume, image)
    refused = run(capsys, "segment", image, "-o", tmp_path / "seg.dcm", *case.args)
    assert refused.code == 2 and case.backend.calls == 0
    assert refused.err.count("\n") == 1 and refused.err.startswith("tagseg: error:")
    assert "needs a DICOM series" in refused.err
    assert not (tmp_path / "seg.dcm").exists()


def test_an_empty_result_is_a_valid_empty_seg(tmp_path, case):
    empty = case.volume.with_array(np.zeros(case.volume.shape_kji, np.uint8))
    path = dicomseg.save_dicom_seg(empty, case.volume, tmp_path / "empty.dcm", "lesion")
    assert not dicomseg.read_dicom_seg(path, case.volume).any()
    assert hd.seg.segread(path).get_segment_description(1).segmented_property_type.meaning == "Mass"


def test_a_seg_that_does_not_read_back_right_is_never_renamed_into_place(tmp_path, case, monkeypatch):
    mask = case.volume.with_array(case.mask)
    monkeypatch.setattr(dicomseg, "read_dicom_seg", lambda path, like: np.zeros(like.shape_kji, np.uint8))
    from tagseg.errors import InputError

    with pytest.raises(InputError, match="differs from the mask"):
        dicomseg.save_dicom_seg(mask, case.volume, tmp_path / "bad.dcm", "lesion")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


EXAMPLE_SERIES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ct_organs" / "example_ct_dicom"


def test_a_seg_on_the_real_example_series_matches_the_label_map_voxels(tmp_path):
    """A real anonymised CT series whose datasets carry blank SOP Class/Instance UIDs (kept in the file meta)."""
    if not EXAMPLE_SERIES.is_dir():
        pytest.skip(f"the example DICOM series is not on this machine ({EXAMPLE_SERIES})")
    volume = load_volume(EXAMPLE_SERIES)
    mask = np.zeros(volume.shape_kji, np.uint8)
    mask[8:12, 200:260, 300:340] = 1
    mask[0, 0, 511] = 1  # a corner voxel: the grid's orientation shows
    result = volume.with_array(mask)
    path = dicomseg.save_dicom_seg(result, volume, tmp_path / "real.dcm", "liver lesion")
    seg = hd.seg.segread(path)
    assert (
        seg.Modality == "SEG"
        and seg.FrameOfReferenceUID
        == pydicom.dcmread(sorted(EXAMPLE_SERIES.iterdir())[0], stop_before_pixels=True).FrameOfReferenceUID
    )
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == volume.shape_kji[0]
    assert seg_voxels_in(seg, volume) == {tuple(int(v) for v in row) for row in np.argwhere(mask)}
