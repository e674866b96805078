"""The interactive session: all interaction state in one object (after nnInteractive's session).

Model work runs on one persistent worker thread (cuDNN plan caches are per thread, so a fresh
thread per click would be slow on GPU); the public methods stay synchronous.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np

from . import prompts as P
from .anatomy import select_organ
from .backends import acquire_backend, check_option_names, options_for, resolve_model_name
from .backends.base import ANATOMY, BOXES, NEGATIVE_POINTS, PROPOSE_POINT, Backend, GridPrompts
from .checks import ResultWarning, check_result
from .devices import resolve_device
from .errors import PromptError
from .geometry import resample_like
from .progress import Progress, notify
from .text import parse_description
from .volume import Volume, check_volume


def _check_capabilities(name: str, backend: Backend, prompts: GridPrompts) -> None:
    """A PromptError for a kind of prompt the model does not take (`Backend.capabilities`), not a silent skip."""
    needed = {
        BOXES: bool(prompts.boxes_kji),
        NEGATIVE_POINTS: len(prompts.negative_kji) > 0,
        ANATOMY: prompts.anatomy is not None,
    }
    missing = [what.replace("_", " ") for what, used in needed.items() if used and what not in backend.capabilities]
    if missing:
        raise PromptError(f"model '{name}' does not take {' or '.join(missing)}; remove them or choose another model")


class Session:
    """Segment one volume from clicks, boxes, a description and an optional organ mask.

    >>> s = Session(vol); s.set_text("pancreatic tumor"); s.add_point((r, a, s_)); mask = s.predict()
    """

    def __init__(
        self,
        volume: Volume,
        model: str = "auto",
        device: str = "auto",
        warn: Callable[[str], None] | None = None,
        backend_options: dict | None = None,
        progress: Progress | None = None,
        work_ahead: bool = True,
    ) -> None:
        """`work_ahead`: let the model use the time after each result for what the next click will need (the
        default model encodes nearby slices in the background); off for one-shot use such as the CLI."""
        if not isinstance(volume, Volume):
            raise TypeError("Session needs a tagseg.Volume (see tagseg.load_volume)")
        check_volume(volume)
        self.volume = volume
        self.model = model
        # options for the kinds of model this session may run (with model="auto" the description picks a TAGS
        # checkpoint or the default model): each backend gets those its kind takes; one no kind takes is refused
        self.backend_options = dict(backend_options or {})
        check_option_names(self.backend_options)
        self.work_ahead = work_ahead
        self._warn = warn
        self.device = resolve_device(device, warn)
        self._history: P.UndoHistory[P.PromptSet] = P.UndoHistory(P.PromptSet())
        self._history_id = uuid.uuid4().hex  # a shared backend corrects only this session's own results
        self._backends: dict[str, tuple[Backend, threading.Lock]] = {}
        self._results: dict[tuple, tuple[np.ndarray, tuple[ResultWarning, ...]]] = {}
        # progress(stage, done, total) during model loads and long backend steps (see tagseg.progress)
        self.progress = progress
        self.warnings: tuple[ResultWarning, ...] = ()
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagseg-model")
        self.timings: dict[str, float] = {}

    # ---- prompts -------------------------------------------------------------------------
    @property
    def prompts(self) -> P.PromptSet:
        return self._history.current

    def _push(self, new: P.PromptSet) -> None:
        self._history.push(new)

    def set_text(self, text: str | None) -> None:
        """The description: names the result and selects anatomy and intensity preset (and, with
        model="auto", the model)."""
        desc = parse_description(text)
        self._push(
            P.PromptSet(
                self.prompts.points, self.prompts.boxes, desc.text, self.prompts.anatomy, self.prompts.anatomy_key
            )
        )

    def set_anatomy(self, organ_mask: Volume | None, classes=None) -> None:
        """An organ mask on any grid; the result is kept inside it (dilated). None clears it.

        A multi-label map needs `classes` ("totalsegmentator", a {label: name} dict or a JSON file): the organ the
        text (set_text first) names is then taken from it; without them it is refused (see tagseg.anatomy)."""
        if organ_mask is None:
            anatomy, key = None, ""
        else:
            if not isinstance(organ_mask, Volume):
                raise PromptError("anatomy mask must be a tagseg.Volume")
            organ_mask = select_organ(organ_mask, parse_description(self.prompts.text).anatomy, classes)
            on_grid = resample_like(organ_mask, self.volume, order=0)
            binary = np.asarray(on_grid.array) > 0
            if not binary.any():
                raise PromptError("anatomy mask is empty on this volume's grid (no organ voxel overlaps the image)")
            anatomy = self.volume.with_array(binary.astype(np.uint8), name=organ_mask.name)
            key = anatomy.content_key()
        self._push(P.PromptSet(self.prompts.points, self.prompts.boxes, self.prompts.text, anatomy, key))

    def add_point(self, ras, positive: bool = True) -> None:
        point = P.make_point(self.volume, ras, positive)
        self._push(
            P.PromptSet(
                self.prompts.points + (point,),
                self.prompts.boxes,
                self.prompts.text,
                self.prompts.anatomy,
                self.prompts.anatomy_key,
            )
        )

    def add_box(self, corner_a, corner_b) -> None:
        box = P.make_box(self.volume, corner_a, corner_b)
        self._push(
            P.PromptSet(
                self.prompts.points,
                self.prompts.boxes + (box,),
                self.prompts.text,
                self.prompts.anatomy,
                self.prompts.anatomy_key,
            )
        )

    def undo(self) -> bool:
        """Take back the last interaction; False when there is nothing to undo."""
        return self._history.undo()

    def redo(self) -> bool:
        return self._history.redo()

    def reset(self) -> None:
        """Forget every prompt (cached image encodings are kept: they depend on the image only)."""
        self._history.reset(P.PromptSet())

    # ---- prediction ------------------------------------------------------------------------
    def _grid_prompts(self, prompts: P.PromptSet) -> GridPrompts:
        vol = self.volume
        pos = vol.ras_to_kji([p.ras for p in prompts.positive_points]) if prompts.positive_points else np.zeros((0, 3))
        neg = vol.ras_to_kji([p.ras for p in prompts.negative_points]) if prompts.negative_points else np.zeros((0, 3))
        boxes = []
        for box in prompts.boxes:
            kji = vol.ras_to_kji([box.corner_a, box.corner_b])
            boxes.append((np.minimum(kji[0], kji[1]), np.maximum(kji[0], kji[1])))
        anatomy = None if prompts.anatomy is None else np.asarray(prompts.anatomy.array) > 0
        return GridPrompts(pos, neg, tuple(boxes), prompts.text, anatomy, history=self._history_id)

    def backend_name(self) -> str:
        return resolve_model_name(self.model, parse_description(self.prompts.text))

    @property
    def model_load_seconds(self) -> float | None:
        """Seconds the current model took to load (weights, a first ONNX export), when it is loaded and its
        backend reports it; None otherwise. Loading nothing: asking is free. (A property, not a method: the
        engine client's RemoteSession mirrors Session's methods, and this is a local measurement.)"""
        entry = self._backends.get(self.backend_name())
        value = getattr(entry[0] if entry else None, "load_seconds", None)
        return float(value) if value is not None else None

    def _backend(self, name: str) -> tuple[Backend, threading.Lock]:
        """(backend, lock): loaded once per process and shared between sessions (see `acquire_backend`)."""
        if name not in self._backends:
            self._backends[name] = acquire_backend(name, self.device, options_for(name, self.backend_options))
        return self._backends[name]

    def predict(self, progress: Progress | None = None) -> Volume:
        """The mask for the current prompts: a uint8 Volume on the input grid (1 = target).

        What looks wrong with it (empty, far smaller than the prompts' span, leaking, cut off by the image
        or crop edge; `tagseg.checks`) is in `result.meta["warnings"]` and `self.warnings`: `ResultWarning`s
        with a `code` and a one-line `message`. `progress` (default: the session's) is called as
        `progress(stage, done, total)` on the model thread while the model loads and runs."""
        prompts = self.prompts
        callback = progress if progress is not None else self.progress
        if not prompts.has_spatial_prompt():
            if prompts.negative_points:
                raise PromptError("only exclude points given; add an include point or a box")
            raise PromptError("no prompt given; add an include point or a box")
        name = self.backend_name()
        key = (name, prompts.points, prompts.boxes, prompts.text, prompts.anatomy_key)
        start = time.perf_counter()
        if key in self._results:
            array, warnings = self._results[key]
            self.timings = {"total": time.perf_counter() - start, "cached_result": 1.0}
        else:
            grid_prompts = self._grid_prompts(prompts)

            def job():
                backend, lock = self._loaded_backend(name, callback)
                _check_capabilities(name, backend, grid_prompts)
                with lock:
                    backend.progress = callback
                    try:
                        backend.set_image(self.volume)
                        mask = backend.predict(grid_prompts)
                        if self.work_ahead:
                            backend.work_ahead()
                    finally:
                        backend.progress = None
                    crops = tuple(backend.crops or ())
                    timings = dict(backend.timings)
                checked = time.perf_counter()
                warnings = check_result(
                    mask, self.volume.ijk_to_ras, grid_prompts.positive_kji, grid_prompts.boxes_kji, crops
                )
                timings["checks"] = time.perf_counter() - checked
                return mask, warnings, timings

            array, warnings, stage_times = self._worker.submit(job).result()
            self._results[key] = (array, warnings)
            self.timings = dict(stage_times, total=time.perf_counter() - start)
        desc = parse_description(prompts.text)
        result = self.volume.with_array(array, name=desc.segment_name)
        result.meta.update(
            {"model": name, "anatomy": desc.anatomy, "timings": dict(self.timings), "warnings": list(warnings)}
        )
        self.warnings = warnings
        return result

    def _loaded_backend(self, name: str, progress: Progress | None) -> tuple[Backend, threading.Lock]:
        """`_backend`, reporting a model load (seconds: weights, an ONNX export the first time) as progress."""
        if name in self._backends:
            return self._backends[name]
        notify(progress, "load_model", 0, 1)
        entry = self._backend(name)
        notify(progress, "load_model", 1, 1)
        return entry

    def propose_point(self) -> tuple[float, float, float]:
        """Text-only start: a first include point (RAS) where the model's text-conditioned tumour map
        peaks inside the organ mask. Only backends with a text branch (TAGS) can do this."""
        prompts = self.prompts
        name = self.backend_name()
        grid_prompts = self._grid_prompts(prompts)

        def job():
            backend, lock = self._backend(name)
            if PROPOSE_POINT not in backend.capabilities:
                raise PromptError(f"model '{name}' has no text branch; a text-only start needs a TAGS checkpoint")
            with lock:
                backend.set_image(self.volume)
                return backend.propose_point(grid_prompts)

        r, a, s = (float(v) for v in self._worker.submit(job).result())
        return r, a, s

    def close(self) -> None:
        """Stop the worker thread and drop models (frees GPU memory)."""
        self._worker.shutdown(wait=True)
        for backend, _ in self._backends.values():
            backend.stop_background()
        self._backends.clear()
        self._results.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
