"""The field's corrective-click simulation (as behind NoC@85 in interactive segmentation papers).

After a prediction, the next click goes to the innermost voxel (largest distance to the region's
border, in mm) of the largest connected piece of the larger error region: an include click on a
miss, an exclude click on a leak. Used by `make bench` and the tuning script, so both score the
same protocol as the project's shared corrective-click tool.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def next_corrective_click(pred: np.ndarray, truth: np.ndarray, spacing_kji) -> tuple[np.ndarray, bool] | None:
    """(KJI index, positive) of the next simulated correction, or None when the prediction is exact."""
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    missed, leaked = truth & ~pred, pred & ~truth
    region, positive = (missed, True) if missed.sum() >= leaked.sum() else (leaked, False)
    if not region.any():
        return None
    labels, n = ndimage.label(region)
    largest = labels == (1 + int(np.argmax(ndimage.sum(region, labels, range(1, n + 1)))))
    # pad so the volume's own faces count as borders
    dist = ndimage.distance_transform_edt(np.pad(largest, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(dist)), dist.shape), dtype=float), positive
