"""Choosing the compute device: CUDA when present, CPU always works, Apple MPS only on request."""

from __future__ import annotations

import os
import sys

from .errors import DeviceError

CHOICES = ("auto", "cpu", "cuda", "mps")


# Device nodes without which no CUDA (NVIDIA), ROCm (AMD, also reported through torch.cuda) or WSL GPU can exist
_LINUX_GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def _may_have_gpu() -> bool:
    """False only where no GPU can be present (Linux without any GPU device node): "auto" is then the CPU
    without importing torch (0.5 GB, 1-2 s), which the default model does not otherwise need."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(node) for node in _LINUX_GPU_NODES)


def resolve_device(requested: str = "auto", warn=None) -> str:
    """The device to run on. "auto" is CUDA when present, else the CPU without a word (an expected outcome,
    not a problem); an explicit "cuda" or "mps" that is missing is an error. `warn` is accepted for callers
    that pass their reporter; nothing here needs it now."""
    choice = (requested or "auto").lower()
    if choice == "cpu":  # no torch import: a refused input stays cheap (torch alone is ~0.6 GB)
        return "cpu"
    if choice == "auto" and not _may_have_gpu():
        return "cpu"
    import torch

    if choice.startswith("cuda") and choice != "cuda" and not choice[5:].isdigit():
        raise DeviceError(f"unknown device '{requested}' (choose from {', '.join(CHOICES)} or cuda:N)")
    if choice not in CHOICES and not choice.startswith("cuda:"):
        raise DeviceError(f"unknown device '{requested}' (choose from {', '.join(CHOICES)} or cuda:N)")
    if choice == "auto":  # CPU is an expected outcome of "auto": nothing to warn about
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{requested}' requested but CUDA is not available on this machine; use device 'cpu'"
            )
        index = int(choice[5:]) if ":" in choice else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{requested}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return choice
    if choice == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("device 'mps' requested but Apple MPS is not available; use device 'cpu'")
        return "mps"
    return "cpu"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device running out of memory (CUDA, MPS, a backend's own message); the one such check.

    Never imports torch: callers that never loaded it (the Slicer layer, a refused input) stay light, and an error
    raised without torch loaded can still be recognised by its type name or message.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        oom = getattr(torch, "OutOfMemoryError", None) or getattr(
            getattr(torch, "cuda", None), "OutOfMemoryError", None
        )
        if isinstance(oom, type) and isinstance(exc, oom):
            return True
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def describe_devices() -> dict:
    import torch

    cuda_devices: list[dict] = []
    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cuda_devices": cuda_devices}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda_devices.append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
    info["mps_available"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    info["cpu_threads"] = torch.get_num_threads()
    return info
