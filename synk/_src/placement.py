"""Moving an eager call's arguments to the devices, as the plan decided.

What to do with each leaf is decided once per plan, from the leaf records
alone: the plan's key fixes every leaf's type and, for a jax.Array, its
sharding, so a call only carries out the decisions. Host (numpy) values go to
jit as they are: its in_shardings put each one straight onto its shards in one
batched transfer. Inside a trace the outer jit places every value; only
synk.Data views are turned into their data and indices.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from synk._src import compat, shards, take
from synk._src.axis import AXIS
from synk._src.layout import Layout
from synk._src.roles import Leaf, Role, Source, View
from synk._src.split import Split, device_parts, host_parts

if TYPE_CHECKING:
    from synk._src.core import Core
    from synk._src.steps import Placer

# --------------------------------------------------------------------------
# What happens to one leaf


class _Pass:
    """The leaf goes to jit as it is."""

    def put(self, x: Any, jit_args: list[Any], i: int) -> None:
        jit_args[i] = x


@dataclasses.dataclass(frozen=True)
class _Reshard:
    """A device array in another layout: moved to the plan's."""

    sharding: NamedSharding

    def put(self, x: Any, jit_args: list[Any], i: int) -> None:
        jit_args[i] = jax.device_put(x, self.sharding)


@dataclasses.dataclass(frozen=True)
class _FromEveryProcess:
    """Several processes: a value every process holds whole becomes one global array."""

    sharding: NamedSharding

    def put(self, x: Any, jit_args: list[Any], i: int) -> None:
        jit_args[i] = jax.make_array_from_callback(x.shape, self.sharding, lambda j: x[j])


@dataclasses.dataclass(frozen=True)
class _Split:
    """An uneven batch: the main block and the padded extra rows, in two slots."""

    extra_slot: int
    parts: Callable[[Any], Sequence[Any]]  # (main block, padded extra rows)

    def put(self, x: Any, jit_args: list[Any], i: int) -> None:
        jit_args[i], jit_args[self.extra_slot] = self.parts(x)


@dataclasses.dataclass(frozen=True)
class _ViewIndices:
    """A synk.Data batch: its data stays where it is; only the indices travel."""

    slots: tuple[int, ...]
    where: str
    name: str
    parts: Callable[[np.ndarray], list[np.ndarray]] | None  # each device's own requests, or None

    def put(self, x: Any, jit_args: list[Any], i: int) -> None:
        jit_args[i] = x.data.live_array(self.where, self.name)
        if jit_args[self.slots[0]] is None:  # not yet sent by a view with equal indices
            parts = self.parts(x.index) if self.parts else [x.index]
            for slot, part in zip(self.slots, parts):
                jit_args[slot] = part


PASS = _Pass()


@dataclasses.dataclass(frozen=True)
class _DataArray:
    """A whole synk.Data: its array, already on the devices."""

    where: str
    name: str

    def put(self, x: Any, jit_args: list[Any], i: int) -> None:
        jit_args[i] = x.live_array(self.where, self.name)


Action = _Pass | _Reshard | _FromEveryProcess | _Split | _ViewIndices | _DataArray

# --------------------------------------------------------------------------
# The placer


def placer(core: Core, descs: list[Leaf], split: Split | None, layout: Layout) -> Placer:
    """A function from the call's leaves to the executable's arguments, built once per plan."""
    shardings = [NamedSharding(core.mesh, spec) for spec in layout.specs]
    if layout.traced:
        return _traced_placer(core, descs, layout)
    actions = [_action(core, i, d, split, layout, shardings) for i, d in enumerate(descs)]
    if core.groups == 1 and all(a is PASS for a in actions):
        return list  # the common case: every leaf goes to jit as it is
    shares = frozenset(
        [i for i, d in enumerate(descs) if d.sliced_array and d.host]
        + [slot for i, slot in layout.extra.items() if descs[i].host]
    )

    def place(leaves: list[Any]) -> list[Any]:
        jit_args: list[Any] = [None] * layout.size
        for i, (action, x) in enumerate(zip(actions, leaves)):
            action.put(x, jit_args, i)
        if core.groups > 1:
            to_global(jit_args, shardings, shares, core.groups)
        return jit_args

    return place


def _traced_placer(core: Core, descs: list[Leaf], layout: Layout) -> Placer:
    """Inside a trace the outer jit places everything; views hand over their data
    array and their index, resolved in the trace (`take.device_index`)."""
    where = core.where
    views = [(i, d.name) for i, d in enumerate(descs) if d.view is not None]
    whole, moved = data_arrays(core, descs), moved_in_trace(core, descs)
    if not views and not whole and not moved:
        return list

    def place(leaves: list[Any]) -> list[Any]:
        jit_args = [*leaves, *[None] * (layout.size - len(leaves))]
        for i in moved:
            jit_args[i] = onto_mesh(core, leaves[i])
        for i, name in whole:
            jit_args[i] = leaves[i].live_array(where, name)
        for i, name in views:
            x = leaves[i]
            jit_args[i] = x.data.live_array(where, name)
            slot = layout.index[i][0]  # one slot: inside a trace an index travels whole
            if jit_args[slot] is None:  # not yet sent by a view with the same index
                jit_args[slot] = take.device_index(x)
        return jit_args

    return place


def moved_in_trace(core: Core, descs: list[Leaf]) -> list[int]:
    """The arrays of a traced call that may lie on other devices than the function's (one
    device, a subset, another order), which its jit would refuse: concrete ones
    committed elsewhere, and tracers (whose values an eager jax.grad or vmap holds)."""
    return [
        i
        for i, d in enumerate(descs)
        if d.source is Source.TRACED
        and d.view is None
        and (d.sharding is None or compat.device_order(d.sharding) != core.devices)
    ]


def onto_mesh(core: Core, x: Any) -> Any:
    """An array of a traced call, replicated on the function's devices.

    A concrete one committed elsewhere moves there (from every process's own
    copy, under several processes). A tracer moves only outside the caller's
    jit (an eager jax.grad or vmap holds its value); inside, the caller's jit
    places its own values.
    """
    if isinstance(x, compat.Tracer):
        if core.groups > 1 or compat.under_jit():
            return x
        return jax.device_put(x, NamedSharding(core.mesh, P()))
    if not isinstance(x, jax.Array) or not x.committed:
        return x  # numpy, or uncommitted: jit puts it where it is needed
    if compat.device_order(x.sharding) == core.devices:
        return x
    target = NamedSharding(core.mesh, P())
    if core.groups > 1:  # one process's own array: the same value on every process
        return jax.make_array_from_callback(x.shape, target, lambda i: np.asarray(x)[i])
    return jax.device_put(x, target)


def data_arrays(core: Core, descs: list[Leaf]) -> list[tuple[int, str]]:
    """The leaves that are whole synk.Data, with their names (for an error)."""
    return [(i, d.name) for i, d in enumerate(descs) if d.source is Source.DATA]


def _action(
    core: Core,
    i: int,
    d: Leaf,
    split: Split | None,
    layout: Layout,
    shardings: list[NamedSharding],
) -> Action:
    if d.source is Source.DATA:
        return _DataArray(core.where, d.name)
    if split is None:  # nothing is sliced (no views either): every leaf travels whole
        return action_for_whole(core, d, shardings[i])
    uneven = not split.even
    if d.source is Source.VIEW:
        own = d.view is View.GLOBAL and d.data_layout is None
        parts = functools.partial(shards.host_requests, split=split) if own else None
        return _ViewIndices(layout.index[i], core.where, d.name, parts)
    if d.role is Role.SLICED and uneven and d.source is Source.DEVICE:
        return _Split(layout.extra[i], _device_splitter(core, d, split, shardings[i]))
    if d.role is Role.SLICED and uneven:
        return _Split(layout.extra[i], functools.partial(_host_parts, d.batch_axis, split))
    return action_for_whole(core, d, shardings[i])


def action_for_whole(core: Core, d: Leaf, target: NamedSharding) -> Action:
    """A leaf that travels whole in one slot: as it is, or moved to `target`."""
    if d.source is Source.DEVICE and not d.device_sharding.is_equivalent_to(target, d.aval.ndim):
        if core.groups > 1 and not d.device_sharding.device_set >= set(core.devices):
            # One process's own array (a key made here, say): the same value on
            # every process, as a host value is; each device takes its part.
            return _FromEveryProcess(target)
        return _Reshard(target)
    return PASS


def on_mesh_in_order(core: Core, d: Leaf) -> bool:
    """Whether a device leaf lies on the function's devices in their order.

    Other devices, or the same in another order (a function's output with
    devices=synk.devices()[::-1]): a jit over the mesh would refuse it.
    """
    return compat.device_order(d.device_sharding) == core.devices


def _device_splitter(
    core: Core, d: Leaf, split: Split, target: NamedSharding
) -> Callable[[jax.Array], list[jax.Array]]:
    axis = d.batch_axis
    parts = jax.jit(lambda x: device_parts(x, axis, split), out_shardings=[target, target])
    if on_mesh_in_order(core, d):
        return parts
    replicated = NamedSharding(core.mesh, P())
    # jit needs it on the mesh, in the mesh's order; device_put reorders shards.
    return lambda x: parts(jax.device_put(x, replicated))


def _host_parts(axis: int, split: Split, x: Any) -> list[np.ndarray]:
    return host_parts(np.asarray(x), axis, split)


def to_global(
    jit_args: list[Any], shardings: list[NamedSharding], shares: frozenset[int], groups: int
) -> None:
    """Several processes: turn the host values into global arrays.

    Slots in `shares` hold this process's share of the rows (sliced arguments
    and their extra rows); the others hold a value that is the same, whole,
    on every process (broadcast values, per-device values, indices).
    """
    for k, x in enumerate(jit_args):
        if isinstance(x, jax.Array) and k not in shares:
            continue  # a global array (a process's own jax.Array share comes through)
        x, sharding = np.asarray(x), shardings[k]
        if k in shares:
            shape = list(x.shape)
            shape[list(sharding.spec).index(AXIS)] *= groups
            jit_args[k] = jax.make_array_from_process_local_data(sharding, x, tuple(shape))
        else:
            jit_args[k] = jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i])
