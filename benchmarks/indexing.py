"""Batches as indices into device-resident data (``synk.data``) against batches from the host.

This is ``python -m synk bench indexing`` (``synk/_src/bench/indexing.py``,
where what is measured is described); the flags are the same::

    python benchmarks/indexing.py                       # or: make bench
    python benchmarks/indexing.py --rows 200000 --features 64 --batches 64,256,1024,4096
    python benchmarks/indexing.py --rounds 20 --calls 10 --json indexing.json

Unless ``SYNK_CPU_DEVICES`` says otherwise, 8 CPU devices are simulated (where
there is an accelerator, synk runs on it and this only shapes the CPU backend).
Figures and their reading: ``benchmarks/RESULTS.md``.
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("SYNK_CPU_DEVICES", "8")  # before synk configures JAX
    from synk._src.bench import cli

    sys.exit(cli.main(["indexing", *sys.argv[1:]]))
