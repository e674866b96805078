"""Per click through the Slicer logic (slicer-core) with a local `tagseg serve`, under Slicer's GIL behaviour.

The case's CT is tiled along K (and edge-padded in-plane) to `--slices` x `--size` x `--size` (default
300 x 512 x 512, the issue's target); the lesion label is kept in the middle copy only. Include clicks are
drawn from the label (rng `--seed`). The Slicer path: a volume node, `TAGSLogic` with its own engine
process (started and ready before the first click, as the effect starts it when activated), and a
GIL-holding event loop (`gil_harness.GilHoldingLoop`: libc usleep(45 ms) via ctypes.PyDLL, then the timer
callbacks: `logic.poll()` and the effect's delivery, which writes the mask through a headless Segment
Editor with one undo state). The reference: an in-process `tagseg.Session`, same clicks, plain Python.

One JSON line: first_s (first click to written segment: hash + upload + session + model), refine_s (median of
the later clicks, each sending all clicks so far), session_first_s / session_refine_s (the in-process Session
for the same clicks, one add_point + predict each),
main_thread_block_s (longest main-thread call: poll, predict_async or the write, wall clock; on a loaded
machine it includes time the scheduler gave to other processes) and main_thread_block_cpu_s (the longest
timer callback in the main thread's CPU time), and details.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/slicer_path.py --case ../shared/data/lesions_dev/deeplesion_000001_ct --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TAGSSegment"))
sys.path.insert(0, str(ROOT / "TAGSSegment" / "Testing" / "Python"))

from tagseg.evaluate import dice  # noqa: E402  (the one Dice)


def build_case(folder: Path, slices: int, size: int, seed: int, clicks: int):
    import tagseg
    from tagseg.volume import Volume

    image = tagseg.load_volume(next(folder.glob("image.*")))
    label = tagseg.load_volume(next(folder.glob("label.*")))
    array, lab = np.asarray(image.array), np.asarray(label.array) > 0
    k, j, i = array.shape
    copies = -(-slices // k)
    middle = copies // 2
    tiled = np.tile(array, (copies, 1, 1))[:slices]
    tiled_label = np.zeros(tiled.shape, np.uint8)
    k0 = middle * k
    tiled_label[k0 : k0 + k] = lab[: max(min(k, slices - k0), 0)]
    pad = ((0, 0), (0, max(size - j, 0)), (0, max(size - i, 0)))
    tiled = np.pad(tiled, pad, mode="edge")[:, :size, :size]
    tiled_label = np.pad(tiled_label, pad)[:, :size, :size]
    matrix = np.asarray(image.ijk_to_ras)
    big = Volume(np.ascontiguousarray(tiled), matrix, f"{folder.name} tiled")
    big_label = Volume(tiled_label, matrix, "label")
    voxels = np.argwhere(tiled_label > 0)
    if len(voxels) == 0:
        raise SystemExit(f"{folder}: the label is empty")
    picks = voxels[np.random.default_rng(seed).choice(len(voxels), clicks, replace=False)]
    return big, big_label, [tuple(p) for p in big.kji_to_ras(picks)]


def in_process(volume, clicks, model: str, device: str) -> dict:
    from tagseg.session import Session

    out = {"masks": []}
    session = Session(volume, model=model, device=device)
    try:
        for click in clicks:
            start = time.perf_counter()
            session.add_point(click, positive=True)
            result = session.predict()
            seconds = time.perf_counter() - start
            out["seconds"] = out.get("seconds", []) + [seconds]
            out["timings"] = out.get("timings", []) + [{k: round(v, 4) for k, v in session.timings.items()}]
            out["masks"].append(np.array(result.array, dtype=np.uint8))
    finally:
        session.close()
    return out


def slicer_path(volume, clicks, model: str, device: str, idle_us: int, timeout: float) -> dict:
    from gil_harness import GilHoldingLoop
    from slicer_harness import make_scene
    from TAGSSegmentLib import logic as L

    harness = make_scene()
    node = L.volume_node_from_volume(harness.scene, volume, volume.name)
    segmentation = L.ensure_segmentation(harness.scene, node)
    segment_id = L.add_segment(segmentation, "")
    editor, _ = L.make_editor_logic(harness.scene, segmentation, node, segment_id)
    logic = L.TAGSLogic(model=model, device=device)
    loop = GilHoldingLoop(idle_us=idle_us, hold_gil=True)
    out = {"masks": [], "write_s": 0.0, "predict_async_s": 0.0}
    try:
        start = time.perf_counter()
        logic.warm_up()
        loop.run_until(lambda: not logic.busy, [logic.poll], timeout)
        out["engine_ready_s"] = time.perf_counter() - start
        for index, _ in enumerate(clicks):
            delivered: list = []

            def deliver(future) -> None:  # what the effect's timer does once the future is done
                if delivered or not future.done():  # noqa: B023 (runs within this iteration)
                    return
                began = time.perf_counter()
                mask = future.result()
                L.write_mask(editor, segmentation, segment_id, L.oriented_labelmap(mask, node, segmentation))
                out["write_s"] = max(out["write_s"], time.perf_counter() - began)
                delivered.append(mask)  # noqa: B023 (runs within this iteration)

            start = time.perf_counter()
            future = logic.predict_async(node, clicks[: index + 1], [], [], "")
            out["predict_async_s"] = max(out["predict_async_s"], time.perf_counter() - start)
            loop.run_until(lambda: bool(delivered), [logic.poll, lambda: deliver(future)], timeout)  # noqa: B023 (runs within this iteration)
            seconds = time.perf_counter() - start
            out["seconds"] = out.get("seconds", []) + [seconds]
            out["masks"].append(delivered[0])
            out["timings"] = out.get("timings", []) + [{k: round(v, 4) for k, v in logic.last_timings.items()}]
        out["longest_callback_s"] = loop.longest_callback_s
        out["longest_callback_cpu_s"] = loop.longest_callback_cpu_s
        out["longest_logic_call_s"] = logic.longest_call_s
        out["main_thread_block_s"] = max(loop.longest_callback_s, logic.longest_call_s, out["predict_async_s"])
    finally:
        logic.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, help="a case folder with image.* and label.*")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--clicks",
        type=int,
        default=4,
        help="include clicks: the first, then refinements (refine_s: their median; default 4)",
    )
    parser.add_argument("--model", default="litemedsam-3d")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idle-us", type=int, default=45000, help="GIL-holding idle time per tick")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per click before giving up")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()

    folder = Path(args.case)
    if not folder.is_dir() or not any(folder.glob("image.*")):
        print(json.dumps({"bench": "slicer_path", "skipped": f"case folder not found: {folder}"}))
        return 0
    try:
        import fastapi  # noqa: F401
        import slicer  # noqa: F401
    except ImportError as exc:
        print(json.dumps({"bench": "slicer_path", "skipped": f"needs slicer-core, fastapi and uvicorn ({exc})"}))
        return 0
    volume, label, clicks = build_case(folder, args.slices, args.size, args.seed, max(args.clicks, 1))
    reference = in_process(volume, clicks, args.model, args.device)
    path = slicer_path(volume, clicks, args.model, args.device, args.idle_us, args.timeout)

    def median(values):
        return round(float(np.median(values)), 3) if values else float("nan")

    refine, session_refine = path["seconds"][1:], reference["seconds"][1:]
    row = {
        "bench": "slicer_path",
        "case": folder.name,
        "shape_kji": list(volume.shape_kji),
        "device": args.device,
        "clicks": len(clicks),
        "first_s": round(path["seconds"][0], 3),
        "refine_s": median(refine),
        "session_first_s": round(reference["seconds"][0], 3),
        "session_refine_s": median(session_refine),
        "refine_each_s": [round(v, 3) for v in refine],
        "session_refine_each_s": [round(v, 3) for v in session_refine],
        "engine_refine_each_s": [t.get("engine_total") for t in path["timings"][1:]],
        "main_thread_block_s": round(path["main_thread_block_s"], 4),
        "main_thread_block_cpu_s": round(path["longest_callback_cpu_s"], 4),
        "longest_poll_s": round(path["longest_logic_call_s"], 4),
        "write_s": round(path["write_s"], 4),
        "predict_async_s": round(path["predict_async_s"], 4),
        "engine_ready_s": round(path["engine_ready_s"], 2),
        "identical_masks": all(np.array_equal(a, b) for a, b in zip(path["masks"], reference["masks"], strict=False)),
        "dice": [round(dice(m, label.array), 3) for m in path["masks"]],
        "timings_first": path["timings"][0],
        "timings_last_refine": path["timings"][-1],
        "session_timings_first": reference["timings"][0],
        "session_timings_last_refine": reference["timings"][-1],
        "refine_target_met": bool(refine and median(refine) <= median(session_refine) + 0.1),
        "block_target_met": bool(path["main_thread_block_s"] <= 0.1),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if args.json:
        print(json.dumps(row))
    else:
        print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
