"""Reduce ops: validate a reduce spec against the outputs, accumulate, combine.

A device runs the user's function on several pieces of its rows. Each op
accumulates the pieces' outputs into one local value (``avg`` weighted by the
piece's rows, unless every piece has the same rows), then one collective per
op combines the devices' values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from synk._src.runtime import AXIS

REDUCE_OPS = ("avg", "sum", "max", "min", "prod")
OPS = (*REDUCE_OPS, "gather", "per_device")


def check_op(op: Any, where: str, path: str = "") -> str:
    """Raise a clear error for anything that is not a known op name."""
    if isinstance(op, str) and op in OPS:
        return op
    at = f" at reduce{path}" if path else ""
    raise ValueError(
        f"{where}: unknown reduce op {op!r}{at}. Expected one of "
        + ", ".join(repr(o) for o in OPS)
        + "; give one op for every output, or a pytree prefix of the outputs with an "
        "op at each leaf."
    )


def check_spec(spec: Any, where: str) -> None:
    """Check every op in a reduce spec (its fit to the outputs comes at trace time)."""
    for path, op in jax.tree_util.tree_flatten_with_path(spec)[0]:
        check_op(op, where, jax.tree_util.keystr(path))


@dataclasses.dataclass(frozen=True)
class OutPlan:
    """What to do with each output leaf, fixed once per compiled signature."""

    treedef: Any
    ops: tuple[str, ...]
    avals: tuple[jax.ShapeDtypeStruct, ...]


def plan_outputs(spec: Any, out_shape: Any, where: str) -> OutPlan:
    """Match the reduce spec to the output tree; check dtypes. Before anything runs."""
    leaves, treedef = jax.tree_util.tree_flatten(out_shape)
    try:
        subtrees = jax.tree_util.tree_structure(spec).flatten_up_to(out_shape)
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: the reduce spec {spec!r} does not fit the function's outputs, whose "
            f"structure is {treedef}. Give one op for every output (e.g. reduce='avg'), or "
            "a pytree prefix of the outputs with an op at each leaf, e.g. "
            "reduce=('avg', 'sum') for a function that returns a pair."
        ) from None
    spec_ops = jax.tree_util.tree_leaves(spec)
    ops = [
        op
        for op, sub in zip(spec_ops, subtrees, strict=True)
        for _ in jax.tree_util.tree_leaves(sub)
    ]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]]
    for op, aval, path in zip(ops, leaves, paths, strict=True):
        check_dtype(op, aval, f"{where}: output out{path}")
    return OutPlan(treedef, tuple(ops), tuple(leaves))


def check_dtype(op: str, aval, where: str) -> None:
    dtype = np.dtype(aval.dtype)
    if op == "avg" and not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{where} has dtype {dtype} and reduce 'avg': an average of integers is not an "
            f"integer. Use reduce 'sum' for counts (and divide yourself), or return a float."
        )
    if op in REDUCE_OPS and dtype == np.bool_:
        raise TypeError(
            f"{where} is boolean and has reduce {op!r}; reductions need numbers. "
            "Return a number (e.g. x.astype(jnp.int32)) or use reduce 'gather'."
        )
    if op == "gather" and aval.ndim == 0:
        raise ValueError(
            f"{where} is a scalar and has reduce 'gather', which concatenates rows along "
            "axis 0. Return one row per input row (shape (rows, ...)), or choose a "
            "reduction such as 'avg' or 'sum'."
        )


def identity(op: str, aval) -> jax.Array:
    """The neutral value of op: what a device with no rows contributes."""
    dtype = aval.dtype
    if op in ("avg", "sum"):
        value = 0
    elif op == "prod":
        value = 1
    elif jnp.issubdtype(dtype, jnp.inexact):
        value = -jnp.inf if op == "max" else jnp.inf
    else:
        info = jnp.iinfo(dtype)
        value = info.min if op == "max" else info.max
    return jnp.full(aval.shape, value, dtype)


def contribution(op: str, value: jax.Array, rows: int) -> jax.Array:
    """A piece's output as it enters the local accumulation."""
    # 'avg' outputs are means over the piece's rows; weighting by the rows the
    # piece really had makes uneven splits exact.
    if op != "avg" or rows == 1:
        return value
    return value * jnp.asarray(rows, value.dtype)


def accumulate(op: str, acc: jax.Array, value: jax.Array) -> jax.Array:
    if op in ("avg", "sum"):
        return acc + value
    if op == "max":
        return jnp.maximum(acc, value)
    if op == "min":
        return jnp.minimum(acc, value)
    if op == "prod":
        return acc * value
    raise AssertionError(op)


def combine(ops: tuple[str, ...], values: list, rows: int, comm_dtype) -> list:
    """Reduce local values across devices: one collective per op (inside shard_map).

    `rows` divides 'avg' outputs: the global batch length, or the number of
    pieces over all devices when every piece weighs 1 (equal pieces, or no
    batch axis). Floating values travel in `comm_dtype`
    when one is given and are cast back before 'avg' divides.
    """
    out = list(values)
    for op in REDUCE_OPS:
        idx = [i for i, o in enumerate(ops) if o == op]
        if not idx:
            continue
        sent = [_to_comm(values[i], comm_dtype) for i in idx]
        # One variadic all-reduce for all outputs of this op (psum/pmax/pmin
        # take a list and emit a single collective with one operand each).
        if op in ("avg", "sum"):
            got = lax.psum(sent, AXIS)
        elif op == "max":
            got = lax.pmax(sent, AXIS)
        elif op == "min":
            got = lax.pmin(sent, AXIS)
        else:  # JAX has no pprod: gather the devices' products and multiply.
            got = [jnp.prod(g, axis=0) for g in lax.all_gather(sent, AXIS, to="invarying")]
        for i, g in zip(idx, got, strict=True):
            g = g.astype(values[i].dtype)
            out[i] = g / jnp.asarray(rows, g.dtype) if op == "avg" else g
    return out


def _to_comm(x: jax.Array, comm_dtype) -> jax.Array:
    if comm_dtype is None or not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return x.astype(comm_dtype)
