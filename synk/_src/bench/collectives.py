"""``synk bench collectives``: what the links give, reported like nccl-tests.

All-reduce, all-gather, reduce-scatter and broadcast over powers of two of
message size: time, algbw (bytes / time) and busbw (algbw times the factor
nccl-tests uses, so that one link speed reads alike for every op). On one
device, a device-to-device copy instead: the memory ceiling.

Called by ``cli`` (`run`). Calls ``workloads`` for the mesh, ``harness`` to
time, ``report`` for the table, and JAX for one jit(shard_map) per op (no
synk: these are the links' figures, not synk's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import synk
from synk._src.bench.flags import positive_int, timing
from synk._src.bench.harness import measure, stats
from synk._src.bench.report import draw_bandwidth, fmt_bytes, heading, print_table
from synk._src.bench.workloads import AXIS, by_rows, global_arrays, mesh_of

OPS = ("all-reduce", "all-gather", "reduce-scatter", "broadcast")


SEVERAL_PROCESSES = True  # also under mpiexec: every process runs it, the first reports
PLOT = draw_bandwidth  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing(parser, rounds=5, calls=10)
    parser.add_argument(
        "--max-bytes",
        type=positive_int,
        help="largest message (default 16 MiB on CPU, 256 MiB else)",
    )


def run(args: argparse.Namespace) -> dict:
    """Time, algbw and busbw of each collective over powers of two of message size."""
    devices = synk.devices()
    n = len(devices)
    max_bytes = args.max_bytes
    if max_bytes is None:
        max_bytes = 16 << 20 if devices[0].platform == "cpu" else 256 << 20
    sizes = [1 << e for e in range(10, 64) if 1 << e <= max_bytes]
    ops = OPS if n > 1 else ("copy",)
    variants, calls, meta = _variants(mesh_of(devices), ops, sizes, args.calls)
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
        results.append(
            {"op": op, "size": size, "bytes": nbytes, "calls": calls[key], **st}
            | {"algbw_gbs": algbw, "busbw_gbs": algbw * bus_factor(op, n)}
        )
    _print(args, n, ops, sizes, results)
    return {
        **heading(args, max_bytes=max_bytes),
        "bus_factors": {op: bus_factor(op, n) for op in ops},
        "results": results,
    }


def _variants(
    mesh: Mesh, ops: Sequence[str], sizes: list[int], max_calls: int
) -> tuple[dict, dict, dict]:
    """({key: call}, {key: calls per sample}, {key: (op, size, bytes)}), each checked."""
    n = mesh.size
    fns = collective_fns(mesh) if n > 1 else {"copy": jax.jit(jnp.copy)}
    sharding = by_rows(mesh)
    rng = np.random.default_rng(0)
    variants, calls, meta = {}, {}, {}
    for op in ops:
        for size in sizes:
            per_device, nbytes = _message(op, size, n) if n > 1 else (size // 4, size)
            # Small integers: every sum is exact in float32, so the check can be exact.
            host = rng.integers(-8, 8, per_device * n).astype(np.float32)
            x = global_arrays(host, sharding)
            fn = fns[op]
            want = host if op == "copy" else _expected(op, host, n)
            for part in fn(x).addressable_shards:  # this process's devices
                np.testing.assert_array_equal(part.data, want[part.index], err_msg=f"{op} {size} B")
            key = f"{op} {size}"
            variants[key] = lambda fn=fn, x=x: fn(x)
            # Big messages take long per call: fewer calls per sample (>= 1).
            calls[key] = max(1, min(max_calls, (4 << 20) // size))
            meta[key] = (op, size, nbytes)
    return variants, calls, meta


def collective_fns(mesh: Mesh) -> dict[str, Callable]:
    """One cached jit(shard_map) per collective; per-device inputs sharded P('d')."""

    # no one-to-all primitive in shard_map: a masked all-reduce
    def broadcast(x: jax.Array) -> jax.Array:
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


def bus_factor(op: str, n: int) -> float:
    """busbw / algbw, as nccl-tests defines it (1 for broadcast and the one-device copy)."""
    if op == "all-reduce":
        return 2 * (n - 1) / n
    if op in ("all-gather", "reduce-scatter"):
        return (n - 1) / n
    return 1.0


def _print(
    args: argparse.Namespace, n: int, ops: Sequence[str], sizes: list[int], results: list[dict]
) -> None:
    by = {(r["op"], r["size"]): r for r in results}
    headers = ["size"]
    for op in ops:
        headers += [f"{op} us", "algbw", "busbw"]
    rows = []
    for size in sizes:
        row = [fmt_bytes(size)]
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
