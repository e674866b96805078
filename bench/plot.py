"""bench/results/bench.png: Dice per case per method (grouped bars, one panel per protocol) and a latency panel.

Kept apart from run_bench.py so the numbers never depend on matplotlib being importable.
"""

from __future__ import annotations

import math
from pathlib import Path

COLOURS = {"litemedsam-3d": "#1f77b4", "tags": "#9467bd", "grow-from-seeds": "#2ca02c", "lms-per-slice": "#ff7f0e"}


def plot(
    path: Path,
    methods: list[str],
    protocols: list[str],
    cases: list[str],
    dice: dict[tuple[str, str, str], float],
    latency: dict[tuple[str, str], tuple[float, float]],
    latency_label: str,
    title: str,
) -> None:
    """dice[(method, protocol, case)]; latency[(method, protocol)] = (first s, refine s) medians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(protocols) + 1
    ncols = 2
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 3.6 * nrows), squeeze=False)
    flat = axes.ravel()
    width = 0.8 / max(len(methods), 1)
    for ax, protocol in zip(flat, protocols, strict=False):
        for m, method in enumerate(methods):
            xs = [c + (m - (len(methods) - 1) / 2) * width for c in range(len(cases))]
            ys = [dice.get((method, protocol, case), math.nan) for case in cases]
            ax.bar(xs, [0 if math.isnan(y) else y for y in ys], width, label=method, color=COLOURS.get(method))
        split = next((i for i, c in enumerate(cases) if c.startswith("phantom")), 0)
        if 0 < split < len(cases):  # dev cases left, phantoms right
            ax.axvline(split - 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([c.replace("deeplesion_", "dl_") for c in cases], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.set_title(f"Dice, {protocol}")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8)

    ax = flat[len(protocols)]
    for m, method in enumerate(methods):
        xs = [p + (m - (len(methods) - 1) / 2) * width for p in range(len(protocols))]
        first = [latency.get((method, p), (math.nan, math.nan))[0] for p in protocols]
        refine = [latency.get((method, p), (math.nan, math.nan))[1] for p in protocols]
        colour = COLOURS.get(method)
        ax.bar([x - width / 4 for x in xs], first, width / 2, color=colour)
        ax.bar([x + width / 4 for x in xs], refine, width / 2, color=colour, alpha=0.45, hatch="//")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-3)
    ax.set_xticks(range(len(protocols)))
    ax.set_xticklabels(protocols)
    ax.set_ylabel("seconds (log)")
    ax.set_title(f"Latency, median per case ({latency_label}); solid = first, hatched = refine click")
    ax.grid(axis="y", alpha=0.3, which="major")
    for extra in flat[panels:]:
        extra.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
