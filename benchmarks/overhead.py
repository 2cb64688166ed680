"""Per-call overhead of ``synk.function`` against hand-written JAX and ``jax.pmap``.

This is ``python -m synk bench overhead`` (``synk/_src/bench/``), which any
user can run on their own machine; the flags are the same::

    python benchmarks/overhead.py                       # or: make bench
    python benchmarks/overhead.py --rounds 40 --json overhead.json
    mpiexec -n 2 python benchmarks/overhead.py          # two processes

Set ``SYNK_CPU_DEVICES=8`` (as ``make bench`` does) to simulate 8 CPU devices.
Figures and their reading: ``benchmarks/RESULTS.md``.
"""

import sys

from synk._src.bench import cli

if __name__ == "__main__":
    sys.exit(cli.main(["overhead", *sys.argv[1:]]))
