"""`tagseg evaluate`: the paper's evaluation protocol (Dice, NSD at 5 mm) for any model over a dataset folder;
one CSV row per case, a failed case is a row and exit code 3."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .common import DATA, DEVICE, FOLD, LAYOUT, ORGAN_DIR, Command, Reporter, option, tags_extensions
from .outputs import check_writable

PROTOCOL_CHOICES = ("paper", "interactive")
EXIT_CASES_FAILED = 3


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    """Evaluate every labelled case (of the split's subset), writing each row as it is scored."""
    import numpy as np

    from ..backends import resolve_model_name
    from ..data.datasets import dataset_anatomy, find_cases, load_case, split_cases
    from ..evaluate import ResultsWriter, evaluate_case, failed_case, protocol_options, session_predictor, summarise
    from ..text import parse_description

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".csv":
        raise InputError(f"{out}: --out must be a .csv file")
    check_writable(out, "the results file")
    if args.clicks < 1:
        raise InputError("--clicks must be at least 1")
    if args.text_fusion is not None and not 0.0 <= args.text_fusion <= 1.0:
        raise InputError(f"--text-fusion {args.text_fusion}: must be within 0..1")
    cases, split = find_cases(
        args.data, layout=args.layout, organ="auto", organ_dir=args.organ_dir, split_file=args.split, fold=args.fold
    )
    if split is not None:
        cases = split_cases(cases, split).get(args.subset, [])
    cases = [c for c in cases if c.label is not None][: args.limit or None]
    if not cases:
        raise InputError(f"{args.data}: no labelled cases to evaluate")
    anatomy = dataset_anatomy(args.data)
    text = args.text if args.text is not None else f"{anatomy if anatomy != 'organ' else ''} tumor".strip()
    model = resolve_model_name(args.model, parse_description(text))
    options = protocol_options(
        args.protocol,
        sliding_window=args.sliding_window,
        autocast=args.autocast,
        text_fusion=args.text_fusion,
        anatomy_fallback=args.anatomy_fallback,
    )
    # the paper's test.py never looks at text; it reaches the model only when an extension uses it
    model_text = text if (args.protocol != "paper" or options["text_fusion"] > 0) else ""
    organs: dict = {}
    predictor = session_predictor(model, args.device, model_text, options, organ_for=lambda cid: organs.get(cid))
    rng = np.random.default_rng(args.seed)
    results = []
    extra = {"model": model, "clicks": args.clicks, "seed": args.seed, "requested_protocol": args.protocol}
    with ResultsWriter(out, extra) as writer:
        for index, case in enumerate(cases, 1):
            try:
                image, label, organ = load_case(case)
                assert label is not None  # only labelled cases are evaluated (see above)
                tumour = label.with_array((np.asarray(label.array) == args.tumour_label).astype(np.uint8))
            except Exception as exc:  # noqa: BLE001 - an unreadable case is a row, not the end of the run
                result = failed_case(case.case_id, exc)
            else:
                organs[case.case_id] = organ
                result = evaluate_case(case.case_id, image, tumour, predictor(case.case_id), args.clicks, rng)
                organs.pop(case.case_id, None)
            results.append(result)
            writer.write(result)
            if result.failed:
                shown = f"FAILED: {result.error}"
            elif result.dice is None:
                shown = "skipped (no tumour)"
            else:
                shown = f"Dice {result.dice:.4f} NSD {result.nsd:.4f} [{result.protocol}]"
            print(f"[{index}/{len(cases)}] {case.case_id}: {shown}", file=sys.stderr, flush=True)
    summary = summarise(results)
    print(summary.line())
    print(f"per-case results: {out}")
    if summary.failed:
        print(
            f"{summary.failed} of {len(results)} cases failed (their rows in {out} give the error); "
            f"exit code {EXIT_CASES_FAILED}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_CASES_FAILED
    return 0


COMMANDS = (
    Command(
        "evaluate",
        help="the paper's evaluation protocol for any model (Dice, NSD@5mm)",
        description="Per case: clicks drawn from the tumour (seeded), one prediction, Dice and the authors' NSD "
        "at 5 mm on the original grid. --protocol paper (default) runs TAGS as the authors' test.py "
        "does: one crop at the floored midpoint of the clicks whatever their spread, fp32, text "
        "unused, zeros in the organ channel when the mask misses the crop. The extensions are "
        "opt-in flags; the CSV records per case what actually ran. A case that fails is a row with "
        "its error; the run goes on and exits with code 3 if any case failed.",
        run=run,
        options=(
            DATA,
            option("--model", required=True, metavar="CHECKPOINT|NAME"),
            option("--clicks", type=int, default=3),
            option("--seed", type=int, default=2),
            option("--out", required=True, metavar="results.csv"),
            LAYOUT,
            ORGAN_DIR,
            option("--split", metavar="FILE", help="evaluate the --subset of this split (default: every case)"),
            FOLD,
            option("--subset", default="test"),
            option("--tumour-label", type=int, default=2),
            option(
                "--text",
                default=None,
                help="description (default: '<organ> tumor'); picks the model with --model auto, and reaches "
                "the model only with --text-fusion or --protocol interactive (the paper: text unused)",
            ),
            option(
                "--protocol",
                choices=PROTOCOL_CHOICES,
                default="paper",
                help="paper (default): the authors' test.py; interactive: what the app does (sliding window, "
                "bf16 on GPU, a box around the clicks as organ channel when the mask is missing)",
            ),
            option("--limit", type=int, help="only the first N cases"),
            DEVICE,
        ),
        groups={
            "TAGS extensions (off in --protocol paper; each flag turns one on)": tags_extensions(paper_defaults=True)
        },
    ),
)
