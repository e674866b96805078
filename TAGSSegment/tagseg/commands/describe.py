"""`tagseg describe`: how a description is read (anatomy, lesion word, CT window, segment name, terminology)."""

from __future__ import annotations

import argparse
import json

from ..errors import one_line
from .common import JSON, Command, Reporter, option


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Print the reading of `args.text`, as a table or JSON."""
    from ..text import parse_description

    reading = parse_description(args.text)
    if args.json:
        print(json.dumps(reading.as_dict(), indent=2))
        return 0
    data = reading.as_dict()
    ct, mr, term = data["intensity"]["ct"], data["intensity"]["mr"], data["terminology"]
    region = term["anatomic_region"]
    lines = [
        ("text", reading.text or "(empty)"),
        ("segment", reading.segment_name),
        ("anatomy", (reading.anatomy or "none (no organ named)").replace("_", " ")),
        ("lesion", reading.lesion_word or "none"),
        ("CT window", f"{ct['preset']} {ct['window_hu'][0]:g}..{ct['window_hu'][1]:g} HU"),
        ("MR", f"percentiles {mr['percentiles'][0]:g}..{mr['percentiles'][1]:g}"),
        ("category", f"{term['category']['meaning']} (SCT {term['category']['code']})"),
        ("type", f"{term['type']['meaning']} (SCT {term['type']['code']})"),
        ("region", f"{region['meaning']} (SCT {region['code']})" if region else "none"),
    ]
    for match in reading.evidence:
        means = match.means.split(":", 1)
        lines.append(
            (
                "word",
                f"{match.describe()} -> "
                + (f"lesion word '{means[1]}'" if len(means) == 2 else f"anatomy {match.means}"),
            )
        )
    for label, value in lines:
        print(f"{label:<10} {one_line(value)}")
    return 0


COMMANDS = (
    Command(
        "describe",
        help="show how a description (--text) is read",
        description="How TEXT is read: anatomy, lesion word, CT window, segment name and the terminology codes the "
        "segment gets. Reads French, German, Spanish, Italian and Portuguese, and typos.",
        run=run,
        options=(option("text", metavar="TEXT", help='a description, e.g. "tumeur du pancréas"'), JSON),
    ),
)
