"""What the user reads: error reports, timings, result warnings, progress, device advice, the description's reading.

Every sentence the panel and the effect show about a prediction is made here, so CI checks the wording without Qt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SMALL_GPU_GB = 8.0


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


def describe_device_info(info: dict, choice: str) -> tuple[str, str]:
    """(summary, warning) for `tagseg.devices.describe_devices()` and the chosen device; warning is '' if none.

    CPU use always gets a warning, because a click then takes seconds instead of a fraction of one."""
    gpus = info.get("cuda_devices") or []
    lines = [f"GPU {g.get('index', i)}: {g.get('name', '?')}, {g.get('memory_gb', '?')} GB" for i, g in enumerate(gpus)]
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
        warning = (
            "MPS is experimental: results may differ from CUDA/CPU."
            if info.get("mps_available")
            else "MPS is selected but not available on this computer: predictions will fail. Choose CPU."
        )
    else:
        memory = [float(g.get("memory_gb") or 0) for g in gpus]
        warning = (
            f"The GPU has less than {SMALL_GPU_GB:g} GB of memory; if it runs out, choose CPU."
            if memory and max(memory) < SMALL_GPU_GB
            else ""
        )
    return summary, warning


@dataclass(frozen=True)
class ErrorReport:
    """How to tell the user about a failed prediction."""

    status: str  # one line for the effect's status label and the log
    dialog: bool  # also show an error dialog (model and device problems need action)
    suggest_cpu: bool = False


def _one_line(exc: BaseException) -> str:
    """tagseg.errors.one_line (first line: a raw error may carry its traceback); the bare first line when the
    engine itself cannot be imported (missing dependencies)."""
    try:
        from tagseg.errors import one_line
    except Exception:  # noqa: BLE001
        return next(iter(str(exc).strip().splitlines()), type(exc).__name__)[:300]
    return one_line(exc, 300, first_line=True)


def is_out_of_memory(exc: BaseException) -> bool:
    """tagseg.devices.is_out_of_memory (it never imports torch); False when the engine cannot be imported, since
    then nothing ran on a device."""
    try:
        from tagseg.devices import is_out_of_memory as device_out_of_memory
    except Exception:  # noqa: BLE001
        return False
    return device_out_of_memory(exc)


def explain_error(exc: BaseException) -> ErrorReport:
    """Map an exception from the logic to a status line; TagsegError messages are already one actionable line."""
    try:
        from tagseg.errors import DeviceError, ModelError, TagsegError
    except Exception:  # the engine cannot even be imported: dependencies are missing
        DeviceError = ModelError = TagsegError = ()  # type: ignore[assignment]  # noqa: N806
    message = _one_line(exc)
    if is_out_of_memory(exc):
        return ErrorReport(
            f"The GPU ran out of memory ({message}). Switch the device to CPU in the "
            "TAGS Segment module, or use a smaller box.",
            dialog=True,
            suggest_cpu=True,
        )
    if DeviceError and isinstance(exc, DeviceError):
        return ErrorReport(
            f"Device problem: {message}. Choose another device (e.g. CPU) in the TAGS Segment module.",
            dialog=True,
            suggest_cpu=True,
        )
    if ModelError and isinstance(exc, ModelError):
        return ErrorReport(f"Model problem: {message}", dialog=True)
    if TagsegError and isinstance(exc, TagsegError):
        return ErrorReport(message, dialog=False)  # prompt/input problems: the status line is enough
    if isinstance(exc, ImportError):
        return ErrorReport(
            f"Missing dependency ({message}). Open the TAGS Segment module and press 'Install dependencies'.",
            dialog=True,
        )
    return ErrorReport(f"TAGS failed: {type(exc).__name__}: {message}", dialog=True)


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
