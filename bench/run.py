"""``python -m bench.run [options]``: the same as ``snnopt bench [options]``.

Times training steps of snnopt's dense, sparse and rate modes against snnTorch and
SpikingJelly on one workload (``--workload shd|conv|linear|all``), prints the ratio table
and appends it to ``bench/RESULTS.md``; ``--sweep-steps 4,32,100`` times snnopt dense and
rate alone at each T instead (rate mode's target).  See :mod:`snnopt.bench`; ``--help``
lists the options.
"""

import sys

from snnopt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
