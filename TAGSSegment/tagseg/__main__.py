"""`python -m tagseg ...`: the same command line as the `tagseg` console script."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
