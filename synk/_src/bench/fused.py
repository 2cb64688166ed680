"""``synk bench fused``: a training step in one ``jax.jit`` against a synk call and an update.

The step is one optax update (adam, or sgd with momentum) on the gradient of
the bench MLP's mean squared error, in three forms:

- *fused*: ``jax.jit(lambda p, s, x, y: update(p, s, jax.grad(loss)(p, x,
  y)))`` with ``loss`` a ``synk.function``. Under the trace synk plans from
  avals and inlines its per-device body, so the gradient, its all-reduce and
  the update are one executable;
- *two calls*: a ``synk.function`` of ``jax.grad(loss)`` returns the reduced
  gradients, then a separately jitted update applies them: two executables;
- *hand-written fused* (even batch only, for reference): ``jax.jit`` of a
  ``jax.shard_map``'d gradient (``pmean``) and the same update.

Each runs on numpy batches, an even and an uneven number of rows, with the
parameters and optimiser state of one call fed to the next, as a training
loop does. Before timing, one step of each form from the same parameters is
checked against the same step on one device without synk, and the
all-reduces of every compiled executable are counted.

Called by ``cli`` (`run`). Calls optax (imported in `run`: it comes with the
``examples`` extra, not with synk), ``workloads`` for the loss, the batches
and the hand-written gradient, ``harness`` to check and time, and ``report``
for the tables.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

import synk
from synk._src.bench.flags import positive_int, timing
from synk._src.bench.harness import Pair, Ratio, check_close, measured, ratios
from synk._src.bench.report import (
    draw_per_call,
    heading,
    print_ratios,
    print_stats,
    print_table,
    ratio_fields,
)
from synk._src.bench.workloads import (
    D_IN,
    D_OUT,
    HeldParams,
    global_arrays,
    init_mlp,
    make_batch,
    mesh_of,
    mlp_loss,
    replicated,
    sharded,
)

if TYPE_CHECKING:  # optax comes with the examples extra, not with synk
    from optax import GradientTransformation, OptState

EXTRA_ROWS = 3  # the uneven batch has this many rows more than the even one
LEARNING_RATE = 1e-3
FUSED, TWO_CALLS, HAND = "fused", "two calls", "hand-written fused"
PAIRS: tuple[Pair, ...] = (
    ("fused / two calls, even", f"{FUSED}, even", f"{TWO_CALLS}, even", ("<=", 0.85)),
    ("fused / two calls, uneven", f"{FUSED}, uneven", f"{TWO_CALLS}, uneven", ("<=", 0.85)),
    ("fused / hand-written fused, even", f"{FUSED}, even", f"{HAND}, even", None),
)
# An all-reduce instruction of compiled HLO (``-start``: its asynchronous form on GPUs).
ALL_REDUCE = re.compile(r"\sall-reduce(-start)?\(")


class Forms(NamedTuple):
    """The step ``(params, state, x, y) -> (params, state)`` in every form, and its parts."""

    fused: jax.stages.Wrapped
    two_calls: Callable
    hand: jax.stages.Wrapped
    serial: jax.stages.Wrapped  # one device, no synk: the reference
    grads: synk.Function  # the two calls' first call
    update: jax.stages.Wrapped  # ... and their second (jitted)


PLOT = draw_per_call  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing(parser, rounds=20, calls=10)
    parser.add_argument(
        "--batch", type=positive_int, help="rows of the even batch (default 32/device)"
    )
    parser.add_argument("--hidden", type=positive_int, default=64, help="hidden width of the MLP")
    parser.add_argument(
        "--optimizer",
        choices=("adam", "momentum"),
        default="adam",
        help="optax adam or sgd+momentum",
    )


def run(args: argparse.Namespace) -> dict:
    """Time the fused step against the two calls, even and uneven batches, and the ratios."""
    try:
        import optax
    except ImportError:
        raise SystemExit(
            "synk bench fused needs optax, which is not installed: pip install 'synk[examples]'"
        ) from None
    devices = synk.devices()
    rows = args.batch if args.batch is not None else 32 * len(devices)
    sizes = [D_IN, args.hidden, D_OUT]
    batches = {"even": make_batch(rows, seed=0), "uneven": make_batch(rows + EXTRA_ROWS, seed=1)}
    optimizer = _optimizer(optax, args.optimizer)
    mesh = mesh_of(devices)
    forms = _forms(optax, optimizer, mesh)
    host = init_mlp(sizes)
    params = global_arrays(host, replicated(mesh))  # on every device, where a loop keeps them
    state = optimizer.init(params)
    cases = _cases(forms, divides=rows % len(devices) == 0)
    gaps = _check(forms, cases, batches, (params, state), (host, optimizer.init(host)))
    if not args.quiet:
        print(f"checked: all {len(cases)} variants give the serial step", file=sys.stderr)
    counts = {
        name: _count(forms, step, params, state, *batches[kind])
        for name, (step, kind) in cases.items()
    }
    loops = {n: _looped(step, params, state, *batches[k]) for n, (step, k) in cases.items()}
    samples, st = measured(loops, args, "fused")
    found = ratios(PAIRS, samples, st)
    _print(args, len(devices), rows, sizes, st, found, counts)
    return _result(args, rows, sizes, st, found, samples, counts, gaps)


def _optimizer(optax: ModuleType, name: str) -> GradientTransformation:
    if name == "adam":
        return optax.adam(LEARNING_RATE)
    return optax.sgd(LEARNING_RATE, momentum=0.9)


def _forms(optax: ModuleType, optimizer: GradientTransformation, mesh: Mesh) -> Forms:
    def update(params: Any, state: OptState, grads: Any) -> tuple[Any, OptState]:
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    loss = synk.function(mlp_loss, in_axes=(None, 0, 0))
    grads = synk.function(jax.grad(mlp_loss), in_axes=(None, 0, 0))
    jitted_update = jax.jit(update)
    hand_grads = sharded(mesh, jax.grad(mlp_loss))
    return Forms(
        fused=jax.jit(lambda p, s, x, y: update(p, s, jax.grad(loss)(p, x, y))),
        two_calls=lambda p, s, x, y: jitted_update(p, s, grads(p, x, y)),
        hand=jax.jit(lambda p, s, x, y: update(p, s, hand_grads(p, x, y))),
        serial=jax.jit(lambda p, s, x, y: update(p, s, jax.grad(mlp_loss)(p, x, y))),
        grads=grads,
        update=jitted_update,
    )


def _cases(forms: Forms, divides: bool) -> dict[str, tuple[Callable, str]]:
    """{variant: (step, batch kind)}, in the order of the table."""
    cases: dict[str, tuple[Callable, str]] = {}
    for kind in ("even", "uneven"):
        cases[f"{FUSED}, {kind}"] = (forms.fused, kind)
        cases[f"{TWO_CALLS}, {kind}"] = (forms.two_calls, kind)
    if divides:  # shard_map needs rows that the device count divides
        cases[f"{HAND}, even"] = (forms.hand, "even")
    return cases


def _check(forms: Forms, cases: dict, batches: dict, start: tuple, host_start: tuple) -> dict:
    """One step of every variant equals the serial step (or AssertionError).

    Returns the largest difference of the parameters between the fused step
    and the two calls, per batch.
    """
    got = {}
    for name, (step, kind) in cases.items():
        x, y = batches[kind]
        got[name] = step(*start, x, y)
        check_close(name, got[name], forms.serial(*host_start, x, y))
    return {
        kind: max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(
                jax.tree_util.tree_leaves(jax.device_get(got[f"{FUSED}, {kind}"][0])),
                jax.tree_util.tree_leaves(jax.device_get(got[f"{TWO_CALLS}, {kind}"][0])),
                strict=True,
            )
        )
        for kind in batches
    }


def _count(
    forms: Forms, step: Callable, params: HeldParams, state: OptState, x: np.ndarray, y: np.ndarray
) -> dict[str, int]:
    """The executables one step runs, and the all-reduces they hold (compiled HLO)."""
    if step is forms.two_calls:
        grads = forms.grads(params, x, y)
        texts = [forms.grads.lower(params, x, y), forms.update.lower(params, state, grads)]
    else:
        # pyrefly: ignore[missing-attribute]  # every step but the two calls is jitted
        texts = [step.lower(params, state, x, y)]
    hlo = [lowered.compile().as_text() for lowered in texts]
    return {
        "executables": len(hlo),
        # pyrefly: ignore[no-matching-overload]  # as_text() is None only without an HLO printer
        "all_reduces": sum(len(ALL_REDUCE.findall(text)) for text in hlo),
    }


def _looped(
    step: Callable, params: HeldParams, state: OptState, x: np.ndarray, y: np.ndarray
) -> Callable:
    """One training step per call, each fed the parameters and state of the one before."""
    carry = [params, state]

    def call() -> object:
        carry[:] = step(*carry, x, y)
        return carry[0]

    return call


def _print(
    args: argparse.Namespace,
    n: int,
    rows: int,
    sizes: list[int],
    st: dict,
    found: list[Ratio],
    counts: dict,
) -> None:
    print_stats(
        f"Time per training step ({args.optimizer} on the gradient of an MLP "
        f"{'-'.join(map(str, sizes))}), {n} devices; {rows} rows (uneven {rows + EXTRA_ROWS}); "
        f"{args.rounds} rounds x {args.calls} steps",
        st,
        digits=0,
    )
    print_table(
        "What one step runs (compiled HLO)",
        ["variant", "executables", "all-reduces"],
        [[k, str(c["executables"]), str(c["all_reduces"])] for k, c in counts.items()],
    )
    print_ratios(found)


def _result(
    args: argparse.Namespace,
    rows: int,
    sizes: list[int],
    st: dict[str, dict[str, float]],
    found: list[Ratio],
    samples: dict[str, list[float]],
    counts: dict[str, dict[str, int]],
    gaps: dict[str, float],
) -> dict:
    return {
        **heading(
            args,
            batch=rows,
            uneven_batch=rows + EXTRA_ROWS,
            mlp=sizes,
            optimizer=args.optimizer,
            learning_rate=LEARNING_RATE,
        ),
        "stats_us": st,
        **ratio_fields(found),
        "executables": counts,
        "fused_vs_two_calls_max_abs_diff": gaps,
        "samples_us": {k: [s * 1e6 for s in v] for k, v in samples.items()},
    }
