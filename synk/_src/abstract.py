"""The function traced abstractly at its piece sizes: its outputs, checked against the spec.

Before an executable is built on the per-device path, the user's function is
traced with abstract values at each size of piece it will meet (`trace_outputs`):
the reduce spec is matched to its outputs (`outputs.plan_with_updates`), a
reduced output whose shape follows the rows is refused (a forgotten reduction),
and what the trace shows of collectives across devices decides whether each
device must run once on an equal share (`check_whole_share`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
from jax.tree_util import PyTreeDef

from synk._src import compat
from synk._src import lax as synk_lax
from synk._src import outputs as synk_outputs
from synk._src import reduce as red
from synk._src.axis import AXIS
from synk._src.roles import Leaf, Role
from synk._src.split import Split

if TYPE_CHECKING:
    from synk._src.core import Core
    from synk._src.options import Options
    from synk._src.steps import UserCall


def _abstract(descs: list[Leaf], rows: int | None) -> list[jax.ShapeDtypeStruct]:
    """The leaves as the user's function sees them for a piece of `rows` rows."""
    out = []
    for d in descs:
        shape = d.aval.shape
        if d.role is Role.SLICED:
            axis = d.batch_axis
            shape = (*shape[:axis], rows, *shape[axis + 1 :])
        elif d.role is Role.PER_DEVICE:
            shape = shape[1:]
        out.append(jax.ShapeDtypeStruct(shape, d.aval.dtype, weak_type=d.aval.weak_type))
    return out


def trace_outputs(
    core: Core,
    options: Options,
    descs: list[Leaf],
    split: Split | None,
    call_user: UserCall,
    names: list[str],
    sizes: Sequence[int] | None = None,
) -> tuple[synk_outputs.OutPlan, bool]:
    """Trace the function abstractly at every piece size (the split's, or `sizes`): its
    outputs, and whether it talks across devices. Refuses outputs that depend on the
    number of rows. `names` names each Variable the function may write into."""
    if sizes is None:
        sizes = [] if split is None else split.piece_sizes()
    sizes = sorted(sizes)
    # No split (no batch axis): one trace, with no rows to vary.
    traced = [_trace(core, call_user, descs, rows) for rows in (sizes or [None])]
    out = synk_outputs.plan_with_updates(options.reduce, traced[0][0], core.where, names)
    uses = any(u for _, u in traced)
    if split is None:
        return out, uses
    # Where every piece is equal, one more row than the function will meet: a
    # reduced output whose shape follows the rows (a forgotten reduction) shows
    # then too. Two sizes or more show it themselves.
    if len(sizes) == 1:
        probe = sizes[0] + 1
        try:
            traced.append(_trace(core, call_user, descs, probe))
            sizes = [*sizes, probe]
        except Exception:  # a function for some sizes only: nothing more to compare
            pass
    for rows, (shape, _) in zip(sizes, traced, strict=True):
        _check_outputs_at(core, out, sizes[0], shape, rows)
    return out, uses


def _trace(
    core: Core, call_user: UserCall, descs: list[Leaf], rows: int | None
) -> tuple[Any, bool]:
    """(output shapes, talks across devices) for pieces of `rows` rows."""
    with synk_lax.tracing(rows=None if rows is None else (lambda: 0, rows)):
        jaxpr, shape = jax.make_jaxpr(
            call_user, axis_env=[(AXIS, len(core.devices))], return_shape=True
        )(_abstract(descs, rows))
    return shape, compat.uses_axis(jaxpr, AXIS)


def _check_outputs_at(
    core: Core, out: synk_outputs.OutPlan, rows0: int, shape: Any, rows: int
) -> None:
    """The outputs for pieces of `rows` rows fit the plan made for `rows0` rows."""
    leaves, treedef = jax.tree_util.tree_flatten(shape)
    if treedef != out.treedef:
        raise ValueError(_structure_changes_error(core.where, out.treedef, rows0, treedef, rows))
    for i, (op, a, b) in enumerate(zip(out.ops, out.avals, leaves, strict=True)):
        path = out.paths[i]
        if op is red.GATHER and b.shape[:1] != (rows,):
            raise ValueError(_gather_rows_error(core.where, path, b, rows))
        if op is red.PER_DEVICE:
            continue  # every device has an equal share (check_whole_share)
        same = a.shape[1:] == b.shape[1:] if op is red.GATHER else a.shape == b.shape
        if not same or a.dtype != b.dtype:
            raise ValueError(_output_changes_error(core.where, path, a, rows0, b, rows))


def _structure_changes_error(
    where: str, treedef0: PyTreeDef, rows0: int, treedef: PyTreeDef, rows: int
) -> str:
    return (
        f"{where}: the function's output structure changes with the number of "
        f"rows: {treedef0} for {rows0} rows but {treedef} for {rows}. Return the "
        "same structure for any batch length."
    )


def _gather_rows_error(where: str, path: str, aval: jax.ShapeDtypeStruct, rows: int) -> str:
    return (
        f"{where}: output out{path} has reduce 'gather' but "
        f"{aval.shape[0] if aval.ndim else 'no'} rows for a piece of {rows} input rows "
        f"(shape {list(aval.shape)}); 'gather' needs one output row per input row along "
        "axis 0. Return per-row values, or use a reduction such as 'avg' or 'sum'."
    )


def _output_changes_error(
    where: str,
    path: str,
    aval0: jax.ShapeDtypeStruct,
    rows0: int,
    aval: jax.ShapeDtypeStruct,
    rows: int,
) -> str:
    return (
        f"{where}: output out{path} changes with the number of rows: "
        f"{aval0.dtype}{list(aval0.shape)} for {rows0} rows but "
        f"{aval.dtype}{list(aval.shape)} for {rows}. A reduced output must not depend on the "
        "batch length: reduce it over the rows in the function (e.g. .mean(0) or .sum(0)), "
        "or give it reduce 'gather' if it has one row per input row."
    )


def check_whole_share(core: Core, split: Split, uses_lax: bool) -> None:
    """A function that talks across devices must run once per device on an equal share."""
    if not split.even or split.slices != 1:
        raise ValueError(_whole_share_error(core.where, uses_lax, split))


def _whole_share_error(where: str, uses_lax: bool, split: Split) -> str:
    why = "calls synk.lax collectives (or others over synk.lax.axis_name)"
    why = why if uses_lax else "has 'per_device' outputs"
    if not split.even:
        share, rows, n = "an equal share", split.rows, split.devices
        problem = f"but a batch of {rows} rows does not divide over {n} devices."
        fix = f"Use a batch that is a multiple of {n} (e.g. {rows - split.extra or n} rows)."
    else:
        share = "its whole share"
        problem = f"num_slices={split.slices} would run it in pieces and give partial results."
        fix = "Use num_slices=1."
    once = f"so it must run exactly once per device on {share}"
    return f"{where}: the function {why}, {once}; {problem} {fix}"
