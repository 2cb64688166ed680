"""Collectives between devices on per-device values, outside any synk.function.

A per-device value is a ``jax.Array`` whose leading axis has one entry per device
(``device_count()``, n below), entry i living on device i: what ``reduce="per_device"`` returns
and ``in_axes="per_device"`` takes. Each collective accepts a pytree of them and is compiled
once per shape; one that is not a per-device value is refused with a ValueError. `transfers`
holds the transfers between the host and the devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from synk._src import compat, runtime, wire
from synk._src import reduce as red
from synk._src.axis import AXIS
from synk._src.refusals import Refusals
from synk._src.transfers import devices_mesh, dispatch, mapped, place

# --------------------------------------------------------------- devices <-> devices


@compat.api_boundary
def all_gather(x: Any, *, concat: bool = False) -> Any:
    """Every device gets every device's entry of ``x`` (a pytree of per-device values).

    Args:
      x: per-device values, entry i on device i.
      concat: each device joins the n entries end to end along their axis 0,
        instead of stacking them on a new axis.

    Returns:
      per-device values of shape ``(n, n, ...)`` (entry i holds all n entries), or
      ``(n, n * k, ...)`` with ``concat``.

    Raises:
      ValueError: ``x`` is not a per-device value.

    Example:
      >>> import numpy as np, synk
      >>> n = synk.device_count()
      >>> y = synk.all_gather(synk.scatter(np.arange(1.0 * n)))
      >>> y.shape == (n, n, 1)
      True
    """
    leaves, treedef = place(x, "synk.all_gather")
    return dispatch(_all_gather_fn(concat), leaves, treedef)


@functools.cache
def _all_gather_fn(concat: bool) -> Callable[..., list[jax.Array]]:
    def body(*xs: jax.Array) -> list[jax.Array]:
        out = []
        for x in xs:
            got = lax.all_gather(x[0], AXIS, tiled=concat)
            out.append(got[None])
        return out

    return mapped(body, P(AXIS))


@compat.api_boundary
def reduce(x: Any, op: red.ReductionName, *, comm_dtype: DTypeLike | None = None) -> Any:
    """Combine every device's entry of ``x`` (a pytree) into one value.

    Args:
      x: per-device values.
      op: ``"avg"``, ``"sum"``, ``"max"``, ``"min"`` or ``"prod"``; ``"avg"`` weighs every device
        equally. float16 and bfloat16 entries are combined in float32 and cast back; a NaN in
        any entry makes ``"max"``/``"min"`` NaN, as in numpy.
      comm_dtype: floating entries travel in this dtype (e.g. ``jnp.bfloat16``) and are cast
        back; complex entries travel as their real and imaginary parts in it. ``"avg"`` divides
        before the cast.

    Returns:
      The reduced value (without the device axis), replicated on every device.

    Raises:
      ValueError: an unknown ``op``; ``x`` is not a per-device value.
      TypeError: a ``comm_dtype`` that is not floating; entries ``op`` cannot combine (booleans;
        integers with ``"avg"``; complex numbers with ``"max"``/``"min"``).

    Example:
      >>> import numpy as np, synk
      >>> n = synk.device_count()
      >>> x = synk.scatter(np.arange(1.0 * n))  # device i holds [i]
      >>> synk.reduce(x, "sum").tolist() == [n * (n - 1) / 2]
      True
    """
    return _reduce(x, op, comm_dtype, everywhere=False, where="synk.reduce")


@compat.api_boundary
def all_reduce(x: Any, op: red.ReductionName, *, comm_dtype: DTypeLike | None = None) -> Any:
    """Every device gets the combination of every device's entry of ``x`` (a pytree).

    Args:
      x, op, comm_dtype: as for `synk.reduce`.

    Returns:
      Per-device values whose entries are all equal, fit to feed back through
      ``in_axes="per_device"`` (e.g. model averaging in local SGD).

    Raises:
      ValueError, TypeError: as `synk.reduce` does.

    Example:
      >>> import numpy as np, synk
      >>> n = synk.device_count()
      >>> w = synk.all_reduce(synk.scatter(np.arange(1.0 * n)), "avg")
      >>> bool((synk.gather(w) == (n - 1) / 2).all())
      True
    """
    return _reduce(x, op, comm_dtype, everywhere=True, where="synk.all_reduce")


def _reduce(x: Any, op: object, comm_dtype: object, *, everywhere: bool, where: str) -> Any:
    """`reduce` and `all_reduce`: checked before anything runs, then one collective per op."""
    reduction = red.parse_op(op, where, ops=red.REDUCTIONS)
    comm = wire.parse_comm_dtype(comm_dtype, where)
    leaves, treedef = place(x, where)
    _check_dtypes(reduction, x, leaves, where)
    return dispatch(_reduce_fn(reduction, comm, everywhere), leaves, treedef)


@functools.cache
def _reduce_fn(
    op: red.Reduction, comm_dtype: DTypeLike | None, everywhere: bool
) -> Callable[..., list[jax.Array]]:
    mesh, n = devices_mesh(), runtime.device_count()

    def reduced(*xs: jax.Array) -> list[jax.Array]:
        # Each device's entry is one contribution of weight 1 (in the op's
        # accumulation dtype); all leaves of the op go in one all-reduce.
        values = [op.contribution(x, 1) for x in xs]
        out = red.combine([op] * len(values), values, n, comm_dtype, [x.dtype for x in xs], mesh)
        if not everywhere:
            return out
        # Each device writes its own copy of the total: no more communication.
        return [jnp.broadcast_to(v, (n, *v.shape)) for v in out]

    return jax.jit(reduced, out_shardings=NamedSharding(mesh, P(AXIS) if everywhere else P()))


def _check_dtypes(op: red.Reduction, x: Any, leaves: list[jax.Array], where: str) -> None:
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(x)[0]]
    refusals = Refusals(where)
    for path, leaf in zip(paths, leaves, strict=True):
        refusals.run(op.check, jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), where, f"x{path}")
    refusals.raise_all()
