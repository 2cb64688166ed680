"""One launch layout: what each process drives, and a reduction over all of them.

Run by tests/test_launch.py under mpiexec -n 2. Each process passes its share
(4 rows) of the global batch arange(8); the sum must be 28 on every process.
"""

import jax
import numpy as np

import synk

synk.init()
f = synk.function(lambda x: x.sum(), reduce="sum")
share = np.arange(4, dtype=np.float32) + 4 * synk.process_index()
total = float(f(share))
visible = jax.config.read("jax_cuda_visible_devices")  # the GPUs jax.distributed was given
print(
    f"rank {synk.process_index()}: {len(jax.local_devices())} local of {synk.device_count()} "
    f"devices, sum {total}, visible {visible}",
    flush=True,
)
