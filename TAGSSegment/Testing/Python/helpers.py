"""Test helpers written once: 4x4 matrices between vtk and numpy, and `.seg.nrrd` files read back the way Slicer
reads them (slicer-core's segmentation storage node) and by a second, independent reader (pynrrd).

slicer, vtk and TAGSSegmentLib are imported inside the functions, so GUI-free tests can import this module where
slicer-core is not installed. Not a test module (no `test_` prefix): pytest collects nothing here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# ---- matrices ----------------------------------------------------------------------------------------------------
def matrix_to_vtk(array) -> vtk.vtkMatrix4x4:  # noqa: F821
    """A vtkMatrix4x4 holding the 4x4 numpy `array`."""
    import vtk

    out = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            out.SetElement(row, col, float(array[row, col]))
    return out


def matrix_from_vtk(matrix) -> np.ndarray:
    """The 4x4 numpy array of a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def _read_matrix(getter) -> np.ndarray:
    """Call a VTK getter that fills a vtkMatrix4x4 argument; its matrix as numpy."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return matrix_from_vtk(matrix)


def image_to_world(image) -> np.ndarray:
    """A vtkOrientedImageData's image-to-world (IJK -> RAS) matrix as numpy."""
    return _read_matrix(image.GetImageToWorldMatrix)


def world_to_image(image) -> np.ndarray:
    """A vtkOrientedImageData's world-to-image (RAS -> IJK) matrix as numpy."""
    return _read_matrix(image.GetWorldToImageMatrix)


def node_ijk_to_ras(node) -> np.ndarray:
    """A volume node's own IJK -> RAS matrix (parent transforms not applied) as numpy."""
    return _read_matrix(node.GetIJKToRASMatrix)


# ---- .seg.nrrd through slicer-core ----------------------------------------------------------------------------------
def write_seg_nrrd(scene, segmentation_node, path) -> None:
    """Save `segmentation_node` as a .seg.nrrd with Slicer's own storage node."""
    import slicer

    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation_node), f"slicer could not write {path}"


def read_seg_nrrd(path, scene=None):
    """A segmentation node read from `path` by Slicer's own storage node, in `scene` (a bare new scene if None)."""
    import slicer

    if scene is None:
        scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"slicer could not read {path}"
    return node


def segment_names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]


def check_seg_nrrd_with_pynrrd(path, name: str | None, ijk_to_ras: np.ndarray, mask: np.ndarray) -> None:
    """A third reader (pynrrd, when installed): the header's LPS geometry, the segment's name (unless None) and the
    voxels match the volume grid."""
    try:
        import nrrd
    except ImportError:
        return
    data, header = nrrd.read(str(path), index_order="C")
    directions = LPS_TO_RAS @ np.asarray(header["space directions"], float).T  # columns = i, j, k axes
    origin = LPS_TO_RAS @ np.asarray(header["space origin"], float)
    offset = np.array(header.get("Segmentation_ReferenceImageExtentOffset", "0 0 0").split(), float)
    np.testing.assert_allclose(directions, ijk_to_ras[:3, :3], atol=1e-4)
    np.testing.assert_allclose(origin, (ijk_to_ras @ np.r_[offset, 1.0])[:3], atol=1e-3)
    assert name is None or header["Segment0_Name"] == name
    k, j, i = offset[::-1].astype(int)
    value = int(header["Segment0_LabelValue"])
    assert data.ndim == 3 and np.count_nonzero(data == value) == np.count_nonzero(mask)
    assert np.array_equal(data == value, mask[k : k + data.shape[0], j : j + data.shape[1], i : i + data.shape[2]] > 0)


def assert_seg_nrrd_round_trip(
    path: Path, volume, name: str, mask: np.ndarray, *, volume_name: str | None = None, color=None
) -> None:
    """The .seg.nrrd at `path`, read back by slicer-core in a fresh scene beside `volume`, holds exactly one
    segment called `name` (in `color` when given), on the volume's grid, with exactly `mask`'s voxels (read with
    the extension's own `segment_mask`); pynrrd agrees on geometry, name and voxels."""
    import slicer

    from slicer_harness import make_scene
    from TAGSSegmentLib import logic as L

    fresh = make_scene()
    node_in = L.volume_node_from_volume(fresh.scene, volume, volume_name)
    seg_in = read_seg_nrrd(path, fresh.scene)
    segmentation = seg_in.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    sid_in = segmentation.GetNthSegmentID(0)
    assert segmentation.GetSegment(sid_in).GetName() == name
    if color is not None:
        np.testing.assert_allclose(segmentation.GetSegment(sid_in).GetColor(), color, atol=1e-3)
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(seg_in, sid_in, labelmap, False)
    np.testing.assert_allclose(image_to_world(labelmap), volume.ijk_to_ras, atol=1e-4)
    assert np.array_equal(L.segment_mask(seg_in, sid_in, node_in).array, mask)
    check_seg_nrrd_with_pynrrd(path, name, volume.ijk_to_ras, mask)
