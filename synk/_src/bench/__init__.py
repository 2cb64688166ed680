"""``python -m synk bench``: what synk costs, what the links give, how far it scales, and memory.

One module per subcommand (``overhead``, ``dispatch``, ``collectives``,
``scaling``, ``predict``, ``indexing``, ``fused``, ``memory``), each with a
``run(args) -> dict``; ``cli`` parses the flags and writes the output;
``harness`` checks and times every variant the same way (``memory`` reads
compiled executables instead of timing them); ``workloads`` holds the steps
that are measured and their hand-written forms; ``report`` prints tables and
draws plots.

Every wall-clock timing uses ``harness.measure``: every round runs each
variant once, in a new shuffled order (the same in every process), each
sample is a block of ``--calls`` calls followed by one ``block_until_ready``,
and the figures are medians (and quartiles, ``np.percentile``) over
``--rounds`` samples. Every variant is checked against a reference before it
is timed.

Imported only when ``synk bench`` runs (``synk/__main__.py`` calls
``cli.main``), never by ``import synk``.
"""
