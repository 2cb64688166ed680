"""The default path: the whole function under XLA's partitioner, exact for any function.

With no explicit ``reduce``, synk compiles the user's function for the whole
batch with ``jax.jit``: the sliced arguments sharded over the devices along
their batch axis, the broadcast ones replicated. XLA's SPMD partitioner runs
each device on its rows and places a collective wherever the function combines
rows, so whatever the function computes from the batch (a mean, a root mean
square, batch statistics, dropout from one key) is what one device computes.
It is the form a careful hand-written data-parallel step takes,
``jit(in_shardings=...)``, so the exactness costs nothing.

An uneven batch travels padded evenly over the devices (`split.Pad`) and is
cut back to its real rows inside the executable, before the function sees it.
A view of synk.Data gathers its rows on the devices: replicated data from each
device's copy, sharded data with one ``all_to_all``. Inside a trace (the
user's ``jax.jit``, ``grad``, ``vmap``) the outer jit places every value and
each batch is only constrained to be sharded over the devices.

The function runs with synk's device axis bound at size 1 (`lax.on_one_device`),
as under ``f.serial``: it sees the whole batch, so ``synk.lax`` collectives
act as on one device, which is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import PyTreeDef

from synk._src import lax as synk_lax
from synk._src import placement, shards, take
from synk._src.axis import AXIS
from synk._src.layout import spec
from synk._src.roles import Leaf, Role, Source, View
from synk._src.split import Pad

if TYPE_CHECKING:
    from synk._src.core import Core
    from synk._src.steps import Placer, UserCall

# --------------------------------------------------------------------------
# The plan's parts


@dataclasses.dataclass
class Outputs:
    """The output structure, known once the executable has traced the function."""

    treedef: PyTreeDef = dataclasses.field(
        default_factory=lambda: jax.tree_util.tree_structure(None)
    )


def check_in_axes(core: Core, descs: list[Leaf]) -> None:
    """'per_device' arguments need the per-device path: refused before anything runs."""
    for d in descs:
        if d.role is Role.PER_DEVICE:
            raise ValueError(_per_device_without_reduce_error(core.where, d.name))


def _per_device_without_reduce_error(where: str, name: str) -> str:
    return (
        f"{where}: argument `{name}` has in_axes 'per_device' (device i sees entry "
        "i), which needs the per-device path: give an explicit reduce (e.g. "
        "reduce='per_device' to keep one result per device, or 'avg'). Without "
        "reduce the function runs once on the whole batch."
    )


def pads(core: Core, descs: list[Leaf], traced: bool) -> dict[int, Pad]:
    """Each sliced leaf's padded layout (eager calls only: inside a trace nothing is padded)."""
    if traced:
        return {}
    out = {}
    for i, d in enumerate(descs):
        if d.role is not Role.SLICED or d.view is View.LOCAL or d.data_layout is not None:
            continue  # not a batch, or the rows of sharded data (`_view_rows` pads those)
        rows = d.aval.shape[d.batch_axis]
        # Host arrays are each process's share: each process pads its own rows.
        groups = core.groups if d.host else 1
        out[i] = Pad(rows, len(core.devices), groups)
    return out


# --------------------------------------------------------------------------
# The executable


def executable(
    core: Core,
    descs: list[Leaf],
    pad: dict[int, Pad],
    call_user: UserCall,
    rows: synk_lax.Rows | None,
    traced: bool,
    donated: tuple[int, ...],
    out: Outputs,
) -> jax.stages.Wrapped:
    """``jit`` of the whole function; the executable's arguments are `slots`' layout."""
    mesh = core.mesh
    views = view_slots(descs)
    batch = {i: NamedSharding(mesh, spec(d)) for i, d in enumerate(descs) if d.role is Role.SLICED}
    uneven = {i for i in batch if descs[i].aval.shape[descs[i].batch_axis] % mesh.size}
    name = getattr(core.fn, "__name__", "fn")
    everywhere = NamedSharding(mesh, P())

    def whole(*args: Any) -> list[Any]:
        flat = []
        for i, d in enumerate(descs):
            x = args[i]
            if d.view is not None:
                x = _view_rows(d, x, args[views[i]], mesh)
            if i in pad:
                x = pad[i].unpad(x, d.batch_axis)
            elif traced and d.view is None and (i not in batch or i in uneven or core.groups > 1):
                # Inside a trace: broadcast values replicated, and so the derivatives
                # with respect to them; an uneven batch too, as it enters the
                # caller's jit. Left to itself, XLA may lay such a value out in a
                # way that no PartitionSpec over the devices names (25 rows on
                # each of 4 devices, twice), which the caller's jit then cannot
                # take or return. With several processes, batches too, so that
                # every process can read a derivative with respect to one.
                x = lax.with_sharding_constraint(x, everywhere)
            if i in batch and i not in pad:
                # Inside a trace: the batch, whole, sharded over the devices (XLA
                # pads an uneven one itself); a view's rows are gathered there.
                x = lax.with_sharding_constraint(x, batch[i])
            flat.append(x)
        with synk_lax.tracing(rows=rows):
            result = synk_lax.on_one_device(call_user, flat)
        leaves, out.treedef = jax.tree_util.tree_flatten(result)
        if traced and core.groups > 1:  # every process can read the outputs (np.asarray)
            leaves = [lax.with_sharding_constraint(x, everywhere) for x in leaves]
        return leaves

    whole.__name__ = f"synk_whole_{name}"  # shown by f.lower: the path this function takes
    if traced:
        return jax.jit(whole)
    shardings = tuple(NamedSharding(mesh, s) for s in slot_specs(descs))
    out_shardings = everywhere if core.groups > 1 else None
    return jax.jit(
        whole, in_shardings=shardings, out_shardings=out_shardings, donate_argnums=donated
    )


def view_slots(descs: list[Leaf]) -> dict[int, int]:
    """The slot of each view's index: after one slot per leaf (a view's holds its data).

    Views with equal indices (``X[idx], Y[idx]``) share one slot: one transfer.
    """
    slots: dict[int, int] = {}
    for i, d in enumerate(descs):
        if d.view is not None:
            slots[i] = slots[d.shares] if d.shares is not None else len(descs) + len(slots)
    return slots


def slot_specs(descs: list[Leaf]) -> list[P]:
    specs = [spec(d) for d in descs]
    for d in descs:
        if d.view is not None and d.shares is None:
            # local: one row of indices per device; replicated data: each device its
            # own requests (padded evenly); sharded data: every request everywhere
            specs.append(P(AXIS) if d.view is View.LOCAL or d.data_layout is None else P())
    return specs


def _view_rows(d: Leaf, data: jax.Array, index: jax.Array, mesh: Mesh) -> jax.Array:
    """The rows a view picks, sharded over the devices, gathered where they lie."""
    if d.view is View.LOCAL:  # each device its own rows of its own shard

        def own(shard: jax.Array, idx: jax.Array) -> jax.Array:
            return jnp.take(shard, idx[0], axis=0, mode="clip")

        return _mapped(own, mesh, (P(AXIS), P(AXIS)))(data, index)
    if d.data_layout is None:  # replicated: each device takes its rows from its copy
        return jnp.take(data, index, axis=0, mode="clip")
    # Sharded rows: every device's requests, padded to an equal count, in one all_to_all.
    n = mesh.size
    rows = index.shape[0]
    per = -(-rows // n)
    padded = jnp.concatenate([index, jnp.zeros(per * n - rows, index.dtype)])
    requests = padded.reshape(n, per)
    layout = d.data_layout

    def move(shard: jax.Array, req: jax.Array) -> jax.Array:
        return shards.rows_from_shards(shard, req, layout)

    got = _mapped(move, mesh, (P(AXIS), P()))(data, requests)
    return got[:rows]


def _mapped(
    fn: Callable[..., jax.Array], mesh: Mesh, in_specs: tuple[P, ...]
) -> Callable[..., jax.Array]:
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(AXIS), check_vma=False)


# --------------------------------------------------------------------------
# Placement of an eager call's leaves


def placer(core: Core, descs: list[Leaf], pad: dict[int, Pad], traced: bool) -> Placer:
    """A function from the call's leaves to the executable's arguments, built once per plan."""
    views = view_slots(descs)
    size = len(descs) + len(set(views.values()))
    where = core.where
    named = [(i, d.name) for i, d in enumerate(descs) if d.view]
    whole = placement.data_arrays(core, descs)
    if traced:
        moved = placement.moved_in_trace(core, descs)
        if not named and not whole and not moved:
            return list

        def place_traced(leaves: list[Any]) -> list[Any]:
            args: list[Any] = [*leaves, *[None] * (size - len(leaves))]
            for i in moved:
                args[i] = placement.onto_mesh(core, leaves[i])
            for i, name in whole:
                args[i] = leaves[i].live_array(where, name)
            for i, name in named:
                args[i] = leaves[i].data.live_array(where, name)
                if args[views[i]] is None:  # not yet sent by a view with equal indices
                    args[views[i]] = take.device_index(leaves[i])
            return args

        return place_traced

    shardings = [NamedSharding(core.mesh, s) for s in slot_specs(descs)]
    actions = [_action(core, d, pad.get(i), shardings[i]) for i, d in enumerate(descs)]
    if core.groups == 1 and not (named or whole):
        acting = [(i, a) for i, a in enumerate(actions) if a is not placement.PASS]
        if not acting:
            return list  # the common case: every leaf goes to jit as it is
        if all(type(a) is _Padded for _, a in acting):  # an uneven batch: pad it, pass the rest
            padders = [(i, a.pad) for i, a in acting if isinstance(a, _Padded)]

            def pad_only(leaves: list[Any]) -> list[Any]:
                args = list(leaves)
                for i, pad in padders:
                    args[i] = pad(leaves[i])
                return args

            return pad_only
    shares = frozenset(i for i, d in enumerate(descs) if d.sliced_array and d.host)

    def place(leaves: list[Any]) -> list[Any]:
        args: list[Any] = [None] * size
        for i, (action, x) in enumerate(zip(actions, leaves)):
            action.put(x, args, i)
        for i, name in whole:
            args[i] = leaves[i].live_array(where, name)
        for i, name in named:
            args[i] = leaves[i].data.live_array(where, name)
            if args[views[i]] is None:  # not yet sent by a view with equal indices
                index = leaves[i].index
                args[views[i]] = pad[i].index(index) if i in pad else index
        if core.groups > 1:
            placement.to_global(args, shardings, shares, core.groups)
        return args

    return place


@dataclasses.dataclass(frozen=True)
class _Padded:
    """A sliced leaf padded evenly for the devices (host rows, or a device array)."""

    pad: Callable[[Any], Any]

    def put(self, x: Any, args: list[Any], i: int) -> None:
        args[i] = self.pad(x)


def _action(
    core: Core, d: Leaf, pad: Pad | None, target: NamedSharding
) -> placement.Action | _Padded:
    if d.view is not None or d.source is Source.DATA:
        return placement.PASS  # the placer hands over its data (and a view's index)
    if d.role is not Role.SLICED or pad is None:  # (an eager call's batches each have a Pad)
        return placement.action_for_whole(core, d, target)
    if d.source is Source.DEVICE:
        if pad.needed or not d.device_sharding.is_equivalent_to(target, d.aval.ndim):
            return _Padded(_device_padder(core, d, pad, target))
        return placement.PASS
    if pad.needed:
        return _Padded(_host_padder(pad, d))
    return placement.action_for_whole(core, d, target)


def _host_padder(pad: Pad, d: Leaf) -> Callable[[Any], np.ndarray]:
    """Host rows padded for the devices: the zero rows are made once, per plan."""
    axis = d.batch_axis
    shape = list(d.aval.shape)
    shape[axis] = pad.padded // pad.groups - pad.local_rows
    filler = np.zeros(shape, d.aval.dtype)

    def padded(x: Any) -> np.ndarray:
        return np.concatenate([np.asarray(x), filler], axis=axis)

    return padded


def _device_padder(
    core: Core, d: Leaf, pad: Pad, target: NamedSharding
) -> Callable[[jax.Array], jax.Array]:
    axis = d.batch_axis
    padded = jax.jit(lambda x: pad.device(x, axis), out_shardings=target)
    if placement.on_mesh_in_order(core, d):
        return padded
    replicated = NamedSharding(core.mesh, P())
    # jit needs it on the mesh, in the mesh's order; device_put reorders shards.
    return lambda x: padded(jax.device_put(x, replicated))
