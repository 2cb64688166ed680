"""``python -m synk bench``: what synk costs, what the links give, how far it scales, and memory.

One module per subcommand, each named in `SUBCOMMANDS` and holding its flags
(``add_arguments(parser)``) beside its ``run(args) -> dict``; ``cli`` makes
the parser from them and writes the output; ``flags`` holds what their flags
share; ``harness`` checks and times every variant the same way (``memory``
reads compiled executables instead of timing them); ``workloads`` holds the
steps that are measured and their hand-written forms; ``report`` prints
tables and draws plots.

Every wall-clock timing uses ``harness.measure``: every round runs each
variant once, in a new shuffled order (the same in every process), each
sample is a block of ``--calls`` calls followed by one ``block_until_ready``,
and the figures are medians (and quartiles, ``np.percentile``) over
``--rounds`` samples. Every variant is checked against a reference before it
is timed.

Imported only when ``synk bench`` runs (``synk/__main__.py`` calls
``cli.main``), never by ``import synk``; ``synk --help`` reads `SUBCOMMANDS`
alone.
"""

# Each subcommand: the module of its name in this package, and its one-line
# description, in the order ``synk --help`` and ``synk bench --help`` list them.
# Plain data, so that ``synk --help`` lists them without importing the benchmarks.
SUBCOMMANDS = {
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
