"""``python -m resshift_core``: the command-line interface (see :mod:`resshift_core.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
