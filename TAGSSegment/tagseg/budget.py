"""Memory budgets, checked before anything is allocated.

One place says how many bytes an input may make the process allocate: a volume (voxels x bytes per voxel,
from its header), a stream being decompressed, a network (parameters from its config), a synthetic grid.
The limit is a fraction of the memory available when asked, or `TAGSEG_MEMORY_LIMIT` (bytes, or with a
K/M/G/T suffix: `8G`); `--memory-limit` on the command line sets that variable.
"""

from __future__ import annotations

import os
import re

from .errors import InputError

ENV = "TAGSEG_MEMORY_LIMIT"
# the share of available memory one input may claim: loading makes about three working copies
# (the reader's buffer, the numpy array, a float32 copy for the model)
AVAILABLE_FRACTION = 0.25
FALLBACK_BYTES = 2 << 30  # when available memory cannot be read
# morphology: a structuring element wider than this many voxels per side is never built
MAX_MORPH_RADIUS_VOXELS = 64

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8G', '512M', '1000000' -> bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"{ENV}={text!r}: expected a size such as 8G, 512M or a number of bytes")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def available_bytes() -> int | None:
    """Memory the system can give now (MemAvailable, else physical pages), capped by an address-space limit."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            available = soft if available is None else min(available, soft)
    except (ImportError, ValueError, OSError):
        pass
    return available


def limit_bytes() -> int:
    """The most one input may make us allocate."""
    configured = os.environ.get(ENV, "").strip()
    if configured:
        return parse_size(configured)
    available = available_bytes()
    return FALLBACK_BYTES if available is None else max(int(available * AVAILABLE_FRACTION), 64 << 20)


def human(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(nbytes) < 1024 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PB"


def check(nbytes: int | float, what: str) -> None:
    """Refuse before allocating: `what` would need `nbytes`, more than the limit."""
    limit = limit_bytes()
    if nbytes > limit:
        raise InputError(
            f"{what} would need {human(nbytes)} of memory, more than the limit of {human(limit)} "
            f"(set {ENV}, e.g. {ENV}=16G, to allow more)"
        )


def check_checkpoint_config(path) -> None:
    """A TAGS checkpoint's network, sized from its config before torch is even imported (importing torch alone
    costs ~0.6 GB): a lower bound of its parameters, depth x (4 + 2 mlp_ratio) x embed_dim^2 (the attention and
    MLP weights of its transformer blocks), at float32 twice over (the weights and the file's copy). Anything
    unreadable is left to the checkpoint loader, which names the problem; the loader's exact count follows."""
    import json
    import struct

    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 64 << 20:
                return
            header = json.loads(handle.read(length))
        config = json.loads(header["__metadata__"]["tagseg"])["config"]
        depth, ratio, width = int(config["depth"]), float(config["mlp_ratio"]), int(config["embed_dim"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return
    if depth > 0 and ratio > 0 and width > 0:
        parameters = int(depth * (4 + 2 * ratio) * width**2)
        check(parameters * 4 * 2, f"the network (at least {parameters:,} parameters)")


def check_voxels(shape, bytes_per_voxel: int, what: str) -> None:
    """A grid of `shape` voxels of `bytes_per_voxel` each; shapes that overflow are refused too."""
    count = 1
    for n in shape:
        n = int(n)
        if n < 0:
            raise InputError(f"{what}: negative size {tuple(shape)}")
        count *= n
    check(count * max(int(bytes_per_voxel), 1), f"{what} ({'x'.join(str(int(n)) for n in shape)} voxels)")


def read_capped(stream, limit: int, what: str, chunk: int = 1 << 20) -> int:
    """Read a (decompressing) stream to its end without keeping it, refusing once more than `limit` bytes
    come out; returns the number of bytes read."""
    total = 0
    while True:
        block = stream.read(min(chunk, limit - total + 1))
        if not block:
            return total
        total += len(block)
        if total > limit:
            raise InputError(
                f"{what}: decompresses to more than {human(limit)} (a compression bomb, or a "
                f"volume larger than the memory limit; set {ENV} to allow more)"
            )


def radius_voxels(radius_mm, spacing_mm) -> tuple[int, ...]:
    """A morphology radius in mm -> whole voxels per axis, at least 1 and at most MAX_MORPH_RADIUS_VOXELS:
    a spacing of 0.001 mm must not turn a 5 mm dilation into a 5000-voxel structuring element."""
    import numpy as np

    spacing = np.atleast_1d(np.asarray(spacing_mm, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.round(np.asarray(radius_mm, dtype=np.float64) / spacing)
    steps = np.clip(np.nan_to_num(steps, nan=1.0, posinf=MAX_MORPH_RADIUS_VOXELS), 1, MAX_MORPH_RADIUS_VOXELS)
    return tuple(int(s) for s in steps)
