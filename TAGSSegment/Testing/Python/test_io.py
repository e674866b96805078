"""Reading and writing volumes: geometry survives every format, and bad inputs fail with a useful message.

io.py is the only place where ITK's LPS geometry meets our RAS `Volume`, so each format is
cross-checked against an independent reader (nibabel, pynrrd, SimpleITK, slicer-core).
"""

import gzip
import os
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import check_seg_nrrd_with_pynrrd, matrix_to_vtk, read_seg_nrrd
from tagseg.errors import InputError
from tagseg.io import load_volume, save_segmentation, save_volume
from tagseg.volume import Volume, check_volume, make_ijk_to_ras

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
DICOM_DIR = SHARED_DATA / "ct_organs" / "example_ct_dicom"

SHAPE = (6, 7, 8)
SPACING = (0.8, 0.75, 2.5)
ORIGIN = (-10.5, 20.25, 30.0)
KNOWN_KJI = (2, 3, 4)


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


DIRECTIONS = {
    "lps": np.diag([-1.0, -1.0, 1.0]),  # identity direction in the file
    "ras_flipped": np.eye(3),  # diag(-1, -1, 1) in the file
    "oblique": rotation([0.3, 1.0, 0.2], 20) @ np.diag([-1.0, -1.0, 1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),  # left-handed
}
FORMATS = [".nii.gz", ".nrrd", ".mha"]


def make_volume(geometry: str, dtype=np.int16) -> Volume:
    values = np.random.default_rng(0).integers(-1000, 1000, size=SHAPE).astype(dtype)
    return Volume(values, make_ijk_to_ras(SPACING, ORIGIN, DIRECTIONS[geometry]), name=geometry)


def known_voxel_ras(volume: Volume) -> np.ndarray:
    return volume.kji_to_ras([KNOWN_KJI])[0]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("geometry", DIRECTIONS)
def test_save_and_load_round_trip(tmp_path, suffix, geometry):
    vol = make_volume(geometry)
    path = tmp_path / f"vol{suffix}"
    save_volume(vol, path)
    back = load_volume(path)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == [path.name]

    image = sitk.ReadImage(str(path))
    k, j, i = KNOWN_KJI
    lps = np.array(image.TransformIndexToPhysicalPoint((i, j, k)))
    np.testing.assert_allclose(lps * [-1, -1, 1], known_voxel_ras(vol), atol=1e-4)
    assert image.GetPixel(i, j, k) == vol.array[KNOWN_KJI]


@pytest.mark.parametrize("geometry", DIRECTIONS)
def test_nifti_geometry_matches_nibabel(tmp_path, geometry):
    nib = pytest.importorskip("nibabel")
    vol = make_volume(geometry)
    path = tmp_path / "vol.nii.gz"
    save_volume(vol, path)
    image = nib.load(str(path))
    k, j, i = KNOWN_KJI
    ras = (image.affine @ [i, j, k, 1])[:3]  # nibabel's affine is voxel -> RAS
    np.testing.assert_allclose(ras, known_voxel_ras(vol), atol=1e-4)
    assert np.asarray(image.dataobj)[i, j, k] == vol.array[KNOWN_KJI]


@pytest.mark.parametrize("geometry", DIRECTIONS)
def test_nrrd_geometry_matches_pynrrd(tmp_path, geometry):
    nrrd = pytest.importorskip("nrrd")
    vol = make_volume(geometry)
    path = tmp_path / "vol.nrrd"
    save_volume(vol, path)
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    k, j, i = KNOWN_KJI
    lps = np.asarray(header["space origin"]) + np.asarray(header["space directions"]).T @ [i, j, k]
    np.testing.assert_allclose(lps * [-1, -1, 1], known_voxel_ras(vol), atol=1e-4)
    assert data[i, j, k] == vol.array[KNOWN_KJI]


@pytest.fixture(scope="module")
def mrml():
    """slicer-core's real MRML scene and logics, with the `slicer.mrmlScene`/`slicer.modules` shim (ENVIRONMENT.md §3)."""
    try:
        import slicer
    except ImportError as exc:
        pytest.skip(f"slicer-core is not importable ({exc}); install the [test] extra")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()

    def register(logic, name):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        return logic

    register(app_logic.GetColorLogic(), "Colors")
    volumes_logic = register(slicer.vtkSlicerVolumesLogic(), "Volumes")
    seg_logic = register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
    modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: seg_logic),
        volumes=types.SimpleNamespace(logic=lambda: volumes_logic),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slicer, "mrmlScene", scene, raising=False)
        patch.setattr(slicer, "modules", modules, raising=False)
        yield types.SimpleNamespace(slicer=slicer, scene=scene)
    scene.Clear(1)


def _volume_node(mrml, volume: Volume):
    import vtk
    from vtk.util import numpy_support

    node = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "reference")
    node.SetIJKToRASMatrix(matrix_to_vtk(volume.ijk_to_ras))
    k, j, i = volume.shape_kji
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(
        numpy_support.numpy_to_vtk(np.zeros(k * j * i, np.int16), deep=True, array_type=vtk.VTK_SHORT)
    )
    node.SetAndObserveImageData(image)
    return node


@pytest.mark.parametrize("geometry,filled", [("lps", True), ("oblique", True), ("permuted", True), ("lps", False)])
def test_seg_nrrd_opens_in_slicer_as_one_segment(tmp_path, mrml, geometry, filled):
    slicer = mrml.slicer
    vol = make_volume(geometry)
    mask = np.zeros(SHAPE, np.uint8)
    if filled:
        mask[1:4, 2:6, 3:7] = 1
        mask[5, 6, 7] = 1  # a corner voxel: the extent must reach the array edge
    path = tmp_path / "tumour.seg.nrrd"
    save_segmentation(vol.with_array(mask), path, segment_name="liver tumour")
    assert sorted(os.listdir(tmp_path)) == [path.name]

    seg = read_seg_nrrd(path, mrml.scene)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment_id = segmentation.GetNthSegmentID(0)
    assert segmentation.GetSegment(segment_id).GetName() == "liver tumour"
    reference = _volume_node(mrml, vol)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, reference), mask)
    np.testing.assert_array_equal(load_volume(path).array, mask)
    check_seg_nrrd_with_pynrrd(path, "liver tumour", vol.ijk_to_ras, mask)


@pytest.mark.skipif(not DICOM_DIR.is_dir(), reason=f"shared test data not found at {DICOM_DIR}")
def test_dicom_series_folder():
    vol = load_volume(DICOM_DIR)
    assert vol.shape_kji == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing_ijk, (0.98, 0.98, 2.0), atol=0.03)
    check_volume(vol)


def _write_2d(folder: Path) -> Path:
    path = folder / "slice.nrrd"
    sitk.WriteImage(sitk.Image([10, 12], sitk.sitkInt16), str(path))
    return path


def _write_4d(folder: Path) -> Path:
    path = folder / "series.nii.gz"
    sitk.WriteImage(sitk.Image([4, 5, 6, 3], sitk.sitkInt16), str(path))
    return path


def _write_rgb(folder: Path) -> Path:
    path = folder / "photo.nrrd"
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorUInt8, 3), str(path))
    return path


def _write_truncated(folder: Path) -> Path:
    full = folder / "full.nii.gz"
    save_volume(Volume(np.random.default_rng(1).integers(0, 3000, (16, 16, 16)).astype(np.int16), np.eye(4)), full)
    path = folder / "broken.nii.gz"
    path.write_bytes(full.read_bytes()[:300])
    full.unlink()
    return path


def _write_truncated_uncompressed(folder: Path) -> Path:
    full = folder / "full.nii"
    save_volume(Volume(np.ones((8, 8, 8), np.int16), np.eye(4)), full)
    path = folder / "short.nii"
    path.write_bytes(full.read_bytes()[:-100])
    full.unlink()
    return path


def _write_text(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("not an image", encoding="utf-8")
    return path


def _write_gzip_garbage(folder: Path) -> Path:
    path = folder / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 30))
    return path


def _write_zero_spacing(folder: Path) -> Path:
    """SimpleITK refuses to create zero spacing, so the header is written by hand."""
    path = folder / "flat.mha"
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementSpacing = 0 1 1\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + bytes(4 * 5 * 6 * 2))
    return path


def _empty_folder(folder: Path) -> Path:
    path = folder / "no_dicom"
    path.mkdir()
    (path / "readme.txt").write_text("nothing here", encoding="utf-8")
    return path


BAD_INPUTS = {
    "missing": (lambda folder: folder / "absent.nii.gz", "not found"),
    "no_dicom": (_empty_folder, "no DICOM"),
    "2d": (_write_2d, "2D"),
    "4d": (_write_4d, "4D"),
    "rgb": (_write_rgb, "3 components"),
    "truncated": (_write_truncated, "truncated"),
    "truncated_uncompressed": (_write_truncated_uncompressed, "truncated"),
    "text": (_write_text, "unsupported file type"),
    "gzip_garbage": (_write_gzip_garbage, "cannot be read"),
    "zero_spacing": (_write_zero_spacing, "spacing"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_name_the_file_and_the_problem(tmp_path, case):
    make, problem = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        load_volume(path)
    message = str(info.value)
    assert path.name in message
    assert problem in message


def _check(array, matrix=None) -> str:
    with pytest.raises(InputError) as info:
        check_volume(Volume(array, np.eye(4) if matrix is None else matrix, name="scan"))
    assert "scan" in str(info.value)
    return str(info.value)


def test_check_volume_refuses_unusable_volumes():
    assert "NaN" in _check(np.full((3, 4, 5), np.nan, np.float32))
    assert "3D" in _check(np.zeros((4, 5), np.int16))
    assert "3D" in _check(np.zeros((2, 3, 4, 5), np.int16))
    assert "voxel type" in _check(np.zeros((3, 4, 5), np.complex64))
    singular = make_ijk_to_ras((1, 1, 1), (0, 0, 0), [[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    assert "geometry" in _check(np.zeros((3, 4, 5), np.int16), singular)
    assert "geometry" in _check(np.zeros((3, 4, 5), np.int16), make_ijk_to_ras((0.0, 1, 1), (0, 0, 0)))
    assert "geometry" in _check(np.zeros((3, 4, 5), np.int16), make_ijk_to_ras((1, np.nan, 1), (0, 0, 0)))
    check_volume(Volume(np.where(np.arange(60) % 2, np.nan, 1.0).reshape(3, 4, 5), np.eye(4), name="scan"))


def test_failed_write_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch):
    def write_then_fail(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a volume")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", write_then_fail)
    for name in ("out.nii.gz", "out.nrrd", "out.seg.nrrd"):
        with pytest.raises(InputError, match="disk full"):
            save_volume(make_volume("lps"), tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "out.nrrd"
    save_volume(make_volume("lps"), path)
    before = path.read_bytes()
    monkeypatch.setattr(sitk, "WriteImage", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(InputError, match="disk full.*previous file is unchanged"):
        save_volume(make_volume("oblique"), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_unwritable_voxel_type_leaves_nothing(tmp_path):
    with pytest.raises((TypeError, RuntimeError)):
        save_volume(make_volume("lps", dtype=np.float16), tmp_path / "half.nrrd")
    assert os.listdir(tmp_path) == []


def test_unsupported_output_type(tmp_path):
    with pytest.raises(InputError, match="unsupported output type"):
        save_volume(make_volume("lps"), tmp_path / "out.png")
    assert os.listdir(tmp_path) == []
