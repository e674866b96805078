"""GUI-free logic of the TAGSSegment extension.

It turns MRML nodes into `tagseg` volumes and prompts, writes model masks through the Segment Editor's
own write path (undo, masking and overwrite settings keep working), and runs predictions in a `tagseg
serve` engine process (`TAGSLogic`, driven from the main thread by `poll()`; see `engine.py`) or, as a
fallback, in Slicer's process on a worker thread (`InProcessTAGSLogic`). It imports only slicer's
MRML/logic classes, vtk, numpy, the standard library and `tagseg`, so CI tests it against slicer-core
(the real MRML stack on PyPI) and Slicer's self-test and the CI test share one body (`run_selftest`).

Conventions used everywhere in this module:
- every RAS point or box entering or leaving it is WORLD RAS (parent transforms applied), which is what
  markups report with `GetNthControlPointPositionWorld` and what a Slicer user sees at the cursor;
- every mask array is uint8 in KJI order on the source volume's voxel grid (`arrayFromVolume` order);
- the user's voxels are read (copied or viewed), never modified.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

import tagseg
from tagseg.errors import InputError, PromptError
from tagseg.text import parse_description
from tagseg.volume import Volume, check_volume
from TAGSSegmentLib.naming import (  # noqa: F401 (segment naming lives in naming.py; re-exported)
    ANATOMY_COLORS,
    DEFAULT_SEGMENT_NAME,
    GENERAL_ANATOMY_CONTEXT,
    add_segment,
    segment_color,
)

DEFAULT_SEGMENTATION_NAME = "TAGS segmentation"

# --------------------------------------------------------------------------------------------------------------
# small vtk <-> numpy helpers


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _translation(offset_ijk: Sequence[float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset_ijk
    return matrix


def _node_label(node) -> str:
    return node.GetName() or node.GetID() or node.GetClassName()


def _to_world(node, what: str) -> np.ndarray:
    """4x4 from the node's own frame to world; a non-linear parent chain cannot be a matrix."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"{what} '{_node_label(node)}' is under a non-linear transform; harden it first")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _matrix_to_numpy(matrix)


def _between(source_node, target_node) -> np.ndarray:
    """4x4 from `source_node`'s frame to `target_node`'s frame (both may be transformed)."""
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        source_node.GetParentTransformNode(), target_node.GetParentTransformNode(), matrix
    ):
        raise InputError(
            f"the transform between '{_node_label(source_node)}' and '{_node_label(target_node)}' "
            "is non-linear; harden it first"
        )
    return _matrix_to_numpy(matrix)


def _image_array(image) -> np.ndarray:
    """A KJI copy of a single-component vtkImageData."""
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return np.array(flat.reshape(dims[2], dims[1], dims[0]), copy=True)


def _image_is_empty(image) -> bool:
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return True
    extent = image.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return True
    return not numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).any()


def _check_scalar_volume_node(volume_node):
    """The node's image data, or InputError naming why the node cannot be a source volume."""
    if volume_node is None:
        raise InputError("no source volume selected")
    label = _node_label(volume_node)
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"'{label}' is a {volume_node.GetClassName()}, not a scalar volume")
    image = volume_node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        raise InputError(f"volume '{label}' has no voxel data")
    components = scalars.GetNumberOfComponents()
    if volume_node.IsA("vtkMRMLVectorVolumeNode") or components != 1:
        raise InputError(
            f"volume '{label}' has {components} components per voxel (RGB or vector); a single-"
            "component scalar volume is needed (convert it with 'Vector to Scalar Volume')"
        )
    return image


def _local_ijk_to_ras(volume_node, image) -> np.ndarray:
    """IJK->RAS in the node's own frame, for array index 0 (the image extent may not start at 0)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    extent = image.GetExtent()
    return _matrix_to_numpy(matrix) @ _translation((extent[0], extent[2], extent[4]))


def _grid(volume_node) -> tuple[np.ndarray, tuple[int, int, int]]:
    """World IJK->RAS and KJI shape of a source volume, without copying voxels."""
    image = _check_scalar_volume_node(volume_node)
    world = _to_world(volume_node, "volume") @ _local_ijk_to_ras(volume_node, image)
    dims = image.GetDimensions()
    return world, (int(dims[2]), int(dims[1]), int(dims[0]))


# --------------------------------------------------------------------------------------------------------------
# nodes -> tagseg inputs


def volume_from_node(volume_node) -> Volume:
    """The node as a `tagseg.Volume`: voxels copied (KJI), IJK->RAS in world coordinates.

    World coordinates because clicks, markups and ROIs are reported in world RAS; the parent transform
    chain is applied when linear, and a non-linear one is refused (it has no IJK->RAS matrix)."""
    image = _check_scalar_volume_node(volume_node)
    world = _to_world(volume_node, "volume") @ _local_ijk_to_ras(volume_node, image)
    parent = volume_node.GetParentTransformNode()
    meta = {"node_id": volume_node.GetID(), "transform_id": parent.GetID() if parent is not None else None}
    volume = Volume(_image_array(image), world, name=_node_label(volume_node), meta=meta)
    check_volume(volume)
    return volume


def world_points(markups_node) -> np.ndarray:
    """World RAS (N, 3) of the node's placed control points; points still being placed are skipped."""
    if markups_node is None:
        return np.zeros((0, 3))
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position)
        points.append(position)
    return np.asarray(points, dtype=np.float64).reshape(-1, 3)


def world_box(roi_node) -> tuple[np.ndarray, np.ndarray]:
    """World-RAS axis-aligned bounds (lo, hi) of a markups ROI (a rotated or transformed ROI gives the box
    that encloses it, which is what a box prompt can express)."""
    if roi_node is None:
        raise PromptError("no ROI selected for the box prompt")
    bounds = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    roi_node.GetRASBounds(bounds)
    lo, hi = np.array(bounds[0::2], dtype=np.float64), np.array(bounds[1::2], dtype=np.float64)
    if not np.all(np.isfinite(bounds)) or np.any(hi < lo) or np.all(hi - lo <= 0):
        raise PromptError(f"ROI '{_node_label(roi_node)}' has no box yet; place it first")
    return lo, hi


def segment_mask(segmentation_node, segment_id: str, volume_node) -> Volume | None:
    """A segment as a binary uint8 Volume on the volume's world grid (nearest neighbour), None when empty.

    Works whatever the segmentation's geometry and transform: the segment is mapped through world
    coordinates onto the volume's voxels (used for the anatomy prompt and for reading results back)."""
    if segmentation_node is None:
        raise PromptError("no segmentation selected")
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment is None:
        raise PromptError(f"segment '{segment_id}' is not in segmentation '{_node_label(segmentation_node)}'")
    target_matrix, target_shape = _grid(volume_node)
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, image, False
    ):
        raise InputError(f"segment '{segment.GetName()}' has no binary labelmap (conversion failed)")
    if _image_is_empty(image):
        return None
    binary = (_image_array(image) == segment.GetLabelValue()).astype(np.uint8)
    if not binary.any():
        return None
    extent = image.GetExtent()
    image_to_node = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_node)  # "world" of an oriented image = the segmentation node's frame
    source_matrix = (
        _to_world(segmentation_node, "segmentation")
        @ _matrix_to_numpy(image_to_node)
        @ _translation((extent[0], extent[2], extent[4]))
    )
    block, lo = _resample_block(binary, source_matrix, target_matrix, target_shape)
    if block is None or not block.any():
        return None
    out = np.zeros(target_shape, dtype=np.uint8)
    out[lo[0] : lo[0] + block.shape[0], lo[1] : lo[1] + block.shape[1], lo[2] : lo[2] + block.shape[2]] = block
    return Volume(out, target_matrix, name=segment.GetName(), meta={"segment_id": segment_id})


def _resample_block(
    binary: np.ndarray, source_matrix: np.ndarray, target_matrix: np.ndarray, target_shape: Sequence[int] | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Nearest-neighbour resampling of a binary KJI mask onto only the block of the target grid its voxels
    can reach (whole-grid resampling of a 512x512xN volume per click would be slow). Returns the uint8 block
    and its first target index (KJI); (None, 0) when nothing lands on the target (clipped to target_shape)."""
    from tagseg.geometry import Grid, resample

    nz = np.argwhere(binary)
    if len(nz) == 0:
        return None, np.zeros(3, int)
    source = Volume(binary, source_matrix)
    target = Grid(target_matrix, () if target_shape is None else tuple(target_shape))  # () = extent unknown
    block = target.block_covering(source.grid, nz.min(0), nz.max(0), clip=target_shape is not None)
    if block is None:
        return None, np.zeros(3, int)
    lo, hi = block
    resampled = resample(source, target.sub_grid(lo, hi), order=0)
    return (np.asarray(resampled.array) > 0).astype(np.uint8), lo


def _mask_bbox(mask: np.ndarray):
    """Half-open KJI bounding box of the non-zero voxels, None when there are none (per-axis reductions)."""
    from tagseg.geometry import mask_bbox

    return mask_bbox(mask)


def _reference_grid(segmentation_node) -> np.ndarray | None:
    """IJK->(segmentation frame) matrix of the segmentation's reference geometry, None when it has none."""
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    geometry = segmentation_node.GetSegmentation().GetConversionParameter(parameter)
    if not geometry:
        return None
    matrix = vtk.vtkMatrix4x4()
    extent = [0, -1, 0, -1, 0, -1]
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, matrix, extent):
        return None
    return _matrix_to_numpy(matrix)


# --------------------------------------------------------------------------------------------------------------
# masks -> segmentation


def oriented_labelmap(mask_kji: np.ndarray, volume_node, segmentation_node) -> slicer.vtkOrientedImageData:
    """The model's KJI mask (volume voxel grid) as a `vtkOrientedImageData` in the segmentation node's frame.

    That frame is what `ModifySegmentByLabelmap`/`modifySelectedSegmentByLabelmap` expect, so the result is
    right even when the volume and the segmentation sit under different linear transforms. When the
    segmentation's reference grid differs from the volume's (a segmentation made on another image), the
    mask is resampled onto that grid (nearest neighbour), as Segment Editor effects work on it and its
    "editable intensity range" needs it. The image covers only the mask's bounding box (same grid, smaller
    extent) so large volumes write quickly; an empty mask gives a full-extent image of zeros."""
    image_data = _check_scalar_volume_node(volume_node)
    if segmentation_node is None:
        raise InputError("no segmentation selected")
    dims = image_data.GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    mask = np.asarray(mask_kji)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the volume's KJI shape {shape}")
    matrix = _between(volume_node, segmentation_node) @ _local_ijk_to_ras(volume_node, image_data)
    # crop to the mask's bounding box first (a few reductions), so a small lesion in a 512x512x300 grid costs
    # milliseconds rather than a full-grid threshold and nonzero scan on the main thread
    box = _known_bbox(mask_kji)
    box = _mask_bbox(mask) if box is False else box
    if box is None:
        binary, start = np.zeros(shape, dtype=np.uint8), np.zeros(3, int)
    else:
        (k0, j0, i0), (k1, j1, i1) = box
        binary, start = (mask[k0:k1, j0:j1, i0:i1] > 0).astype(np.uint8), np.array([k0, j0, i0])
    reference = _reference_grid(segmentation_node)
    if reference is not None and np.allclose(reference, matrix, rtol=0.0, atol=1e-5):
        matrix = reference  # bit-equal geometry, so the editor's geometry checks pass
    elif reference is not None and binary.any():
        block, block_start = _resample_block(binary, matrix @ _translation(start[::-1]), reference)
        if block is not None:
            binary, start, matrix = block, block_start, reference
        else:
            binary = np.zeros_like(binary)
    box = _mask_bbox(binary) if binary.any() else None
    if box is not None:
        lo, hi = np.array(box[0]), np.array(box[1])
        binary = binary[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        start = start + lo
    first, last = start, start + np.array(binary.shape) - 1
    image = slicer.vtkOrientedImageData()
    image.SetExtent(int(first[2]), int(last[2]), int(first[1]), int(last[1]), int(first[0]), int(last[0]))
    image.GetPointData().SetScalars(
        numpy_support.numpy_to_vtk(np.ascontiguousarray(binary).ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    )
    image.SetImageToWorldMatrix(_numpy_to_matrix(matrix))
    return image


def ensure_segmentation(
    scene, volume_node, segmentation_node=None, name: str = DEFAULT_SEGMENTATION_NAME
) -> slicer.vtkMRMLSegmentationNode:
    """The segmentation to write into: a new one on the volume's geometry when None, else the given one
    (given the volume's geometry if it has none yet, so the first write does not pick a random grid)."""
    if volume_node is None:
        raise InputError("no source volume selected")
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        _place_beside(scene, segmentation_node, volume_node)
        return segmentation_node
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    if not segmentation_node.GetSegmentation().GetConversionParameter(parameter):
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return segmentation_node


def _place_beside(scene, node, sibling) -> None:
    """Put `node` in the same Subject Hierarchy folder/study as `sibling` (skipped where SH is absent)."""
    try:
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if hierarchy is None:
            return
        sibling_item = hierarchy.GetItemByDataNode(sibling)
        if not sibling_item:
            return
        parent = hierarchy.GetItemParent(sibling_item)
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:  # no plugin made an item (headless): make it where it belongs
            hierarchy.CreateItem(parent, node)
    except (AttributeError, TypeError):
        pass


def make_editor_logic(
    scene, segmentation_node, volume_node, segment_id: str
) -> tuple[slicer.vtkSlicerSegmentEditorLogic, slicer.vtkMRMLSegmentEditorNode]:
    """A headless Segment Editor (logic + parameter node) on this segmentation, for CI and the self-test;
    inside Slicer the effect writes through its own editor instead."""
    if not hasattr(slicer, "vtkSlicerSegmentEditorLogic"):
        raise RuntimeError("this Slicer has no vtkSlicerSegmentEditorLogic (it ships with Slicer 5.10 and later)")
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(editor_node)
    editor_node.SetAndObserveSegmentationNode(segmentation_node)
    editor_node.SetAndObserveSourceVolumeNode(volume_node)
    editor_node.SetSelectedSegmentID(segment_id)
    return editor, editor_node


def write_mask(editor_logic, segmentation_node, segment_id: str, oriented_image) -> bool:
    """Replace the segment with the mask as one undoable Segment Editor step (masking and overwrite settings
    of the editor apply). An empty mask writes nothing and returns False: "nothing found" keeps the old
    segment rather than erasing the user's work."""
    if _image_is_empty(oriented_image):
        return False
    editor_segmentation = editor_logic.GetSegmentationNode()
    if editor_segmentation is None or editor_segmentation.GetID() != segmentation_node.GetID():
        raise ValueError("the editor logic edits another segmentation; undo would not cover this write")
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"segment '{segment_id}' is not in segmentation '{_node_label(segmentation_node)}'")
    editor_logic.SaveStateForUndo()
    editor_logic.ModifySegmentByLabelmap(
        segmentation_node,
        segment_id,
        oriented_image,
        slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet,
        False,
        False,
    )
    return True


def volume_node_from_volume(scene, volume: Volume, name: str | None = None) -> slicer.vtkMRMLScalarVolumeNode:
    """A new scalar volume node holding a copy of a `tagseg.Volume` (its matrix becomes the node's own
    IJK->RAS, no transform). Used by the self-test and to show engine outputs."""
    array = np.asarray(volume.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or volume.name or "TAGS volume")
    image = vtk.vtkImageData()
    k, j, i = array.shape
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    node.SetIJKToRASMatrix(_numpy_to_matrix(np.asarray(volume.ijk_to_ras)))
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    return node


# --------------------------------------------------------------------------------------------------------------
# the model worker


def _points_array(points, what: str) -> np.ndarray:
    if points is None:
        return np.zeros((0, 3))
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{what}: expected RAS triples, got {points!r}") from None
    if array.size == 0:
        return np.zeros((0, 3))
    if array.ndim == 1 and array.size == 3:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 3:
        raise PromptError(f"{what}: expected RAS triples, got an array of shape {array.shape}")
    return array


def _boxes_list(boxes) -> list[tuple[np.ndarray, np.ndarray]]:
    result = []
    for box in boxes or ():
        corners = _points_array(box, "box")
        if corners.shape != (2, 3):
            raise PromptError(f"box: expected two RAS corners, got {len(corners)}")
        result.append((corners[0], corners[1]))
    return result


class _Logic:
    """What both logics (in-process and engine process) share: the settings, what the last prediction reported,
    and `predict` = `predict_async(...).result()`. `last_progress` holds the running prediction's latest
    progress(stage, done, total), {} before any: a GUI polls it."""

    def __init__(
        self,
        model: str = "auto",
        device: str = "auto",
        backend_options: dict | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.backend_options = dict(backend_options or {})
        self.warn = warn
        self.warnings: list[str] = []
        self.last_timings: dict = {}
        self.last_info: dict = {}
        self.last_progress: dict = {}

    def predict(
        self, volume_node, include_ras=(), exclude_ras=(), boxes_ras=(), text: str = "", anatomy: Volume | None = None
    ) -> np.ndarray:
        """The mask (uint8 KJI on the volume's voxel grid) for these prompts; blocks until done.
        tagseg errors (PromptError for a click outside the volume, ...) are raised as they are."""
        return self.predict_async(volume_node, include_ras, exclude_ras, boxes_ras, text, anatomy).result()  # type: ignore[attr-defined]


class InProcessTAGSLogic(_Logic):
    """The fallback: `tagseg` predictions inside Slicer's own process, on one worker thread.

    Inside Slicer that thread starves (PythonQt keeps the GIL while the event loop idles, see
    `TAGSLogic`) and a crash in native code takes Slicer with it; it is kept for setups where no engine
    process can run (module setting "In Slicer's process").

    One `tagseg.Session` is kept per source volume (at most `max_sessions`, least recently used dropped)
    and re-created when the node, its voxels (image data MTime), its geometry or its transform change, or
    when model/device/options change. Prompts are stateless per call: the caller (the effect) holds the
    prompt list and Segment Editor undo holds the history. MRML is read only on the calling thread."""

    max_sessions = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The settings as `_Logic` takes them; the sessions and the worker thread start empty."""
        super().__init__(*args, **kwargs)
        self._sessions: OrderedDict[str, tuple[tuple, tagseg.Session]] = OrderedDict()  # worker thread only
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[concurrent.futures.Future] = []
        self._lock = threading.Lock()

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        """Called on the worker thread: one dict assignment, which the main thread reads whole."""
        self.last_progress = {"stage": stage, "done": done, "total": total}

    def _on_warning(self, message: str) -> None:
        """Called on the worker thread; a GUI callback must only queue the message for the main thread."""
        self.warnings.append(message)
        if self.warn is not None:
            self.warn(message)

    # ---- prediction -----------------------------------------------------------------------------------------
    def predict_async(
        self, volume_node, include_ras=(), exclude_ras=(), boxes_ras=(), text: str = "", anatomy: Volume | None = None
    ) -> concurrent.futures.Future:
        """Like `predict` but returns at once; poll `future.done()` from a timer, then `future.result()`.

        Must be called on the main thread (it reads the volume node). A new request supersedes older ones:
        their futures are cancelled and their results dropped. Errors are delivered through the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        submitted = time.perf_counter()
        try:
            volume = volume_from_node(volume_node)
            read_seconds = time.perf_counter() - submitted
            request = (
                _points_array(include_ras, "include point"),
                _points_array(exclude_ras, "exclude point"),
                _boxes_list(boxes_ras),
                str(text or ""),
                anatomy,
            )
            image = volume_node.GetImageData()
            key = (
                volume_node.GetID(),
                image.GetAddressAsString("vtkImageData"),
                image.GetMTime(),
                np.asarray(volume.ijk_to_ras).round(9).tobytes(),
                self.model,
                self.device,
                repr(sorted(self.backend_options.items())),
            )
        except Exception as exc:
            future.set_exception(exc)
            return future
        with self._lock:
            for older in self._pending:
                older.cancel()
            self._pending = [future]
        self._worker().submit(self._run, future, key, volume, request, submitted, read_seconds)
        return future

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tags-logic")
        return self._executor

    def _session_for(self, key: tuple, volume: Volume) -> tagseg.Session:
        node_id = key[0]
        entry = self._sessions.get(node_id)
        if entry is not None and entry[0] == key:
            self._sessions.move_to_end(node_id)
            return entry[1]
        if entry is not None:
            del self._sessions[node_id]
            entry[1].close()
        session = tagseg.Session(
            volume,
            model=self.model,
            device=self.device,
            warn=self._on_warning,
            backend_options=self.backend_options,
            progress=self._on_progress,
        )
        self._sessions[node_id] = (key, session)
        while len(self._sessions) > self.max_sessions:
            _, (_, oldest) = self._sessions.popitem(last=False)
            oldest.close()
        return session

    def _run(
        self,
        future: concurrent.futures.Future,
        key: tuple,
        volume: Volume,
        request: tuple,
        submitted: float,
        read_seconds: float,
    ) -> None:
        if future.done():  # cancelled while queued
            return
        started = time.perf_counter()
        include, exclude, boxes, text, anatomy = request
        try:
            session = self._session_for(key, volume)
            session.reset()
            session.set_text(text)
            if anatomy is not None:
                session.set_anatomy(anatomy)
            for point in include:
                session.add_point(point, positive=True)
            for point in exclude:
                session.add_point(point, positive=False)
            for corner_a, corner_b in boxes:
                session.add_box(corner_a, corner_b)
            model_start = time.perf_counter()
            self.last_progress = {}
            result = session.predict()
            mask = np.array(result.array, dtype=np.uint8, copy=True)
            finished = time.perf_counter()
            timings = {
                "read_volume": read_seconds,
                "queued": started - submitted - read_seconds,
                **session.timings,
                "model": finished - model_start,
                "total": finished - submitted,
            }
            self.last_timings = timings
            self.last_info = {
                "model": result.meta.get("model"),
                "anatomy": result.meta.get("anatomy"),
                "device": session.device,
                "segment_name": result.name,
                "warnings": [w.to_dict() for w in result.meta.get("warnings", ())],
            }
            outcome = ("result", mask)
        except BaseException as exc:  # delivered to the caller through the future
            outcome = ("error", exc)
        try:
            if outcome[0] == "result":
                future.set_result(outcome[1])
            else:
                future.set_exception(outcome[1])
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile: the result is dropped
        with self._lock:
            if future in self._pending:
                self._pending.remove(future)

    def poll(self) -> bool:
        """Nothing to drive (the worker thread runs by itself); True while a request is pending."""
        with self._lock:
            return bool(self._pending)

    def cancel_pending(self) -> int:
        """Drop the results of every request not yet delivered (superseded, or its scene was closed).
        A running model call finishes in the background; its result is discarded. Returns the count."""
        with self._lock:
            pending, self._pending = self._pending, []
        return sum(1 for future in pending if future.cancel())

    def _close_sessions(self) -> None:
        while self._sessions:
            _, (_, session) = self._sessions.popitem(last=False)
            session.close()

    def shutdown(self) -> None:
        """Cancel pending requests, stop the worker (after a running prediction) and close every session,
        freeing models and GPU memory. The logic can be used again afterwards (it restarts lazily)."""
        self.cancel_pending()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._close_sessions()


# --------------------------------------------------------------------------------------------------------------
# the engine client (default): `tagseg serve` in its own process, driven from the main thread

HASH_CHUNK = 4 << 20  # bytes hashed (or compressed) per step of a timer tick


def volume_view(volume_node) -> tuple[Volume, tuple]:
    """The node's voxels as a `Volume` *without copying* (a read-only view of the image's scalars), world
    IJK->RAS, and the key naming this content: (node ID, image data, image MTime, matrix, dtype, shape).

    Checks the geometry and voxel type like `volume_from_node` without a pass over the voxels (the engine
    checks those), so a click on a 512x512x300 CT costs the main thread no copy."""
    image = _check_scalar_volume_node(volume_node)
    world = _to_world(volume_node, "volume") @ _local_ijk_to_ras(volume_node, image)
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    if min(dims) < 1 or flat.size != dims[0] * dims[1] * dims[2]:
        raise InputError(f"volume '{_node_label(volume_node)}' has no voxel data")
    array = flat.reshape(dims[2], dims[1], dims[0])
    parent = volume_node.GetParentTransformNode()
    meta = {"node_id": volume_node.GetID(), "transform_id": parent.GetID() if parent is not None else None}
    volume = Volume(array, world, name=_node_label(volume_node), meta=meta)
    check_volume(volume, scan_voxels=False)
    key = (
        volume_node.GetID(),
        image.GetAddressAsString("vtkImageData"),
        image.GetMTime(),
        np.asarray(world).round(9).tobytes(),
        array.dtype.str,
        array.shape,
    )
    return volume, key


class MaskArray(np.ndarray):
    """A result mask (uint8 KJI) that knows the half-open bounding box of its non-zero voxels (`bbox`, None
    when empty), as the engine sends it: writing and counting then touch only that box of a large grid.
    Views and results of operations are plain masks again (`bbox` unknown: False)."""

    bbox = False

    def __array_finalize__(self, obj) -> None:
        self.bbox = False


def _known_bbox(mask):
    """The mask's bounding box when it carries one (`MaskArray`), else False."""
    box = getattr(mask, "bbox", False)
    if box is None or box is False:
        return box
    (k0, j0, i0), (k1, j1, i1) = box
    return (int(k0), int(j0), int(i0)), (int(k1), int(j1), int(i1))


class _DrivenFuture(concurrent.futures.Future):
    """A Future whose blocking calls (`result`, `exception`) drive the logic's `poll()` while they wait, so
    code that blocks on purpose (tests, the self-test, scripts) needs no timer. Never marked running, so
    `cancel()` drops it until its result is set."""

    def __init__(self, driver) -> None:
        super().__init__()
        self._driver = driver

    def _drive(self, timeout: float | None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if end is not None and time.monotonic() >= end:
                return
            self._driver.poll()
            if not self.done():
                time.sleep(0.002)

    def result(self, timeout: float | None = None):
        self._drive(timeout)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None):
        self._drive(timeout)
        return super().exception(timeout=0)


class _Job:
    __slots__ = (
        "future",
        "volume",
        "volume_key",
        "node_id",
        "points",
        "boxes",
        "text",
        "anatomy",
        "submitted",
        "restarted",
        "read_seconds",
    )

    def __init__(self, future, volume, volume_key, points, boxes, text, anatomy, submitted, read_seconds):
        self.future, self.volume, self.volume_key = future, volume, volume_key
        self.node_id = volume_key[0]
        self.points, self.boxes, self.text, self.anatomy = points, boxes, text, anatomy
        self.submitted, self.read_seconds, self.restarted = submitted, read_seconds, False


class TAGSLogic(_Logic):
    """Runs `tagseg` predictions for Slicer volume nodes in a `tagseg serve` engine process.

    By default the engine is a child process started on first use (Slicer's PythonSlicer, loopback, a random
    token in a private file, `--exit-with-stdin` so it lives as long as Slicer); with `engine_url` (and
    `engine_token`) it is a server the user runs elsewhere, e.g. on a GPU machine. A crash or an out-of-memory
    error then takes down the engine, not Slicer: a local engine that fails is started again once by itself.

    Nothing here blocks the main thread: PythonQt holds the GIL whenever Slicer's event loop runs, so a
    client *thread* would starve as a worker thread does. Instead `poll()` (called by the effect's QTimer;
    blocking `Future.result()` calls it too) advances a non-blocking exchange for at most `tick_budget_s`:
    the volume is hashed and uploaded once per (node, image modified time) a few megabytes per tick, a
    click sends only its prompts, and the mask is decoded when its reply has arrived. Requests run one at a
    time; a new request cancels older undelivered ones (newest wins). One engine session per source volume
    (at most `max_sessions`); prompts are stateless per call, as in `InProcessTAGSLogic`."""

    max_sessions = 2
    tick_budget_s = 0.03
    progress_poll_s = 0.5  # how often the engine's progress is asked for while a prediction runs

    def __init__(
        self,
        *args: Any,
        engine_url: str | None = None,
        engine_token: str | None = None,
        python: str | None = None,
        **kwargs: Any,
    ) -> None:
        """The settings as `_Logic` takes them (backend_options: for the in-process fallback only), and where the
        engine is: `engine_url`/`engine_token` for a remote one, else a local one started with `python`."""
        from TAGSSegmentLib.engine import Endpoint, LocalEngine, TaskRunner

        super().__init__(*args, **kwargs)
        # last_progress is the engine's, asked for every `progress_poll_s` by poll() alongside the prediction request
        self.longest_call_s = 0.0  # longest poll()/predict_async() so far: the main-thread cost
        self._remote = Endpoint(engine_url, engine_token) if engine_url else None
        self._local = None if self._remote is not None else LocalEngine(device="auto", python=python)
        self._runner = TaskRunner()
        self._jobs: deque[_Job] = deque()
        self._current: _Job | None = None
        self._background: deque = deque()  # tasks without a caller waiting (closing sessions)
        self._running_background = False
        self._hashes: OrderedDict[tuple, str] = OrderedDict()  # volume key -> content id (server-independent)
        self._uploaded: set[str] = set()  # content ids the current server holds
        self._sessions: OrderedDict[str, tuple[tuple, str, str]] = OrderedDict()  # node id -> (key, sid, device)
        self._anatomies: set[tuple[str, str]] = set()  # (sid, anatomy id) registered
        self._endpoint_seen = None
        self._poll_lock = threading.Lock()

    # ---- settings -------------------------------------------------------------------------------------------
    @property
    def engine_url(self) -> str | None:
        """The engine's URL (None until a local engine has started)."""
        if self._remote is not None:
            return self._remote.url
        return self._local.endpoint.url if self._local.endpoint is not None else None

    @property
    def engine_pid(self) -> int | None:
        return self._local.pid if self._local is not None else None

    def _on_warning(self, message: str) -> None:
        self.warnings.append(message)
        if self.warn is not None:
            self.warn(message)

    def warm_up(self) -> None:
        """Start the local engine process now (returns at once; `poll()` then reads its ready line), so the
        first click does not wait for it. Nothing to do for a remote engine."""
        if self._local is None or (self._local.alive() and self._local.endpoint is not None):
            return
        if not self._local.alive():
            self._local.start()

        def wait_ready():
            yield from self._endpoint()

        self._background.append(wait_ready())

    # ---- prediction -----------------------------------------------------------------------------------------
    def predict_async(
        self, volume_node, include_ras=(), exclude_ras=(), boxes_ras=(), text: str = "", anatomy: Volume | None = None
    ) -> concurrent.futures.Future:
        """Like `predict` but returns at once; `poll()` from a timer, then `future.result()` once done.

        Must be called on the main thread (it reads the volume node, without copying voxels). A new request
        supersedes older ones: their futures are cancelled and their results dropped."""
        submitted = time.perf_counter()
        future = _DrivenFuture(self)
        try:
            volume, volume_key = volume_view(volume_node)
            include = _points_array(include_ras, "include point")
            exclude = _points_array(exclude_ras, "exclude point")
            from tagseg import prompts as P

            points = tuple(
                [P.make_point(volume, p, True) for p in include] + [P.make_point(volume, p, False) for p in exclude]
            )
            boxes = tuple(P.make_box(volume, a, b) for a, b in _boxes_list(boxes_ras))
            text = parse_description(str(text or "")).text
            if anatomy is not None and not isinstance(anatomy, Volume):
                raise PromptError("anatomy mask must be a tagseg.Volume")
        except Exception as exc:
            future.set_exception(exc)
            self._note_call(submitted)
            return future
        self.cancel_pending()
        self._jobs.append(
            _Job(future, volume, volume_key, points, boxes, text, anatomy, submitted, time.perf_counter() - submitted)
        )
        self.poll()  # start at once: a click whose volume is already uploaded sends its prompts now
        self._note_call(submitted)
        return future

    def _note_call(self, start: float) -> None:
        self.longest_call_s = max(self.longest_call_s, time.perf_counter() - start)

    @property
    def busy(self) -> bool:
        return self._runner.busy or bool(self._jobs) or bool(self._background)

    def poll(self) -> bool:
        """Advance the engine exchange for about `tick_budget_s` at most, without blocking; call it from a
        timer on the main thread. Finished requests complete their futures here. True while work remains."""
        if not self._poll_lock.acquire(blocking=False):
            return True
        start = time.perf_counter()
        try:
            deadline = start + self.tick_budget_s
            while True:
                if not self._runner.busy and not self._start_next():
                    break
                finished, result, error = self._runner.step(deadline)
                if not finished:
                    break
                self._finish(result, error)
                if time.perf_counter() > deadline:
                    break
            return self.busy
        finally:
            self._note_call(start)
            self._poll_lock.release()

    def _start_next(self) -> bool:
        while self._jobs:
            job = self._jobs.popleft()
            if job.future.done():  # cancelled while it waited
                continue
            self._current, self._running_background = job, False
            self._runner.start(self._job_task(job))
            return True
        if self._background:
            self._current, self._running_background = None, True
            self._runner.start(self._background.popleft())
            return True
        return False

    def _finish(self, result, error) -> None:
        job, self._current = self._current, None
        if self._running_background or job is None:
            self._running_background = False
            if error is not None:  # e.g. the engine failed to start while warming up
                self._on_warning(
                    f"TAGS engine: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
                )
            return
        try:
            if error is not None:
                job.future.set_exception(error)
            elif result is not None:
                job.future.set_result(result)
            elif not job.future.done():
                job.future.cancel()
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile: the result is dropped

    def cancel_pending(self) -> int:
        """Drop the results of every request not yet delivered (superseded, or its scene was closed). A request
        already sent finishes on the engine; its result is discarded. Returns the count."""
        jobs = list(self._jobs) + ([self._current] if self._current is not None else [])
        return sum(1 for job in jobs if not job.future.done() and job.future.cancel())

    def shutdown(self) -> None:
        """Cancel pending requests, drop the exchange in progress and stop a local engine process (freeing its
        models and GPU memory). The logic can be used again afterwards (the engine restarts lazily)."""
        self.cancel_pending()
        self._runner.close()
        self._jobs.clear()
        self._background.clear()
        self._current, self._running_background = None, False
        if self._local is not None:
            self._local.stop()
        self._forget_server()

    # ---- tasks (generators run by poll) ---------------------------------------------------------------------
    def _forget_server(self) -> None:
        self._uploaded.clear()
        self._sessions.clear()
        self._anatomies.clear()

    def _close_later(self, sid: str) -> None:
        def close():
            endpoint = yield from self._endpoint()
            try:
                yield from endpoint.call("DELETE", f"/v1/sessions/{sid}", reply_timeout=30.0)
            except tagseg.TagsegError:
                pass

        self._background.append(close())

    def _endpoint(self):
        if self._remote is not None:
            return self._remote
        endpoint = yield from self._local.ready()
        if endpoint is not self._endpoint_seen:  # a new process: it holds no volume and no session
            self._forget_server()
            self._endpoint_seen = endpoint
        return endpoint

    def _job_task(self, job: _Job):
        from tagseg.errors import EngineUnavailable

        while True:
            try:
                return (yield from self._predict_task(job))
            except EngineUnavailable as exc:
                if self._local is None or job.restarted:
                    if self._remote is not None:
                        raise EngineUnavailable(f"{exc} (set the engine in the TAGS Segment module)") from None
                    raise
                job.restarted = True
                self._on_warning(f"The TAGS engine process stopped ({exc}); starting it again.")
                self._local.stop(wait=0.0)
                self._forget_server()

    def _hash_task(self, volume: Volume, key: tuple | None):
        from tagseg.client import volume_digest, volume_header

        if key is not None and key in self._hashes:
            self._hashes.move_to_end(key)
            return self._hashes[key]
        digest = volume_digest(volume_header(volume))
        raw = memoryview(np.ascontiguousarray(volume.array)).cast("B")
        for offset in range(0, raw.nbytes, HASH_CHUNK):
            digest.update(raw[offset : offset + HASH_CHUNK])
            yield ("cpu",)
        vid = digest.hexdigest()
        if key is not None:
            self._hashes[key] = vid
            while len(self._hashes) > 8:
                self._hashes.popitem(last=False)
        return vid

    def _upload_task(self, endpoint, vid: str, volume: Volume):
        """Send a volume the engine does not hold yet (asked first: another Slicer may have sent it)."""
        from tagseg.client import _UnknownVolume, frame, volume_header

        if vid in self._uploaded:
            return
        try:
            yield from endpoint.call("GET", f"/v1/volumes/{vid}", reply_timeout=60.0)
        except _UnknownVolume:
            header = volume_header(volume)
            header["name"] = str(volume.name or "")[:200]
            raw = memoryview(np.ascontiguousarray(volume.array)).cast("B")
            if endpoint.loopback:
                header["encoding"], payload = "raw", [raw]
            else:  # compressed a few megabytes per step, for a slower network
                header["encoding"], payload = "zlib", []
                compressor = zlib.compressobj(1)
                for offset in range(0, raw.nbytes, HASH_CHUNK):
                    payload.append(compressor.compress(raw[offset : offset + HASH_CHUNK]))
                    yield ("cpu",)
                payload.append(compressor.flush())
            yield from endpoint.call("PUT", f"/v1/volumes/{vid}", body_parts=[frame(header), *payload])
        self._uploaded.add(vid)

    def _session_task(self, endpoint, job: _Job, vid: str, timings: dict):
        from tagseg.client import _UnknownVolume

        key = (vid, self.model, self.device)
        entry = self._sessions.get(job.node_id)
        if entry is not None and entry[0] == key:
            self._sessions.move_to_end(job.node_id)
            return entry[1], entry[2]
        if entry is not None:
            del self._sessions[job.node_id]
            self._close_later(entry[1])
        start = time.perf_counter()
        yield from self._upload_task(endpoint, vid, job.volume)
        timings["upload"] = time.perf_counter() - start
        start = time.perf_counter()
        request = {"volume": vid, "model": self.model, "device": self.device}
        try:
            reply, _ = yield from endpoint.call("POST", "/v1/sessions", json_body=request)
        except _UnknownVolume:
            self._uploaded.discard(vid)
            yield from self._upload_task(endpoint, vid, job.volume)
            reply, _ = yield from endpoint.call("POST", "/v1/sessions", json_body=request)
        timings["open_session"] = time.perf_counter() - start
        sid, device = str(reply["session"]), str(reply.get("device", self.device))
        for message in reply.get("warnings", ()):
            self._on_warning(str(message))
        self._sessions[job.node_id] = (key, sid, device)
        while len(self._sessions) > self.max_sessions:
            _, (_, old, _) = self._sessions.popitem(last=False)
            self._close_later(old)
        return sid, device

    def _anatomy_task(self, endpoint, sid: str, anatomy: Volume) -> str:
        vid = yield from self._hash_task(anatomy, None)
        if (sid, vid) not in self._anatomies:
            yield from self._upload_task(endpoint, vid, anatomy)
            yield from endpoint.call("POST", f"/v1/sessions/{sid}/anatomy", json_body={"volume": vid})
            self._anatomies.add((sid, vid))
        return vid

    def _progress_task(self, endpoint, sid: str, job: _Job):
        """Ask the engine how far the session's running prediction is; a report fills `last_progress`."""
        reply, _ = yield from endpoint.call("GET", f"/v1/sessions/{sid}/progress", reply_timeout=10.0)
        stage, done, total = reply.get("stage"), reply.get("done"), reply.get("total")
        if (
            reply.get("running")
            and not job.future.done()
            and isinstance(stage, str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in (done, total))
        ):
            self.last_progress = {"stage": stage, "done": done, "total": total}

    def _predict_task(self, job: _Job):
        from tagseg.client import _UnknownAnatomy, _UnknownSession, _UnknownVolume, decode_mask, prompt_json
        from TAGSSegmentLib.engine import alongside

        timings: dict = {"read_volume": job.read_seconds}
        start = time.perf_counter()
        endpoint = yield from self._endpoint()
        timings["engine_start"] = time.perf_counter() - start
        start = time.perf_counter()
        vid = yield from self._hash_task(job.volume, job.volume_key)
        timings["hash"] = time.perf_counter() - start
        for attempt in range(3):
            try:
                sid, device = yield from self._session_task(endpoint, job, vid, timings)
                anatomy_vid = None
                if job.anatomy is not None:
                    anatomy_vid = yield from self._anatomy_task(endpoint, sid, job.anatomy)
                if job.future.done():  # cancelled before its prompts were sent: skip the model
                    return None
                sent = time.perf_counter()
                body = prompt_json(job.points, job.boxes, job.text, anatomy_vid)
                self.last_progress = {}
                header, payload = yield from alongside(
                    endpoint.call("POST", f"/v1/sessions/{sid}/predict", json_body=body),
                    lambda: self._progress_task(endpoint, sid, job),  # noqa: B023 (runs within this iteration)
                    self.progress_poll_s,
                )
                break
            except (_UnknownSession, _UnknownVolume, _UnknownAnatomy) as exc:
                if attempt == 2:
                    raise tagseg.errors.EngineUnavailable(
                        f"the tagseg engine at {endpoint.url} keeps forgetting this session ({exc})"
                    ) from None
                if isinstance(exc, _UnknownVolume):
                    self._uploaded.clear()
                self._sessions.pop(job.node_id, None)
                self._anatomies = {a for a in self._anatomies if a[0] != sid}
        received = time.perf_counter()
        try:
            mask = decode_mask(header, payload)
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            raise tagseg.TagsegError(f"engine at {endpoint.url} sent a malformed mask ({exc})") from None
        if mask.shape != job.volume.shape_kji:
            raise tagseg.TagsegError(
                f"engine at {endpoint.url} sent a mask of shape {mask.shape}, expected {job.volume.shape_kji}"
            )
        mask = mask.astype(np.uint8, copy=False).view(MaskArray)
        mask.bbox = header.get("bbox")
        engine_timings = {
            str(k): float(v) for k, v in dict(header.get("timings") or {}).items() if isinstance(v, (int, float))
        }
        finished = time.perf_counter()
        timings.update(engine_timings)
        timings["engine_total"] = engine_timings.get("total", 0.0)  # the engine Session's own total
        timings["round_trip"] = received - sent
        timings["remote_overhead"] = max(received - sent - engine_timings.get("server", 0.0), 0.0)
        timings["total"] = finished - job.submitted
        self.last_timings = timings
        meta = dict(header.get("meta") or {})
        self.last_info = {
            "model": meta.get("model"),
            "anatomy": meta.get("anatomy"),
            "device": device,
            "segment_name": str(header.get("name", "")),
            "engine": endpoint.url,
            "bbox": header.get("bbox"),
            "warnings": [w for w in header.get("warnings") or () if isinstance(w, dict)],
        }
        return mask


# --------------------------------------------------------------------------------------------------------------
# self-test shared by Slicer's TAGSSegmentTest and CI

SELFTEST_PHANTOM = dict(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
SELFTEST_MIN_DICE = 0.6


def _segment_array(segmentation_node, segment_id: str, volume_node, shape) -> np.ndarray:
    mask = segment_mask(segmentation_node, segment_id, volume_node)
    return np.zeros(shape, dtype=np.uint8) if mask is None else np.asarray(mask.array)


def run_selftest(
    scene, *, device: str = "cpu", volume_node=None, log: Callable[[str], None] = print, logic: TAGSLogic | None = None
) -> dict:
    """End-to-end check with the embedded default model: phantom -> markups clicks -> prediction -> Segment
    Editor write -> Dice, untouched neighbour segment, Undo and Redo. Raises AssertionError on failure.

    The write/undo/redo part needs `vtkSlicerSegmentEditorLogic` (Slicer 5.10 and later); where it is missing
    that part is skipped with a log line and the result says `editor_checked: False` (undo_ok, redo_ok and
    others_unchanged are then None), so the self-test still checks the prediction on older Slicer.

    `volume_node`, when given, must hold the phantom's voxels (any geometry or linear transform), so the
    known label still applies voxel by voxel. `logic` lets a caller reuse a loaded model."""
    from tagseg.synth import make_phantom

    start = time.perf_counter()
    phantom = make_phantom(**SELFTEST_PHANTOM)
    label = np.asarray(phantom.label.array) > 0
    if volume_node is None:
        volume_node = volume_node_from_volume(scene, phantom.image, "TAGS self-test phantom")
    source = volume_from_node(volume_node)
    if source.shape_kji != phantom.image.shape_kji or not np.array_equal(source.array, phantom.image.array):
        raise ValueError(
            f"volume_node must hold the self-test phantom's voxels (tagseg.synth.make_phantom(**{SELFTEST_PHANTOM}))"
        )
    before_hash = zlib.crc32(np.ascontiguousarray(source.array).tobytes())
    log(f"TAGS self-test: volume {source.shape_kji} KJI, {source.describe_bounds()}")

    segmentation_node = ensure_segmentation(scene, volume_node, name="TAGS self-test segmentation")
    segmentation = segmentation_node.GetSegmentation()
    other_organ = next(
        name
        for name in sorted(phantom.organs)
        if name != phantom.tumour_organ and np.asarray(phantom.organs[name].array).any()
    )
    other_id = segmentation.AddEmptySegment("", "Other", [0.3, 0.3, 0.9])
    other_mask = np.asarray(phantom.organs[other_organ].array) > 0
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_labelmap(other_mask, volume_node, segmentation_node),
        segmentation_node,
        other_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
    )
    tumor_id = add_segment(segmentation_node, "")
    other_before = _segment_array(segmentation_node, other_id, volume_node, source.shape_kji)

    rng = np.random.default_rng(0)
    inside = np.argwhere(label)
    outside = np.argwhere(other_mask & ~label)
    include_node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "TAGS self-test include")
    exclude_node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "TAGS self-test exclude")
    for index in rng.integers(0, len(inside), size=3):
        include_node.AddControlPointWorld(vtk.vtkVector3d(*source.kji_to_ras(inside[index])[0]), "include")
    exclude_node.AddControlPointWorld(
        vtk.vtkVector3d(*source.kji_to_ras(outside[rng.integers(0, len(outside))])[0]), "exclude"
    )

    own_logic = logic is None
    logic = TAGSLogic(model="litemedsam-3d", device=device) if own_logic else logic
    try:
        mask = logic.predict(
            volume_node, world_points(include_node), world_points(exclude_node), [], phantom.description
        )
    finally:
        if own_logic:
            logic.shutdown()
    from tagseg.evaluate import dice as overlap  # the one Dice

    dice = overlap(mask, label)
    log(f"TAGS self-test: Dice {dice:.3f} vs the phantom label ({int(mask.sum())} voxels predicted)")
    assert dice >= SELFTEST_MIN_DICE, f"self-test Dice {dice:.3f} is below {SELFTEST_MIN_DICE}"
    assert zlib.crc32(np.ascontiguousarray(volume_from_node(volume_node).array).tobytes()) == before_hash, (
        "the source volume's voxels changed during prediction"
    )

    result = {
        "dice": dice,
        "editor_checked": False,
        "undo_ok": None,
        "redo_ok": None,
        "others_unchanged": None,
        "timings": dict(logic.last_timings),
        "segmentation_id": segmentation_node.GetID(),
        "tumor_segment_id": tumor_id,
    }
    if not hasattr(slicer, "vtkSlicerSegmentEditorLogic"):
        result["seconds"] = time.perf_counter() - start
        log(
            f"TAGS self-test passed in {result['seconds']:.1f} s; the Segment Editor write, undo and redo checks "
            "were skipped: this Slicer has no vtkSlicerSegmentEditorLogic (Slicer 5.10 and later have it)"
        )
        return result

    editor, editor_node = make_editor_logic(scene, segmentation_node, volume_node, tumor_id)
    try:
        written = write_mask(
            editor, segmentation_node, tumor_id, oriented_labelmap(mask, volume_node, segmentation_node)
        )
        assert written, "write_mask wrote nothing for a non-empty mask"
        tumor_after = _segment_array(segmentation_node, tumor_id, volume_node, source.shape_kji)
        assert np.array_equal(tumor_after > 0, mask > 0), "the written segment differs from the predicted mask"
        others_unchanged = bool(
            np.array_equal(_segment_array(segmentation_node, other_id, volume_node, source.shape_kji), other_before)
        )
        assert others_unchanged, "writing the tumour changed the unrelated 'Other' segment"

        editor.Undo()
        undo_ok = segment_mask(segmentation_node, tumor_id, volume_node) is None and np.array_equal(
            _segment_array(segmentation_node, other_id, volume_node, source.shape_kji), other_before
        )
        assert undo_ok, "Undo did not restore the segmentation (Tumor should be empty, Other unchanged)"
        editor.Redo()
        redo_ok = bool(
            np.array_equal(_segment_array(segmentation_node, tumor_id, volume_node, source.shape_kji) > 0, mask > 0)
        )
        assert redo_ok, "Redo did not re-apply the predicted mask"
    finally:
        scene.RemoveNode(editor_node)
    seconds = time.perf_counter() - start
    log(f"TAGS self-test passed in {seconds:.1f} s (undo and redo restore every segment)")
    result.update(
        seconds=seconds, editor_checked=True, undo_ok=bool(undo_ok), redo_ok=redo_ok, others_unchanged=others_unchanged
    )
    return result
