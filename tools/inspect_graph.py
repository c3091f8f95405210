"""Write the HTML graph report of a model (see ``snnopt.inspect.cli``)."""
import sys

from snnopt.inspect.cli import main

if __name__ == "__main__":
    sys.exit(main())
