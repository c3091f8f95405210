"""Benchmarks of snnopt against snnTorch and SpikingJelly.

The benchmark code lives in :mod:`snnopt.bench` so that the installed ``snnopt bench``
command can run it; ``python -m bench.run`` is the same command from a source checkout.
Results are appended to ``bench/RESULTS.md``.
"""
