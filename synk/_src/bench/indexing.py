"""``synk bench indexing``: batches as indices into data on the devices, or from the host.

The wall time per call of one data-parallel training step (value_and_grad of
a classifier's softmax cross-entropy, ``synk.function(step, in_axes=(None, 0,
0))``, parameters already replicated on the devices), fed four ways:

* (a) ``f(params, X[idx], Y[idx])`` with ``X, Y = synk.data(x), synk.data(y)``
  (replicated: every device holds all rows; only ``idx`` travels, once for
  both views, and each device gathers its rows with a ``take``);
* (b) the same with ``synk.data(..., sharded=True)`` (each device holds 1/n of
  the rows; one ``all_to_all`` per data argument moves the requested rows to
  the device that processes them);
* (c) ``f(params, x[idx], y[idx])`` with numpy ``x, y`` on the host: the
  host-side fancy indexing and the host-to-device transfer of the batch are
  inside the timed call;
* (d) shipping the whole data set once: ``jax.device_put(x, replicated)`` of
  the ``--rows x --features`` float32 array onto every device (what
  ``synk.data(x)`` costs up front, roughly).

Two references help read the table: (r) the same ``f`` on a batch already on
the devices with the call's sharding (no gather, no transfer: dispatch +
compute + reduce), and (h) the host fancy indexing ``x[idx], y[idx]`` alone.

Every call takes the next of ``--calls`` index arrays per batch size (random,
without repeats, like a shuffled epoch), so a sample of ``--calls`` calls uses
each once; the arrays are the same for every variant. Each batch size is
checked first: (a), (b), (c), (r) and the serial step give the same loss and
grads. (d) is one transfer per sample. Timed like every benchmark
(``harness.measure``).

Called by ``cli`` (`run`). Calls ``workloads`` for the classifier step and
the mesh, ``harness`` to check and time, ``report`` for the table, and
``synk.data``.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

import synk
from synk._src.bench.flags import positive_int, sizes, timing
from synk._src.bench.harness import check_close, measure, stats
from synk._src.bench.report import draw_per_batch, fmt_bytes, heading, print_table
from synk._src.bench.workloads import (
    CLASSES,
    HeldParams,
    by_rows,
    classifier_step,
    init_classifier,
    mesh_of,
    replicated,
)

VARIANTS = ("a", "b", "c", "r", "h")  # timed per batch size; "d" once
LABELS = {
    "a": "(a) X[idx], replicated synk.data",
    "b": "(b) X[idx], sharded synk.data",
    "c": "(c) numpy x[idx] from host",
    "r": "(r) ref: batch already on devices",
    "h": "(h) ref: numpy x[idx], y[idx] alone",
    "d": "(d) device_put(x) replicated, once",
}
# The table's columns; H2D: the bytes a call sends from the host to the devices.
HEADERS = [
    "batch",
    "(a) repl",
    "(b) shard",
    "(c) host",
    "(a)/(c)",
    "(r) resid",
    "(h) np idx",
    "H2D (a)",
    "H2D (c)",
]


PLOT = draw_per_batch  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing(parser, rounds=40, calls=10)
    parser.add_argument("--rows", type=positive_int, default=200_000, help="rows of the data set")
    parser.add_argument("--features", type=positive_int, default=64, help="float32 columns of x")
    parser.add_argument("--hidden", type=positive_int, default=64, help="hidden width of the MLP")
    parser.add_argument(
        "--batches",
        type=sizes(),
        default="64,256,1024,4096",
        help="comma-separated batch sizes (rows)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data, params, indices")


def check_arguments(args: argparse.Namespace) -> str | None:
    if max(args.batches) > args.rows:
        return f"--batches: every batch must be at most --rows ({args.rows}), got {args.batches}"
    return None


def run(args: argparse.Namespace) -> dict:
    """Per-call time of a step fed by indices into synk.data, by numpy batches, and references."""
    devices = synk.devices()
    mesh = mesh_of(devices)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    y = rng.integers(0, CLASSES, args.rows).astype(np.int32)
    params = init_classifier(jax.random.key(args.seed), args.features, args.hidden)
    params = jax.device_put(params, replicated(mesh))
    pools = {
        b: [rng.choice(args.rows, b, replace=False) for _ in range(args.calls)]
        for b in args.batches
    }
    views = {"replicated": (synk.data(x), synk.data(y))}
    views["sharded"] = (synk.data(x, sharded=True), synk.data(y, sharded=True))
    calls = _calls(mesh, params, x, y, views, pools)
    if not args.quiet:
        print(
            f"checked: (a), (b), (c) give the serial loss and grads for batches {args.batches}",
            file=sys.stderr,
        )
    variants = {f"{b}/{v}": _next_index(call, pools[b]) for (b, v), call in calls.items()}
    per_sample = dict.fromkeys(variants, args.calls)
    everywhere = replicated(mesh)
    variants["d"] = lambda: jax.device_put(x, everywhere)
    per_sample["d"] = 1
    t0 = time.perf_counter()
    samples = measure(
        variants, rounds=args.rounds, calls=per_sample, desc="indexing", quiet=args.quiet
    )
    timing_s = time.perf_counter() - t0
    st = {k: stats(s) for k, s in samples.items()}
    table = _table(args, len(devices), st)
    _print(args, len(devices), x.nbytes, views, table, st["d"], timing_s)
    return {
        **heading(args, **_config(args, devices, x.nbytes)),
        "labels": LABELS,
        "table": table,
        "device_put_us": st["d"],
        "stats_us": st,
        "samples_us": {k: [t * 1e6 for t in s] for k, s in samples.items()},
    }


def _calls(
    mesh: Mesh, params: HeldParams, x: np.ndarray, y: np.ndarray, views: dict, pools: dict
) -> dict[tuple[int, str], Callable]:
    """{(batch, variant): call of one index array}, each checked against the serial step."""
    f = synk.function(classifier_step, in_axes=(None, 0, 0))
    serial = jax.jit(classifier_step)
    (X, Y), (Xs, Ys) = views["replicated"], views["sharded"]
    n = mesh.size
    calls = {}
    for b, pool in pools.items():
        idx = pool[0]
        want = serial(params, x[idx], y[idx])
        calls[b, "a"] = lambda idx: f(params, X[idx], Y[idx])
        calls[b, "b"] = lambda idx: f(params, Xs[idx], Ys[idx])
        calls[b, "c"] = lambda idx: f(params, x[idx], y[idx])
        calls[b, "h"] = lambda idx: (x[idx], y[idx])
        if b % n == 0:  # an uneven batch has no one sharding synk would use as is
            xy = jax.device_put((x[idx], y[idx]), by_rows(mesh))
            calls[b, "r"] = lambda idx, xy=xy: f(params, *xy)
        for v in ("a", "b", "c", "r"):
            if (b, v) in calls:
                got = calls[b, v](idx)
                check_close(f"batch {b}, {LABELS[v]}", got, want, rtol=2e-5, atol=2e-6)
    return calls


def _next_index(call: Callable, pool: list[np.ndarray]) -> Callable[[], object]:
    """``call`` on the next index array of ``pool`` each time, round and round."""
    following = itertools.cycle(pool)
    return lambda: call(next(following))


def _table(args: argparse.Namespace, n: int, st: dict) -> list[dict]:
    """One row per batch size: medians (us), (a)/(c), and the bytes each sends to the devices."""
    med = {k: s["median_us"] for k, s in st.items()}
    row_bytes = args.features * 4 + 4
    return [
        {
            "batch": b,
            **{v: med.get(f"{b}/{v}", float("nan")) for v in VARIANTS},
            "a_over_c": med[f"{b}/a"] / med[f"{b}/c"],
            # X[idx] and Y[idx] share one int32 index array; an uneven batch sends
            # each device its main rows' indices and one extra-row index.
            "h2d_bytes_a": 4 * (b if b % n == 0 else b // n * n + n),
            "h2d_bytes_c": b * row_bytes,
        }
        for b in args.batches
    ]


def _print(
    args: argparse.Namespace,
    n: int,
    nbytes: int,
    views: dict,
    table: list[dict],
    put: dict,
    timing_s: float,
) -> None:
    for data_x, _ in views.values():  # how x lies on the devices, replicated and sharded
        print(data_x)
    print_table(
        f"Per-call time (median of {args.rounds} samples x {args.calls} calls), "
        f"value_and_grad of an MLP {args.features}-{args.hidden}-{CLASSES}, data set "
        f"{args.rows} x {args.features} float32 ({fmt_bytes(nbytes)}), {n} devices",
        HEADERS,
        [
            [
                str(row["batch"]),
                *(_fmt_us(row[v]) for v in ("a", "b", "c")),
                f"{row['a_over_c']:.2f}x",
                *(_fmt_us(row[v]) for v in ("r", "h")),
                fmt_bytes(row["h2d_bytes_a"]),
                fmt_bytes(row["h2d_bytes_c"]),
            ]
            for row in table
        ],
    )
    print(
        f"\n(d) device_put of x ({fmt_bytes(nbytes)}) replicated on {n} devices: "
        f"{put['median_us'] / 1000:.1f} ms median ({put['q1_us'] / 1000:.1f} .. "
        f"{put['q3_us'] / 1000:.1f} ms quartiles), {fmt_bytes(nbytes * n)} written"
    )
    print(f"timing took {timing_s:.1f} s")


def _fmt_us(us: float) -> str:
    if us != us:  # nan: not measured
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 10_000 else f"{us:.0f} us"


def _config(args: argparse.Namespace, devices: Sequence[jax.Device], nbytes: int) -> dict:
    return {
        "rows": args.rows,
        "features": args.features,
        "hidden": args.hidden,
        "classes": CLASSES,
        "batches": args.batches,
        "seed": args.seed,
        "devices": len(devices),
        "platform": devices[0].platform,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "data_bytes": nbytes,
    }
