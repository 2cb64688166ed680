"""The benchmarks ``synk bench`` offers, each with its one-line description.

Plain data, so that ``synk --help`` (``synk/__main__.py``) lists them without
importing the benchmarks themselves; ``synk._src.bench.cli`` makes one
subcommand of each.
"""

BENCHMARKS = {
    "overhead": "per-call time: synk vs hand-written jit(shard_map) vs pmap",
    "dispatch": "host time per call, and a profile of synk's per-call path",
    "collectives": "all-reduce, all-gather, reduce-scatter, broadcast bandwidth",
    "scaling": "a compute-bound step on 1, 2, 4, ... devices",
    "predict": "predicted step time and speedup for 1..N devices",
    "indexing": "batches as indices into synk.data vs numpy batches from the host",
    "fused": "a training step fused under jax.jit vs a synk call and a jitted update",
    "memory": "memory per device of a conv-net step at num_slices 1, 2, 4, 8",
    "buckets": "batch lengths sharing executables vs a compile per length",
}
