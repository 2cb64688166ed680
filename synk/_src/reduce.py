"""Reduce ops as objects: each knows its identity, contribution, accumulation and combine.

A device runs the user's function on one or more pieces of its rows. Each
output's op turns a piece's value into a contribution (``avg`` weighs it by
the piece's rows) and accumulates the contributions into one local value.
`combine` then reduces the devices' local values over the device axis,
outside the per-device body: XLA's partitioner makes each such reduction an
all-reduce, and XLA merges the all-reduces of one op and dtype into one.

The numerics live here too: sums, means and products of float16/bfloat16
accumulate and travel in float32; max/min of floats travel as integers in
IEEE total order, so that NaN wins on every backend; `comm_dtype` compresses
what travels, complex values as their real and imaginary parts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from synk._src import wire
from synk._src.refusals import Refusals

# The ops by name, as a reduce spec gives them (`OPS` below maps them to the ops).
ReductionName = Literal["avg", "sum", "max", "min", "prod"]
OpName = ReductionName | Literal["gather", "per_device"]
# One op for every output, a pytree prefix of the outputs with an op at each
# leaf, or None (the whole function under XLA's partitioner). Not any Sequence:
# a string is one, and a misspelt op name would pass.
ReduceSpec = OpName | tuple[Any, ...] | list[Any] | Mapping[Any, Any] | None
# What 'avg' divides by: a count, or a traced one (a bucket's batch length).
Divisor = int | jax.Array
# For max/min, each value's tied rows per device, or None (`ties`).
Counts = list[jax.Array | None]
AnyOp = TypeVar("AnyOp", bound="Op")

# --------------------------------------------------------------------------
# The ops


@dataclasses.dataclass(frozen=True)
class Op:
    """What happens to one output leaf: reduced over devices, gathered, or kept per device."""

    name: OpName

    @property
    def reduces(self) -> bool:
        return False

    def check_dtype(self, aval: jax.ShapeDtypeStruct, where: str, label: str) -> None:
        """Raise before anything runs if this op cannot combine outputs like `aval`."""

    def check(self, aval: jax.ShapeDtypeStruct, where: str, label: str) -> None:
        """`check_dtype`, after what holds for every reduction: keys do not reduce."""
        if self.reduces and jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
            raise TypeError(_unfit_error(where, label, self.name, _KEYS, aval.dtype))
        self.check_dtype(aval, where, label)

    def __repr__(self) -> str:
        return repr(self.name)


class _Unfit(NamedTuple):
    """An output an op cannot combine: what it is, why not, and what to do instead."""

    found: str  # ``{dtype}`` is filled in
    why: str
    fix: str


_KEYS = _Unfit(
    "is a PRNG key array ({dtype})",
    "keys cannot be added, averaged or compared",
    "Use reduce 'gather' (one key per row) or 'per_device' (one per device), or return "
    "jax.random.key_data(k).",
)
_SCALAR = _Unfit(
    "is a scalar",
    "'gather' concatenates rows along axis 0",
    "Return one row per input row (shape (rows, ...)), or choose a reduction such as 'avg' "
    "or 'sum'.",
)
_BOOLEANS = _Unfit(
    "is boolean",
    "reductions need numbers",
    "Return a number (e.g. x.astype(jnp.int32)) or use reduce 'gather'.",
)
_INTEGER_MEAN = _Unfit(
    "has dtype {dtype}",
    "an average of integers is not an integer",
    "Use reduce 'sum' for counts (and divide yourself), or return a float.",
)
_COMPLEX_ORDER = _Unfit(
    "has dtype {dtype}",
    "complex numbers have no order",
    "Reduce a real quantity instead (e.g. jnp.abs(z) or z.real), or use reduce 'gather' and "
    "pick on the host.",
)


def _unfit_error(where: str, label: str, op: str, unfit: _Unfit, dtype: DTypeLike) -> str:
    found = unfit.found.format(dtype=dtype)
    return f"{where}: {label} {found}, with reduce {op!r}: {unfit.why}. {unfit.fix}"


@dataclasses.dataclass(frozen=True, repr=False)
class Gather(Op):
    """One output row per input row, concatenated along axis 0 in input order."""

    def check_dtype(self, aval: jax.ShapeDtypeStruct, where: str, label: str) -> None:
        if aval.ndim == 0:
            raise ValueError(_unfit_error(where, label, self.name, _SCALAR, aval.dtype))


@dataclasses.dataclass(frozen=True, repr=False)
class Reduction(Op):
    """An op that combines every device's value into one with a collective.

    Values accumulate and travel in `acc_dtype`, float32 for float16 and
    bfloat16 outputs: a float16 mean of 64 rows of 1e4 would overflow as a
    weighted sum in float16, and a divisor of 70,001 rows is inf there.
    `finish` casts the result back to the output's dtype. float32 and wider
    outputs stay as they are, without a cast.
    """

    @property
    def reduces(self) -> bool:
        return True

    def check_dtype(self, aval: jax.ShapeDtypeStruct, where: str, label: str) -> None:
        if np.dtype(aval.dtype) == np.bool_:
            raise TypeError(_unfit_error(where, label, self.name, _BOOLEANS, aval.dtype))

    def acc_dtype(self, dtype: DTypeLike) -> np.dtype:
        """The dtype the local accumulation and the collective run in."""
        return wire.widened(dtype)

    def identity(self, aval: jax.ShapeDtypeStruct) -> jax.Array:
        """The neutral value: what a device with no rows contributes."""
        return jnp.zeros(aval.shape, self.acc_dtype(aval.dtype))

    def contribution(self, value: jax.Array, rows: int) -> jax.Array:
        """A piece's output as it enters the local accumulation (in `acc_dtype`)."""
        return wire.cast(value, self.acc_dtype(value.dtype))

    def accumulate(self, acc: jax.Array, value: jax.Array) -> jax.Array:
        return acc + value

    def prepare(self, acc: jax.Array, divisor: Divisor, comm_dtype: DTypeLike | None) -> jax.Array:
        """The local value as it goes into the collective."""
        return acc

    def collective(
        self, values: list[jax.Array], comm_dtype: DTypeLike | None, mesh: Mesh, counts: Counts
    ) -> list[jax.Array]:
        """Every device's local values (axis 0, one entry per device) reduced over the devices.

        `counts`: for max/min, each value's tied rows per device, or None (`ties`).
        """
        sent = [wire.encode(v, comm_dtype) for v in values]
        return [
            wire.decode(wire.over_devices(lax.reduce_sum, s), v.dtype) for s, v in zip(sent, values)
        ]

    def finish(
        self, total: jax.Array, divisor: Divisor, comm_dtype: DTypeLike | None, dtype: DTypeLike
    ) -> jax.Array:
        """The combined value as the user sees it, in the output's own `dtype`."""
        return wire.cast(total, dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class Sum(Reduction):
    pass


@dataclasses.dataclass(frozen=True, repr=False)
class Avg(Reduction):
    """Outputs are means over rows: weighted by the rows each piece really had."""

    def check_dtype(self, aval: jax.ShapeDtypeStruct, where: str, label: str) -> None:
        dtype = np.dtype(aval.dtype)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(_unfit_error(where, label, self.name, _INTEGER_MEAN, dtype))

    def contribution(self, value: jax.Array, rows: int) -> jax.Array:
        # Weighing by the rows the piece really had makes uneven splits exact.
        value = wire.cast(value, self.acc_dtype(value.dtype))
        return value if rows == 1 else value * jnp.asarray(rows, value.dtype)

    def prepare(self, acc: jax.Array, divisor: Divisor, comm_dtype: DTypeLike | None) -> jax.Array:
        # A sum of weighted means can leave a narrow comm_dtype's range (float16
        # ends at 65504) where the mean does not: compressed, divide first.
        return acc if comm_dtype is None else acc / jnp.asarray(divisor, acc.dtype)

    def finish(
        self, total: jax.Array, divisor: Divisor, comm_dtype: DTypeLike | None, dtype: DTypeLike
    ) -> jax.Array:
        # Uncompressed, divide once after the sum, as a hand-written pmean does.
        mean = total / jnp.asarray(divisor, total.dtype) if comm_dtype is None else total
        return wire.cast(mean, dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class Extremum(Reduction):
    """max (`largest`) or min: the identity is the other end of the dtype's range.

    A NaN anywhere wins, as in ``np.max``: ``jnp.maximum`` keeps NaN across
    pieces, but a max all-reduce on CPU drops it (``lax.pmax`` does), so
    floats cross devices as integers in IEEE total order (`_ordered`), with
    every NaN at the winning end: one integer all-reduce of the same bytes.
    That order puts -0.0 below 0.0, so max(-0.0, 0.0) is 0.0 and min is -0.0
    across devices; numpy's answer depends on the order of its inputs (only
    the sign of a zero can differ).
    """

    largest: bool = True

    def check_dtype(self, aval: jax.ShapeDtypeStruct, where: str, label: str) -> None:
        dtype = np.dtype(aval.dtype)
        if dtype == np.bool_:
            return  # any (max) or all (min), as jnp.max of bools
        super().check_dtype(aval, where, label)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(_unfit_error(where, label, self.name, _COMPLEX_ORDER, dtype))

    def acc_dtype(self, dtype: DTypeLike) -> np.dtype:
        # Exact in any dtype: no widening. Bools travel as bytes (XLA's max
        # all-reduce takes no booleans), 1 for True: max is any, min is all.
        return np.dtype(np.uint8) if np.dtype(dtype) == np.bool_ else np.dtype(dtype)

    def identity(self, aval: jax.ShapeDtypeStruct) -> jax.Array:
        dtype = self.acc_dtype(aval.dtype)
        return jnp.full(aval.shape, wire.end(dtype, low=self.largest), dtype)

    def accumulate(self, acc: jax.Array, value: jax.Array) -> jax.Array:
        return jnp.maximum(acc, value) if self.largest else jnp.minimum(acc, value)

    def collective(
        self, values: list[jax.Array], comm_dtype: DTypeLike | None, mesh: Mesh, counts: Counts
    ) -> list[jax.Array]:
        return _extremum(self.largest, comm_dtype, list(values), list(counts))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _extremum(
    largest: bool, comm_dtype: DTypeLike | None, values: list[jax.Array], counts: Counts
) -> list[jax.Array]:
    """The max (or min) over axis 0 (the devices) of `values`, NaN winning, as integers.

    `counts` (None or, per device, its rows tied at its own extreme) weighs the
    winning devices in the derivative.
    """
    return _extremum_and_winners(largest, comm_dtype, values)[0]


def _extremum_and_winners(
    largest: bool, comm_dtype: DTypeLike | None, values: list[jax.Array]
) -> tuple[list[jax.Array], list[jax.Array]]:
    """The results, and which devices hold them (compared as they travelled)."""
    sent = [wire.encode_real(v, comm_dtype) for v in values]
    keys = [wire.ordered(s, nan_wins_high=largest) for s in sent]
    got = [(lax.reduce_max if largest else lax.reduce_min)(k, (0,)) for k in keys]
    back = [wire.from_ordered(k, s.dtype) for k, s in zip(got, sent, strict=True)]
    out = [wire.decode(b, v.dtype) for b, v in zip(back, values, strict=True)]
    return out, [k == g[None] for k, g in zip(keys, got, strict=True)]


@_extremum.defjvp
def _extremum_jvp(
    largest: bool,
    comm_dtype: DTypeLike | None,
    primals: tuple[list[jax.Array], Counts],
    tangents: tuple[list[jax.Array], Any],
) -> tuple[list[jax.Array], list[Any]]:
    # As jnp.max's own rule: the tangent of the winner, split among the tied
    # rows: each winning device's tangent (the mean over its tied rows) weighs
    # its count of them. The integer keys would silently give a zero gradient.
    (values, counts), (dots, _) = primals, tangents
    out, winners = _extremum_and_winners(largest, comm_dtype, values)
    # Integers: no tangent (float0 zeros); floats: an array.
    out_dots: list[Any] = [np.zeros(o.shape, jax.dtypes.float0) for o in out]
    for i, v in enumerate(values):
        if jnp.issubdtype(v.dtype, jnp.inexact):
            # Equal as floats (-0.0 ties 0.0, as under jnp.max) or as keys (NaN).
            tied = winners[i] | (v == out[i][None].astype(v.dtype))
            hits = tied.astype(dots[i].dtype)
            count = counts[i]
            if count is not None:
                hits = hits * count.astype(dots[i].dtype)
            out_dots[i] = lax.reduce_sum(dots[i] * hits, (0,)) / lax.reduce_sum(hits, (0,))
    return out, out_dots


@dataclasses.dataclass(frozen=True, repr=False)
class Prod(Reduction):
    def identity(self, aval: jax.ShapeDtypeStruct) -> jax.Array:
        return jnp.ones(aval.shape, self.acc_dtype(aval.dtype))

    def accumulate(self, acc: jax.Array, value: jax.Array) -> jax.Array:
        return acc * value

    def collective(
        self, values: list[jax.Array], comm_dtype: DTypeLike | None, mesh: Mesh, counts: Counts
    ) -> list[jax.Array]:
        # Every device's product on every device (an all-gather of what travels),
        # multiplied in the accumulation dtype in device order: exact, as
        # serial as a product over devices can be.
        everywhere = NamedSharding(mesh, P())
        return [
            jnp.prod(
                wire.decode(wire.replicated(wire.encode(v, comm_dtype), everywhere), v.dtype),
                axis=0,
            )
            for v in values
        ]


AVG, SUM, PROD = Avg("avg"), Sum("sum"), Prod("prod")
MAX, MIN = Extremum("max", largest=True), Extremum("min", largest=False)
GATHER, PER_DEVICE = Gather("gather"), Op("per_device")
REDUCTIONS: dict[str, Reduction] = {op.name: op for op in (AVG, SUM, MAX, MIN, PROD)}
OPS: dict[str, Op] = {**REDUCTIONS, "gather": GATHER, "per_device": PER_DEVICE}


# --------------------------------------------------------------------------
# Validation: one place for op names (comm_dtype: `wire.parse_comm_dtype`)


def parse_op(op: object, where: str, path: str = "", *, ops: Mapping[str, AnyOp] = OPS) -> AnyOp:
    """The op object for a name; a clear error for anything else."""
    if isinstance(op, str) and op in ops:
        return ops[op]
    raise ValueError(_unknown_op_error(where, op, path, ops))


def _unknown_op_error(where: str, op: object, path: str, ops: Mapping[str, Op]) -> str:
    at = f" at reduce{path}" if path else ""
    hint = "; give one op for every output, or a pytree prefix of the outputs with an op at"
    hint = f"{hint} each leaf." if ops is OPS else "."
    return (
        f"{where}: unknown reduce op {op!r}{at}. Expected one of "
        + ", ".join(repr(o) for o in ops)
        + hint
    )


def check_spec(spec: Any, where: str) -> None:
    """Check every op in a reduce spec (its fit to the outputs comes at trace time)."""
    refusals = Refusals(where)
    for path, op in jax.tree_util.tree_flatten_with_path(spec)[0]:
        refusals.run(parse_op, op, where, jax.tree_util.keystr(path))
    refusals.raise_all()


# --------------------------------------------------------------------------
# The final combine


def combine(
    ops: list[Reduction], values: list[jax.Array], divisor: Divisor, comm_dtype: DTypeLike | None,
    dtypes: list[np.dtype], mesh: Mesh, counts: dict[int, jax.Array] | None = None,
) -> list[jax.Array]:  # fmt: skip
    """Reduce the devices' local values into one value each, replicated on `mesh`.

    Runs outside the per-device body, on global arrays: `values` hold every
    device's local accumulation along axis 0 (one entry per device, sharded
    over `mesh`), in each op's `acc_dtype`. XLA's partitioner turns each
    reduction over that axis into an all-reduce of what travels, and XLA merges
    the all-reduces of one op and dtype into one. Written this way rather than
    as a collective inside the body, the combination transposes to a
    broadcast: the gradient of a reduced output reaches the devices without
    communication, and only the gradients themselves travel.

    The results come back in `dtypes`, the outputs' own. `divisor` divides
    'avg' outputs: the global batch length, or the number of pieces over all
    devices when every piece weighs 1 (equal pieces, or no batch axis).
    Floating values travel in `comm_dtype` when one is given, complex ones as
    their real and imaginary parts in it.
    """
    out, counts = list(values), counts or {}
    for op in dict.fromkeys(ops):  # each op once, in order
        idx = [i for i, o in enumerate(ops) if o == op]
        sent = [op.prepare(values[i], divisor, comm_dtype) for i in idx]
        tied = [counts.get(i) for i in idx]
        for i, g in zip(idx, op.collective(sent, comm_dtype, mesh, tied), strict=True):
            out[i] = op.finish(g, divisor, comm_dtype, dtypes[i])
    return out
