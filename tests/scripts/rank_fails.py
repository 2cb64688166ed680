"""Rank 1 stops early (exits or raises); rank 0 then waits in a collective.

Run by tests/test_launch.py under mpiexec -n 2: the launch as a whole must end
non-zero within a bounded time instead of hanging.
"""

import sys

import numpy as np

import synk

synk.init()
f = synk.function(lambda x: x.sum(), reduce="sum")
print(synk.process_index(), "first call", float(f(np.ones(4, np.float32))), flush=True)
if synk.process_index() == 1:
    if sys.argv[1] == "raise":
        raise RuntimeError("rank 1 failed on purpose")
    sys.exit(0)  # leaves early, cleanly: the worst case, nothing says it failed
f(np.ones(4, np.float32))  # rank 0 waits for rank 1 here
print("unreachable: rank 0 finished a call that rank 1 never made", flush=True)
