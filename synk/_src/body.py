"""The per-device body and the executable around it.

Each device runs `Body` on its share of the rows, in `split.py`'s layout:

1. its inputs: per-device values unwrapped, synk.Data views turned into
   rows (`_view_rows`);
2. the main block, as ``num_slices`` sequential pieces (a ``lax.scan`` per
   run of equal pieces), each piece's outputs folded into one local value
   per reduced output by its op (`reduce.py`);
3. the extra row of an uneven split, under ``lax.cond`` so that devices
   without one never call the function on padding;
4. its local value of each reduced output, gathered rows and per-device
   outputs go out sharded over the devices.

`executable` wraps it in ``jit(shard_map(...))``, reduces the local values
over the devices (`reduce.combine`: one all-reduce per op and dtype) and puts
gathered rows back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from synk._src import compat, shards, ties
from synk._src import lax as synk_lax
from synk._src import reduce as red
from synk._src.axis import AXIS
from synk._src.layout import Layout
from synk._src.roles import Leaf, Role, Source, View
from synk._src.split import Split, reassemble

if TYPE_CHECKING:
    from synk._src.core import Core
    from synk._src.outputs import OutPlan
    from synk._src.steps import UserCall


class Body:
    """The function each device runs on its share: its outputs, accumulated locally."""

    def __init__(
        self,
        call_user: UserCall,
        descs: list[Leaf],
        split: Split | None,
        out: OutPlan,
        layout: Layout,
        comm_dtype: DTypeLike | None,
        devices: int,
    ) -> None:
        self.call_user, self.descs, self.split, self.out = call_user, descs, split, out
        self.layout, self.comm_dtype = layout, comm_dtype
        self.reduced = out.indices(red.Reduction)
        self.gathered = out.indices(red.GATHER)
        self.per_device = out.indices(red.PER_DEVICE)
        self.ops = [op for op in out.ops if isinstance(op, red.Reduction)]  # those of `reduced`
        # Accumulations run in each op's acc_dtype; combine casts back to these.
        self.dtypes = [out.avals[i].dtype for i in self.reduced]
        self.sliced = [i for i, d in enumerate(descs) if d.role is Role.SLICED]
        self.uneven = split is not None and not split.even
        # When every piece on every device has the same rows, an 'avg' needs no
        # weights: the mean of the pieces' means, as a hand-written pmean takes it.
        self.uniform = split is not None and split.even and len(split.pieces()) == 1
        if split is None:  # no batch axis: one piece per device, each weighs 1
            self.divisor = devices
        elif self.uniform:
            self.divisor = devices * split.slices
        else:  # pieces weigh their rows
            self.divisor = split.rows

    @property
    def batch(self) -> Split:
        """`split`, for the steps that run only where there is a batch axis."""
        assert self.split is not None, "no batch axis: one piece per device"
        return self.split

    def out_specs(self) -> tuple[list[P], ...]:
        return (
            [P(AXIS)] * len(self.reduced),
            [P(AXIS)] * len(self.gathered),
            [P(AXIS)] * (len(self.gathered) if self.uneven else 0),
            [P(AXIS)] * len(self.per_device),
        )

    def __call__(self, *flat: jax.Array) -> tuple[list[jax.Array], ...]:
        base, extras = self.inputs(flat)
        extra_rows: list[jax.Array] = []
        if self.split is None:  # no batch axis: one call per device
            outs = self.run(base, {})
            acc = self.fold(None, outs, 1)
            rows = [outs[i] for i in self.gathered]
            per_device = [outs[i] for i in self.per_device]
        else:
            with jax.named_scope("synk_main_block"):
                acc, rows, per_device = self.main_block(base)
            if self.uneven:
                with jax.named_scope("synk_extra_row"):
                    acc, extra_rows = self.extra_row(base, extras, acc)
        assert acc is not None  # a batch of one row or more: a main block or an extra row
        local = [jnp.expand_dims(x, 0) for x in acc]  # one entry per device
        per_device = [jnp.expand_dims(x, 0) for x in per_device]
        return local, rows, extra_rows, per_device

    # ---------------------------------------------------------------- pieces

    def inputs(self, flat: Sequence[jax.Array]) -> tuple[list[jax.Array], dict[int, jax.Array]]:
        """The user's leaves on this device, and the extra rows of an uneven split."""
        base = []
        for d, x in zip(self.descs, flat):
            if d.role is Role.PER_DEVICE:
                x = x[0]
            base.append(x)
        extras = {i: flat[slot] for i, slot in self.layout.extra.items()}
        for i in self.layout.whole:  # the whole batch (uneven): this device's rows of it
            base[i], extra = self._own_rows(base[i], self.descs[i].batch_axis)
            if extra is not None:
                extras[i] = extra
        for i, slots in self.layout.index.items():  # rows of synk.Data batches
            index = [flat[k] for k in slots]
            if self.layout.traced and self.descs[i].data_layout is None:
                index = self._own_index(self.descs[i], index)
            base[i], extra = _view_rows(self.descs[i], base[i], index, self.batch)
            if extra is not None:
                extras[i] = extra
        return base, extras

    def run(
        self, base: list[jax.Array], piece: dict[int, jax.Array], rows: synk_lax.Rows | None = None
    ) -> list[jax.Array]:
        """The user's function on one piece: `piece` replaces the sliced leaves.

        `rows` is ``(first, count)``: the piece's global rows, for synk.lax.row_keys.
        """
        flat = [piece.get(i, x) for i, x in enumerate(base)]
        with synk_lax.tracing(rows=rows):
            outs = jax.tree_util.tree_leaves(self.call_user(flat))
        return [jnp.asarray(o) for o in outs]  # Python numbers too (a row count, say)

    def fold(
        self, acc: list[jax.Array] | None, outs: list[jax.Array], rows: int
    ) -> list[jax.Array]:
        """Add one piece's outputs to the local accumulation."""
        rows = 1 if self.uniform else rows
        new = [op.contribution(outs[i], rows) for op, i in zip(self.ops, self.reduced)]
        if acc is None:
            return new
        return [op.accumulate(a, v) for op, a, v in zip(self.ops, acc, new, strict=True)]

    def identities(self) -> list[jax.Array]:
        return [op.identity(self.out.avals[i]) for op, i in zip(self.ops, self.reduced)]

    def main_block(
        self, base: list[jax.Array]
    ) -> tuple[list[jax.Array] | None, list[jax.Array], list[jax.Array]]:
        """The main block's rows as num_slices sequential pieces; a scan per run of equal pieces."""
        acc, rows_out, per_device, start = None, [], [], 0
        for count, size in self.batch.pieces():
            if count == 1:
                piece = {
                    i: lax.slice_in_dim(base[i], start, start + size, axis=self.descs[i].batch_axis)
                    for i in self.sliced
                }
                first = lambda start=start: self.first_row() + start  # noqa: E731
                outs = self.run(base, piece, (first, size))
                acc = self.fold(acc, outs, size)
                rows_out.append([outs[i] for i in self.gathered])
                per_device = [outs[i] for i in self.per_device]
            else:
                acc, rows = self._scan(base, acc, start, count, size)
                rows_out.append(rows)
            start += count * size
        if not rows_out:  # fewer rows than devices: the main block is empty
            avals = [self.out.avals[i] for i in self.gathered]
            empty = [compat.zeros((0, *a.shape[1:]), a.dtype) for a in avals]
            return acc, empty, per_device
        rows_out = [jnp.concatenate(p) if len(p) > 1 else p[0] for p in zip(*rows_out)]
        return acc, rows_out, per_device

    def _scan(
        self, base: list[jax.Array], acc: list[jax.Array] | None, start: int, count: int, size: int
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """`count` pieces of `size` rows, one after another.

        Each piece is sliced from the share inside the loop. Fed as the scan's
        ``xs`` (the share reshaped to ``(count, size, ...)``), the whole share
        would be copied into the loop's state: one more share of temp memory
        per device, which num_slices exists to save.
        """
        firsts = start + size * jnp.arange(count, dtype=jnp.int32)  # each piece's first row

        def step(
            carry: list[jax.Array], first: jax.Array
        ) -> tuple[list[jax.Array], list[jax.Array]]:
            piece = {
                i: lax.dynamic_slice_in_dim(base[i], first, size, axis=self.descs[i].batch_axis)
                for i in self.sliced
            }
            outs = self.run(base, piece, (lambda: self.first_row() + first, size))
            folded = self.fold(carry, outs, size)
            return folded, [outs[i] for i in self.gathered]

        init = self.identities() if acc is None else acc
        acc, ys = lax.scan(step, init, firsts)
        return acc, [y.reshape((count * size, *y.shape[2:])) for y in ys]

    def _own_rows(self, x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array | None]:
        """This device's main block and extra row (None if even), sliced from the whole batch."""
        s = self.batch
        main = lax.dynamic_slice_in_dim(x, self.first_row(), s.main, axis)
        if s.even:
            return main, None
        # A device without an extra row takes the last row as a stand-in, never computed on.
        last = jnp.minimum(self.extra_row_index(), s.rows - 1)
        return main, lax.dynamic_slice_in_dim(x, last, 1, axis)

    def _own_index(self, d: Leaf, index: list[jax.Array]) -> list[jax.Array]:
        """Replicated data inside a trace: this device's requests, from the whole index."""
        if d.view is View.LOCAL:
            return index
        main, extra = self._own_rows(index[0], 0)
        return [main] if extra is None else [main, extra]

    def first_row(self) -> jax.Array:
        """The global index of this device's first main-block row (`split.py`'s layout)."""
        process, local, s = *self._place(), self.batch
        return process * s.local_rows + local * s.main

    def extra_row_index(self) -> jax.Array:
        """The global index of this device's extra row (if it has one)."""
        process, local, s = *self._place(), self.batch
        return process * s.local_rows + s.local_devices * s.main + local

    def _place(self) -> tuple[jax.Array, jax.Array]:
        device = lax.axis_index(AXIS)
        return device // self.batch.local_devices, device % self.batch.local_devices

    def extra_row(
        self, base: list[jax.Array], extras: dict[int, jax.Array], acc: list[jax.Array] | None
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """Devices j < r run the function on their one extra row; the others skip it."""
        gathered_avals = [self.out.avals[i] for i in self.gathered]

        def yes(_: None) -> tuple[list[jax.Array], list[jax.Array]]:
            outs = self.run(base, extras, (self.extra_row_index, 1))
            folded = self.fold(None, outs, 1)
            return folded, [outs[i] for i in self.gathered]

        def no(_: None) -> tuple[list[jax.Array], list[jax.Array]]:
            rows = [compat.zeros((1, *a.shape[1:]), a.dtype) for a in gathered_avals]
            return self.identities(), rows

        local_index = lax.axis_index(AXIS) % self.batch.local_devices
        extra_acc, extra_rows = lax.cond(local_index < self.batch.extra, yes, no, None)
        if acc is None:
            return extra_acc, extra_rows
        return [op.accumulate(a, e) for op, a, e in zip(self.ops, acc, extra_acc)], extra_rows


def _view_rows(
    d: Leaf, data: jax.Array, index: list[jax.Array], split: Split
) -> tuple[jax.Array, jax.Array | None]:
    """This device's main-block rows (and extra row, if uneven) of a synk.Data batch."""
    if d.view is View.LOCAL:  # each device indexes its own shard: no communication
        return jnp.take(data, index[0][0], axis=0, mode="clip"), None
    if d.data_layout is None:  # replicated: gather this device's requests from its copy
        rows = [jnp.take(data, part, axis=0, mode="clip") for part in index]
        return rows[0], rows[1] if len(rows) > 1 else None
    main, extra = shards.requests(index[0], split)
    if split.main:
        rows = shards.rows_from_shards(data, main, d.data_layout)
    else:  # fewer rows than devices: nothing to move for the main block
        rows = jnp.zeros((0, *data.shape[1:]), data.dtype)
    if extra is None:
        return rows, None
    return rows, shards.rows_from_shards(data, extra, d.data_layout)


# --------------------------------------------------------------------------
# The executable


def executable(
    core: Core, body: Body, donated: tuple[int, ...], traced: bool = False, talks: bool = False
) -> jax.stages.Wrapped:
    """``jit(shard_map(body))``, with outputs in the user's order and rows in input order.

    `talks`: the function calls synk.lax collectives.
    """
    specs = body.layout.specs
    # Only a traced call can be differentiated: there max/min outputs count ties.
    tie_leaves = ties.leaves(body) if traced and not talks else []
    per_device_fn = ties.counted(body, tie_leaves) if tie_leaves else body
    out_specs = (*body.out_specs(), [P(AXIS)] * len(tie_leaves)) if tie_leaves else body.out_specs()
    # check_vma=False: the user's function is written for one device and must
    # run as written. With value-varying types, a constant scan carry or cond
    # branch (0.0) is a type error beside per-device values, and the implicit
    # cast of a replicated input transposes to a psum that a gradient taken
    # inside the function would count n times. Without them, JAX's untyped
    # rules are consistent for every gradient, inside or outside: psum
    # transposes to psum, and shard_map's transpose divides the cotangent of a
    # replicated output by n and psums that of a replicated input.
    mapped = jax.shard_map(
        per_device_fn, mesh=core.mesh, in_specs=specs, out_specs=out_specs, check_vma=False
    )
    n_out = len(body.out.ops)

    everywhere = NamedSharding(core.mesh, P())

    # A view's data stays as it lies (sharded data replicated would be gathered
    # whole), and so do indices; they have no derivatives to read.
    arguments = [k for k, d in enumerate(body.descs) if d.view is None]

    def outer(*flat: jax.Array) -> list[jax.Array | None]:
        if traced and core.groups > 1:
            # Several processes: a derivative with respect to an argument takes
            # the argument's sharding; replicated, every process can read it.
            constrained = list(flat)
            for k in arguments:
                constrained[k] = lax.with_sharding_constraint(flat[k], everywhere)
            flat = tuple(constrained)
        local, rows, extra_rows, per_device, *counted = mapped(*flat)
        counts = dict(zip(tie_leaves, counted[0], strict=True)) if counted else {}
        with jax.named_scope("synk_reduce"):
            reduced = red.combine(
                body.ops, local, body.divisor, body.comm_dtype, body.dtypes, core.mesh, counts
            )
        if body.uneven:
            rows = [reassemble(m, e, body.batch) for m, e in zip(rows, extra_rows)]
        if core.groups > 1:  # every process can read a gathered output (np.asarray)
            rows = [lax.with_sharding_constraint(x, everywhere) for x in rows]
        result: list[jax.Array | None] = [None] * n_out
        parts = ((body.reduced, reduced), (body.gathered, rows), (body.per_device, per_device))
        for idx, vals in parts:
            for i, v in zip(idx, vals, strict=True):
                result[i] = v
        return result

    outer.__name__ = f"synk_per_device_{getattr(core.fn, '__name__', 'fn')}"  # f.lower shows it
    if traced:
        # Inside a trace shard_map's in_specs place the values; a concrete value
        # met there (an eager jax.grad's primal, say) is taken as jax.jit takes
        # it, whole and replicated, which several processes allow for numpy.
        return jax.jit(outer)
    # in_shardings let jit's C++ dispatch move numpy arguments straight to
    # their shards, with no Python device_put per call.
    shardings = tuple(NamedSharding(core.mesh, spec) for spec in specs)
    return jax.jit(outer, in_shardings=shardings, donate_argnums=donated)


def donated(core: Core, descs: list[Leaf], layout: Layout | None) -> tuple[int, ...]:
    """The executable's argument slots that `donate_argnums` gives away."""
    if not core.donate:
        return ()
    names = [core.signature.name(i) for i in core.donate]
    hit = [
        k
        for k, d in enumerate(descs)
        if d.source not in (Source.SCALAR, Source.VIEW, Source.DATA)  # data outlives the call
        and any(d.name == nm or d.name.startswith((nm + "[", nm + ".")) for nm in names)
    ]
    extra = layout.extra.items() if layout is not None else ()
    return tuple(hit + [slot for i, slot in extra if i in hit])
