"""Batches as indices into device-resident data (``synk.data``) against batches from the host.

What it measures
----------------
The wall time per call of one data-parallel training step, ``jax.value_and_grad``
of a small-MLP softmax cross-entropy loss, ``synk.function(step, in_axes=(None, 0, 0))``,
with the parameters already replicated on the devices, fed four ways:

* (a) ``f(params, X[idx], Y[idx])`` with ``X, Y = synk.data(x), synk.data(y)``
  (replicated: every device holds all rows; only ``idx`` travels, once for both
  views, and each device gathers its rows with a ``take``);
* (b) the same with ``synk.data(..., sharded=True)`` (each device holds 1/n of the
  rows; one ``all_to_all`` per data argument moves the requested rows to the
  device that processes them);
* (c) ``f(params, x[idx], y[idx])`` with numpy ``x, y`` on the host: the host-side
  fancy indexing and the host-to-device transfer of the batch are inside the
  timed call;
* (d) shipping the whole data set once: ``jax.device_put(x, replicated)`` of the
  ``--rows x --features`` float32 array onto every device, then
  ``block_until_ready`` (what ``synk.data(x)`` costs up front, roughly).

Two references help read the table: (r) the same ``f`` on a batch already on the
devices with the call's sharding (no gather, no transfer: dispatch + compute +
reduce), and (h) the host fancy indexing ``x[idx], y[idx]`` alone (numpy).

Every call uses a fresh random batch of indices (without repeats, like a shuffled
epoch) from a pool of ``--calls`` index arrays per batch size; the pool is the same
for every variant. Before timing, each batch size is checked: (a), (b), (c) and the
serial step on one device give the same loss and grads (``assert_allclose``).

Each timed sample is a block of ``--calls`` calls (<= 20: XLA's CPU backend needs
the number of collective calls in flight bounded) followed by
``jax.block_until_ready`` on the last output, divided by ``--calls``; (d) is one
transfer per sample. All (batch, variant) pairs and (d) run once per round, in
a new seeded shuffle every round, for ``--rounds`` rounds; the table reports
medians per call (quartiles in the JSON).

How to run
----------
::

    python benchmarks/indexing.py
    python benchmarks/indexing.py --rows 200000 --features 64 --batches 64,256,1024,4096
    python benchmarks/indexing.py --rounds 20 --calls 10 --json indexing.json

With no accelerator, 8 CPU devices are simulated (``synk.init(cpu_devices=8)``).
"""

from __future__ import annotations

import synk

synk.init(cpu_devices=8)  # before anything touches JAX

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from synk._src.data import _fmt_bytes as fmt_bytes  # noqa: E402  (as in Data reprs)

CLASSES = 10
VARIANTS = ("a", "b", "c", "r", "h")
LABELS = {
    "a": "(a) X[idx], replicated synk.data",
    "b": "(b) X[idx], sharded synk.data",
    "c": "(c) numpy x[idx] from host",
    "r": "(r) ref: batch already on devices",
    "h": "(h) ref: numpy x[idx], y[idx] alone",
    "d": "(d) device_put(x) replicated, once",
}


# --------------------------------------------------------------------------
# The computation


def init_params(key, features: int, hidden: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (features, hidden), jnp.float32) / np.sqrt(features),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jax.random.normal(k2, (hidden, CLASSES), jnp.float32) / np.sqrt(hidden),
        "b2": jnp.zeros((CLASSES,), jnp.float32),
    }


def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def step(params, x, y):
    """The single-device step: (mean loss, grads of the mean loss) over the rows."""
    return jax.value_and_grad(loss_fn)(params, x, y)


# --------------------------------------------------------------------------
# Timing


def time_block(call: Callable, pool: list) -> float:
    """Seconds per call of one block (one call per index array), blocked on the last output."""
    t0 = time.perf_counter()
    for idx in pool:
        out = call(idx)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / len(pool)


def time_put(x: np.ndarray, sharding) -> float:
    t0 = time.perf_counter()
    array = jax.device_put(x, sharding)
    array.block_until_ready()
    dt = time.perf_counter() - t0
    array.delete()
    return dt


def quartiles(s: list[float]) -> dict[str, float]:
    q1, med, q3 = statistics.quantiles(s, n=4)
    return {"median_us": med * 1e6, "q1_us": q1 * 1e6, "q3_us": q3 * 1e6}


def check_same(name: str, got, want) -> None:
    got_leaves, got_tree = jax.tree_util.tree_flatten(jax.device_get(got))
    want_leaves, want_tree = jax.tree_util.tree_flatten(jax.device_get(want))
    assert got_tree == want_tree, f"{name}: output structure {got_tree} != {want_tree}"
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=name)


def fmt_us(us: float) -> str:
    if us != us:  # nan: not measured
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 10_000 else f"{us:.0f} us"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the data set")
    parser.add_argument("--features", type=int, default=64, help="float32 columns of x")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the MLP")
    parser.add_argument(
        "--batches", default="64,256,1024,4096", help="comma-separated batch sizes (rows)"
    )
    parser.add_argument("--rounds", type=int, default=40, help="samples per variant")
    parser.add_argument("--calls", type=int, default=10, help="calls per sample (<= 20 on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, params, indices")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if not batches or min(batches) < 1 or max(batches) > args.rows:
        parser.error("--batches: every batch must be between 1 and --rows")
    if not 1 <= args.calls <= 20 or args.rounds < 4:
        parser.error("need 1 <= --calls <= 20 and --rounds >= 4")

    devices = synk.devices()
    n = len(devices)
    mesh = Mesh(np.array(devices), ("d",))
    replicated, rows_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("d"))
    rng = np.random.default_rng(args.seed)

    x = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    y = rng.integers(0, CLASSES, args.rows).astype(np.int32)
    X, Y = synk.data(x), synk.data(y)
    Xs, Ys = synk.data(x, sharded=True), synk.data(y, sharded=True)
    print(f"{n} {devices[0].platform} devices, jax {jax.__version__}\n{X}\n{Xs}")

    params = init_params(jax.random.key(args.seed), args.features, args.hidden)
    params = jax.device_put(params, replicated)
    f = synk.function(step, in_axes=(None, 0, 0))
    serial = jax.jit(step)

    pools: dict[int, list[np.ndarray]] = {}
    calls: dict[tuple[int, str], Callable] = {}
    for b in batches:
        pools[b] = [rng.choice(args.rows, b, replace=False) for _ in range(args.calls)]
        idx = pools[b][0]
        want = serial(params, x[idx], y[idx])
        calls[b, "a"] = lambda idx: f(params, X[idx], Y[idx])
        calls[b, "b"] = lambda idx: f(params, Xs[idx], Ys[idx])
        calls[b, "c"] = lambda idx: f(params, x[idx], y[idx])
        calls[b, "h"] = lambda idx: (x[idx], y[idx])
        if b % n == 0:  # an uneven batch has no one sharding synk would use as is
            xy = jax.device_put((x[idx], y[idx]), rows_sharding)
            calls[b, "r"] = lambda idx, xy=xy: f(params, *xy)
        for v in ("a", "b", "c", "r"):
            if (b, v) in calls:
                check_same(f"batch {b}, {LABELS[v]}", calls[b, v](idx), want)
    print(f"checked: (a), (b), (c) give the serial loss and grads for batches {batches}")

    # Warm-up: compile, fill every cache.
    for key, call in calls.items():
        for _ in range(2):
            time_block(call, pools[key[0]])
    time_put(x, replicated)

    t0 = time.perf_counter()
    jobs: list[tuple] = [*calls, "d"]
    samples: dict = {k: [] for k in jobs}
    order = np.random.default_rng(args.seed + 1)  # a new order every round: no fixed neighbours
    for _ in range(args.rounds):
        for k in order.permutation(len(jobs)):
            key = jobs[k]
            if key == "d":
                samples[key].append(time_put(x, replicated))
            else:
                samples[key].append(time_block(calls[key], pools[key[0]]))
    timing_s = time.perf_counter() - t0

    stats = {k: quartiles(s) for k, s in samples.items()}
    med = {k: s["median_us"] for k, s in stats.items()}
    row_bytes = args.features * 4 + 4
    print(
        f"\nPer-call time (median of {args.rounds} samples x {args.calls} calls), "
        f"value_and_grad of an MLP {args.features}-{args.hidden}-{CLASSES}, data set "
        f"{args.rows} x {args.features} float32 ({fmt_bytes(x.nbytes)}), {n} devices"
    )
    head = (
        f"{'batch':>6} {'(a) repl':>10} {'(b) shard':>10} {'(c) host':>10} {'(a)/(c)':>8}"
        f" {'(r) resid':>10} {'(h) np idx':>10} {'H2D (a)':>10} {'H2D (c)':>10}"
    )
    print(head)
    print("-" * len(head))
    table = []
    for b in batches:
        row = {
            "batch": b,
            **{v: med.get((b, v), float("nan")) for v in VARIANTS},
            "a_over_c": med[b, "a"] / med[b, "c"],
            # X[idx] and Y[idx] share one int32 index array; an uneven batch sends each
            # device its main rows' indices and one extra-row index.
            "h2d_bytes_a": 4 * (b if b % n == 0 else b // n * n + n),
            "h2d_bytes_c": b * row_bytes,
        }
        table.append(row)
        print(
            f"{b:>6} {fmt_us(row['a']):>10} {fmt_us(row['b']):>10} {fmt_us(row['c']):>10}"
            f" {row['a_over_c']:>7.2f}x {fmt_us(row['r']):>10} {fmt_us(row['h']):>10}"
            f" {fmt_bytes(row['h2d_bytes_a']):>10} {fmt_bytes(row['h2d_bytes_c']):>10}"
        )
    print(
        f"\n(d) device_put of x ({fmt_bytes(x.nbytes)}) replicated on {n} devices: "
        f"{med['d'] / 1000:.1f} ms median ({stats['d']['q1_us'] / 1000:.1f} .. "
        f"{stats['d']['q3_us'] / 1000:.1f} ms quartiles), {fmt_bytes(x.nbytes * n)} written"
    )
    print(f"timing took {timing_s:.1f} s")

    result = {
        "config": {
            "rows": args.rows,
            "features": args.features,
            "hidden": args.hidden,
            "classes": CLASSES,
            "batches": batches,
            "rounds": args.rounds,
            "calls": args.calls,
            "seed": args.seed,
            "devices": n,
            "platform": devices[0].platform,
            "jax": jax.__version__,
            "python": platform.python_version(),
            "data_bytes": x.nbytes,
        },
        "labels": LABELS,
        "table": table,
        "device_put_us": stats["d"],
        "stats_us": {f"{k[0]}/{k[1]}" if k != "d" else k: s for k, s in stats.items()},
        "samples_us": {
            f"{k[0]}/{k[1]}" if k != "d" else k: [t * 1e6 for t in s] for k, s in samples.items()
        },
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
