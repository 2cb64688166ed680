"""``synk bench memory``: memory per device of a conv-net training step, by ``num_slices``.

``num_slices=k`` runs each device's rows as k sequential pieces (a
``lax.scan``) and accumulates, so that only one piece's activations are alive
at a time. This reads what that saves from the compiled executables, without
running them for time: ``f.lower(...).compile().memory_analysis()`` gives,
per device, the bytes of the arguments, of the outputs and of the temporary
buffers XLA allocates for everything in between (``temp``: activations,
residuals kept for the gradient, the scan's state). Only ``temp`` depends on
``num_slices``; the arguments (parameters and this device's share of the
batch) and the outputs (loss and gradients) do not.

The step is value_and_grad of a small conv net (`workloads.cnn_loss`),
as ``synk.function(step, in_axes=(None, 0, 0))`` at each ``--slices`` value
and as a hand-written ``jax.jit(jax.shard_map(...))`` (one piece, no scan).
Every variant runs once first and is checked against the serial step.

Called by ``cli`` (`run`). Calls ``workloads`` for the conv net and its
hand-written form, ``harness`` to check the variants, ``report`` for the table.
"""

from __future__ import annotations

import argparse
import sys

import jax

import synk
from synk._src.bench.flags import positive_int, sizes
from synk._src.bench.harness import check_close
from synk._src.bench.report import draw_memory, fmt_bytes, machine, print_table
from synk._src.bench.workloads import (
    cnn_step,
    hand_written_shard_map,
    init_cnn,
    make_images,
    mesh_of,
)

HAND = "hand-written jit(shard_map)"
TARGET_SLICES, TARGET = 4, 0.4  # temp at num_slices=4 at most 0.4x that at num_slices=1
# CompiledMemoryStats fields (jaxlib), as the JSON names them.
FIELDS = {
    "temp_bytes": "temp_size_in_bytes",
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
}


PLOT = draw_memory  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rows-per-device", type=positive_int, default=256, help="rows of the batch per device"
    )
    parser.add_argument(
        "--image", type=positive_int, default=28, help="side of the square 1-channel images"
    )
    parser.add_argument(
        "--channels",
        type=sizes(2),
        default="32,64",
        help="output channels of the two convolutions, e.g. 32,64",
    )
    parser.add_argument(
        "--slices", type=sizes(), default="1,2,4,8", help="comma-separated num_slices values"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data and params")


def check_arguments(args: argparse.Namespace) -> str | None:
    if max(args.slices) > args.rows_per_device:
        return (
            f"--slices: every num_slices must be at most --rows-per-device "
            f"({args.rows_per_device}), got {args.slices}"
        )
    return None


def run(args: argparse.Namespace) -> dict:
    """Per-device temp, argument and output bytes of the compiled step at each num_slices."""
    devices = synk.devices()
    n, rows = len(devices), args.rows_per_device * len(devices)
    params = init_cnn(args.image, args.channels, seed=args.seed)
    x, y = make_images(rows, args.image, seed=args.seed + 1)
    want = jax.jit(cnn_step)(params, x, y)
    # num_slices needs a reduce; exact shapes, so that each device's pieces are q / k rows.
    f = synk.function(cnn_step, in_axes=(None, 0, 0), reduce="avg", buckets=None)
    hand = hand_written_shard_map(mesh_of(devices), cnn_step)
    check_close(HAND, hand(params, x, y), want)
    results = [_row(HAND, None, hand.lower(params, x, y))]
    for k in args.slices:
        fk = f.with_options(num_slices=k)
        check_close(f"num_slices={k}", fk(params, x, y), want)
        results.append(_row("synk", k, fk.lower(params, x, y)))
    if not args.quiet:
        print("checked: every variant gives the serial loss and grads", file=sys.stderr)
    base = next((r for r in results if r["num_slices"] == 1), None)
    for r in results:
        r["temp_vs_slices_1"] = _ratio(r["temp_bytes"], base["temp_bytes"] if base else None)
    target = _target(results)
    _print(args, n, rows, results, target)
    return {
        "machine": machine(),
        "config": {
            "devices": n,
            "rows": rows,
            "rows_per_device": args.rows_per_device,
            "image": args.image,
            "channels": list(args.channels),
            "slices": list(args.slices),
            "params_bytes": sum(p.nbytes for p in params.values()),
            "share_bytes": (x.nbytes + y.nbytes) // n,  # this device's rows of x and y
        },
        "rows": results,
        "target": target,
    }


def _row(variant: str, slices: int | None, lowered: jax.stages.Lowered) -> dict:
    stats = lowered.compile().memory_analysis()  # None where the backend has no analysis
    row = {"variant": variant, "num_slices": slices}
    for key, field in FIELDS.items():
        row[key] = None if stats is None else int(getattr(stats, field))
    return row


def _ratio(a: int | None, b: int | None) -> float | None:
    return None if a is None or not b else a / b


def _target(results: list[dict]) -> dict | None:
    """temp at num_slices=4 over temp at num_slices=1, against 0.4 (None if either is missing)."""
    at = {r["num_slices"]: r for r in results if r["variant"] == "synk"}
    if 1 not in at or TARGET_SLICES not in at:
        return None
    value = at[TARGET_SLICES]["temp_vs_slices_1"]
    return {
        "name": f"temp, num_slices={TARGET_SLICES} / num_slices=1",
        "op": "<=",
        "limit": TARGET,
        "value": value,
        "met": value is not None and value <= TARGET,
    }


def _print(
    args: argparse.Namespace, n: int, rows: int, results: list[dict], target: dict | None
) -> None:
    c1, c2 = args.channels
    print_table(
        f"Memory per device of value_and_grad of a conv net (conv {c1} -> conv {c2} -> dense), "
        f"{n} devices, {rows} rows ({args.rows_per_device} per device) of "
        f"{args.image}x{args.image}x1 images; from the compiled executable's memory_analysis()",
        ["variant", "num_slices", "temp", "argument", "output", "temp / num_slices=1"],
        [
            [
                r["variant"],
                "-" if r["num_slices"] is None else str(r["num_slices"]),
                *(_bytes(r[k]) for k in ("temp_bytes", "argument_bytes", "output_bytes")),
                "" if r["temp_vs_slices_1"] is None else f"{r['temp_vs_slices_1']:.3f}",
            ]
            for r in results
        ],
    )
    if target is not None and target["value"] is not None:
        verdict = "met" if target["met"] else "NOT met"
        print(f"\ntarget: {target['name']} <= {target['limit']}: {target['value']:.3f}, {verdict}")


def _bytes(b: int | None) -> str:
    return "n/a" if b is None else fmt_bytes(b)
