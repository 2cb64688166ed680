"""What a call returns: static output leaves put back, and reduce ops matched to the rest.

`Outputs` splits a function's outputs by the rule its arguments follow
(`partition`): traced leaves come back from the executable, the others as
the trace left them. On the per-device path `plan_outputs` matches the
reduce spec to the traced outputs, and `plan_with_updates` gives each Flax NNX
Variable the function writes an op of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.tree_util import PyTreeDef

from synk._src import partition
from synk._src.reduce import AVG, MAX, OPS, Op, ReduceSpec
from synk._src.refusals import Refusals


class Outputs:
    """A function's outputs, split by the same rule as its arguments.

    Traced leaves come back from the executable; the others (an Equinox
    module's functions, flags and sizes, returned with the module) come back
    as the trace left them, as under ``equinox.filter_jit``. Recorded while
    the function is traced, read after every call.
    """

    def __init__(self) -> None:
        # The outputs' structure, recorded by `split` (an empty one until then).
        self.treedef: PyTreeDef = jax.tree_util.tree_structure(None)
        self.slots: tuple[partition.Traced | partition.Static, ...] = ()
        self.static = False  # whether any output leaf is static

    def split(self, out: Any) -> Any:
        """The traced part of `out` (its static leaves replaced by None), inside the trace."""
        leaves, treedef = jax.tree_util.tree_flatten(out)
        slots = tuple(partition.kind(x, p) for x, p in zip(leaves, partition.plain(treedef)))
        self.treedef, self.slots = treedef, slots
        self.static = any(s is not partition.TRACED for s in slots)
        if not self.static:
            return out
        return treedef.unflatten(
            [x if s is partition.TRACED else None for x, s in zip(leaves, slots)]
        )

    def restore(self, traced: Any) -> Any:
        """The outputs as the function returned them, from their traced part."""
        if not self.static:
            return traced
        it = iter(jax.tree_util.tree_leaves(traced))
        return self.treedef.unflatten(
            [next(it) if s is partition.TRACED else s.value for s in self.slots]
        )


@dataclasses.dataclass(frozen=True)
class OutPlan:
    """What to do with each output leaf, fixed once per compiled signature."""

    treedef: PyTreeDef
    ops: tuple[Op, ...]
    avals: tuple[jax.ShapeDtypeStruct, ...]
    paths: tuple[str, ...]

    def indices(self, kind: type[Op] | Op) -> list[int]:
        """The output leaves of one kind of op (a class) or of one op."""
        if isinstance(kind, Op):
            return [i for i, op in enumerate(self.ops) if op == kind]
        return [i for i, op in enumerate(self.ops) if isinstance(op, kind)]


def plan_outputs(spec: ReduceSpec, out_shape: Any, where: str) -> OutPlan:
    """Match the reduce spec to the output tree; check dtypes. Before anything runs."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(out_shape)
    try:
        subtrees = jax.tree_util.tree_structure(spec).flatten_up_to(out_shape)
    except (ValueError, TypeError):
        raise ValueError(_spec_mismatch_error(where, spec, treedef)) from None
    ops = [
        OPS[name]
        for name, sub in zip(jax.tree_util.tree_leaves(spec), subtrees, strict=True)
        for _ in jax.tree_util.tree_leaves(sub)
    ]
    paths = [jax.tree_util.keystr(p) for p, _ in flat]
    avals = [aval for _, aval in flat]
    refusals = Refusals(where)
    for op, aval, path in zip(ops, avals, paths, strict=True):
        refusals.run(op.check, aval, where, f"output out{path}")
    refusals.raise_all()
    return OutPlan(treedef, tuple(ops), tuple(avals), tuple(paths))


def _spec_mismatch_error(where: str, spec: ReduceSpec, treedef: PyTreeDef) -> str:
    return (
        f"{where}: the reduce spec {spec!r} does not fit the function's outputs, whose "
        f"structure is {treedef}. Give one op for every output (e.g. reduce='avg'), or "
        "a pytree prefix of the outputs with an op at each leaf, e.g. "
        "reduce=('avg', 'sum') for a function that returns a pair."
    )


def plan_with_updates(spec: ReduceSpec, shape: Any, where: str, names: list[str]) -> OutPlan:
    """`plan_outputs` for ``(outputs, in-place updates)``: an op for each updated Variable.

    On this path each device writes its own value into a Variable; floating
    state (batch statistics) comes back averaged over the devices' rows,
    integer and boolean state (counters, flags) as its maximum.
    """
    out, new = shape
    user = plan_outputs(spec, out, where)
    ops, avals, paths = list(user.ops), list(user.avals), list(user.paths)
    for k, leaves in sorted(new.items()):
        for aval in leaves:
            if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
                raise TypeError(_key_update_error(where, names[k]))
            inexact = jnp.issubdtype(aval.dtype, jnp.inexact)
            ops.append(AVG if inexact else MAX)
            avals.append(aval)
            paths.append(f" (the in-place update of `{names[k]}`)")
    treedef = jax.tree_util.tree_structure(shape)
    return OutPlan(treedef, tuple(ops), tuple(avals), tuple(paths))


def _key_update_error(where: str, name: str) -> str:
    return (
        f"{where}: the function writes a PRNG key into `{name}`, and on the "
        "per-device path (an explicit reduce) each device would write its own. "
        "Leave reduce out (the whole function under XLA's partitioner), or "
        "return the new key as an output with reduce 'per_device'."
    )
