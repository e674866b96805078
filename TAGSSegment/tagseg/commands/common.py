"""What several commands share: the program name, the warning reporter, the version, and the steps around a
Session (load an image, predict, close, measure). A leaf module: it imports no command module."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import one_line

PROG = "tagseg"


class Reporter:
    """Collects warnings (for --json) while printing them as one line each on stderr."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        message = one_line(message)
        self.warnings.append(message)
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def tagseg_version() -> str:
    """The package's version: the imported tagseg's, else the installed distribution's."""
    import importlib.metadata

    version = getattr(sys.modules.get("tagseg"), "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("tagseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (source tree, not installed)"


def load_image(path: Path, reporter: Reporter, series: str | None = None, resample_uneven: bool = False):
    """Load and check a volume; NaN/inf voxels are allowed (treated as the lowest finite value) with a warning."""
    import numpy as np

    from ..io import load_volume
    from ..volume import check_volume

    volume = load_volume(path, series=series, resample_uneven=resample_uneven)
    for message in volume.meta.pop("warnings", ()):
        reporter.warn(message)
    check_volume(volume)
    array = np.asarray(volume.array)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            reporter.warn(f"{path.name}: {bad} voxel(s) are NaN or infinite; treated as the lowest finite value")
    return volume


def mask_stats(mask) -> dict:
    """Voxel count and volume (ml) of a mask."""
    import numpy as np

    voxels = int(np.count_nonzero(np.asarray(mask.array)))
    voxel_ml = float(np.prod(mask.spacing_ijk)) / 1000.0
    return {"voxels": voxels, "volume_ml": round(voxels * voxel_ml, 4)}


def predict(session, interrupted: list[bool]):
    """`session.predict()`, noting a Ctrl-C so `close` knows not to wait for the model thread."""
    try:
        return session.predict()
    except KeyboardInterrupt:
        interrupted.append(True)
        raise


def close(session, interrupted: list[bool]) -> None:
    """Close unless interrupted: closing waits for the model thread, which cannot be stopped mid-pass."""
    if not interrupted:
        session.close()
