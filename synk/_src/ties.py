"""Derivatives of "max" and "min" outputs at ties, shared over every tied row.

``jnp.max`` gives each of the T rows that hold the maximum 1/T of the
derivative. Each device's function sees only its rows, so its own max shares
among its own tied rows, and the devices' values alone do not tell how many
rows each device's winner stands for. Weighing the devices equally would give
``[1/4, 1/4, 1/2]`` for three tied rows, two on one device.

So under differentiation (a custom JVP around the per-device body, nothing on
a plain call) each device also evaluates the function row by row, counts its
rows that hold its extreme value and sums their derivatives; the final
combine (`reduce._extremum`) divides the sum over the winning devices by the
count over them. An output with reduce "max" is, by its contract, a max over
rows, so evaluating it row by row gives its values row by row.

Not for functions that call ``synk.lax`` collectives (row by row they would
talk about single rows): those keep an equal share per winning device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from synk._src import reduce as red
from synk._src.axis import AXIS
from synk._src.lax import Rows
from synk._src.roles import Leaf

if TYPE_CHECKING:
    from synk._src.outputs import OutPlan
    from synk._src.split import Split


class Body(Protocol):
    """What of the per-device body (`body.Body`) its tie counts read."""

    ops: list[red.Reduction]  # the ops of the reduced outputs
    reduced: list[int]  # the reduced outputs' positions among all outputs
    out: OutPlan
    descs: list[Leaf]
    sliced: list[int]

    @property
    def batch(self) -> Split: ...

    def __call__(self, *flat: jax.Array) -> tuple[list[jax.Array], ...]: ...

    def inputs(self, flat: Sequence[jax.Array]) -> tuple[list[jax.Array], dict[int, jax.Array]]: ...

    def run(
        self, base: list[jax.Array], piece: dict[int, jax.Array], rows: Rows | None = None
    ) -> list[jax.Array]: ...

    def first_row(self) -> jax.Array: ...

    def extra_row_index(self) -> jax.Array: ...


def leaves(body: Body) -> list[int]:
    """The positions, among the body's reduced outputs, of floating max/min outputs."""
    return [
        k
        for k, (op, i) in enumerate(zip(body.ops, body.reduced, strict=True))
        if isinstance(op, red.Extremum) and jnp.issubdtype(body.out.avals[i].dtype, jnp.inexact)
    ]


def counted(body: Body, ties: list[int]) -> Callable[..., Any]:
    """`body`, with one more output: each tie leaf's count of tied rows on this device.

    The counts are ones on a plain call; under differentiation they are the
    real counts, and the leaves' derivatives the mean over the tied rows.
    """

    @jax.custom_jvp
    def call(*flat: jax.Array) -> tuple[Any, ...]:
        out = body(*flat)
        return (*out, [jnp.ones_like(out[0][k], jnp.float32) for k in ties])

    @call.defjvp
    def call_jvp(
        primals: tuple[jax.Array, ...], tangents: tuple[jax.Array, ...]
    ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        out, dout = jax.jvp(body, primals, tangents)
        local, dlocal = list(out[0]), list(dout[0])
        counts = [jnp.ones_like(local[k], jnp.float32) for k in ties]
        try:
            stats = _row_stats(body, ties, primals, tangents)
        except Exception:  # a function that needs several rows: equal shares per device
            stats = None
        if stats is not None:
            for j, (k, (count, total)) in enumerate(zip(ties, stats, strict=True)):
                found = count > 0  # none where the extreme is NaN: keep the body's own
                counts[j] = jnp.where(found, count, 1.0)
                mean = (total / jnp.maximum(count, 1.0)).astype(dlocal[k].dtype)
                dlocal[k] = jnp.where(found, mean, dlocal[k])
        primal = (local, *out[1:], counts)
        tangent = (dlocal, *dout[1:], [jnp.zeros_like(c) for c in counts])
        return primal, tangent

    return call


def _row_stats(
    body: Body, ties: list[int], primals: tuple[jax.Array, ...], tangents: tuple[jax.Array, ...]
) -> list[tuple[jax.Array, jax.Array]]:
    """Per tie leaf: (tied rows on this device, the sum of their derivatives), each (1, ...)."""
    (values, valid), (dvalues, _) = jax.jvp(
        lambda *flat: _row_values(body, ties, flat), primals, tangents
    )
    stats = []
    for j, k in enumerate(ties):
        v, dv = values[j], dvalues[j]
        ok = valid.reshape((-1,) + (1,) * (v.ndim - 1))
        op = body.ops[k]
        assert isinstance(op, red.Extremum)  # a tie leaf is a max or min output (`leaves`)
        largest = op.largest
        end = -jnp.inf if largest else jnp.inf
        masked = jnp.where(ok, v, jnp.asarray(end, v.dtype))
        extreme = masked.max(0) if largest else masked.min(0)
        tied = ok & (v == extreme)
        count = tied.sum(0).astype(jnp.float32)
        total = jnp.where(tied, dv, jnp.zeros((), dv.dtype)).sum(0)
        stats.append((count[None], total[None]))
    return stats


def _row_values(
    body: Body, ties: list[int], flat: tuple[jax.Array, ...]
) -> tuple[list[jax.Array], jax.Array]:
    """The tie leaves' values for each row of this device, and which rows are real."""
    base, extras = body.inputs(flat)
    split, wanted = body.batch, [body.reduced[k] for k in ties]

    def one(j: jax.Array) -> list[jax.Array]:
        piece = {
            i: lax.dynamic_slice_in_dim(base[i], j, 1, axis=body.descs[i].batch_axis)
            for i in body.sliced
        }
        outs = body.run(base, piece, (lambda: body.first_row() + j, 1))
        return [outs[i] for i in wanted]

    parts, valid = [], []
    if split.main:
        parts.append(jax.vmap(one)(jnp.arange(split.main)))
        valid.append(jnp.ones(split.main, bool))
    if not split.even:  # the extra row, real on the devices that have one
        outs = body.run(base, extras, (body.extra_row_index, 1))
        parts.append([outs[i][None] for i in wanted])
        has = lax.axis_index(AXIS) % split.local_devices < split.extra
        valid.append(has[None])
    values = [jnp.concatenate(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=True)]
    return values, jnp.concatenate(valid)
