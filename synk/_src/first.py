"""``synk.first_rows(x, n)``: a batch padded to a bucket, with its real row count.

Inside the user's own ``jax.jit`` a batch's length is part of the program.
To compile a fused training step once per bucket, pass each batch padded to
the bucket's capacity together with its row count, a traced integer:

    step(params, synk.first_rows(x, n), synk.first_rows(y, n))

A synk.Function with explicit reductions then runs the function on the first
``n`` rows only, as the pieces of its bucket (`buckets`); the padding never
reaches the function. Called eagerly, with a concrete ``n``, it is simply
``x[:n]``.

A `FirstRows` is a pytree node whose children are the array and the count:
the count, a scalar, is broadcast by any in_axes entry, and the array is
sliced like any batch. `slots` finds them in a call's tree structure.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.tree_util import PyTreeDef

from synk._src import compat
from synk._src.refusals import Refusals, listed
from synk._src.roles import Leaf, Role

if TYPE_CHECKING:
    from synk._src.outputs import OutPlan
    from synk._src.partition import Call
    from synk._src.reduce import OpName, ReduceSpec

Count = int | np.integer | jax.Array  # a row count: an int, or an integer scalar (traced)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FirstRows:
    """The first `count` rows of `array` (along axis 0, its batch axis)."""

    array: jax.Array | np.ndarray
    count: Count

    def rows(self) -> jax.Array | np.ndarray:
        """``array[:count]`` for a concrete count (the array may be traced)."""
        n = int(self.count)
        if isinstance(self.array, jax.Array):
            return jax.lax.slice_in_dim(self.array, 0, n, axis=0)
        return np.asarray(self.array)[:n]


@compat.api_boundary
def first_rows(x: jax.Array | np.ndarray, n: Count) -> FirstRows:
    """The first ``n`` rows of ``x``: a batch padded to a bucket, and its row count.

    Args:
      x: an array whose batch axis, axis 0, holds at least ``n`` rows (padded
        past them).
      n: the number of real rows: an int, or an integer scalar (traced inside
        ``jax.jit``). A traced ``n`` cannot be checked: past ``x.shape[0]`` it
        reads every row, and below 0 none, as ``x[:n]`` would for ``0 <= n``.

    Returns:
      A value to pass as a sliced argument of a `synk.Function` with explicit
      reductions: the function sees the first ``n`` rows only. Inside
      ``jax.jit`` the program depends on ``x``'s padded length, not on ``n``.

    Raises:
      TypeError: ``x`` has no batch axis, or ``n`` is not an integer.
      ValueError: a concrete ``n`` outside 1 to ``x.shape[0]``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, synk
      >>> mean = synk.function(lambda x: x.mean(), reduce="avg")
      >>> x = np.zeros(64, np.float32); x[:37] = 1.0  # 37 real rows, padded to 64
      >>> float(jax.jit(lambda x, n: mean(synk.first_rows(x, n)))(x, 37))
      1.0
    """
    if not hasattr(x, "shape") or len(x.shape) == 0:
        raise TypeError(_not_a_batch_error(x))
    dtype = getattr(n, "dtype", None)
    is_int = isinstance(n, int | np.integer) and not isinstance(n, bool)
    if not is_int and (dtype is None or getattr(n, "shape", None) != () or
                       not jax.dtypes.issubdtype(dtype, np.integer)):  # fmt: skip
        raise TypeError(_not_a_count_error(n))
    if not isinstance(n, compat.Tracer) and not 1 <= int(n) <= x.shape[0]:
        raise ValueError(_count_out_of_range_error(int(n), tuple(x.shape)))
    return FirstRows(x, n)


def _not_a_batch_error(x: object) -> str:
    return (
        f"synk.first_rows: x must be an array with a batch axis, got "
        f"{type(x).__name__}{'' if not hasattr(x, 'shape') else ' of shape ()'}."
    )


def _not_a_count_error(n: object) -> str:
    return (
        f"synk.first_rows: n must be an integer (a Python int, or an integer scalar "
        f"array, traced inside jax.jit), got {n!r}."
    )


def _count_out_of_range_error(n: int, shape: tuple[int, ...]) -> str:
    return (
        f"synk.first_rows: n={n} rows, but x has shape {shape}; n must be "
        "between 1 and the length of x's batch axis (axis 0)."
    )


def is_first(x: object) -> bool:
    return isinstance(x, FirstRows)


@functools.lru_cache(maxsize=256)
def slots(treedef: PyTreeDef) -> tuple[tuple[int, int], ...]:
    """(array leaf, count leaf) of every FirstRows in a call's tree structure.

    Walks the structure itself: rebuilding the tree from placeholders would
    run the unflatten of every node type in it, which some refuse.
    """
    found, position = [], 0

    def walk(node: PyTreeDef) -> None:
        nonlocal position
        children = node.children()
        if not children:
            position += node.num_leaves
            return
        if node.node_data()[0] is FirstRows and node.num_leaves == 2:
            found.append((position, position + 1))
            position += 2
            return
        for child in children:
            walk(child)

    walk(treedef)
    return tuple(found)


def traced_count(call: Call) -> bool:
    """Whether a call's FirstRows counts are traced (inside jax.jit, grad, vmap)."""
    return any(isinstance(call.leaves[c], compat.Tracer) for _, c in slots(call.treedef))


def concrete(tree: Any) -> Any:
    """The tree with every FirstRows of concrete values replaced by its rows (eager calls)."""
    return jax.tree_util.tree_map(lambda f: f.rows() if is_first(f) else f, tree, is_leaf=is_first)


def unwrap(tree: Any) -> Any:
    """The tree with every FirstRows replaced by its array (what the function sees of a piece)."""
    return jax.tree_util.tree_map(lambda f: f.array if is_first(f) else f, tree, is_leaf=is_first)


def check(
    where: str, reduce: ReduceSpec, descs: list[Leaf], arrays: list[int], counts: list[Any]
) -> None:
    """Refuse first_rows batches that cannot share a bucket inside a trace, naming
    every argument at fault."""
    if reduce is None:
        raise ValueError(_unserved_error(where))
    refusals = Refusals(where)
    marked = [descs[i] for i in arrays]
    if broadcast := [d for d in marked if d.role is not Role.SLICED]:
        refusals.add(ValueError(_not_sliced_error(where, broadcast)))
    if not one_count(counts):
        refusals.add(ValueError(_several_counts_error(where)))
    if plain := [d for i, d in enumerate(descs) if d.role is Role.SLICED and i not in arrays]:
        refusals.add(ValueError(_mixed_batches_error(where, plain)))
    sliced = [d for d in marked if d.role is Role.SLICED]
    if off := [d for d in sliced if d.axis != 0 or d.view is not None]:
        refusals.add(ValueError(_not_on_axis_0_error(where, off)))
    on_rows = [d for d in sliced if d.axis == 0 and d.view is None]
    if len(lengths := {d.aval.shape[0] for d in on_rows}) > 1:
        refusals.add(ValueError(_padded_lengths_error(where, lengths)))
    refusals.raise_all()


def _not_sliced_error(where: str, broadcast: list[Leaf]) -> str:
    names = listed([f"`{_name(d)}`" for d in broadcast])
    if len(broadcast) == 1:
        found, fix = f"argument {names} is", "give it in_axes 0, or pass the array itself"
        fix += " to broadcast it"
    else:
        found, fix = f"arguments {names} are", "give them in_axes 0, or pass the arrays"
        fix += " themselves to broadcast them"
    return (
        f"{where}: synk.first_rows marks a batch, sliced along axis 0, but {found} not "
        f"sliced (in_axes entry None or 'per_device'): {fix}."
    )


def one_count(counts: list[Any]) -> bool:
    """Whether every first_rows batch of a call has the same count (the same value)."""
    return all(c is counts[0] for c in counts)


def check_counts(where: str, counts: list[Any]) -> None:
    """`check`'s count rule, for every call of a plan that `check` passed once."""
    if not one_count(counts):
        raise ValueError(_several_counts_error(where))


def _several_counts_error(where: str) -> str:
    return (
        f"{where}: synk.first_rows batches of one call must share one count: pass the "
        "same n to each."
    )


def _mixed_batches_error(where: str, plain: list[Leaf]) -> str:
    names = listed([f"`{d.name}`" for d in plain])
    return (
        f"{where}: synk.first_rows and plain batches ({names}) in one call: inside a trace "
        "every sliced argument must be synk.first_rows(x, n), with the same n."
    )


def _not_on_axis_0_error(where: str, off: list[Leaf]) -> str:
    each = [
        f"`{_name(d)}` is "
        + ("a synk.Data batch" if d.view is not None else f"sliced on axis {d.axis}")
        for d in off
    ]
    return f"{where}: synk.first_rows takes arrays sliced along axis 0, but {listed(each)}."


def _padded_lengths_error(where: str, lengths: set[int]) -> str:
    return (
        f"{where}: synk.first_rows batches must be padded to one length; found {sorted(lengths)}."
    )


def _name(d: Leaf) -> str:
    """The argument as the user wrote it: the FirstRows, not its array field."""
    return d.name.removesuffix(".array")


def check_outputs(where: str, out: OutPlan, uses_lax: bool) -> None:
    """Refuse a function whose outputs cannot run in a bucket inside a trace."""
    refused = {op.name for op in out.ops} & {"gather", "per_device", "max", "min"}
    if uses_lax or refused:
        raise ValueError(_unserved_error(where, uses_lax, refused))


def _unserved_error(
    where: str, uses_lax: bool = False, refused: frozenset[OpName] | set[OpName] = frozenset()
) -> str:
    """A function that `first_rows` batches cannot serve: without explicit
    reductions, with synk.lax collectives, or with outputs that need every row."""
    instead = "x[:n] with a Python int n"
    if uses_lax:
        what = "a function that calls synk.lax collectives"
        why = "each device must run once on an equal share"
        fix = f"Pass {instead}."
    elif refused:
        what = f"outputs with reduce {sorted(refused)}"
        why = "their lengths, or their gradients' ties, depend on the rows"
        fix = f"Use 'avg', 'sum' or 'prod', or pass {instead}."
    else:
        what = "a function without explicit reductions"
        why = "without reduce the whole function runs on the whole batch, whose length is "
        why += "the program's"
        fix = f"Give an explicit reduce (e.g. reduce='avg'), or pass {instead}."
    return f"{where}: synk.first_rows cannot serve {what} inside a trace: {why}. {fix}"
