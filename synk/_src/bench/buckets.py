"""``synk bench buckets``: batch lengths that share executables, against a compile per length.

The step is the bench MLP's ``value_and_grad`` with ``reduce='avg'``. It
measures:

- *the sweep*: one call (and a block) at each of ``--lengths`` distinct
  batch lengths from ``--shortest`` to ``--longest``, seeded: synk with its
  default buckets, synk on exact shapes (``buckets=None``), and the
  hand-written ``jit(in_shardings)`` that pads each batch to a multiple of
  the device count and cuts it back inside, made anew for each length (so it
  compiles each one), as one would by hand;
- *a new length in a compiled bucket*: its first call against the median
  steady call at that length (each call blocked), the median over 5 lengths;
- *steady calls*: synk against the hand-written call at a length just above
  a bucket boundary (the most padding) and at a bucket's capacity (none);
- *a new bucket's first call* against the hand-written first call at the same
  length, each a fresh function, over several lengths.

``--plot`` draws each call of the sweep over its batch length: the calls
that compile stand out.

Each variant is checked against the serial step first. Called by ``cli``
(`run`). Calls ``workloads`` for the step and the batches, ``harness`` and
``report``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

import synk
from synk._src.bench.flags import positive_int, timing
from synk._src.bench.harness import check_close, measure, paired, stats
from synk._src.bench.report import draw_sweep, machine, print_table
from synk._src.bench.workloads import (
    D_IN,
    D_OUT,
    HeldParams,
    LossAndGrads,
    global_arrays,
    hand_written_padded,
    init_mlp,
    make_batch,
    mesh_of,
    replicated,
    train_step,
)

TARGETS = {  # (ratio, op, limit)
    "sweep: synk / hand-written": ("<=", 0.5),
    "new length in a compiled bucket / steady": ("<=", 3.0),
    "steady, just above a boundary: synk / hand-written": ("<=", 1.35),
    "steady, at a capacity: synk / hand-written": ("<=", 1.10),
    "new bucket: synk / hand-written first call": ("<=", 1.3),
}

PLOT = draw_sweep  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing(parser, rounds=20, calls=10)
    parser.add_argument(
        "--lengths", type=positive_int, default=30, help="distinct batch lengths swept"
    )
    parser.add_argument(
        "--shortest", type=positive_int, default=200, help="shortest batch of the sweep"
    )
    parser.add_argument(
        "--longest", type=positive_int, default=2000, help="longest batch of the sweep"
    )
    parser.add_argument("--hidden", type=positive_int, default=64, help="hidden width of the MLP")
    parser.add_argument(
        "--first-calls", type=positive_int, default=6, help="lengths of first calls timed"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the lengths")


def run(args: argparse.Namespace) -> dict:
    devices = synk.devices()
    n = len(devices)
    mesh = mesh_of(devices)
    params = global_arrays(init_mlp([D_IN, args.hidden, D_OUT]), replicated(mesh))
    rng = np.random.default_rng(args.seed)
    lengths = [int(k) for k in rng.choice(np.arange(args.shortest, args.longest + 1),
                                          args.lengths, replace=False)]  # fmt: skip
    figures: dict = {}
    quiet = args.quiet

    # The sweep: each variant fresh, one call per length.
    synk_sweep = synk.function(train_step, in_axes=(None, 0, 0), reduce="avg")
    exact_sweep = synk.function(train_step, in_axes=(None, 0, 0), reduce="avg", buckets=None)
    sweeps = {
        "synk, buckets": lambda x, y: synk_sweep(params, x, y),
        "synk, exact shapes": lambda x, y: exact_sweep(params, x, y),
        "hand-written, a jit per length": lambda x, y: _hand(mesh, params, x, y),
    }
    sweep_calls: dict[str, list[float]] = {}  # each call's seconds, in the order of `lengths`
    for name, call in sweeps.items():
        start = time.perf_counter()
        sweep_calls[name] = []
        for rows in lengths:
            x, y = make_batch(rows, seed=rows)
            t0 = time.perf_counter()
            out = jax.block_until_ready(call(x, y))
            sweep_calls[name].append(time.perf_counter() - t0)
            if rows == lengths[0]:
                check_close(name, out, jax.jit(train_step)(params, x, y))
        figures[f"sweep: {name}"] = time.perf_counter() - start
        if not quiet:
            print(f"sweep, {name}: {figures[f'sweep: {name}']:.2f} s", file=sys.stderr)
    executables = int(repr(synk_sweep).rsplit("compiled=", 1)[1].rstrip(")"))

    # Steady calls, and a new length in a compiled bucket. Capacities are powers
    # of two rows per device: `capacity` rows fill one, `above` just passes the
    # one below.
    capacity = n * (1 << (args.longest // (2 * n)).bit_length())
    above = capacity // 2 + n
    step = synk.function(train_step, in_axes=(None, 0, 0), reduce="avg")
    step(params, *make_batch(capacity, seed=1))  # compiles the bucket
    # First calls at new lengths of that bucket, each against its steady call.
    new_lengths = [above + k * n // 2 for k in range(1, 6)]
    first_in_bucket, steady_fresh = [], []
    for rows in new_lengths:
        x, y = make_batch(rows, seed=rows)
        first_in_bucket.append(_timed(lambda x=x, y=y: step(params, x, y)))
        steady = [_timed(lambda x=x, y=y: step(params, x, y)) for _ in range(10)]
        steady_fresh.append(float(np.median(steady)))

    variants, hands = {}, {}
    for label, rows in (("just above a boundary", above), ("at a capacity", capacity)):
        x, y = make_batch(rows, seed=rows)
        jitted, pad = hand_written_padded(mesh, rows, 1)
        px, py = pad(x), pad(y)
        want = jax.jit(train_step)(params, x, y)
        check_close(f"synk, {label}", step(params, x, y), want)
        check_close(f"hand-written, {label}", jitted(params, px, py), want)
        variants[f"synk, {label}"] = lambda x=x, y=y: step(params, x, y)
        # Padded in the call, as a hand-written loop pads each new batch.
        variants[f"hand-written, {label}"] = lambda j=jitted, pad=pad, x=x, y=y: j(
            params, pad(x), pad(y)
        )
        hands[label] = rows
    samples = measure(variants, rounds=args.rounds, calls=args.calls, desc="buckets",
                      quiet=quiet)  # fmt: skip
    st = {k: stats(v) for k, v in samples.items()}

    # New buckets' first calls, each against the hand-written first call at its length.
    firsts = {"synk": [], "hand-written": []}
    for k, rows in enumerate(lengths[: args.first_calls]):
        x, y = make_batch(rows, seed=rows)
        for name in ("synk", "hand-written") if k % 2 else ("hand-written", "synk"):
            if name == "synk":
                f = synk.function(train_step, in_axes=(None, 0, 0), reduce="avg")
                firsts[name].append(_timed(lambda f=f, x=x, y=y: f(params, x, y)))
            else:
                firsts[name].append(_timed(lambda x=x, y=y: _hand(mesh, params, x, y)))

    ratios = {
        "sweep: synk / hand-written": figures["sweep: synk, buckets"]
        / figures["sweep: hand-written, a jit per length"],
        "new length in a compiled bucket / steady": float(
            np.median(np.asarray(first_in_bucket) / np.asarray(steady_fresh))
        ),
        "steady, just above a boundary: synk / hand-written": paired(
            samples["synk, just above a boundary"], samples["hand-written, just above a boundary"]
        ),
        "steady, at a capacity: synk / hand-written": paired(
            samples["synk, at a capacity"], samples["hand-written, at a capacity"]
        ),
        "new bucket: synk / hand-written first call": float(
            np.median(firsts["synk"]) / np.median(firsts["hand-written"])
        ),
    }
    _print(n, lengths, args, figures, executables, hands, st, ratios, firsts)
    return {
        "machine": machine(),
        "config": {"devices": n, "lengths": lengths, "hidden": args.hidden, "rows": hands},
        "sweep_seconds": figures,
        "sweep_call_s": sweep_calls,
        "executables": executables,
        "first_in_bucket_s": dict(zip(new_lengths, first_in_bucket, strict=True)),
        "steady_at_those_lengths_s": dict(zip(new_lengths, steady_fresh, strict=True)),
        "stats": st,
        "first_calls_s": firsts,
        "ratios": ratios,
        "targets": {k: {"op": op, "limit": lim} for k, (op, lim) in TARGETS.items()},
    }


def _hand(mesh: Mesh, params: HeldParams, x: np.ndarray, y: np.ndarray) -> LossAndGrads:
    """The hand-written step made anew: it compiles for this length."""
    jitted, pad = hand_written_padded(mesh, x.shape[0], 1)
    return jitted(params, pad(x), pad(y))


def _timed(call: Callable) -> float:
    start = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - start


def _print(
    n: int,
    lengths: list[int],
    args: argparse.Namespace,
    figures: dict[str, float],
    executables: int,
    hands: dict[str, int],
    st: dict[str, dict[str, float]],
    ratios: dict[str, float],
    firsts: dict[str, list[float]],
) -> None:
    print(
        f"\n{n} devices; value_and_grad of an MLP {D_IN}-{args.hidden}-{D_OUT}, reduce='avg'; "
        f"{len(lengths)} lengths from {min(lengths)} to {max(lengths)}"
    )
    print_table(
        "The sweep: one call per length, compiles included",
        ["variant", "seconds"],
        [[k.removeprefix("sweep: "), f"{v:.2f}"] for k, v in figures.items()],
    )
    print(f"synk with buckets compiled {executables} executables for {len(lengths)} lengths")
    print_table(
        f"Steady calls (rows: just above a boundary {hands['just above a boundary']}, "
        f"at a capacity {hands['at a capacity']})",
        ["variant", "median us", "q1 us", "q3 us"],
        [[k, *(f"{s[c]:.0f}" for c in ("median_us", "q1_us", "q3_us"))] for k, s in st.items()],
    )
    print_table(
        f"First calls of a new function, {len(firsts['synk'])} lengths",
        ["variant", "median ms"],
        [[k, f"{np.median(v) * 1e3:.0f}"] for k, v in firsts.items()],
    )
    rows = []
    for name, value in ratios.items():
        op, limit = TARGETS[name]
        rows.append([name, f"{value:.3f}", f"{op} {limit}", "yes" if value <= limit else "no"])
    print_table("Ratios (steady: paired medians)", ["ratio", "value", "target", "met"], rows)
