"""Each leaf's role in a call: sliced along a batch axis, broadcast, or per-device.

`describe_leaves` turns the call's leaves and their in_axes entries into
frozen `Leaf` records, from what a leaf is abstractly (its shape, dtype, weak
type, and its sharding where it is already on the devices), and checks
everything the user gave on the way. The plan and the body read only these
records.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import jax
from jax.sharding import Sharding

from synk._src import compat, partition
from synk._src import data as synk_data
from synk._src.refusals import Refusals
from synk._src.signature import PER_DEVICE, Dyn, InAxis, leaf_entries
from synk._src.views import Batch, DataLike

if TYPE_CHECKING:
    from synk._src.core import Core
    from synk._src.shards import ShardLayout

# (name, leaf, in_axes entry) of each traced leaf: what `describe` reads.
Entry = tuple[str, Any, InAxis]

SCALARS = (int, float, bool, complex)


class Role(enum.Enum):
    SLICED = "sliced"  # split along its batch axis across the devices
    BROADCAST = "broadcast"  # every device sees the whole value
    PER_DEVICE = "per_device"  # device i sees entry i of the leading axis


class Source(enum.Enum):
    """Where a leaf's value is when the call starts."""

    SCALAR = "a Python number"  # passed to jit as it is
    HOST = "a host array"  # numpy and the like; with several processes, this process's share
    DEVICE = "a jax.Array"  # already on the devices, with a known sharding
    VIEW = "a synk.Data batch"  # rows of device-resident data, picked by indices
    DATA = "a synk.Data"  # a whole replicated data set: its array, as it lies
    TRACED = "a traced value"  # inside jax.jit, grad or vmap: a global value the outer jit places


class View(enum.Enum):
    GLOBAL = "global"  # X[idx]: global row indices
    LOCAL = "local"  # X.local[idx]: each device indexes its own shard


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf of a call, as the plan sees it."""

    name: str  # the argument as the user wrote it, with its pytree path
    role: Role
    axis: int | None  # the batch axis of a sliced leaf
    aval: jax.ShapeDtypeStruct  # global shape, canonical dtype
    source: Source
    sharding: Sharding | None = None  # a DEVICE leaf's sharding
    view: View | None = None  # a VIEW leaf's kind of indexing
    data_layout: ShardLayout | None = None  # a view of sharded data: how its rows are dealt
    shares: int | None = None  # a view whose indices equal those of view leaf `shares`

    @property
    def batch_axis(self) -> int:
        """The batch axis of a sliced leaf (which always has one)."""
        assert self.axis is not None, f"{self.name} is not sliced"
        return self.axis

    @property
    def device_sharding(self) -> Sharding:
        """The sharding of a leaf on the devices (a DEVICE leaf always has one)."""
        assert self.sharding is not None, f"{self.name} is not on the devices"
        return self.sharding

    @property
    def host(self) -> bool:
        """Not yet on the devices: with several processes, each process holds its own."""
        return self.source in (Source.SCALAR, Source.HOST)

    @property
    def sliced_array(self) -> bool:
        """A sliced leaf that is an array (not a view): its rows travel with the call."""
        return self.role is Role.SLICED and self.view is None


def entries(
    core: Core, dyn: Dyn, call: partition.Call, structure: partition.Structure
) -> tuple[list[Entry], list[str]]:
    """(name, leaf, in_axes entry) of every traced leaf, and every slot's name.

    A Variable's value is traced and broadcast; its in_axes entry must be
    None. An unhashable static leaf is refused here, by name.
    """
    every = leaf_entries(core.in_axes, core.signature, dyn, core.where, partition.variable_test())
    traced: list[Entry] = []
    refusals = Refusals(core.where)
    for (name, leaf, entry), slot in zip(every, structure.slots, strict=True):
        if slot is partition.TRACED:
            traced.append((name, leaf, entry))
        elif type(slot) is partition.Var:
            if entry is not None:
                refusals.add(ValueError(_entry_error(core.where, name, entry, _STATE)))
            for path, value in jax.tree_util.tree_flatten_with_path(leaf)[0]:
                traced.append((name + jax.tree_util.keystr(path), value, None))
        elif type(slot) is partition.Static and partition.unhashable(slot):
            refusals.add(TypeError(_unhashable_error(core.where, name, slot.value)))
    refusals.raise_all()
    # The call's own traced values: the same leaves, or shares gathered whole.
    traced = [(n, x, e) for (n, _, e), x in zip(traced, call.traced, strict=True)]
    return traced, [name for name, _, _ in every]


def describe_leaves(core: Core, traced_entries: list[Entry], traced: bool = False) -> list[Leaf]:
    """Every traced leaf's record, in tree_flatten's order; bad input raises here.

    `traced`: the call is inside a trace (jax.jit, grad, vmap); every value is
    then a global one, as in jax.jit, never one process's share.
    """
    refusals = Refusals(core.where)
    leaves = [refusals.run(describe, core, *entry, traced) for entry in traced_entries]
    refusals.raise_all()
    return cast("list[Leaf]", leaves)  # none refused: raise_all raised otherwise


def describe(core: Core, name: str, leaf: Any, entry: InAxis, traced: bool = False) -> Leaf:
    where, n = core.where, len(core.devices)
    if type(leaf) is Batch:
        return _describe_view(core, name, leaf, entry, traced)
    if type(leaf) is synk_data.Data:
        return _describe_data(core, name, leaf, entry)
    if type(leaf) in SCALARS:
        aval = jax.ShapeDtypeStruct((), jax.dtypes.canonicalize_dtype(type(leaf)), weak_type=True)
        return Leaf(name, Role.BROADCAST, None, aval, Source.SCALAR)
    dtype = leaf.dtype
    if not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # typed keys are as they are
        dtype = jax.dtypes.canonicalize_dtype(dtype)
    aval = jax.ShapeDtypeStruct(
        tuple(leaf.shape), dtype, weak_type=getattr(leaf, "weak_type", False)
    )
    on_device = isinstance(leaf, jax.Array)
    if traced:
        on_device, source, sharding = True, Source.TRACED, None
        if not isinstance(leaf, compat.Tracer):
            sharding = _concrete_sharding(leaf)
    else:
        source = Source.DEVICE if on_device else Source.HOST
        sharding = leaf.sharding if on_device else None
    if entry is None or aval.ndim == 0:
        return Leaf(name, Role.BROADCAST, None, aval, source, sharding)
    if entry == PER_DEVICE:
        if aval.shape[0] != n:
            raise ValueError(_per_device_shape_error(where, name, n, aval.shape))
        return Leaf(name, Role.PER_DEVICE, None, aval, source, sharding)
    axis = entry + aval.ndim if entry < 0 else entry
    if not 0 <= axis < aval.ndim:
        raise ValueError(_axis_out_of_range_error(where, name, entry, aval.shape))
    if on_device and not traced and core.groups > 1 and leaf.is_fully_addressable:
        # A jax.Array of this process alone (jnp.asarray(share)): its share, as a
        # numpy array would be; a global batch spans every process's devices.
        on_device, source, sharding = False, Source.HOST, None
    if not on_device and core.groups > 1:  # each process passes its share: the batch is larger
        shape = list(aval.shape)
        shape[axis] *= core.groups
        aval = jax.ShapeDtypeStruct(tuple(shape), dtype, weak_type=aval.weak_type)
    return Leaf(name, Role.SLICED, axis, aval, source, sharding)


def _describe_view(core: Core, name: str, view: Batch, entry: InAxis, traced: bool) -> Leaf:
    where, data = core.where, view.data
    array = data.live_array(where, name)
    if traced and not (array.is_fully_addressable or array.is_fully_replicated):
        # Inside a trace the data array is a constant of the user's function, which
        # JAX embeds in the program: no process can embed rows it does not hold.
        raise ValueError(_spanning_data_error(where, name))
    if entry is None or entry == PER_DEVICE or entry not in (0, -len(view.shape)):
        raise ValueError(_entry_error(where, name, entry, _DATA_BATCH))
    if data.devices != core.devices:
        raise ValueError(_other_devices_error(where, name, data, core))
    if not view.fits():
        raise IndexError(_stale_view_error(where, name, view))
    aval = jax.ShapeDtypeStruct(view.shape, data.dtype)
    kind = View.LOCAL if view.local else View.GLOBAL
    return Leaf(name, Role.SLICED, 0, aval, Source.VIEW, view=kind, data_layout=data.layout)


def _describe_data(core: Core, name: str, data: synk_data.Data, entry: InAxis) -> Leaf:
    """A whole synk.Data: broadcast, its device array used as it lies (no transfer)."""
    where = core.where
    array = data.live_array(where, name)
    if entry is not None:
        raise ValueError(_entry_error(where, name, entry, _WHOLE_DATA))
    if data.sharded:
        raise ValueError(_whole_sharded_data_error(where, name))
    if data.devices != core.devices:
        raise ValueError(_other_devices_error(where, name, data, core))
    aval = jax.ShapeDtypeStruct(array.shape, array.dtype)
    return Leaf(name, Role.BROADCAST, None, aval, Source.DATA, array.sharding)


# --------------------------------------------------------------------------
# Error text


class _OneEntry(NamedTuple):
    """A kind of argument that takes one in_axes entry: what it is, what a call
    does with it, and how to pass it."""

    what: str
    treatment: str
    fix: str


_STATE = _OneEntry(
    "a Flax NNX Variable (module state)",
    "broadcast: every device sees all of it, and what the function writes into it reaches "
    "your module after the call",
    "Give the argument that holds the module in_axes None, e.g. in_axes=(None, 0) for f(model, x).",
)
_DATA_BATCH = _OneEntry(
    "a synk.Data batch (X[idx])",
    "sliced along its rows",
    "Give it in_axes 0, or pass np.asarray(X) (the whole data set) to broadcast it.",
)
_WHOLE_DATA = _OneEntry(
    "a whole synk.Data",
    "broadcast (every device sees all of it, from its own copy)",
    "To split its rows over the devices pass a batch of it, D[:] (every row) or D[idx]; "
    "to broadcast it, give it in_axes None.",
)


def _entry_error(where: str, name: str, entry: InAxis, kind: _OneEntry) -> str:
    return (
        f"{where}: argument `{name}` is {kind.what}, which is {kind.treatment}, but its "
        f"in_axes entry is {entry!r}. {kind.fix}"
    )


def _other_devices_error(where: str, name: str, data: DataLike, core: Core) -> str:
    return (
        f"{where}: argument `{name}` is a batch of a synk.Data on {len(data.devices)} "
        f"devices, but this function runs on {len(core.devices)} devices "
        f"({[d.id for d in core.devices]}). Use a function on every device "
        "(devices=None)."
    )


def _stale_view_error(where: str, name: str, view: Batch) -> str:
    rows = len(view.data)
    if view.local:
        reach = (
            f"its indices into each device's shard need at least {view.reach} rows dealt "
            f"over {len(view.data.devices)} devices"
        )
        remake = "X.local[idx] with indices below each device's X.rows_per_device"
    else:
        reach = f"its largest index is {view.reach - 1}"
        remake = "X[idx] with indices below its length"
    return (
        f"{where}: argument `{name}` is a batch of a synk.Data that had {view.rows} rows "
        f"when the batch was made and now has {rows} (set_value shrank it); {reach}, out "
        f"of range for {rows} rows. Make the batch again from the current data ({remake}). "
        "Batches whose indices all still fit stay valid."
    )


def _spanning_data_error(where: str, name: str) -> str:
    return (
        f"{where}: argument `{name}` is a batch of sharded synk.Data whose rows are spread "
        "over several processes, used inside a trace (jax.jit, grad, vmap, lax.scan). "
        "There the data is a constant of the traced function, which JAX embeds in the "
        "program whole, and no process holds every row. Call the function outside "
        "jax.jit (per call only the indices travel), or use replicated data "
        "(synk.data(value)) if every device can hold it."
    )


def _unhashable_error(where: str, name: str, leaf: object) -> str:
    return (
        f"{where}: argument `{name}` is a {type(leaf).__name__}, which is neither an array "
        "nor hashable. Non-array leaves are static (part of the compile cache key), so "
        "they must be hashable: make it hashable (e.g. a tuple instead of a list), pass "
        "it as an array, or pass it with static_argnums / static_argnames."
    )


def _per_device_shape_error(where: str, name: str, n: int, shape: tuple[int, ...]) -> str:
    return (
        f"{where}: argument `{name}` has in_axes 'per_device', so its leading axis "
        f"must have one entry per device ({n}); found shape {shape} "
        f"({shape[0]}). Build it with synk.broadcast / synk.scatter, or stack one "
        "entry per device."
    )


def _axis_out_of_range_error(where: str, name: str, entry: int, shape: tuple[int, ...]) -> str:
    ndim = len(shape)
    return (
        f"{where}: in_axes entry {entry} for argument `{name}` is out of range for its "
        f"shape {shape} ({ndim} dims). Use an axis in "
        f"[{-ndim}, {ndim - 1}], or None to broadcast it."
    )


def _whole_sharded_data_error(where: str, name: str) -> str:
    return (
        f"{where}: argument `{name}` is a sharded synk.Data passed whole, to be "
        "broadcast: every device would need every row, and each holds only its shard. "
        "Pass a batch of it, D[:] (every row, split over the devices) with in_axes 0, or "
        "make it replicated: synk.data(value)."
    )


def _concrete_sharding(leaf: Any) -> Sharding | None:
    """A concrete array's sharding in a traced call (None: numpy, or not committed)."""
    if not getattr(leaf, "committed", False):
        return None  # numpy, or uncommitted: jit puts it where it is needed
    return leaf.sharding
