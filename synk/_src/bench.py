"""``python -m synk bench``: what synk costs, what the links give, and how far it scales.

Five subcommands, each a function of the same name below:

- ``overhead``: per-call time of a ``synk.function`` training step against the
  same step written by hand (``jax.jit(jax.shard_map(...))``) and with
  ``jax.pmap``; numpy batches, device-resident batches, ``synk.data`` views,
  uneven batches and ``num_slices``.
- ``dispatch``: the host CPU time of one call, synk against hand-written, and
  a profile of many calls showing that nothing is re-planned, re-traced or
  rebuilt per call.
- ``collectives``: all-reduce, all-gather, reduce-scatter and broadcast over
  message sizes, reported like nccl-tests (time, algbw, busbw).
- ``scaling``: a compute-bound training step on 1, 2, 4, ... devices.
- ``predict``: a planning guide: step time and speedup for 1..N devices from
  the compute time, the gradient bytes and a link's bandwidth and latency,
  beside the measured figures where there are some.

Every wall-clock timing uses `measure`: every round runs each variant once,
in a new shuffled order (the same in every process), each sample is a block of
``--calls`` calls followed by one ``block_until_ready``, and the figures are
medians over ``--rounds`` samples. Every variant is checked against a reference before it is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import synk
from synk._src import processes

AXIS = "d"  # the hand-written variants' mesh axis
D_IN, D_OUT = 16, 4
EXTRA_ROWS = 3  # the uneven batch has this many rows more than the even one
SLICES = 4
CPU_MAX_CALLS = 20  # XLA's CPU collectives abort past ~50 un-blocked calls in flight
OPS = ("all-reduce", "all-gather", "reduce-scatter", "broadcast")


# --------------------------------------------------------------------------
# The computation: value_and_grad of an MLP's mean squared error


def init_mlp(sizes: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """MLP parameters ``w0, b0, w1, b1, ...`` as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        params[f"w{i}"] = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        params[f"b{i}"] = np.zeros(b, np.float32)
    return params


def mlp_loss(params, x, y):
    """Mean squared error of a tanh MLP over the rows of ``x``."""
    layers = len(params) // 2
    h = x
    for i in range(layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < layers - 1:
            h = jnp.tanh(h)
    return jnp.mean((h - y) ** 2)


def train_step(params, x, y):
    """The single-device step: (mean loss, its gradients) over the rows."""
    return jax.value_and_grad(mlp_loss)(params, x, y)


def make_batch(rows: int, seed: int = 0, d_in: int = D_IN) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, d_in), dtype=np.float32)
    return x, rng.standard_normal((rows, D_OUT), dtype=np.float32)


# --------------------------------------------------------------------------
# Shared helpers: timing, checking, tables, output


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, quiet: bool):
    """A tqdm bar on stderr (nothing if ``quiet`` or tqdm is missing)."""
    if quiet or importlib.util.find_spec("tqdm") is None:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, unit="sample")


def time_block(call: Callable, calls: int) -> float:
    """Seconds per call of ``calls`` calls, then one ``block_until_ready`` on the last."""
    t0 = time.perf_counter()
    for _ in range(calls):
        out = call()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls


def measure(
    variants: dict[str, Callable],
    *,
    rounds: int,
    calls: int | dict[str, int],
    desc: str,
    quiet: bool,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """Interleaved samples (seconds per call) of each variant.

    Every round runs each variant once, in a new shuffled order, so that
    drifts of a shared, noisy machine and the after-effects of a heavy variant
    on the next one fall on all variants alike. (A rotating start is not
    enough: it keeps the neighbours fixed, and the variant after the heaviest
    one was measured 4-5 % slow.) The order comes from a fixed seed, so every
    process runs the same one. A sample is a block of ``calls`` calls (per
    variant if a dict) and one block.
    """
    names = list(variants)
    per = calls if isinstance(calls, dict) else dict.fromkeys(names, calls)
    bar = progress((rounds + warmup) * len(names), desc, quiet)
    for name in names:  # compile and warm every cache first
        for _ in range(warmup):
            time_block(variants[name], per[name])
            bar.update()
    samples: dict[str, list[float]] = {k: [] for k in names}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for k in order.permutation(len(names)):
            name = names[k]
            samples[name].append(time_block(variants[name], per[name]))
            bar.update()
    bar.close()
    return samples


def stats(samples: list[float]) -> dict[str, float]:
    """Median and quartiles of a list of seconds, in microseconds."""
    q1, med, q3 = np.percentile(np.asarray(samples) * 1e6, [25, 50, 75])
    return {"median_us": float(med), "q1_us": float(q1), "q3_us": float(q3)}


def paired(a: list[float], b: list[float]) -> float:
    """The median over rounds of a[r] / b[r] (samples taken in the same round)."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


def check_close(name: str, got, want, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same tree, same values (``assert_allclose`` per leaf), or AssertionError."""
    got_leaves, got_tree = jax.tree_util.tree_flatten(jax.device_get(got))
    want_leaves, want_tree = jax.tree_util.tree_flatten(jax.device_get(want))
    assert got_tree == want_tree, f"{name}: output structure {got_tree} != {want_tree}"
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        first = f"{cells[0]:<{widths[0]}}"
        return "  ".join([first, *(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:]))])

    print(f"\n{title}")
    print(line(headers))
    print("-" * len(line(headers)))
    for r in rows:
        print(line(r))


def machine() -> dict:
    devs = synk.devices()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "devices": len(devs),
        "processes": synk.process_count(),
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "synk": synk.__version__,
    }


def shared_cores_note(devices) -> str:
    """On simulated CPU devices, why measured speedups stay near 1 (empty elsewhere)."""
    if devices[0].platform != "cpu" or len(devices) == 1:
        return ""
    return (
        f"note: these {len(devices)} CPU devices are simulated on {os.cpu_count()} cores "
        "and share them: the measured speedup is bounded by the cores, not by synk"
    )


def _mesh(devices) -> Mesh:
    return Mesh(np.array(devices, dtype=object), (AXIS,))


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _rows(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def _global(tree, sharding: NamedSharding):
    """Global arrays of host values that every process holds whole (any process count)."""
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(a.shape, sharding, lambda i: a[i]), tree
    )


def _sharer(procs: int) -> Callable[[np.ndarray], np.ndarray]:
    """This process's rows of a global batch: what it hands to a synk.function."""
    rank = jax.process_index()

    def share(a: np.ndarray) -> np.ndarray:
        per = a.shape[0] // procs
        return a[rank * per : (rank + 1) * per]

    return share


# --------------------------------------------------------------------------
# overhead


def hand_written(mesh: Mesh, step: Callable = train_step):
    """The fastest hand-written form: jit(shard_map) with in_shardings (jit places numpy)."""

    def body(params, x, y):
        # Without the cast, the gradient w.r.t. the replicated params would be
        # psum'd implicitly by shard_map's transpose: n times too large.
        params = jax.tree_util.tree_map(lambda p: lax.pcast(p, AXIS, to="varying"), params)
        return lax.pmean(step(params, x, y), AXIS)

    mapped = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P())
    return jax.jit(mapped, in_shardings=(_replicated(mesh), _rows(mesh), _rows(mesh)))


def hand_written_indexed(mesh: Mesh, step: Callable = train_step):
    """The hand-written step on rows picked by index from data already on every device."""

    def body(params, data_x, data_y, idx):  # idx: this device's rows
        params = jax.tree_util.tree_map(lambda p: lax.pcast(p, AXIS, to="varying"), params)
        x, y = (jnp.take(d, idx, axis=0, mode="clip") for d in (data_x, data_y))
        return lax.pmean(step(params, x, y), AXIS)

    mapped = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS)), out_specs=P())
    everywhere, rows = _replicated(mesh), _rows(mesh)
    return jax.jit(mapped, in_shardings=(everywhere, everywhere, everywhere, rows))


def check_alone_us(calls: int = 2000) -> float:
    """Microseconds of the per-call cross-process check alone (every process runs it)."""
    text = "synk bench: the same call everywhere"
    digest = processes.signature_hash(text)
    processes.agree("synk bench", text, digest)
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            processes.agree("synk bench", text, digest)
        samples.append((time.perf_counter() - t0) / (calls // 5))
    return float(np.median(samples) * 1e6)


def overhead(args) -> dict:
    """Per-call time of synk.function against jit(shard_map) and pmap, and ratios.

    Under several processes each process hands over its share of every host
    batch (the hand-written form builds its global arrays from the shares in
    the call, as such code must), pmap is left out, and the per-call check
    that all processes make the same call is timed on and off.
    """
    devices = synk.devices()
    n, procs = len(devices), synk.process_count()
    rows = args.batch if args.batch is not None else 32 * n
    big_rows = args.compute_batch if args.compute_batch is not None else 256 * n
    mesh = _mesh(devices)
    small = [D_IN, args.hidden, D_OUT]
    big = [D_IN, args.compute_hidden, args.compute_hidden, D_OUT]
    if rows % procs or big_rows % procs:
        raise SystemExit(f"--batch and --compute-batch must be multiples of {procs} processes")

    params = _global(init_mlp(small), _replicated(mesh))
    big_params = _global(init_mlp(big, seed=1), _replicated(mesh))
    # Global batches, the same in every process; `share` is this process's rows.
    x, y = make_batch(rows, seed=0)
    xu, yu = make_batch(rows + EXTRA_ROWS * procs, seed=1)  # each share: EXTRA_ROWS more
    xb, yb = make_batch(big_rows, seed=2)
    x_dev, y_dev = _global((x, y), _rows(mesh))  # device-resident, sharded by rows
    pool_x, pool_y = make_batch(4 * rows, seed=3)
    data_x, data_y = synk.data(pool_x), synk.data(pool_y)
    idx = np.random.default_rng(4).choice(4 * rows, rows, replace=False)
    share = _sharer(procs)
    xs, ys, xus, yus, xbs, ybs = map(share, (x, y, xu, yu, xb, yb))

    f = synk.function(train_step, in_axes=(None, 0, 0))
    f_sliced = f.with_options(num_slices=SLICES)
    hand = hand_written(mesh)
    hand_indexed = hand_written_indexed(mesh)
    resident_x, resident_y = _global((pool_x, pool_y), _replicated(mesh))

    def global_idx():  # one process: jit places numpy; several: a global array, per call
        return idx if procs == 1 else _global(idx, _rows(mesh))

    if procs > 1:  # the hand-written call makes global arrays of the shares itself
        jitted, rows_sharding = hand, _rows(mesh)

        def hand(p, *batch):
            if isinstance(batch[0], np.ndarray):
                batch = [jax.make_array_from_process_local_data(rows_sharding, b) for b in batch]
            return jitted(p, *batch)

    # (name, call, reference inputs for the check)
    cases = [
        ("synk, numpy", lambda: f(params, xs, ys), (params, x, y)),
        ("hand-written, numpy", lambda: hand(params, xs, ys), (params, x, y)),
    ]
    if procs == 1:
        pmapped = jax.pmap(
            lambda p, xs, ys: lax.pmean(train_step(p, xs, ys), AXIS),
            axis_name=AXIS,
            in_axes=(None, 0, 0),
            devices=devices,
        )

        def pmap_call(p, xs, ys):
            return pmapped(p, xs.reshape(n, -1, *xs.shape[1:]), ys.reshape(n, -1, *ys.shape[1:]))

        cases.append(("pmap, numpy", lambda: pmap_call(params, x, y), (params, x, y)))
    else:
        with processes.checking(False):  # the check is fixed when a call is first planned
            f_unchecked = synk.function(train_step, in_axes=(None, 0, 0))
            check_close("unchecked", f_unchecked(params, xs, ys), jax.jit(train_step)(params, x, y))
        cases.append(("synk, numpy, no call check", lambda: f_unchecked(params, xs, ys), None))
    cases += [
        ("synk, device-resident", lambda: f(params, x_dev, y_dev), (params, x, y)),
        ("hand-written, device-resident", lambda: hand(params, x_dev, y_dev), (params, x, y)),
        (
            "synk, synk.data X[idx]",
            lambda: f(params, data_x[idx], data_y[idx]),
            (params, pool_x[idx], pool_y[idx]),
        ),
        (
            "hand-written, indices into resident data",
            lambda: hand_indexed(params, resident_x, resident_y, global_idx()),
            (params, pool_x[idx], pool_y[idx]),
        ),
        (f"synk, numpy, uneven (+{EXTRA_ROWS})", lambda: f(params, xus, yus), (params, xu, yu)),
        ("compute-bound: hand-written", lambda: hand(big_params, xbs, ybs), (big_params, xb, yb)),
        (
            "compute-bound: synk, num_slices=1",
            lambda: f(big_params, xbs, ybs),
            (big_params, xb, yb),
        ),
        (
            f"compute-bound: synk, num_slices={SLICES}",
            lambda: f_sliced(big_params, xbs, ybs),
            (big_params, xb, yb),
        ),
    ]
    serial = jax.jit(train_step)
    for name, call, ref in cases:
        if ref is None:
            continue
        got = call()
        if name.startswith("pmap"):  # one identical copy per device
            got = jax.tree_util.tree_map(lambda a: a[0], got)
        check_close(name, got, serial(*ref))
    if not args.quiet:
        print(f"checked: all {len(cases)} variants give the serial loss and grads", file=sys.stderr)

    samples = measure(
        {name: call for name, call, _ in cases},
        rounds=args.rounds,
        calls=args.calls,
        desc="overhead",
        quiet=args.quiet,
    )
    st = {k: stats(v) for k, v in samples.items()}
    med = {k: v["median_us"] for k, v in st.items()}
    check_us = check_alone_us() if procs > 1 else None
    big1, big4 = "compute-bound: synk, num_slices=1", f"compute-bound: synk, num_slices={SLICES}"
    # (ratio, numerator, denominator, target as (op, limit) or None)
    pairs = [
        ("synk / hand-written, numpy", "synk, numpy", "hand-written, numpy", ("<=", 1.05)),
        (
            "synk / hand-written, device-resident",
            "synk, device-resident",
            "hand-written, device-resident",
            ("<=", 1.05),
        ),
        (
            "synk X[idx] / hand-written indexed",
            "synk, synk.data X[idx]",
            "hand-written, indices into resident data",
            None,
        ),
        ("synk / pmap, numpy", "synk, numpy", "pmap, numpy", ("<", 1.0)),
        ("call check: on / off", "synk, numpy", "synk, numpy, no call check", None),
        (
            "synk uneven / synk even",
            f"synk, numpy, uneven (+{EXTRA_ROWS})",
            "synk, numpy",
            ("<=", 1.25),
        ),
        (f"num_slices={SLICES} / num_slices=1, compute-bound", big4, big1, ("<=", 1.15)),
        ("synk / hand-written, compute-bound", big1, "compute-bound: hand-written", None),
    ]
    # Also the median of per-round ratios: samples of one round ran back to
    # back, so this cancels slow drifts of a shared machine.
    ratios = [
        (name, med[a] / med[b], paired(samples[a], samples[b]), target)
        for name, a, b, target in pairs
        if a in med and b in med
    ]

    def verdict(value: float, target) -> list[str]:
        if target is None:
            return ["", ""]
        op, limit = target
        met = value <= limit if op == "<=" else value < limit
        return [f"{op} {limit}", "yes" if met else "no"]

    print_table(
        f"Per-call time, value_and_grad of an MLP, {n} devices in {procs} process(es); "
        f"{rows} rows (uneven {rows + EXTRA_ROWS * procs}), MLP {'-'.join(map(str, small))}; "
        f"compute-bound: {big_rows} rows, MLP {'-'.join(map(str, big))}; {args.rounds} rounds x "
        f"{args.calls} calls",
        ["variant", "median us", "q1 us", "q3 us"],
        [[k, *(f"{v[c]:.0f}" for c in ("median_us", "q1_us", "q3_us"))] for k, v in st.items()],
    )
    print_table(
        "Ratios (of the medians; paired: median of the per-round ratios)",
        ["ratio", "value", "paired", "target", "met"],
        [
            [name, f"{value:.3f}", f"{pair:.3f}", *verdict(value, target)]
            for name, value, pair, target in ratios
        ],
    )
    if check_us is not None:
        print(f"\nthe per-call check alone (one allgather of a hash): {check_us:.1f} us per call")
    return {
        "check_alone_us": check_us,
        "command": "overhead",
        "machine": machine(),
        "config": {
            "rounds": args.rounds,
            "calls": args.calls,
            "batch": rows,
            "uneven_batch": rows + EXTRA_ROWS * procs,
            "mlp": small,
            "compute_batch": big_rows,
            "compute_mlp": big,
            "num_slices": SLICES,
        },
        "stats_us": st,
        "ratios": {name: value for name, value, _, _ in ratios},
        "paired_ratios": {name: pair for name, _, pair, _ in ratios},
        "targets": {
            name: {
                "op": target[0],
                "limit": target[1],
                "value": value,
                "met": verdict(value, target)[1] == "yes",
            }
            for name, value, _, target in ratios
            if target
        },
        "samples_us": {k: [s * 1e6 for s in v] for k, v in samples.items()},
    }


# --------------------------------------------------------------------------
# dispatch: the per-call host path, profiled

# What a lean call must not do again once its plan exists: (label, file, function).
REPEATS = (
    ("synk plans built", "synk/_src/function.py", "build"),
    ("argument descriptions (in_axes trees)", "synk/_src/function.py", "_describe_leaves"),
    ("batch splits made", "synk/_src/function.py", "_batch_split"),
    ("jaxprs traced", "jax/_src/interpreters/partial_eval.py", "trace_to_jaxpr"),
    # NamedSharding is built in C++, out of cProfile's sight; synk builds each
    # of its shardings from a new PartitionSpec, which is counted.
    ("PartitionSpecs constructed", "jax/_src/partition_spec.py", "__new__"),
    ("tree_flatten calls", "jax/_src/tree_util.py", "tree_flatten"),
    ("tree_unflatten calls", "jax/_src/tree_util.py", "tree_unflatten"),
    ("tree_structure calls", "jax/_src/tree_util.py", "tree_structure"),
)


def host_seconds(call: Callable, total: int, calls: int) -> float:
    """Seconds of this thread's CPU time per call (device threads and waits excluded)."""
    t0 = time.thread_time()
    for _ in range(total // calls):
        for _ in range(calls):
            out = call()
        jax.block_until_ready(out)
    return (time.thread_time() - t0) / (total // calls * calls)


def dispatch(args) -> dict:
    """Host CPU time per call, synk vs hand-written, and a profile of synk's calls."""
    import cProfile
    import pstats

    devices = synk.devices()
    n = len(devices)
    mesh = _mesh(devices)
    params = _global(init_mlp([D_IN, 8, D_OUT]), _replicated(mesh))
    x, y = make_batch(8 * n)
    x_dev, y_dev = _global((x, y), _rows(mesh))
    f = synk.function(train_step, in_axes=(None, 0, 0))
    hand = hand_written(mesh)
    variants = {
        "synk, numpy": lambda: f(params, x, y),
        "hand-written, numpy": lambda: hand(params, x, y),
        "synk, device-resident": lambda: f(params, x_dev, y_dev),
        "hand-written, device-resident": lambda: hand(params, x_dev, y_dev),
    }
    want = jax.jit(train_step)(params, x, y)
    for name, call in variants.items():
        check_close(name, call(), want)

    per_round = max(args.calls, args.total // args.rounds)
    samples: dict[str, list[float]] = {k: [] for k in variants}
    bar = progress(args.rounds * len(variants), "dispatch", args.quiet)
    names, order = list(variants), np.random.default_rng(0)
    for _ in range(args.rounds):  # a new shuffled order every round, as in `measure`
        for k in order.permutation(len(names)):
            samples[names[k]].append(host_seconds(variants[names[k]], per_round, args.calls))
            bar.update()
    bar.close()
    host = {k: stats(v) for k, v in samples.items()}

    def profiled(call: Callable, total: int, calls: int) -> dict:
        profile = cProfile.Profile()
        profile.enable()
        host_seconds(call, total, calls)
        profile.disable()
        return pstats.Stats(profile).stats  # (file, line, function) -> (cc, nc, tt, ct, ...)

    def counts(table: dict, calls: int) -> dict[str, float]:
        return {
            label: sum(
                v[1] for (file, _, fn), v in table.items() if file.endswith(path) and fn == func
            )
            / calls
            for label, path, func in REPEATS
        }

    # The first call of a new function plans, traces and compiles: the same
    # counters there show what the later calls no longer do.
    fresh = synk.function(train_step, in_axes=(None, 0, 0))
    first = counts(profiled(lambda: fresh(params, x, y), 1, 1), 1)
    total = args.total // args.calls * args.calls
    table = profiled(variants["synk, numpy"], args.total, args.calls)
    repeats = counts(table, total)
    own = sorted(
        (
            (v[2] / total * 1e6, f"{file.split('synk/_src/')[-1]}:{line} {fn}")
            for (file, line, fn), v in table.items()
            if "synk/_src/" in file
        ),
        reverse=True,
    )[:8]

    print_table(
        f"Host CPU time per call (this thread only), {n} devices, value_and_grad of an MLP "
        f"16-8-4 on {8 * n} rows; {args.rounds} rounds x {per_round} calls, blocks of "
        f"{args.calls}",
        ["variant", "median us", "q1 us", "q3 us"],
        [[k, *(f"{v[c]:.1f}" for c in ("median_us", "q1_us", "q3_us"))] for k, v in host.items()],
    )
    extra = {
        kind: host[f"synk, {kind}"]["median_us"] - host[f"hand-written, {kind}"]["median_us"]
        for kind in ("numpy", "device-resident")
    }
    print(
        "synk's host time over hand-written: "
        + ", ".join(f"{kind} {us:+.1f} us" for kind, us in extra.items())
    )
    print_table(
        f"Profile of {total} calls of synk (numpy): what happens per call after the first",
        ["what", "per later call", "first call"],
        [[label, f"{count:g}", f"{first[label]:g}"] for label, count in repeats.items()],
    )
    print_table(
        "synk's own functions, profiled time per call (cProfile inflates it)",
        ["function", "us"],
        [[name, f"{us:.1f}"] for us, name in own],
    )
    return {
        "command": "dispatch",
        "machine": machine(),
        "config": {"rounds": args.rounds, "calls": args.calls, "total": args.total},
        "host_us": host,
        "synk_extra_us": extra,
        "per_call": repeats,
        "first_call": first,
        "profile_us": {name: us for us, name in own},
    }


# --------------------------------------------------------------------------
# collectives


def collective_fns(mesh: Mesh) -> dict[str, Callable]:
    """One cached jit(shard_map) per collective; per-device inputs sharded P('d')."""

    def broadcast(x):  # no one-to-all primitive in shard_map: a masked all-reduce
        return lax.psum(jnp.where(lax.axis_index(AXIS) == 0, x, jnp.zeros_like(x)), AXIS)

    bodies = {
        "all-reduce": lambda x: lax.psum(x, AXIS),
        "all-gather": lambda x: lax.all_gather(x, AXIS, tiled=True),
        "reduce-scatter": lambda x: lax.psum_scatter(x, AXIS, tiled=True),
        "broadcast": broadcast,
    }
    return {
        op: jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS)))
        for op, body in bodies.items()
    }


def bus_factor(op: str, n: int) -> float:
    """busbw / algbw, as nccl-tests defines it."""
    if op == "all-reduce":
        return 2 * (n - 1) / n
    if op in ("all-gather", "reduce-scatter"):
        return (n - 1) / n
    return 1.0


def _message(op: str, size: int, n: int) -> tuple[int, int]:
    """(floats per device in the input, the message's bytes, nccl-tests convention).

    The size is each device's buffer: for all-gather its output (n inputs of
    size / n), for reduce-scatter its input (giving size / n out).
    """
    floats = max(n, size // 4 // n * n)
    if op == "all-gather":
        return floats // n, floats * 4
    return floats, floats * 4


def _expected(op: str, host: np.ndarray, n: int) -> np.ndarray:
    """What the collective's global output holds, from the global input (numpy)."""
    parts = host.reshape(n, -1)
    if op == "all-reduce":
        return np.tile(parts.sum(0), n)
    if op == "all-gather":
        return np.tile(host, n)
    if op == "reduce-scatter":
        return parts.sum(0)
    return np.tile(parts[0], n)  # broadcast


def collectives(args) -> dict:
    """Time, algbw and busbw of each collective over powers of two of message size."""
    devices = synk.devices()
    n = len(devices)
    mesh = _mesh(devices)
    max_bytes = args.max_bytes
    if max_bytes is None:
        max_bytes = 16 << 20 if devices[0].platform == "cpu" else 256 << 20
    sizes = [1 << e for e in range(10, 64) if 1 << e <= max_bytes]
    ops = OPS if n > 1 else ("copy",)
    fns = collective_fns(mesh) if n > 1 else {"copy": jax.jit(jnp.copy)}
    sharding = _rows(mesh)
    rng = np.random.default_rng(0)

    variants, calls, meta = {}, {}, {}
    for op in ops:
        for size in sizes:
            per_device, nbytes = _message(op, size, n) if n > 1 else (size // 4, size)
            # Small integers: every sum is exact in float32, so the check can be exact.
            host = rng.integers(-8, 8, per_device * n).astype(np.float32)
            x = _global(host, sharding)
            fn = fns[op]
            want = host if op == "copy" else _expected(op, host, n)
            for part in fn(x).addressable_shards:  # this process's devices
                np.testing.assert_array_equal(part.data, want[part.index], err_msg=f"{op} {size} B")
            key = f"{op} {size}"
            variants[key] = lambda fn=fn, x=x: fn(x)
            # Big messages take long per call: fewer calls per sample (>= 1).
            calls[key] = max(1, min(args.calls, (4 << 20) // size))
            meta[key] = (op, size, nbytes)
    if not args.quiet:
        print(f"checked: {len(variants)} collectives give the numpy result", file=sys.stderr)

    samples = measure(
        variants, rounds=args.rounds, calls=calls, desc="collectives", quiet=args.quiet, warmup=1
    )
    results = []
    for key, s in samples.items():
        op, size, nbytes = meta[key]
        st = stats(s)
        algbw = nbytes / (st["median_us"] * 1e-6) / 1e9
        factor = bus_factor(op, n) if n > 1 else 1.0
        results.append(
            {"op": op, "size": size, "bytes": nbytes, "calls": calls[key], **st}
            | {"algbw_gbs": algbw, "busbw_gbs": algbw * factor}
        )

    by = {(r["op"], r["size"]): r for r in results}
    headers = ["size"]
    for op in ops:
        headers += [f"{op} us", "algbw", "busbw"]
    rows = []
    for size in sizes:
        row = [_fmt_bytes(size)]
        for op in ops:
            r = by[(op, size)]
            row += [f"{r['median_us']:.0f}", f"{r['algbw_gbs']:.3f}", f"{r['busbw_gbs']:.3f}"]
        rows.append(row)
    what = (
        f"{n} devices in {synk.process_count()} process(es), float32, jit(shard_map) per collective"
        if n > 1
        else "1 device: device-to-device copy (jnp.copy), the memory ceiling"
    )
    print_table(
        f"Collectives, {what}; {args.rounds} rounds; algbw, busbw in GB/s (1e9 B/s)",
        headers,
        rows,
    )
    if n > 1:
        print("broadcast is a masked all-reduce (shard_map has no one-to-all primitive)")
    return {
        "command": "collectives",
        "machine": machine(),
        "config": {"rounds": args.rounds, "calls": args.calls, "max_bytes": max_bytes},
        "bus_factors": {op: bus_factor(op, n) if n > 1 else 1.0 for op in ops},
        "results": results,
    }


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}"
        n /= 1024
    raise AssertionError


# --------------------------------------------------------------------------
# scaling


def device_counts(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    counts = [1 << e for e in range(n.bit_length()) if 1 << e <= n]
    return counts if counts[-1] == n else [*counts, n]


def scaling(args) -> dict:
    """Step time, speedup and efficiency of a compute-bound step on 1, 2, 4, ... devices."""
    devices = synk.devices()
    sizes = [D_IN, args.hidden, args.hidden, D_OUT]
    params = init_mlp(sizes)
    x, y = make_batch(args.batch)
    want = jax.jit(train_step)(params, x, y)
    counts = [k for k in device_counts(len(devices)) if k <= args.batch]

    variants = {}
    for k in counts:
        f = synk.function(train_step, in_axes=(None, 0, 0), devices=k)
        p = jax.device_put(params, _replicated(_mesh(devices[:k])))  # placed once, as in training
        check_close(f"{k} devices", f(p, x, y), want)
        variants[k] = lambda f=f, p=p: f(p, x, y)
    if not args.quiet:
        print("checked: every device count gives the serial loss and grads", file=sys.stderr)

    samples = measure(
        {str(k): v for k, v in variants.items()},
        rounds=args.rounds,
        calls=args.calls,
        desc="scaling",
        quiet=args.quiet,
    )
    t1 = stats(samples["1"])["median_us"] if "1" in samples else None
    results = []
    for k in counts:
        st = stats(samples[str(k)])
        speedup = t1 / st["median_us"]
        results.append({"devices": k, **st, "speedup": speedup, "efficiency": speedup / k})
    print_table(
        f"Scaling: value_and_grad of an MLP {'-'.join(map(str, sizes))}, batch {args.batch}, "
        f"numpy x, y; {args.rounds} rounds x {args.calls} calls",
        ["devices", "step ms", "q1 ms", "q3 ms", "speedup", "efficiency"],
        [
            [
                str(r["devices"]),
                f"{r['median_us'] / 1e3:.2f}",
                f"{r['q1_us'] / 1e3:.2f}",
                f"{r['q3_us'] / 1e3:.2f}",
                f"{r['speedup']:.2f}x",
                f"{r['efficiency']:.0%}",
            ]
            for r in results
        ],
    )
    if note := shared_cores_note(devices):
        print(note)
    return {
        "command": "scaling",
        "machine": machine(),
        "config": {
            "rounds": args.rounds,
            "calls": args.calls,
            "batch": args.batch,
            "mlp": sizes,
            "grad_bytes": sum(int(v.nbytes) for v in params.values()),
        },
        "results": results,
    }


# --------------------------------------------------------------------------
# predict


def allreduce_seconds(n: int, nbytes: float, bytes_per_s: float, latency_s: float) -> float:
    """Ring all-reduce model: 2(n-1)/n * bytes / bandwidth + latency (0 on one device)."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bytes_per_s + latency_s


def predict(args) -> dict:
    """Predicted step time and speedup for 1..N devices, beside measured figures."""
    devices = synk.devices()
    sizes = [D_IN, args.hidden, args.hidden, D_OUT]
    params = init_mlp(sizes)
    grad_bytes = sum(int(v.nbytes) for v in params.values())

    if args.compute_ms is not None:
        compute_s, compute_from = args.compute_ms / 1e3, "--compute-ms"
    else:  # the step alone on one device, inputs already there: pure compute
        on_one = jax.device_put((params, *make_batch(args.batch)), devices[0])
        step = jax.jit(train_step)
        samples = measure(
            {"compute": lambda: step(*on_one)},
            rounds=args.rounds,
            calls=args.calls,
            desc="compute",
            quiet=args.quiet,
        )
        compute_s, compute_from = stats(samples["compute"])["median_us"] / 1e6, "measured"
    link = args.link_gbps * 1e9 / 8  # Gbit/s -> bytes/s
    latency = args.latency_us * 1e-6

    measured_run = None if args.no_measure else scaling(args)
    measured = {r["devices"]: r for r in measured_run["results"]} if measured_run else {}
    max_n = args.max_devices or max(64, len(devices))
    counts = [k for k in device_counts(max_n) if k <= args.batch]
    results = []
    for k in counts:
        comm = allreduce_seconds(k, grad_bytes, link, latency)
        step_s = compute_s / k + comm
        row = {
            "devices": k,
            "compute_ms": compute_s / k * 1e3,
            "allreduce_ms": comm * 1e3,
            "predicted_ms": step_s * 1e3,
            "predicted_speedup": compute_s / step_s,
            "predicted_efficiency": compute_s / step_s / k,
        }
        if k in measured:
            row["measured_ms"] = measured[k]["median_us"] / 1e3
            row["measured_speedup"] = measured[k]["speedup"]
        results.append(row)

    pays = [r["devices"] for r in results if r["predicted_efficiency"] >= 0.5]
    print_table(
        f"Prediction: MLP {'-'.join(map(str, sizes))}, batch {args.batch}; compute "
        f"{compute_s * 1e3:.3f} ms on one device ({compute_from}); gradients "
        f"{_fmt_bytes(grad_bytes)}; link {args.link_gbps:g} Gbit/s, latency "
        f"{args.latency_us:g} us",
        [
            "devices",
            "rows/dev",
            "compute ms",
            "all-reduce ms",
            "pred ms",
            "pred speedup",
            "pred eff",
            "meas ms",
            "meas speedup",
        ],
        [
            [
                str(r["devices"]),
                f"{args.batch / r['devices']:g}",
                f"{r['compute_ms']:.3f}",
                f"{r['allreduce_ms']:.3f}",
                f"{r['predicted_ms']:.3f}",
                f"{r['predicted_speedup']:.2f}x",
                f"{r['predicted_efficiency']:.0%}",
                f"{r['measured_ms']:.3f}" if "measured_ms" in r else "",
                f"{r['measured_speedup']:.2f}x" if "measured_speedup" in r else "",
            ]
            for r in results
        ],
    )
    best = min(results, key=lambda r: r["predicted_ms"])
    print(
        f"fastest predicted: {best['devices']} devices ({best['predicted_speedup']:.2f}x); "
        f"efficiency >= 50% up to {max(pays)} devices"
    )
    return {
        "command": "predict",
        "machine": machine(),
        "config": {
            "batch": args.batch,
            "mlp": sizes,
            "grad_bytes": grad_bytes,
            "compute_ms": compute_s * 1e3,
            "compute_from": compute_from,
            "link_gbps": args.link_gbps,
            "latency_us": args.latency_us,
            "rounds": args.rounds,
            "calls": args.calls,
        },
        "results": results,
        "scaling": measured_run,
    }


# --------------------------------------------------------------------------
# Plots (matplotlib, imported only when asked for)


def plot(result: dict, path: str) -> None:
    """Write one figure of the result to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    kind = result["command"]
    if kind == "overhead":
        names = list(result["stats_us"])
        med = [result["stats_us"][k]["median_us"] for k in names]
        ax.barh(names, med)
        ax.invert_yaxis()
        ax.set_xlabel("median time per call (us)")
    elif kind == "collectives":
        for op in dict.fromkeys(r["op"] for r in result["results"]):
            rs = [r for r in result["results"] if r["op"] == op]
            ax.loglog([r["size"] for r in rs], [r["busbw_gbs"] for r in rs], "o-", label=op)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ax.legend()
    else:
        rs = result["results"]
        ks = [r["devices"] for r in rs]
        ax.plot(ks, ks, "k:", label="ideal")
        if kind == "scaling":
            ax.plot(ks, [r["speedup"] for r in rs], "o-", label="measured")
        else:
            ax.plot(ks, [r["predicted_speedup"] for r in rs], "o-", label="predicted")
            meas = [r for r in rs if "measured_speedup" in r]
            if meas:
                ax.plot(
                    [r["devices"] for r in meas],
                    [r["measured_speedup"] for r in meas],
                    "s--",
                    label="measured",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("devices")
        ax.set_ylabel("speedup over 1 device")
        ax.legend()
    ax.set_title(f"synk bench {kind} ({result['machine']['devices']} devices)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------
# Command line


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    """The ``synk bench`` argument parser."""
    p = argparse.ArgumentParser(
        prog="synk bench",
        description="Benchmarks of synk on this machine's devices. Simulate CPU devices "
        "with SYNK_CPU_DEVICES=N or --cpu-devices N.",
    )
    names = "{overhead,dispatch,collectives,scaling,predict}"
    sub = p.add_subparsers(dest="bench", required=True, metavar=names)
    pos_int, pos_float = _positive(int), _positive(float)

    def common(name: str, help: str, rounds: int, calls: int) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("--rounds", type=pos_int, default=rounds, help="samples per variant")
        s.add_argument(
            "--calls",
            type=pos_int,
            default=calls,
            help=f"calls per sample, then one block (<= {CPU_MAX_CALLS} on CPU)",
        )
        s.add_argument("--json", metavar="PATH", help="write the figures as JSON")
        s.add_argument("--plot", metavar="PATH.png", help="draw the figures (needs matplotlib)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.add_argument("--cpu-devices", type=pos_int, help="simulate N CPU devices")
        return s

    s = common("overhead", "per-call time: synk vs hand-written jit(shard_map) vs pmap", 20, 10)
    s.add_argument("--batch", type=pos_int, help="rows of the even batch (default 32/device)")
    s.add_argument("--hidden", type=pos_int, default=64, help="hidden width of the small MLP")
    s.add_argument(
        "--compute-batch", type=pos_int, help="rows, compute-bound case (default 256/device)"
    )
    s.add_argument(
        "--compute-hidden", type=pos_int, default=128, help="hidden width, compute-bound case"
    )

    s = common("dispatch", "host time per call, and a profile of synk's per-call path", 5, 10)
    s.add_argument(
        "--total", type=pos_int, default=10_000, help="calls profiled (and timed per variant)"
    )

    s = common("collectives", "all-reduce, all-gather, reduce-scatter, broadcast bandwidth", 5, 10)
    s.add_argument(
        "--max-bytes", type=pos_int, help="largest message (default 16 MiB on CPU, 256 MiB else)"
    )

    def model(s) -> None:
        s.add_argument("--batch", type=pos_int, default=2048, help="rows per step")
        s.add_argument("--hidden", type=pos_int, default=256, help="width of the 2 hidden layers")

    model(common("scaling", "a compute-bound step on 1, 2, 4, ... devices", 8, 5))
    s = common("predict", "predicted step time and speedup for 1..N devices", 8, 5)
    model(s)
    s.add_argument("--compute-ms", type=pos_float, help="one-device step time (default: measure)")
    s.add_argument("--link-gbps", type=pos_float, default=100.0, help="link bandwidth, Gbit/s")
    s.add_argument("--latency-us", type=float, default=10.0, help="per all-reduce latency, us")
    s.add_argument("--max-devices", type=pos_int, help="predict up to N (default 64)")
    s.add_argument("--no-measure", action="store_true", help="do not run scaling beside it")
    return p


MULTI_PROCESS = ("overhead", "collectives")  # the others time 1..n devices of one process
COMMANDS = {
    "overhead": overhead,
    "dispatch": dispatch,
    "collectives": collectives,
    "scaling": scaling,
    "predict": predict,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``synk bench ...``: print the table, write ``--json`` / ``--plot``."""
    p = parser()
    args = p.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    if getattr(args, "latency_us", 0) < 0:
        p.error(f"--latency-us must be >= 0, got {args.latency_us}")
    if args.cpu_devices is not None:  # else synk configures itself (SYNK_CPU_DEVICES)
        synk.init(cpu_devices=args.cpu_devices)
    if synk.process_count() > 1 and args.bench not in MULTI_PROCESS:
        p.error(f"synk bench {args.bench} runs in one process; launch it without mpiexec")
    if jax.default_backend() == "cpu" and args.calls > CPU_MAX_CALLS:
        p.error(
            f"--calls {args.calls}: at most {CPU_MAX_CALLS} on the CPU backend (XLA's CPU "
            "collectives abort when ~50 un-blocked calls are in flight)"
        )
    # Every check that can refuse the flags is above: all processes refuse alike.
    if synk.process_index() > 0:  # every process runs; the first one reports
        args.quiet, args.json, args.plot = True, None, None
        with contextlib.redirect_stdout(io.StringIO()):
            COMMANDS[args.bench](args)
        return 0
    result = COMMANDS[args.bench](args)
    result["argv"] = list(sys.argv[1:] if argv is None else argv)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0
