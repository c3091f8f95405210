"""``python -m snnopt``: the command line of :mod:`snnopt.cli`."""

import sys

from .cli import main

sys.exit(main())
