"""`import tagseg.cli` still works (bench/startup.py, test_fuzz.py and older scripts import it): the command line
itself is `tagseg.commands`, one module per command."""

from __future__ import annotations

import sys

from .commands import main, with_option_names  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
