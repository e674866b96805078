"""`tagseg organs`: organ masks for the anatomy prompt with TotalSegmentator (an optional dependency)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import DATA, Command, Reporter, option


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """One TotalSegmentator run per case of the dataset folder."""
    from ..data.datasets import discover_cases
    from ..errors import ModelError
    from ..organs import INSTALL_HINT, organ_names, run_totalsegmentator, totalsegmentator_available

    names = organ_names(args.anatomy)
    if not totalsegmentator_available():
        raise ModelError(INSTALL_HINT)
    cases = discover_cases(Path(args.data).expanduser(), organ=None)
    out = Path(args.out).expanduser()
    for case in cases:
        written = run_totalsegmentator(case.image, out / case.case_id, args.anatomy, device=args.device)
        print(f"{case.case_id}: {', '.join(p.name for p in written)}")
    print(f"organ masks ({'+'.join(names)}) in {out}; pass --organ-dir {out} to train/evaluate")
    return 0


COMMANDS = (
    Command(
        "organs",
        help="organ masks for the anatomy prompt with TotalSegmentator (optional)",
        run=run,
        options=(
            DATA,
            option("--anatomy", required=True, help="kidney, liver, pancreas, ..."),
            option("--out", required=True, metavar="ORGAN_DIR", help="writes ORGAN_DIR/<case>/<organ>.nii.gz"),
            option("--device", default="gpu"),
        ),
    ),
)
