"""Simulated devices for the whole suite, chosen once, before JAX starts.

One process: 8 CPU devices. Under ``mpiexec -n 2`` (see the Makefile) each
process simulates SYNK_CPU_DEVICES=2 and synk.init starts jax.distributed.
"""

import os

import hypothesis

import synk

synk.init(cpu_devices=int(os.environ.get("SYNK_CPU_DEVICES", "8")))

# Every example compiles a new executable, so examples are few and slow (and
# twice as slow across processes, where the one-process run has already taken
# the others); tests/test_fuzz.py, with settings of its own, searches wider.
# derandomize: every process draws the same examples, so the processes make
# the same calls.
hypothesis.settings.register_profile(
    "synk",
    max_examples=12 if synk.process_count() == 1 else 5,
    deadline=None,
    derandomize=True,
    print_blob=True,
)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "synk"))
