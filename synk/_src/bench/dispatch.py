"""``synk bench dispatch``: the host CPU time of one call, and a profile of synk's call path.

Host time is this thread's CPU time (device threads and waits excluded), synk
against the hand-written step. The profile counts, per call, the calls of
named functions (`REPEATS`, matched by file and function name) over many calls
of one ``synk.function``, beside the same counts on the first call of a new
one: what a later call no longer does (plan, trace, describe, split).

Called by ``cli`` (`run`). Calls ``workloads`` for the step, ``harness`` to
check it and to take the samples in shuffled rounds, ``report`` for the
tables, and cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable, Sequence

import jax

import synk
from synk._src.bench.flags import positive_int, timing
from synk._src.bench.harness import check_close, measure, stats
from synk._src.bench.report import heading, print_stats, print_table
from synk._src.bench.workloads import (
    D_IN,
    D_OUT,
    by_rows,
    global_arrays,
    hand_written,
    init_mlp,
    make_batch,
    mesh_of,
    replicated,
    train_step,
)

# What a lean call must not do again once its plan exists: (label, file, function).
REPEATS = (
    ("synk plans built", "synk/_src/plan.py", "build"),
    ("argument descriptions (in_axes trees)", "synk/_src/roles.py", "describe_leaves"),
    ("batch lengths checked", "synk/_src/plan.py", "batch_rows"),
    # Where a jaxpr is traced moved between JAX releases: either name counts.
    (
        "jaxprs traced",
        "jax/_src/interpreters/partial_eval.py",
        ("trace_to_jaxpr", "trace_to_jaxpr_nocache"),
    ),
    # NamedSharding is built in C++, out of cProfile's sight; synk builds each
    # of its shardings from a new PartitionSpec, which is counted.
    ("PartitionSpecs constructed", "jax/_src/partition_spec.py", "__new__"),
    ("tree_flatten calls", "jax/_src/tree_util.py", "tree_flatten"),
    ("tree_unflatten calls", "jax/_src/tree_util.py", "tree_unflatten"),
    ("tree_structure calls", "jax/_src/tree_util.py", "tree_structure"),
)
OWN = "synk/_src/"  # the frames of synk's own functions in the profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing(parser, rounds=5, calls=10)
    parser.add_argument(
        "--total", type=positive_int, default=10_000, help="calls profiled (and timed per variant)"
    )


def run(args: argparse.Namespace) -> dict:
    """Host CPU time per call, synk vs hand-written, and a profile of synk's calls."""
    devices = synk.devices()
    n = len(devices)
    params, x, y, variants = _variants(devices)
    per_round = max(args.calls, args.total // args.rounds)
    samples = measure(
        variants,
        rounds=args.rounds,
        calls=per_round,
        desc="dispatch",
        quiet=args.quiet,
        warmup=0,  # every variant ran in its check
        sample=lambda call, total: host_seconds(call, total, args.calls),
    )
    host = {k: stats(v) for k, v in samples.items()}
    # The first call of a new function plans, traces and compiles: the same
    # counters there show what the later calls no longer do.
    fresh = synk.function(train_step, in_axes=(None, 0, 0))
    first = _counts(_profiled(lambda: fresh(params, x, y), 1, 1), 1)
    total = args.total // args.calls * args.calls
    table = _profiled(variants["synk, numpy"], args.total, args.calls)
    repeats = _counts(table, total)
    own = _own_functions(table, total)
    extra = {
        kind: host[f"synk, {kind}"]["median_us"] - host[f"hand-written, {kind}"]["median_us"]
        for kind in ("numpy", "device-resident")
    }
    _print(args, n, per_round, total, host, extra, repeats, first, own)
    return {
        **heading(args, total=args.total),
        "host_us": host,
        "synk_extra_us": extra,
        "per_call": repeats,
        "first_call": first,
        "profile_us": {name: us for us, name in own},
    }


def _variants(devices: Sequence[jax.Device]) -> tuple:
    """(params, x, y, {name: call}), each call checked against the serial step."""
    mesh = mesh_of(devices)
    params = global_arrays(init_mlp([D_IN, 8, D_OUT]), replicated(mesh))
    x, y = make_batch(8 * len(devices))
    x_dev, y_dev = global_arrays((x, y), by_rows(mesh))
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
    return params, x, y, variants


def host_seconds(call: Callable, total: int, calls: int) -> float:
    """Seconds of this thread's CPU time per call (device threads and waits excluded)."""
    out = None  # set by the loop: total >= calls >= 1
    t0 = time.thread_time()
    for _ in range(total // calls):
        for _ in range(calls):
            out = call()
        jax.block_until_ready(out)
    return (time.thread_time() - t0) / (total // calls * calls)


def _profiled(call: Callable, total: int, calls: int) -> dict:
    """cProfile's table of ``total`` calls: (file, line, function) -> (cc, nc, tt, ct, ...)."""
    profile = cProfile.Profile()
    profile.enable()
    host_seconds(call, total, calls)
    profile.disable()
    # pyrefly: ignore[missing-attribute]  # the raw table, which typeshed's Stats leaves out
    return pstats.Stats(profile).stats


def _counts(table: dict, calls: int) -> dict[str, float]:
    """How often each function of `REPEATS` ran, per call."""
    return {
        label: sum(
            v[1] for (file, _, fn), v in table.items() if file.endswith(path) and fn in names
        )
        / calls
        for label, path, names in (
            (lab, p, f if isinstance(f, tuple) else (f,)) for lab, p, f in REPEATS
        )
    }


def _own_functions(table: dict, calls: int) -> list[tuple[float, str]]:
    """synk's 8 costliest functions: (own microseconds per call, "file:line name")."""
    return sorted(
        (
            (v[2] / calls * 1e6, f"{file.split(OWN)[-1]}:{line} {fn}")
            for (file, line, fn), v in table.items()
            if OWN in file
        ),
        reverse=True,
    )[:8]


def _print(
    args: argparse.Namespace,
    n: int,
    per_round: int,
    total: int,
    host: dict[str, dict[str, float]],
    extra: dict[str, float],
    repeats: dict[str, float],
    first: dict[str, float],
    own: list[tuple[float, str]],
) -> None:
    print_stats(
        f"Host CPU time per call (this thread only), {n} devices, value_and_grad of an MLP "
        f"16-8-4 on {8 * n} rows; {args.rounds} rounds x {per_round} calls, blocks of "
        f"{args.calls}",
        host,
        digits=1,
    )
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
