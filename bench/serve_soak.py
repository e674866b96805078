"""Soak test of one `tagseg serve` on loopback: C client threads x S sessions of random clicks for T seconds.

Every session has its own description, so the segment name of every reply says which session it
was computed for: a reply delivered to the wrong session is counted. Prints one JSON line with the
number of clicks, errors, misdeliveries, the p50/p95 click time and the server's peak RSS (Linux).

    .venv/bin/python bench/serve_soak.py --clients 4 --sessions 5 --seconds 120 --device cpu
"""

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_overhead import SOURCE, slab, start_server  # noqa: E402,F401 (SOURCE puts tagseg on sys.path)
from tagseg.client import RemoteSession  # noqa: E402
from tagseg.errors import TagsegError  # noqa: E402
from tagseg.synth import make_phantom  # noqa: E402


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=5, help="sessions per client")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=3)
    args = parser.parse_args()

    phantom = make_phantom(seed=0, shape_kji=(16, 64, 64), spacing_ijk=(2.0, 2.0, 4.0))
    k_centre = int(np.median(np.argwhere(np.asarray(phantom.label.array) > 0)[:, 0]))
    k0 = max(0, k_centre - args.slices // 2)
    image, label = slab(phantom.image, k0, args.slices), slab(phantom.label, k0, args.slices)
    targets = label.kji_to_ras(np.argwhere(np.asarray(label.array) > 0))

    proc, ready = start_server(args.device)
    stats = {"clicks": 0, "errors": 0, "misdelivered": 0}
    times: list[float] = []
    messages: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        sessions = []
        for s in range(args.sessions):
            session = RemoteSession(ready["url"], image, device=args.device)
            session.set_text(f"lesion c{index}s{s}")
            sessions.append(session)
        while time.monotonic() < deadline:
            number = rng.randrange(len(sessions))
            session = sessions[number]
            try:
                if rng.random() < 0.2 and session.undo():
                    pass
                else:
                    session.add_point(targets[rng.randrange(len(targets))], positive=rng.random() < 0.85)
                start = time.perf_counter()
                mask = session.predict()
                spent = time.perf_counter() - start
                with lock:
                    stats["clicks"] += 1
                    times.append(spent)
                    if mask.name != f"lesion c{index}s{number}":
                        stats["misdelivered"] += 1
            except TagsegError as exc:
                if "only exclude points" in str(exc) or "no prompt given" in str(exc):
                    session.reset()
                    session.set_text(f"lesion c{index}s{number}")
                    continue
                with lock:
                    stats["errors"] += 1
                    messages.append(f"{type(exc).__name__}: {exc}"[:200])
        for session in sessions:
            session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    times.sort()
    print(
        json.dumps(
            {
                "bench": "serve_soak",
                "clients": args.clients,
                "sessions_per_client": args.sessions,
                "seconds": args.seconds,
                **stats,
                "click_p50_s": round(statistics.median(times), 3) if times else None,
                "click_p95_s": round(times[int(0.95 * (len(times) - 1))], 3) if times else None,
                "server_peak_rss_mb": None if rss is None else round(rss, 1),
                "first_errors": messages[:3],
            }
        )
    )
    return 0 if stats["errors"] == 0 and stats["misdelivered"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
