"""Per-call overhead of ``synk.function`` against hand-written JAX data parallelism.

What it measures
----------------
The wall time per call of one data-parallel training step, ``jax.value_and_grad``
of a small-MLP mean-squared-error loss, with the parameters broadcast and the
batch ``x, y`` given as numpy arrays on the host, written three ways:

* ``synk``: ``synk.function(step, in_axes=(None, 0, 0))`` (default ``reduce="avg"``);
* ``jit(shard_map)``: what a careful user writes by hand: a cached
  ``jax.jit(jax.shard_map(body, in_specs=(P(), P('d'), P('d')), out_specs=P()))``,
  where ``body`` casts the parameters to varying (``lax.pcast``), takes
  ``value_and_grad`` on its rows and ``lax.pmean``s the result; the caller puts
  ``x, y`` on the devices with ``jax.device_put(..., NamedSharding(mesh, P('d')))``
  inside the timed call (so both sides pay the host-to-device transfer);
* ``pmap``: ``jax.pmap(body, axis_name='d', in_axes=(None, 0, 0))`` with ``x, y``
  reshaped to ``(n, rows / n, ...)`` on the host inside the timed call.

The parameters are device arrays replicated over the devices for all three. The
three-way comparison uses a batch that the device count divides; synk is also
timed on an uneven batch (``batch + 3`` rows) and with ``num_slices=4``. Three
reference rows put the figures in context: the same ``jit(shard_map)`` called on
inputs already on the devices (no transfer), the ``device_put`` of ``x, y`` alone,
and the ``jit(shard_map)`` built with ``in_shardings`` and called on the numpy
arrays directly (jit's C++ dispatch does the transfer, no Python ``device_put``).

Before timing, every variant is compiled, warmed up, and checked against the serial
step on one device (``np.testing.assert_allclose`` on loss and grads), so the table
never compares different computations.

Each timed sample is a block of ``--calls`` calls followed by
``jax.block_until_ready`` on the last output, divided by ``--calls`` (blocks keep the
number of collective calls in flight bounded, which XLA's CPU backend needs). The
variants run round-robin (the starting variant rotates every round) for
``--rounds`` rounds; the table reports the median and the quartiles per call in
microseconds, and the ratios synk / hand-written and synk / pmap.

How to run
----------
::

    python benchmarks/overhead.py            # or: make bench
    python benchmarks/overhead.py --rounds 60 --calls 20 --batch 256 --hidden 64
    python benchmarks/overhead.py --json results.json

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
from jax import lax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

D_IN, D_OUT = 16, 4
EXTRA_ROWS = 3  # the uneven batch is batch + EXTRA_ROWS rows
SLICES = 4


# --------------------------------------------------------------------------
# The computation: one value_and_grad step of a small MLP


def init_params(key, hidden: int) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (D_IN, hidden), jnp.float32) / np.sqrt(D_IN),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jax.random.normal(k2, (hidden, D_OUT), jnp.float32) / np.sqrt(hidden),
        "b2": jnp.zeros((D_OUT,), jnp.float32),
    }


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    pred = h @ params["w2"] + params["b2"]
    return jnp.mean((pred - y) ** 2)


def step(params, x, y):
    """The single-device step: (mean loss, grads of the mean loss) over the rows."""
    return jax.value_and_grad(loss_fn)(params, x, y)


def make_batch(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((rows, D_IN), dtype=np.float32)
    y = rng.standard_normal((rows, D_OUT), dtype=np.float32)
    return x, y


# --------------------------------------------------------------------------
# The variants: each a zero-argument callable that does one full call


def build_variants(params_dev, batches: dict, devices: list, mesh: Mesh) -> dict[str, Callable]:
    n = len(devices)
    x, y = batches["even"]
    xu, yu = batches["uneven"]
    rows_sharding = NamedSharding(mesh, P("d"))

    # (a) synk
    f = synk.function(step, in_axes=(None, 0, 0))
    f_sliced = f.with_options(num_slices=SLICES)

    # (b) hand-written jit(shard_map), built once
    def body(params, xs, ys):
        params = jax.tree_util.tree_map(lambda p: lax.pcast(p, "d", to="varying"), params)
        return lax.pmean(step(params, xs, ys), "d")

    sharded = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("d"), P("d")), out_specs=P()))

    def hand(params, xs, ys):
        xs, ys = jax.device_put((xs, ys), rows_sharding)
        return sharded(params, xs, ys)

    # (c) pmap
    pmapped = jax.pmap(lambda p, xs, ys: lax.pmean(step(p, xs, ys), "d"), "d", in_axes=(None, 0, 0))

    def pm(params, xs, ys):
        return pmapped(params, xs.reshape(n, -1, *xs.shape[1:]), ys.reshape(n, -1, *ys.shape[1:]))

    # references: the same jit(shard_map) on resident inputs, the transfer alone, and
    # the jit given in_shardings and called on numpy x, y (jit's C++ dispatch does
    # the transfer: no Python jax.device_put)
    x_dev, y_dev = jax.device_put((x, y), rows_sharding)
    replicated = NamedSharding(mesh, P())
    sharded_in = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=(P(), P("d"), P("d")), out_specs=P()),
        in_shardings=(replicated, rows_sharding, rows_sharding),
    )

    return {
        "synk": lambda: f(params_dev, x, y),
        "jit(shard_map)": lambda: hand(params_dev, x, y),
        "pmap": lambda: pm(params_dev, x, y),
        f"synk, uneven (+{EXTRA_ROWS} rows)": lambda: f(params_dev, xu, yu),
        f"synk, num_slices={SLICES}": lambda: f_sliced(params_dev, x, y),
        "ref: jit(shard_map), resident x, y": lambda: sharded(params_dev, x_dev, y_dev),
        "ref: device_put(x, y) alone": lambda: jax.device_put((x, y), rows_sharding),
        "ref: jit(shard_map, in_shardings), numpy x, y": lambda: sharded_in(params_dev, x, y),
    }


def check_same(variants: dict[str, Callable], params_dev, batches: dict) -> None:
    """Every variant computes the serial step on its batch (loss and grads)."""
    serial = jax.jit(step)
    want = {k: jax.device_get(serial(params_dev, *b)) for k, b in batches.items()}
    for name, call in variants.items():
        if name.startswith("ref: device_put"):
            continue
        got = jax.device_get(call())
        if name == "pmap":  # one identical copy per device: all must agree
            for i in range(len(jax.tree_util.tree_leaves(got)[0])):
                compare(name, jax.tree_util.tree_map(lambda a, i=i: a[i], got), want["even"])
            continue
        compare(name, got, want["uneven" if "uneven" in name else "even"])


def compare(name: str, got, want) -> None:
    got_leaves, got_tree = jax.tree_util.tree_flatten(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    assert got_tree == want_tree, f"{name}: output structure {got_tree} != {want_tree}"
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=name)


# --------------------------------------------------------------------------
# Timing


def time_block(call: Callable, calls: int) -> float:
    """Seconds per call of a block of `calls` calls, blocked on the last output."""
    t0 = time.perf_counter()
    for _ in range(calls):
        out = call()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls


def run(variants: dict[str, Callable], rounds: int, calls: int) -> dict[str, list[float]]:
    names = list(variants)
    for call in variants.values():  # warm-up: compile and fill every cache
        for _ in range(3):
            time_block(call, calls)
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            samples[name].append(time_block(variants[name], calls))
    return samples


def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, s in samples.items():
        q1, med, q3 = statistics.quantiles(s, n=4)
        out[name] = {"median_us": med * 1e6, "q1_us": q1 * 1e6, "q3_us": q3 * 1e6}
    return out


def print_table(stats: dict, ratios: dict, args, rows: int, n: int) -> None:
    print(
        f"\nPer-call time, value_and_grad of an MLP {D_IN}-{args.hidden}-{D_OUT}, "
        f"{rows} rows over {n} devices, numpy x, y; {args.rounds} rounds x {args.calls} "
        "calls per sample"
    )
    width = max(len(k) for k in stats) + 2
    print(f"{'variant':<{width}}{'median us':>11}{'q1 us':>10}{'q3 us':>10}{'vs synk':>9}")
    print("-" * (width + 40))
    base = stats["synk"]["median_us"]
    for name, s in stats.items():
        rel = s["median_us"] / base
        print(
            f"{name:<{width}}{s['median_us']:>11.0f}{s['q1_us']:>10.0f}{s['q3_us']:>10.0f}"
            f"{rel:>8.2f}x"
        )
    print()
    for name, value in ratios.items():
        print(f"{name:<34}{value:6.3f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="round-robin rounds (samples)")
    parser.add_argument("--calls", type=int, default=20, help="calls per sample (<= 20 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="rows (default 32 per device)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the MLP")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args(argv)

    devices = synk.devices()
    n = len(devices)
    rows = args.batch if args.batch is not None else 32 * n
    if rows % n:
        parser.error(f"--batch {rows} must be a multiple of the device count ({n})")
    if args.calls < 1 or args.rounds < 4:
        parser.error("need --calls >= 1 and --rounds >= 4")
    if args.calls > 40 and devices[0].platform == "cpu":
        # the hand-written variants have no throttle: ~60 collective calls in
        # flight abort XLA's CPU backend (rendezvous timeout)
        parser.error("--calls must be <= 40 on the CPU backend")

    mesh = Mesh(np.array(devices), ("d",))
    rng = np.random.default_rng(0)
    batches = {"even": make_batch(rng, rows), "uneven": make_batch(rng, rows + EXTRA_ROWS)}
    params = init_params(jax.random.key(0), args.hidden)
    params_dev = jax.device_put(params, NamedSharding(mesh, P()))  # replicated, for all

    variants = build_variants(params_dev, batches, devices, mesh)
    check_same(variants, params_dev, batches)
    print(f"checked: every variant gives the serial loss and grads ({n} devices)")

    t0 = time.perf_counter()
    samples = run(variants, args.rounds, args.calls)
    stats = summarise(samples)
    med = {k: v["median_us"] for k, v in stats.items()}
    ratios = {
        "synk / jit(shard_map)": med["synk"] / med["jit(shard_map)"],
        "synk / pmap": med["synk"] / med["pmap"],
    }
    print_table(stats, ratios, args, rows, n)
    print(f"\ntiming took {time.perf_counter() - t0:.1f} s")

    result = {
        "config": {
            "rounds": args.rounds,
            "calls": args.calls,
            "batch": rows,
            "uneven_batch": rows + EXTRA_ROWS,
            "num_slices": SLICES,
            "hidden": args.hidden,
            "mlp": [D_IN, args.hidden, D_OUT],
            "devices": n,
            "platform": devices[0].platform,
            "jax": jax.__version__,
            "python": platform.python_version(),
        },
        "stats_us": stats,
        "ratios": ratios,
        "samples_us": {k: [s * 1e6 for s in v] for k, v in samples.items()},
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
