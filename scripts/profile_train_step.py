"""Where a TAGS training step spends its GPU time: torch.profiler's top operators for one step.

python scripts/profile_train_step.py [--preset tags-b] [--steps 2] [--top 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAGSSegment"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tagseg.tags import build_tags  # noqa: E402
from tagseg.tags.recipe import make_optimisers, sample_training_points, training_step  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tags-b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_tags(args.preset, seed=0).to(args.device)
    size = model.config.crop_size
    rng = np.random.default_rng(0)
    crop = torch.randn(3, size, size, size)
    label = torch.zeros(size, size, size)
    label[size // 3 : size // 2, size // 3 : size // 2, size // 3 : size // 2] = 1
    embed = torch.nn.functional.normalize(torch.randn(model.config.embed_dim, 2), dim=0)
    optimisers = make_optimisers(model)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else None

    def step():
        pts, pl = sample_training_points(label.numpy(), rng)
        training_step(model, optimisers, crop, label, pts, pl, embed, autocast_dtype=dtype)

    step()
    times = []
    for _ in range(args.steps):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f"step seconds: {[round(t, 3) for t in times]}")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
    key = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
