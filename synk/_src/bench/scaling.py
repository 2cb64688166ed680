"""``synk bench scaling``: a compute-bound training step on 1, 2, 4, ... devices.

The same ``synk.function`` step on one global numpy batch, over the first k
devices for each k: step time, speedup over one device and efficiency.

Called by ``cli`` (`run`) and by ``predict`` (its measured figures, beside the
prediction; `device_counts`). Calls ``workloads`` for the step, ``harness``
to check and time it, and ``report`` for the table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import numpy as np

import synk
from synk._src.bench.flags import positive_int, timing
from synk._src.bench.harness import check_close, measure, stats
from synk._src.bench.report import draw_speedup, heading, print_table, shared_cores_note
from synk._src.bench.workloads import (
    D_IN,
    D_OUT,
    init_mlp,
    make_batch,
    mesh_of,
    replicated,
    train_step,
)

PLOT = draw_speedup  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of scaling, and of predict, which runs it beside its prediction."""
    timing(parser, rounds=8, calls=5)
    parser.add_argument("--batch", type=positive_int, default=2048, help="rows per step")
    parser.add_argument(
        "--hidden", type=positive_int, default=256, help="width of the 2 hidden layers"
    )


def run(args: argparse.Namespace) -> dict:
    """Step time, speedup and efficiency of a compute-bound step on 1, 2, 4, ... devices."""
    devices = synk.devices()
    sizes = [D_IN, args.hidden, args.hidden, D_OUT]
    params = init_mlp(sizes)
    counts = [k for k in device_counts(len(devices)) if k <= args.batch]
    variants = _variants(devices, counts, params, make_batch(args.batch))
    if not args.quiet:
        print("checked: every device count gives the serial loss and grads", file=sys.stderr)
    samples = measure(
        {str(k): v for k, v in variants.items()},
        rounds=args.rounds,
        calls=args.calls,
        desc="scaling",
        quiet=args.quiet,
    )
    t1 = stats(samples["1"])["median_us"]  # counts start at 1 device
    results = []
    for k in counts:
        st = stats(samples[str(k)])
        speedup = t1 / st["median_us"]
        results.append({"devices": k, **st, "speedup": speedup, "efficiency": speedup / k})
    _print(args, sizes, results)
    if note := shared_cores_note(devices):
        print(note)
    return {
        **heading(
            args,
            batch=args.batch,
            mlp=sizes,
            grad_bytes=sum(int(v.nbytes) for v in params.values()),
        ),
        "results": results,
    }


def device_counts(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    counts = [1 << e for e in range(n.bit_length()) if 1 << e <= n]
    return counts if counts[-1] == n else [*counts, n]


def _variants(
    devices: Sequence[jax.Device],
    counts: list[int],
    params: dict[str, np.ndarray],
    batch: tuple[np.ndarray, np.ndarray],
) -> dict:
    """{k: one step on the first k devices}, each checked against the serial step."""
    x, y = batch
    want = jax.jit(train_step)(params, x, y)
    variants = {}
    for k in counts:
        f = synk.function(train_step, in_axes=(None, 0, 0), devices=k)
        p = jax.device_put(params, replicated(mesh_of(devices[:k])))  # placed once, as in training
        check_close(f"{k} devices", f(p, x, y), want)
        variants[k] = lambda f=f, p=p: f(p, x, y)
    return variants


def _print(args: argparse.Namespace, sizes: list[int], results: list[dict]) -> None:
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
