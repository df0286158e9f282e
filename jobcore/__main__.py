"""`python -m jobcore`: the command line (see `jobcore.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
