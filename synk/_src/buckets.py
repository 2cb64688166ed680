"""Batch-size buckets: one executable for every batch length up to a capacity.

With explicit reductions the outputs are row-separable: a device's rows can be
run as pieces and the pieces' outputs combined exactly, as ``num_slices``
does. So one executable can serve any batch length up to a capacity:

* each process deals its ``L`` rows as on exact shapes (local device ``j``
  takes ``k_j = L // m`` rows, one more for ``j < L % m``), but each device's
  block travels padded to the bucket's capacity ``c`` rows; the true ``L``
  travels too, as one traced integer;
* each device runs the function on its first ``k_j`` rows only, as pieces
  whose sizes come from a fixed ladder (`ladder`: ``c``, ``c/8``, ``c/64``,
  ... , 1; the top size capped by ``num_slices``), taken greedily: a device
  whose rows fill the capacity runs once on them as they came; each other
  size runs in a loop of static length with a cond per piece (reverse-mode
  differentiable, as a traced trip count is not). The padding rows are never
  sliced, so the function never sees one;
* 'avg' divides by the traced global length.

Each ladder size is one copy of the function in the executable: a bucket
compiles about ``log8(c) + 1`` copies once, where exact shapes compile one or
two per length. `Policy` says which capacity a batch gets: the next power of
two rows per device by default, or the smallest of a list of batch lengths.

What travels per call: host rows padded to the capacity (``np.take`` with a
dealing index made once per length), and for synk.Data views only their
indices. Inside a trace, ``synk.first_rows(x, n)`` batches (`first`) arrive
whole with their traced count, and each device cuts its own rows from them.
Calls that cannot share a bucket compile per length, on exact shapes: plain
batches inside a trace, functions that call synk.lax collectives, outputs
gathered or kept per device, per-device arguments, batches already on the
devices as arrays, local views.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from synk._src import reduce as red
from synk._src.axis import AXIS
from synk._src.body import Body
from synk._src.roles import Leaf, Role, Source, View
from synk._src.split import Split

if TYPE_CHECKING:
    from synk._src.core import Core
    from synk._src.layout import Layout
    from synk._src.outputs import OutPlan
    from synk._src.steps import Placer, UserCall

# A device's running accumulation, and how many of its rows it has run.
Progress = tuple[list[jax.Array], jax.Array]

RATIO = 8  # each ladder size is an eighth of the one above
GEOMETRIC: Literal["geometric"] = "geometric"  # the default policy
# The ``buckets`` option: 'geometric', batch lengths, or None (each length its own).
Buckets = Literal["geometric"] | Sequence[int | np.integer] | None


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which capacity a batch gets. `lengths`: explicit capacities (global batch
    lengths), or None for geometric per-device capacities (powers of two)."""

    lengths: tuple[int, ...] | None = None

    @classmethod
    def of(cls, buckets: Buckets, where: str) -> Policy | None:
        """The parsed ``buckets`` option: 'geometric', a sequence of lengths, or None (off)."""
        if buckets is None or buckets is False:
            return None
        if isinstance(buckets, str) and buckets == GEOMETRIC:
            return cls()
        if isinstance(buckets, np.ndarray) and buckets.ndim == 1:  # lengths made by numpy
            buckets = list(buckets)
        ok = isinstance(buckets, Sequence) and not isinstance(buckets, str) and len(buckets) > 0
        ok = ok and all(
            isinstance(b, numbers.Integral) and not isinstance(b, bool | np.bool_) and b > 0
            for b in buckets
        )
        if not ok:
            raise ValueError(_bad_buckets_error(where, buckets))
        return cls(tuple(sorted({int(b) for b in buckets})))

    def capacity(self, rows: int, devices: int) -> int | None:
        """Rows per device of the bucket for a global batch of `rows`; None: past the last."""
        need = -(-rows // devices)
        if self.lengths is None:
            return 1 << (need - 1).bit_length()
        for length in self.lengths:
            if length >= rows:
                return -(-length // devices)
        return None


def _bad_buckets_error(where: str, buckets: Buckets) -> str:
    return (
        f"{where}: buckets={buckets!r}; expected 'geometric' (capacities of a power "
        "of two rows per device), a non-empty sequence of positive batch lengths "
        "(e.g. buckets=(256, 1024, 4096)), or None (compile each batch length)."
    )


def as_option(buckets: Buckets, where: str) -> Buckets:
    """The ``buckets`` option checked, as a function keeps it: lengths as a tuple
    (hashable, plain ints in repr), and False as None."""
    if Policy.of(buckets, where) is None:
        return None
    if buckets is None or isinstance(buckets, str):
        return buckets
    return tuple(int(b) for b in buckets)


def ladder(capacity: int, slices: int) -> tuple[int, ...]:
    """The piece sizes, largest first: any count up to `capacity` is a greedy sum of them."""
    top = -(-capacity // slices)
    sizes = [top]
    while sizes[-1] > 1:
        sizes.append(max(1, sizes[-1] // RATIO))
    return tuple(sizes)


def may_share(descs: list[Leaf]) -> bool:
    """Whether a call's arguments can share a bucket (see the module docstring).

    Not with per-device arguments: a bucket deals each device a block of
    consecutive rows, the exact split its main block and one of the last rows,
    and which rows meet device i's value is part of the result.
    """
    if any(d.role is Role.PER_DEVICE for d in descs):
        return False
    sliced = [d for d in descs if d.role is Role.SLICED]
    return bool(sliced) and not any(
        d.view is View.LOCAL or d.source is Source.DEVICE for d in sliced
    )


def eligible(out: OutPlan, uses_lax: bool) -> bool:
    """Whether a function's outputs can come from a bucket's pieces."""
    return not (uses_lax or out.indices(red.GATHER) or out.indices(red.PER_DEVICE))


def capacity_descs(descs: list[Leaf], capacity_rows: int) -> list[Leaf]:
    """The leaves as the bucket's executable takes them: every batch `capacity_rows` long."""
    out = []
    for d in descs:
        if d.role is Role.SLICED:  # an array, or a view (its rows)
            shape = list(d.aval.shape)
            shape[d.batch_axis] = capacity_rows
            aval = jax.ShapeDtypeStruct(tuple(shape), d.aval.dtype, weak_type=d.aval.weak_type)
            d = dataclasses.replace(d, aval=aval)
        out.append(d)
    return out


# --------------------------------------------------------------------------
# The per-device body


class BucketBody(Body):
    """`Body` for a bucket: each device runs its first ``k_j`` rows as ladder pieces.

    `count_leaf`: the leaf holding the row count (a ``synk.first_rows`` call
    inside a trace), else the count is the executable's last argument.
    `whole`: leaves that arrive whole (``first_rows`` arrays): each device cuts
    its own ``capacity`` rows from them.
    """

    def __init__(
        self,
        call_user: UserCall,
        descs: list[Leaf],
        split: Split,
        out: OutPlan,
        layout: Layout,
        comm_dtype: DTypeLike | None,
        devices: int,
        *,
        sizes: tuple[int, ...],
        count_leaf: int | None = None,
        whole: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(call_user, descs, split, out, layout, comm_dtype, devices)
        self.sizes, self.count_leaf, self.whole = sizes, count_leaf, whole
        self.uniform = False  # pieces weigh their rows; 'avg' divides by the traced length

    def __call__(self, *args: jax.Array) -> tuple[list[jax.Array], ...]:
        flat: Sequence[jax.Array] = args
        if self.count_leaf is None:
            *flat, total = args
        else:
            total = args[self.count_leaf].astype(jnp.int32)
        base, _ = self.inputs(flat)
        m, c = self.batch.local_devices, self.batch.main
        local = lax.axis_index(AXIS) % m
        process = lax.axis_index(AXIS) // m
        q, r = total // m, total % m
        count = q + (local < r).astype(total.dtype)
        first = local * q + jnp.minimum(local, r)  # this device's first row of its process's
        for i in self.whole:  # the whole batch: this device's rows, then padding to c
            x = base[i]
            x = jnp.concatenate([x, jnp.zeros((c, *x.shape[1:]), x.dtype)])
            base[i] = lax.dynamic_slice_in_dim(x, first, c)
        start = process * total + first  # first global row
        acc = self.identities()
        done = jnp.zeros((), total.dtype)
        sizes, most = self.sizes, c
        if sizes[0] == c:  # a full device runs once, on its rows as they came
            with jax.named_scope("synk_full"):
                acc, done = self._full(base, (acc, done), count, start)
            sizes, most = sizes[1:], c - 1
        for size in sizes:
            with jax.named_scope(f"synk_pieces_of_{size}"):
                acc, done = self._pieces(base, (acc, done), count, start, size, most // size)
            most = size - 1
        return [jnp.expand_dims(x, 0) for x in acc], [], [], []

    def _full(
        self, base: list[jax.Array], state: Progress, count: jax.Array, start: jax.Array
    ) -> Progress:
        """The whole capacity as one piece, where a device's rows fill it."""
        size, (acc, done) = self.batch.main, state

        def full(_: None) -> Progress:
            outs = self.run(base, {}, (lambda: start, size))
            return self.fold(acc, outs, size), done + size

        return lax.cond(count == size, full, lambda _: state, None)

    def _pieces(
        self,
        base: list[jax.Array],
        state: Progress,
        count: jax.Array,
        start: jax.Array,
        size: int,
        most: int,
    ) -> Progress:
        """As many pieces of `size` rows as fit in what is left (at most `most`), in order.

        A loop of `most` steps, each under a cond: reverse-mode differentiable,
        as a loop with a traced trip count is not.
        """
        if most == 0:
            return state
        wanted = (count - state[1]) // size

        def step(i: jax.Array, carry: Progress) -> Progress:
            def piece(carry: Progress) -> Progress:
                acc, done = carry
                rows = {
                    j: lax.dynamic_slice_in_dim(base[j], done, size, axis=self.descs[j].batch_axis)
                    for j in self.sliced
                }
                outs = self.run(base, rows, (lambda: start + done, size))
                return self.fold(acc, outs, size), done + size

            return lax.cond(i < wanted, piece, lambda carry: carry, carry)

        return lax.fori_loop(0, most, step, state)


def executable(
    core: Core, body: BucketBody, donated: tuple[int, ...], traced: bool = False
) -> jax.stages.Wrapped:
    """``jit(shard_map(body))`` over the capacity's layout and the traced length.

    `traced`: inside the user's trace (``first_rows``): the count is one of the
    leaves, the ``first_rows`` arrays arrive whole, and the outer jit places all.
    """
    specs = [P() if i in body.whole else s for i, s in enumerate(body.layout.specs)]
    if body.count_leaf is None:
        specs.append(P())
    mapped = jax.shard_map(
        body, mesh=core.mesh, in_specs=tuple(specs), out_specs=body.out_specs(), check_vma=False
    )
    n_out = len(body.out.ops)

    def outer(*flat: jax.Array) -> list[jax.Array | None]:
        if body.count_leaf is not None:  # a traced n past the padded rows reads them all
            rows = body.descs[min(body.whole)].aval.shape[0]
            n = jnp.clip(flat[body.count_leaf].astype(jnp.int32), 0, rows)
            flat = (*flat[: body.count_leaf], n, *flat[body.count_leaf + 1 :])
        local, _, _, _ = mapped(*flat)
        total = flat[-1] if body.count_leaf is None else flat[body.count_leaf]
        divisor = total.astype(jnp.int32) * body.batch.groups  # the global batch length
        with jax.named_scope("synk_reduce"):
            reduced = red.combine(body.ops, local, divisor, body.comm_dtype, body.dtypes, core.mesh)
        result: list[jax.Array | None] = [None] * n_out
        for i, v in zip(body.reduced, reduced, strict=True):
            result[i] = v
        return result

    outer.__name__ = f"synk_per_device_{getattr(core.fn, '__name__', 'fn')}_in_buckets"
    if traced:
        return jax.jit(outer)
    shardings = tuple(NamedSharding(core.mesh, s) for s in specs)
    return jax.jit(outer, in_shardings=shardings, donate_argnums=donated)


# --------------------------------------------------------------------------
# One batch length's way into a bucket


def dealing(local_rows: int, devices: int, capacity: int) -> np.ndarray:
    """For each of a process's ``devices * capacity`` slots, the local row it holds.

    Device j's block holds its ``k_j`` rows first; the rest of the block repeats
    row 0 (any real row would do): it travels, and is never sliced.
    """
    q, r = divmod(local_rows, devices)
    index = np.zeros(devices * capacity, np.int64)
    first = 0
    for j in range(devices):
        k = q + (j < r)
        index[j * capacity : j * capacity + k] = np.arange(first, first + k)
        first += k
    return index


def placer(
    descs: list[Leaf], split: Split, capacity: int, inner: Placer, length: jax.Array
) -> Placer:
    """The call's leaves in the bucket's layout: batches dealt and padded, views'
    indices too, then `inner` (the capacity's own placer), then the traced `length`."""
    index = dealing(split.local_rows, split.local_devices, capacity)
    full = split.local_rows == split.local_devices * capacity  # the rows as they are
    batches = [(i, d.axis) for i, d in enumerate(descs) if d.role is Role.SLICED and d.view is None]
    batches = [] if full else batches
    views = [i for i, d in enumerate(descs) if d.view is not None]

    def place(leaves: list[Any]) -> list[Any]:
        leaves = list(leaves)
        for i, axis in batches:
            leaves[i] = np.take(np.asarray(leaves[i]), index, axis=axis)
        for i in views if not full else ():  # only the indices travel, dealt the same way
            leaves[i] = dataclasses.replace(leaves[i], index=leaves[i].index[index])
        args = inner(leaves)
        args.append(length)
        return args

    return place


def traced_length(core: Core, local_rows: int) -> jax.Array:
    """The traced length, on the devices once: nothing travels for it per call."""
    sharding = NamedSharding(core.mesh, P())
    value = np.int32(local_rows)
    if core.groups == 1:
        return jax.device_put(value, sharding)
    return jax.make_array_from_callback((), sharding, lambda _: value)
