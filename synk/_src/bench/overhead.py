"""``synk bench overhead``: per-call time of a ``synk.function`` step against the same step by hand.

The step (value_and_grad of an MLP) runs as a ``synk.function`` (the default
path) against the fastest hand-written form, ``jax.jit`` with ``in_shardings``
(an uneven batch padded on the host and cut back inside), and against
``jax.pmap``; on numpy batches, device-resident batches, ``synk.data`` views
and an uneven batch. The per-device path (``reduce='avg'``) runs against
``jax.jit(jax.shard_map(...))``, and, compute-bound, with ``num_slices``.
Under several processes each process hands over its share of every host
batch (the hand-written form builds its global arrays from the shares in the
call, as such code must), and pmap is left out. synk checks on every call
that all processes make the same call, unless the launch sets
``SYNK_CHECK=0``: the check's cost is the difference between a launch with it
and one without (the table's title says which ran). With ``--conv``, the same
comparison for a conv-net step (`workloads.cnn_step`) on numpy batches.

Called by ``cli`` (`run`). Calls ``workloads`` for the step and its
hand-written forms, ``harness`` to check and time them, and ``report`` for
the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

import synk
from synk._src.bench.flags import positive_int, sizes, timing
from synk._src.bench.harness import Pair, Ratio, check_close, measured, ratios
from synk._src.bench.report import draw_per_call, heading, print_ratios, print_stats, ratio_fields
from synk._src.bench.workloads import (
    D_IN,
    D_OUT,
    HeldParams,
    by_rows,
    cnn_step,
    global_arrays,
    hand_written,
    hand_written_indexed,
    hand_written_padded,
    hand_written_shard_map,
    init_cnn,
    init_mlp,
    make_batch,
    make_images,
    mesh_of,
    pmapped,
    replicated,
    train_step,
)

EXTRA_ROWS = 3  # the uneven batch has this many rows more per process than the even one
SLICES = 4
UNEVEN = f"synk, numpy, uneven (+{EXTRA_ROWS})"
HAND_UNEVEN = f"hand-written, numpy, uneven (+{EXTRA_ROWS})"
AVG = "synk reduce='avg', numpy"
AVG_UNEVEN = f"synk reduce='avg', numpy, uneven (+{EXTRA_ROWS})"
HAND_MAP = "hand-written shard_map, numpy"
BIG_HAND = "compute-bound: hand-written shard_map"
BIG_SYNK = "compute-bound: synk reduce='avg', num_slices=1"
BIG_SLICED = f"compute-bound: synk reduce='avg', num_slices={SLICES}"
CONV_HAND = "conv net: hand-written, numpy"
CONV_SYNK = "conv net: synk, numpy"

PAIRS: tuple[Pair, ...] = (
    ("synk / hand-written, numpy", "synk, numpy", "hand-written, numpy", ("<=", 1.03)),
    ("synk / hand-written, uneven", UNEVEN, HAND_UNEVEN, ("<=", 1.03)),
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
    ("reduce='avg' / hand-written shard_map", AVG, HAND_MAP, ("<=", 1.05)),
    ("reduce='avg': uneven / even", AVG_UNEVEN, AVG, ("<=", 1.25)),
    (f"num_slices={SLICES} / num_slices=1, compute-bound", BIG_SLICED, BIG_SYNK, ("<=", 1.15)),
    ("reduce='avg' / hand-written shard_map, compute-bound", BIG_SYNK, BIG_HAND, None),
    ("synk / hand-written, conv net", CONV_SYNK, CONV_HAND, None),
)

# (name, call, the serial step's inputs to check it against)
Case = tuple[str, Callable[[], object], tuple]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The batches (rows) and MLPs (layer widths) of one run, from the flags."""

    rows: int
    uneven: int
    big_rows: int  # the compute-bound case
    small: list[int]
    big: list[int]
    conv_rows: int | None  # the conv net's batch; None: no conv net (no --conv)
    conv_image: int
    conv_channels: tuple[int, int]


SEVERAL_PROCESSES = True  # also under mpiexec: every process runs it, the first reports
PLOT = draw_per_call  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing(parser, rounds=20, calls=10)
    parser.add_argument(
        "--batch", type=positive_int, help="rows of the even batch (default 32/device)"
    )
    parser.add_argument(
        "--hidden", type=positive_int, default=64, help="hidden width of the small MLP"
    )
    parser.add_argument(
        "--compute-batch", type=positive_int, help="rows, compute-bound case (default 256/device)"
    )
    parser.add_argument(
        "--compute-hidden", type=positive_int, default=128, help="hidden width, compute-bound case"
    )
    parser.add_argument(
        "--conv", action="store_true", help="also time a conv-net step, synk vs hand-written"
    )
    parser.add_argument(
        "--conv-batch", type=positive_int, help="rows of the conv net (default 32/device)"
    )
    parser.add_argument(
        "--conv-image", type=positive_int, default=28, help="image side of the conv net"
    )
    parser.add_argument(
        "--conv-channels", type=sizes(2), default="32,64", help="conv net channels, e.g. 32,64"
    )


def run(args: argparse.Namespace) -> dict:
    """Per-call time of synk.function against jit(shard_map) and pmap, and ratios."""
    devices = synk.devices()
    procs = synk.process_count()
    sizes = _sizes(args, len(devices), procs)
    cases = _cases(devices, procs, sizes)
    _check(cases, args.quiet)
    samples, st = measured({name: call for name, call, _ in cases}, args, "overhead")
    found = ratios(PAIRS, samples, st)
    _print(args, len(devices), procs, sizes, st, found)
    return _result(args, sizes, st, found, samples)


def _sizes(args: argparse.Namespace, n: int, procs: int) -> Sizes:
    rows = args.batch if args.batch is not None else 32 * n
    big_rows = args.compute_batch if args.compute_batch is not None else 256 * n
    conv_rows = None
    if args.conv:
        conv_rows = args.conv_batch if args.conv_batch is not None else 32 * n
    if rows % procs or big_rows % procs or (conv_rows or 0) % procs:
        raise SystemExit(
            f"--batch, --compute-batch and --conv-batch must be multiples of {procs} processes"
        )
    return Sizes(
        rows=rows,
        uneven=rows + EXTRA_ROWS * procs,  # each process's share: EXTRA_ROWS more
        big_rows=big_rows,
        small=[D_IN, args.hidden, D_OUT],
        big=[D_IN, args.compute_hidden, args.compute_hidden, D_OUT],
        conv_rows=conv_rows,
        conv_image=args.conv_image,
        conv_channels=tuple(args.conv_channels),
    )


def _cases(devices: Sequence[jax.Device], procs: int, sizes: Sizes) -> list[Case]:
    """Every variant, in the order of the table."""
    mesh = mesh_of(devices)
    params = global_arrays(init_mlp(sizes.small), replicated(mesh))
    big_params = global_arrays(init_mlp(sizes.big, seed=1), replicated(mesh))
    # Global batches, the same in every process, and this process's rows of them.
    x, y = make_batch(sizes.rows, seed=0)
    xu, yu = make_batch(sizes.uneven, seed=1)
    xb, yb = make_batch(sizes.big_rows, seed=2)
    xs, ys, xus, yus, xbs, ybs = synk.process_share((x, y, xu, yu, xb, yb))
    f = synk.function(train_step, in_axes=(None, 0, 0))
    avg = f.with_options(reduce="avg")
    sliced = avg.with_options(num_slices=SLICES)
    hand = _hand_call(mesh, procs, hand_written(mesh))
    hand_map = _hand_call(mesh, procs, hand_written_shard_map(mesh))
    padded, pad = hand_written_padded(mesh, sizes.uneven, procs)
    hand_uneven = _hand_call(mesh, procs, padded)
    return [
        ("synk, numpy", lambda: f(params, xs, ys), (params, x, y)),
        ("hand-written, numpy", lambda: hand(params, xs, ys), (params, x, y)),
        *([_pmap_case(devices, params, x, y)] if procs == 1 else []),
        *_resident_cases(mesh, procs, f, hand, params, x, y),
        (UNEVEN, lambda: f(params, xus, yus), (params, xu, yu)),
        (HAND_UNEVEN, lambda: hand_uneven(params, pad(xus), pad(yus)), (params, xu, yu)),
        (AVG, lambda: avg(params, xs, ys), (params, x, y)),
        (HAND_MAP, lambda: hand_map(params, xs, ys), (params, x, y)),
        (AVG_UNEVEN, lambda: avg(params, xus, yus), (params, xu, yu)),
        (BIG_HAND, lambda: hand_map(big_params, xbs, ybs), (big_params, xb, yb)),
        (BIG_SYNK, lambda: avg(big_params, xbs, ybs), (big_params, xb, yb)),
        (BIG_SLICED, lambda: sliced(big_params, xbs, ybs), (big_params, xb, yb)),
        *(_conv_cases(mesh, procs, sizes) if sizes.conv_rows else []),
    ]


def _conv_cases(mesh: Mesh, procs: int, sizes: Sizes) -> list[Case]:
    """The conv net's step, by synk and by hand, on numpy batches."""
    assert sizes.conv_rows is not None  # only with --conv (`_cases`)
    params = global_arrays(init_cnn(sizes.conv_image, sizes.conv_channels), replicated(mesh))
    x, y = make_images(sizes.conv_rows, sizes.conv_image, seed=5)
    xs, ys = synk.process_share((x, y))
    f = synk.function(cnn_step, in_axes=(None, 0, 0))
    hand = _hand_call(mesh, procs, hand_written(mesh, cnn_step))
    return [
        (CONV_HAND, lambda: hand(params, xs, ys), (params, x, y)),
        (CONV_SYNK, lambda: f(params, xs, ys), (params, x, y)),
    ]


def _hand_call(mesh: Mesh, procs: int, jitted: Callable) -> Callable:
    """A hand-written step; under several processes it makes global arrays of the shares."""
    if procs == 1:
        return jitted
    rows_sharding = by_rows(mesh)

    def hand(p: HeldParams, *batch: np.ndarray | jax.Array) -> Any:
        if isinstance(batch[0], np.ndarray):
            placed = [jax.make_array_from_process_local_data(rows_sharding, b) for b in batch]
            return jitted(p, *placed)
        return jitted(p, *batch)

    return hand


def _pmap_case(
    devices: Sequence[jax.Device], params: HeldParams, x: np.ndarray, y: np.ndarray
) -> Case:
    call = pmapped(devices)
    return ("pmap, numpy", lambda: call(params, x, y), (params, x, y))


def _resident_cases(mesh: Mesh, procs: int, f: synk.Function, hand: Callable,
                    params: HeldParams, x: np.ndarray, y: np.ndarray) -> list[Case]:  # fmt: skip
    """Batches already on the devices, and rows picked by index from data on every device."""
    rows = x.shape[0]
    x_dev, y_dev = global_arrays((x, y), by_rows(mesh))
    pool_x, pool_y = make_batch(4 * rows, seed=3)
    data_x, data_y = synk.data(pool_x), synk.data(pool_y)
    idx = np.random.default_rng(4).choice(4 * rows, rows, replace=False)
    hand_indexed = hand_written_indexed(mesh)
    resident_x, resident_y = global_arrays((pool_x, pool_y), replicated(mesh))

    # one process: jit places numpy; several: a global array, per call
    def global_idx() -> np.ndarray | jax.Array:
        return idx if procs == 1 else global_arrays(idx, by_rows(mesh))

    picked = (params, pool_x[idx], pool_y[idx])
    return [
        ("synk, device-resident", lambda: f(params, x_dev, y_dev), (params, x, y)),
        ("hand-written, device-resident", lambda: hand(params, x_dev, y_dev), (params, x, y)),
        ("synk, synk.data X[idx]", lambda: f(params, data_x[idx], data_y[idx]), picked),
        (
            "hand-written, indices into resident data",
            lambda: hand_indexed(params, resident_x, resident_y, global_idx()),
            picked,
        ),
    ]


def _check(cases: list[Case], quiet: bool) -> None:
    serial, serial_conv = jax.jit(train_step), jax.jit(cnn_step)
    for name, call, ref in cases:
        got = call()
        if name.startswith("pmap"):  # one identical copy per device
            got = jax.tree_util.tree_map(lambda a: a[0], got)
        want = (serial_conv if name.startswith("conv net") else serial)(*ref)
        check_close(name, got, want)
    if not quiet:
        print(f"checked: all {len(cases)} variants give the serial loss and grads", file=sys.stderr)


def _print(
    args: argparse.Namespace, n: int, procs: int, sizes: Sizes, st: dict, found: list[Ratio]
) -> None:
    print_stats(
        f"Per-call time, value_and_grad of an MLP, {n} devices in {procs} process(es)"
        + (f" ({_call_check()})" if procs > 1 else "")
        + "; "
        f"{sizes.rows} rows (uneven {sizes.uneven}), MLP {'-'.join(map(str, sizes.small))}; "
        f"compute-bound: {sizes.big_rows} rows, MLP {'-'.join(map(str, sizes.big))}; "
        + _conv_note(sizes)
        + f"{args.rounds} rounds x {args.calls} calls",
        st,
        digits=0,
    )
    print_ratios(found)


def _call_check() -> str:
    """Whether this launch checks every call across processes (synk reads SYNK_CHECK)."""
    value = os.environ.get("SYNK_CHECK")
    return "per-call check on" if value is None else f"per-call check: SYNK_CHECK={value}"


def _conv_note(sizes: Sizes) -> str:
    if not sizes.conv_rows:
        return ""
    c1, c2 = sizes.conv_channels
    side = sizes.conv_image
    return f"conv net: {sizes.conv_rows} rows of {side}x{side}x1, channels {c1}-{c2}; "


def _result(
    args: argparse.Namespace, sizes: Sizes, st: dict, found: list[Ratio], samples: dict
) -> dict:
    return {
        **heading(
            args,
            batch=sizes.rows,
            uneven_batch=sizes.uneven,
            mlp=sizes.small,
            compute_batch=sizes.big_rows,
            compute_mlp=sizes.big,
            num_slices=SLICES,
            conv_batch=sizes.conv_rows,
            conv_image=sizes.conv_image if sizes.conv_rows else None,
            conv_channels=list(sizes.conv_channels) if sizes.conv_rows else None,
            synk_check=os.environ.get("SYNK_CHECK"),
        ),
        "stats_us": st,
        **ratio_fields(found),
        "samples_us": {k: [s * 1e6 for s in v] for k, v in samples.items()},
    }
