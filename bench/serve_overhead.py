"""Per-click cost of the engine process: `RemoteSession` against `tagseg serve` on loopback vs `Session`.

Both sides get the same clicks on the same phantom; after a first prediction (image encoding,
excluded) every further include click is timed end to end (add_point + predict) on each side in
turn, so they never compete for the CPU. Prints one JSON line: the median remote, in-process and
overhead seconds per click, the server's share, and whether every mask was bit-identical.

    .venv/bin/python bench/serve_overhead.py --clicks 8 --device cpu
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parents[1] / "TAGSSegment"
sys.path.insert(0, str(SOURCE))

from tagseg.client import RemoteSession  # noqa: E402
from tagseg.session import Session  # noqa: E402
from tagseg.synth import make_phantom  # noqa: E402
from tagseg.volume import Volume  # noqa: E402


def slab(volume: Volume, k0: int, count: int) -> Volume:
    matrix = np.array(volume.ijk_to_ras)
    matrix[:3, 3] = volume.kji_to_ras([[k0, 0, 0]])[0]
    return Volume(np.asarray(volume.array)[k0 : k0 + count], matrix, volume.name)


def start_server(device: str):
    env = dict(os.environ, PYTHONPATH=str(SOURCE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagseg", "serve", "--device", device],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(180)
    if not line or not line[0]:
        proc.kill()
        raise SystemExit("tagseg serve did not start")
    return proc, json.loads(line[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=8, help="timed refinement clicks (default 8)")
    parser.add_argument("--shape", default="16,128,128", help="phantom K,J,I before cropping (default 16,128,128)")
    parser.add_argument("--slices", type=int, default=5, help="slices kept around the tumour (0 = all; default 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shape = tuple(int(v) for v in args.shape.split(","))
    phantom = make_phantom(seed=args.seed, shape_kji=shape, spacing_ijk=(256.0 / shape[2], 256.0 / shape[1], 4.0))
    image, label = phantom.image, phantom.label
    if args.slices:
        k_centre = int(np.median(np.argwhere(np.asarray(label.array) > 0)[:, 0]))
        k0 = int(np.clip(k_centre - args.slices // 2, 0, shape[0] - args.slices))
        image, label = slab(image, k0, args.slices), slab(label, k0, args.slices)
    voxels = np.argwhere(np.asarray(label.array) > 0)
    rng = np.random.default_rng(args.seed)
    clicks = label.kji_to_ras(voxels[rng.choice(len(voxels), args.clicks + 1, replace=False)])

    proc, ready = start_server(args.device)
    remote_s, local_s, server_s, identical = [], [], [], True
    try:
        remote = RemoteSession(ready["url"], image, device=args.device)
        local = Session(image, device=args.device)
        for s in (remote, local):
            s.set_text(phantom.description)
            s.add_point(clicks[0])
            s.predict()  # model load + image encoding: not timed
        for click in clicks[1:]:
            t0 = time.perf_counter()
            remote.add_point(click)
            mine = remote.predict()
            t1 = time.perf_counter()
            local.add_point(click)
            theirs = local.predict()
            t2 = time.perf_counter()
            remote_s.append(t1 - t0)
            local_s.append(t2 - t1)
            server_s.append(remote.timings.get("server", float("nan")))
            identical &= bool(np.array_equal(mine.array, theirs.array))
        remote.close()
        local.close()
    finally:
        proc.terminate()
        proc.wait(30)
    overhead = [r - loc for r, loc in zip(remote_s, local_s, strict=False)]
    print(
        json.dumps(
            {
                "bench": "serve_overhead",
                "grid_kji": list(image.shape_kji),
                "clicks": len(overhead),
                "device": args.device,
                "remote_click_s": round(statistics.median(remote_s), 4),
                "session_click_s": round(statistics.median(local_s), 4),
                "overhead_s": round(statistics.median(overhead), 4),
                "transport_s": round(statistics.median(r - s for r, s in zip(remote_s, server_s, strict=False)), 4),
                "bit_identical": identical,
                "target_overhead_s": 0.03,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
