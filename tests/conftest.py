"""Simulated devices for the whole suite, chosen once, before JAX starts.

One process: 8 CPU devices. Under ``mpiexec -n 2`` (see the Makefile) each
process simulates SYNK_CPU_DEVICES=2 and synk.init starts jax.distributed.
"""

import os

import hypothesis

import synk

# The suite compiles hundreds of small programs. Without LLVM's optimisations
# XLA's CPU backend compiles them about 15 % faster; XLA's own passes, which
# decide the collectives, the fusions and the memory, still run. (Subprocesses
# that tests start inherit it; examples and notebooks run as users run them.)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()
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
