"""synk.function: plan a call once per signature, then dispatch it cheaply.

A call reads top to bottom:

1. ``Function.__call__`` binds the arguments to the wrapped function's
   signature, takes out static arguments, flattens the rest, and looks up a
   `_Plan` by (tree structure, leaf shapes/dtypes/shardings, statics).
2. On a miss, `_Plan.build` decides each leaf's role (sliced, broadcast,
   per-device), validates everything the user gave, splits the batch
   (`split.py`), matches the reduce spec to the outputs (`reduce.py`), and
   compiles one ``jit(shard_map(body))``.
3. ``_Plan.place`` carries out what was decided per leaf at planning: host
   arrays go to jit as they are (its in_shardings place them), device arrays
   already laid out pass through, synk.Data views hand over their data and
   indices.
4. The executable runs; on CPU, `runtime.throttle` bounds the calls in flight.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from synk._src import data as synk_data
from synk._src import lax as synk_lax
from synk._src import processes, runtime
from synk._src import reduce as red
from synk._src.runtime import AXIS
from synk._src.split import (
    Split,
    device_parts,
    host_parts,
    make_split,
    reassemble,
    take_pieces,
)

PER_DEVICE = "per_device"
_SCALARS = (int, float, bool, complex)


# --------------------------------------------------------------------------
# Options and the arguments' shape of the call


@dataclasses.dataclass(frozen=True)
class _Options:
    """The options `with_options` can change; hashable, part of the cache key."""

    reduce: Any
    num_slices: int
    comm_dtype: Any

    @property
    def key(self):
        leaves, treedef = jax.tree_util.tree_flatten(self.reduce)
        return (tuple(leaves), treedef, self.num_slices, self.comm_dtype)


def _check_options(reduce, num_slices, comm_dtype, where: str) -> _Options:
    red.check_spec(reduce, where)
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise ValueError(
            f"{where}: num_slices={num_slices!r}; expected an integer >= 1 (the number of "
            "sequential pieces each device splits its rows into)."
        )
    if comm_dtype is not None:
        try:
            comm_dtype = jnp.dtype(comm_dtype)
        except TypeError:
            raise TypeError(
                f"{where}: comm_dtype={comm_dtype!r} is not a dtype; expected e.g. "
                "jnp.bfloat16 or jnp.float16."
            ) from None
        if not jnp.issubdtype(comm_dtype, jnp.floating):
            raise TypeError(
                f"{where}: comm_dtype={comm_dtype} is not a floating dtype; expected e.g. "
                "jnp.bfloat16 (reductions of floating outputs travel in it)."
            )
    return _Options(reduce, num_slices, comm_dtype)


def _check_in_axes(in_axes, where: str) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(in_axes, is_leaf=lambda x: x is None)[0]
    for path, leaf in leaves:
        ok = leaf is None or leaf == PER_DEVICE
        ok = ok or (isinstance(leaf, int) and not isinstance(leaf, bool))
        if not ok:
            raise ValueError(
                f"{where}: in_axes{jax.tree_util.keystr(path)} is {leaf!r}; each in_axes "
                "entry must be an int (slice along that axis), None (broadcast) or "
                "'per_device' (one entry per device along axis 0)."
            )


@dataclasses.dataclass(frozen=True)
class _Signature:
    """The wrapped function's parameters, read once."""

    sig: inspect.Signature | None
    positional: tuple[str, ...]
    varargs: bool
    kwonly: tuple[str, ...]

    @classmethod
    def of(cls, fn) -> _Signature:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return cls(None, (), True, ())
        kinds = inspect.Parameter
        params = list(sig.parameters.values())
        positional = tuple(
            p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        )
        varargs = any(p.kind == kinds.VAR_POSITIONAL for p in params)
        kwonly = tuple(p.name for p in params if p.kind == kinds.KEYWORD_ONLY)
        return cls(sig, positional, varargs, kwonly)

    def bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if not kwargs and (len(args) == len(self.positional) or self.sig is None):
            return args, kwargs
        bound = self.sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.args, bound.kwargs

    def name(self, i: int) -> str:
        return self.positional[i] if i < len(self.positional) else f"args[{i}]"


# --------------------------------------------------------------------------
# The public object


class Function:
    """A single-device function replicated over every device. See `synk.function`."""

    def __init__(self, core: _Core, options: _Options):
        self._core = core
        self._options = options
        self._key = options.key
        functools.update_wrapper(self, core.fn)

    def __call__(self, *args, **kwargs):
        core = self._core
        args, kwargs = core.signature.bind(args, kwargs)
        statics, dyn = core.split_static(args, kwargs)
        leaves, treedef = jax.tree_util.tree_flatten(dyn)
        key = (self._key, treedef, statics, *map(_leaf_key, leaves))
        plan = core.cache.get(key)
        share = True
        if plan is not None and plan.shared and not plan.sharing_holds(leaves):
            # synk.Data views planned to share one index no longer have equal indices.
            key, share = (*key, "unshared"), False
            plan = core.cache.get(key)
        if plan is None:  # building agrees across processes itself
            plan = core.cache[key] = _Plan.build(core, self._options, statics, dyn, leaves, share)
        elif plan.digest is not None:  # several processes: all must make this same call
            processes.agree(core.where, plan.description, plan.digest)
        out = plan.jitted(*plan.place(leaves))
        runtime.throttle(out[0] if out else None, core.platform)
        return jax.tree_util.tree_unflatten(plan.out.treedef, out)

    def with_options(self, *, reduce=None, num_slices=None, comm_dtype=None) -> Function:
        """The same function with other options; shares the compile cache.

        Args:
          reduce: a new reduce spec (see `synk.function`); default: unchanged.
          num_slices: a new number of sequential pieces per device.
          comm_dtype: a new dtype for reductions to travel in.

        Returns:
          A `synk.Function`. Calling it compiles once per new option set; the
          object itself is cached, so calling ``with_options`` in a loop is cheap.

        Example:
          >>> import numpy as np, synk
          >>> f = synk.function(lambda x: x.sum(), reduce="sum")
          >>> g = f.with_options(num_slices=2)
          >>> float(g(np.arange(32.0)))
          496.0
        """
        opts = self._options
        new = _Options(
            opts.reduce if reduce is None else reduce,
            opts.num_slices if num_slices is None else num_slices,
            opts.comm_dtype if comm_dtype is None else comm_dtype,
        )
        variants = self._core.variants
        hit = variants.get(new.key)
        if hit is None:
            checked = _check_options(new.reduce, new.num_slices, new.comm_dtype, self._core.where)
            hit = variants[new.key] = Function(self._core, checked)
        return hit

    def serial(self, *args, **kwargs):
        """Run the undecorated function on one device: the reference result.

        Example:
          >>> import numpy as np, synk
          >>> f = synk.function(lambda x: (x ** 2).mean())
          >>> x = np.arange(10.0)
          >>> bool(np.isclose(f(x), f.serial(x)))
          True
        """
        with synk_lax.tracing(bound=False):
            return self._core.serial(*args, **kwargs)

    def lower(self, *args, **kwargs) -> jax.stages.Lowered:
        """JAX's ``Lowered`` for these arguments: inspect the HLO and its collectives.

        Example:
          >>> import numpy as np, synk
          >>> f = synk.function(lambda x: x.mean())
          >>> "all-reduce" in f.lower(np.ones(16)).compile().as_text()
          True
        """
        core = self._core
        args, kwargs = core.signature.bind(args, kwargs)
        statics, dyn = core.split_static(args, kwargs)
        leaves = jax.tree_util.tree_leaves(dyn)
        plan = _Plan.build(core, self._options, statics, dyn, leaves)
        return plan.jitted.lower(*plan.place(leaves))

    @property
    def options(self) -> dict:
        """The options this function was built with."""
        o = self._options
        return {"reduce": o.reduce, "num_slices": o.num_slices, "comm_dtype": o.comm_dtype}

    def __repr__(self) -> str:
        core, o = self._core, self._options
        n = len(core.devices)
        kind = core.devices[0].platform
        extras = f", comm_dtype={o.comm_dtype}" if o.comm_dtype is not None else ""
        return (
            f"synk.Function({core.name}, in_axes={core.in_axes!r}, reduce={o.reduce!r}, "
            f"num_slices={o.num_slices}{extras}, devices={n}x{kind}, "
            f"compiled={len(core.cache)})"
        )


# --------------------------------------------------------------------------
# What a synk.function shares with its with_options variants


class _Core:
    def __init__(self, fn, in_axes, static_argnums, static_argnames, donate_argnums, devices):
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
        self.where = f"synk.function({self.name})"
        self.signature = _Signature.of(fn)
        _check_in_axes(in_axes, self.where)
        self.in_axes = in_axes
        self.static_pos, self.static_kw = self._statics(static_argnums, static_argnames)
        self.donate = frozenset(_as_tuple(donate_argnums))
        if self.donate & self.static_pos:
            raise ValueError(
                f"{self.where}: arguments {sorted(self.donate & self.static_pos)} are both "
                "static and donated; a static argument has no buffer to donate."
            )
        self.devices = _pick_devices(devices, self.where)
        self.groups = _process_groups(self.devices, self.where)
        self.mesh = runtime.mesh(self.devices)
        self.platform = self.devices[0].platform
        self.cache: dict = {}
        self.variants: dict = {}
        self.serial = jax.jit(
            fn, static_argnums=tuple(sorted(self.static_pos)), static_argnames=self.static_kw
        )

    def _statics(self, argnums, argnames) -> tuple[frozenset, tuple]:
        pos = set()
        for i in _as_tuple(argnums):
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"{self.where}: static_argnums entries must be ints, got {i!r}.")
            if i < 0:
                if self.signature.varargs:
                    raise ValueError(
                        f"{self.where}: negative static_argnums ({i}) are ambiguous for a "
                        "function with *args; use a non-negative position."
                    )
                i += len(self.signature.positional)
            pos.add(i)
        kw = []
        for name in _as_tuple(argnames):
            if name in self.signature.positional:
                pos.add(self.signature.positional.index(name))
            elif name in self.signature.kwonly or self.signature.sig is None:
                kw.append(name)
            else:
                raise ValueError(
                    f"{self.where}: static_argnames names {name!r}, which is not a parameter "
                    f"of {self.name}; its parameters are "
                    f"{list(self.signature.positional) + list(self.signature.kwonly)}."
                )
        return frozenset(pos), tuple(kw)

    def split_static(self, args: tuple, kwargs: dict) -> tuple[tuple, tuple]:
        """Separate static values (hashable, part of the key) from the traced pytree."""
        if not self.static_pos and not self.static_kw:
            return (), (args, kwargs)
        statics = tuple((i, args[i]) for i in sorted(self.static_pos) if i < len(args))
        statics += tuple((k, kwargs[k]) for k in self.static_kw if k in kwargs)
        try:
            hash(statics)
        except TypeError:
            for name, value in statics:
                try:
                    hash(value)
                except TypeError:
                    label = self.signature.name(name) if isinstance(name, int) else name
                    raise TypeError(
                        f"{self.where}: static argument `{label}` is a {type(value).__name__}, "
                        "which is not hashable; static arguments are part of the compile "
                        "cache key. Pass a tuple instead of a list, or make it a traced "
                        "argument."
                    ) from None
        dyn_args = tuple(None if i in self.static_pos else a for i, a in enumerate(args))
        dyn_kw = {k: v for k, v in kwargs.items() if k not in self.static_kw}
        return statics, (dyn_args, dyn_kw)

    def merge_static(self, statics: tuple, dyn) -> tuple[tuple, dict]:
        args, kwargs = dyn
        if not statics:
            return args, kwargs
        args, kwargs = list(args), dict(kwargs)
        for name, value in statics:
            if isinstance(name, int):
                args[name] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def axes_for(self, args: tuple, kwargs: dict) -> tuple[list, list]:
        """Per-argument in_axes entries for positional args and for keyword args."""
        if isinstance(self.in_axes, tuple | list):
            if len(self.in_axes) != len(args):
                raise ValueError(
                    f"{self.where}: in_axes has {len(self.in_axes)} entries but the call has "
                    f"{len(args)} positional arguments ({self._names(len(args))}). Give one "
                    "entry per positional argument (None for broadcast), or a single entry "
                    "for all of them."
                )
            return list(self.in_axes), [None] * len(kwargs)
        return [self.in_axes] * len(args), [self.in_axes] * len(kwargs)

    def _names(self, n: int) -> str:
        return ", ".join(f"`{self.signature.name(i)}`" for i in range(n))


def _as_tuple(x) -> tuple:
    if x is None:
        return ()
    return tuple(x) if isinstance(x, Sequence) and not isinstance(x, str) else (x,)


def _pick_devices(devices, where: str) -> tuple[jax.Device, ...]:
    everything = runtime.devices()
    if devices is None:
        return tuple(everything)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(everything):
            raise ValueError(
                f"{where}: devices={devices}, but there are {len(everything)} devices; "
                f"expected 1 <= devices <= {len(everything)} (the first that many are used)."
            )
        return tuple(everything[:devices])
    picked = tuple(devices)
    if not picked or not all(isinstance(d, jax.Device) for d in picked):
        raise TypeError(
            f"{where}: devices must be a non-empty sequence of jax devices (e.g. "
            "synk.devices()[:4]) or an int count."
        )
    if len(set(picked)) != len(picked):
        raise ValueError(f"{where}: devices lists a device twice: {picked}.")
    return picked


def _process_groups(devices: tuple[jax.Device, ...], where: str) -> int:
    """The number of processes the devices span; each must hold an equal, contiguous run."""
    owners = [d.process_index for d in devices]
    count = jax.process_count()
    if count == 1:
        return 1
    runs = [p for i, p in enumerate(owners) if i == 0 or owners[i - 1] != p]
    per = {p: owners.count(p) for p in set(owners)}
    if sorted(runs) != list(range(count)) or len(set(per.values())) != 1:
        raise ValueError(
            f"{where}: with {count} processes, the devices must hold the same number of "
            "devices of every process, grouped by process in process order (e.g. "
            f"synk.devices(), or None); got devices of processes {owners}."
        )
    return count


# --------------------------------------------------------------------------
# Per-leaf roles and the compiled plan


def _leaf_key(x):
    t = type(x)
    if t in _SCALARS:
        return t
    if t is synk_data.Batch:
        array = x.data._array
        if array is None:
            return (t, id(x))  # deleted: the plan refuses it, naming the argument
        layout = x.data.layout  # sharded rows: the owner of a row depends on the count
        return (t, x.local, x.index.shape, array.shape, array.dtype, array.sharding, layout)
    if isinstance(x, jax.Array):
        return (t, x.aval, x.sharding)  # aval: shape, dtype, weak type (cheapest to read)
    try:
        return (t, x.shape, x.dtype)
    except AttributeError:
        return (t, id(x))  # a non-array leaf: the plan will refuse it


@dataclasses.dataclass(frozen=True)
class _Leaf:
    name: str  # the argument as the user wrote it, with its pytree path
    role: str  # "sliced", "broadcast", "per_device"
    axis: int | None  # the batch axis of a sliced leaf
    aval: jax.ShapeDtypeStruct  # global shape, canonical dtype
    scalar: bool  # a Python scalar: passed to jit as is
    host: bool  # not yet a jax.Array: with several processes, this process's share
    view: str | None = None  # a synk.Data batch: "global" (X[idx]) or "local" (X.local[idx])
    data_layout: Any = None  # a view of sharded data: how its rows are dealt (ShardLayout)
    shares: int | None = None  # a view whose indices equal those of view leaf `shares`


def _describe_leaves(core: _Core, dyn, leaves, n: int) -> list[_Leaf]:
    args, kwargs = dyn
    pos_axes, kw_axes = core.axes_for(args, kwargs)
    labelled = [(core.signature.name(i), a, ax) for i, (a, ax) in enumerate(zip(args, pos_axes))]
    # In the order tree_flatten gives the leaves: a dict's keys sorted.
    keywords = sorted(kwargs.items())
    labelled += [(k, v, ax) for (k, v), ax in zip(keywords, kw_axes, strict=True)]
    out = []
    for label, arg, axes in labelled:
        try:
            subtrees = jax.tree_util.tree_structure(axes, is_leaf=lambda x: x is None)
            subtrees = subtrees.flatten_up_to(arg)
        except (ValueError, TypeError):
            raise ValueError(
                f"{core.where}: the in_axes entry for argument `{label}` is {axes!r}, which "
                f"is not a pytree prefix of the argument (structure "
                f"{jax.tree_util.tree_structure(arg)}). Give one entry for the whole "
                "argument, or a tree of entries that matches it."
            ) from None
        entries = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: x is None)[0]
        for (prefix, entry), sub in zip(entries, subtrees, strict=True):
            for path, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
                name = label + jax.tree_util.keystr((*prefix, *path))
                out.append(_describe(core, name, leaf, entry, n))
    assert len(out) == len(leaves)
    return out


def _describe(core: _Core, name: str, leaf, entry, n: int) -> _Leaf:
    where = core.where
    if type(leaf) is synk_data.Batch:
        return _describe_view(core, name, leaf, entry)
    if type(leaf) in _SCALARS:
        aval = jax.ShapeDtypeStruct((), jax.dtypes.canonicalize_dtype(type(leaf)), weak_type=True)
        return _Leaf(name, "broadcast", None, aval, True, True)
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        raise TypeError(
            f"{where}: argument `{name}` is a {type(leaf).__name__}, not an array. "
            "Arrays (numpy or jax) and Python numbers can be traced; pass other values as "
            "static arguments (static_argnums / static_argnames)."
        )
    dtype = jax.dtypes.canonicalize_dtype(leaf.dtype)
    aval = jax.ShapeDtypeStruct(
        tuple(leaf.shape), dtype, weak_type=getattr(leaf, "weak_type", False)
    )
    host = not isinstance(leaf, jax.Array)
    if entry is None or aval.ndim == 0:
        return _Leaf(name, "broadcast", None, aval, False, host)
    if entry == PER_DEVICE:
        if aval.ndim == 0 or aval.shape[0] != n:
            found = aval.shape[0] if aval.ndim else "no leading axis"
            raise ValueError(
                f"{where}: argument `{name}` has in_axes 'per_device', so its leading axis "
                f"must have one entry per device ({n}); found shape {aval.shape} "
                f"({found}). Build it with synk.broadcast / synk.scatter, or stack one "
                "entry per device."
            )
        return _Leaf(name, PER_DEVICE, None, aval, False, host)
    axis = entry + aval.ndim if entry < 0 else entry
    if not 0 <= axis < aval.ndim:
        raise ValueError(
            f"{where}: in_axes entry {entry} for argument `{name}` is out of range for its "
            f"shape {aval.shape} ({aval.ndim} dims). Use an axis in "
            f"[{-aval.ndim}, {aval.ndim - 1}], or None to broadcast it."
        )
    if host and core.groups > 1:  # each process passes its share: the global batch is larger
        shape = list(aval.shape)
        shape[axis] *= core.groups
        aval = jax.ShapeDtypeStruct(tuple(shape), dtype, weak_type=aval.weak_type)
    return _Leaf(name, "sliced", axis, aval, False, host)


def _describe_view(core: _Core, name: str, view: synk_data.Batch, entry) -> _Leaf:
    where, data = core.where, view.data
    data._live(f"{where}: argument `{name}` is a batch of a synk.Data that")
    if entry is None or entry == PER_DEVICE or entry not in (0, -len(view.shape)):
        raise ValueError(
            f"{where}: argument `{name}` is a synk.Data batch (X[idx]), which is sliced "
            f"along its rows, but its in_axes entry is {entry!r}. Give it in_axes 0, or pass "
            "np.asarray(X) (the whole data set) to broadcast it."
        )
    if data._devices != core.devices:
        raise ValueError(
            f"{where}: argument `{name}` is a batch of a synk.Data on {len(data._devices)} "
            f"devices, but this function runs on {len(core.devices)} devices "
            f"({[d.id for d in core.devices]}). Use a function on every device "
            "(devices=None)."
        )
    aval = jax.ShapeDtypeStruct(view.shape, data.dtype)
    kind = "local" if view.local else "global"
    return _Leaf(name, "sliced", 0, aval, False, False, kind, data.layout)


def _batch_split(core: _Core, descs: list[_Leaf], slices: int) -> Split | None:
    sliced = [d for d in descs if d.role == "sliced"]
    if not sliced:
        if slices != 1:
            raise ValueError(
                f"{core.where}: num_slices={slices} needs an argument sliced along a batch "
                "axis, but every argument is broadcast or per-device."
            )
        return None
    first = sliced[0]
    rows = first.aval.shape[first.axis]
    for d in sliced[1:]:
        other = d.aval.shape[d.axis]
        if other != rows:
            raise ValueError(
                f"{core.where}: sliced arguments must share one batch length, but "
                f"`{first.name}` has {rows} rows (axis {first.axis}) and `{d.name}` has "
                f"{other} rows (axis {d.axis}). Pass batches of equal length, or mark "
                "arguments that are not batched as broadcast with in_axes=None."
            )
    # Host arrays are each process's share, so each process splits its own
    # rows (groups = processes). Views and global device arrays are the same
    # on every process, so one split over all devices serves any batch length.
    groups = core.groups if any(d.host for d in sliced) else 1
    if rows % groups:
        other = next(d for d in sliced if not d.host)
        raise ValueError(
            f"{core.where}: `{other.name}` holds {rows} rows of the global batch, which do "
            f"not divide over {groups} processes, but the host arrays beside it are each "
            "process's share of it. Use a global batch that is a multiple of the process "
            "count, or pass every batched argument the same way."
        )
    return make_split(rows, len(core.devices), slices, groups=groups, where=core.where)


def _spec(d: _Leaf) -> P:
    if d.role == "broadcast" or (d.view and d.data_layout is None):
        return P()
    if d.role == PER_DEVICE or d.view:
        return P(AXIS)
    return P(*([None] * d.axis), AXIS)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each leaf's parts sit among the executable's arguments.

    Slots [0, leaves) hold one value per leaf (a view's data array); then the
    extra rows of sliced arrays when the split is uneven; then views' indices
    (see `_index_specs`), one set of slots for views whose indices are equal
    (``X[idx], Y[idx]``).
    """

    extra: dict[int, int]  # sliced array leaf -> slot of its padded extra rows
    index: dict[int, tuple[int, ...]]  # view leaf -> slots of its indices
    specs: tuple[P, ...]

    @classmethod
    def of(cls, descs: list[_Leaf], split: Split | None) -> _Layout:
        uneven = split is not None and not split.even
        arrays = [i for i, d in enumerate(descs) if d.role == "sliced" and not d.view]
        extra = {i: len(descs) + j for j, i in enumerate(arrays)} if uneven else {}
        specs = [_spec(d) for d in descs] + [_spec(descs[i]) for i in extra]
        index = {}
        for i, d in enumerate(descs):
            if not d.view:
                continue
            if d.shares is not None:  # equal indices: one transfer, the same slots
                index[i] = index[d.shares]
                continue
            own = _index_specs(d, uneven)
            index[i] = tuple(range(len(specs), len(specs) + len(own)))
            specs += own
        return cls(extra, index, tuple(specs))

    @property
    def size(self) -> int:
        return len(self.specs)


def _index_specs(d: _Leaf, uneven: bool) -> list[P]:
    """How a view's indices travel: each device its own, or all of them everywhere."""
    if d.view == "local":  # (n_devices, k): row d for device d
        return [P(AXIS)]
    if d.data_layout is None:  # replicated data: each device its own requests (+ extra row)
        return [P(AXIS)] * (2 if uneven else 1)
    return [P()]  # sharded data: every device needs every request (all_to_all)


def _varying(x):
    """Cast an invariant value to varying over the mesh axis (no-op if it already is)."""
    aval = jax.typeof(x)
    # jax 0.10 keeps the varying axes in aval.mat.varying; older/newer: aval.vma.
    mat = getattr(aval, "mat", None)
    vma = mat.varying if mat is not None else getattr(aval, "vma", None) or frozenset()
    return x if AXIS in vma else lax.pcast(x, AXIS, to="varying")


@dataclasses.dataclass
class _Plan:
    """Everything about one call signature, fixed at its first call."""

    descs: list[_Leaf]
    split: Split | None
    out: red.OutPlan
    jitted: Any
    place: Callable
    description: str  # the call as this process sees it, for the cross-process check
    digest: int | None  # its hash, where several processes must agree on every call
    shared: tuple[tuple[int, int], ...]  # (view, view it shares indices with)

    def sharing_holds(self, leaves: list) -> bool:
        """Whether the views this plan sends one index for still have equal indices."""
        for i, j in self.shared:
            a, b = leaves[i].index, leaves[j].index
            if a is not b and not np.array_equal(a, b):
                return False
        return True

    @classmethod
    def build(cls, core: _Core, options: _Options, statics, dyn, leaves, share=True) -> _Plan:
        shared = _equal_indices(leaves) if share else {}
        description = _call_description(options, statics, dyn, leaves, shared)
        digest = None
        if core.groups > 1 and processes.CHECK_CALLS:
            # Agree before any check can raise, so every process raises alike.
            digest = processes.signature_hash(description)
            processes.agree(core.where, description, digest)
        n = len(core.devices)
        descs = _describe_leaves(core, dyn, leaves, n)
        descs = [dataclasses.replace(d, shares=shared.get(i)) for i, d in enumerate(descs)]
        split = _batch_split(core, descs, options.num_slices)
        treedef = jax.tree_util.tree_structure(dyn)

        def call_user(flat):
            args, kwargs = core.merge_static(statics, jax.tree_util.tree_unflatten(treedef, flat))
            return core.fn(*args, **kwargs)

        out, uses_lax = _trace_outputs(core, options, descs, split, call_user)
        if split is not None and (uses_lax or PER_DEVICE in out.ops):
            _check_whole_share(core, split, uses_lax)
        jitted = _compile(core, options, descs, split, out, call_user)
        place = _placer(core, descs, split, leaves)
        return cls(descs, split, out, jitted, place, description, digest, tuple(shared.items()))


def _equal_indices(leaves: list) -> dict[int, int]:
    """View leaves whose indices equal an earlier view's of the same kind: {view: earlier}."""
    views = [i for i, x in enumerate(leaves) if type(x) is synk_data.Batch]
    shared = {}
    for k, i in enumerate(views):
        a = leaves[i]
        for j in views[:k]:
            b = leaves[j]
            alike = j not in shared and a.local == b.local and a.index.shape == b.index.shape
            alike = alike and a.data.sharded == b.data.sharded  # the indices travel alike
            if alike and (a.index is b.index or np.array_equal(a.index, b.index)):
                shared[i] = j
                break
    return shared


def _call_description(options: _Options, statics, dyn, leaves, shared: dict) -> str:
    """The call's structure, shapes, statics and options, the same text in every process."""
    parts = []
    paths = jax.tree_util.tree_flatten_with_path(dyn)[0]
    for k, ((path, _), leaf) in enumerate(zip(paths, leaves, strict=True)):
        name = jax.tree_util.keystr(path)
        if isinstance(leaf, synk_data.Batch):
            same = ""
            if k in shared:
                same = f" (equal to {jax.tree_util.keystr(paths[shared[k]][0])}'s)"
            parts.append(f"{name}: synk.Data batch, indices {list(leaf.index.shape)}{same}")
        elif type(leaf) in _SCALARS:
            parts.append(f"{name}: {type(leaf).__name__}")
        elif hasattr(leaf, "dtype") and hasattr(leaf, "shape"):
            parts.append(f"{name}: {np.dtype(leaf.dtype)}{list(leaf.shape)}")
        else:  # refused later, alike on every process
            parts.append(f"{name}: {type(leaf).__name__}")
    for name, value in statics:
        simple = isinstance(value, int | float | str | bool | type(None) | tuple)
        parts.append(f"static {name}={value!r}" if simple else f"static {name}: {type(value)}")
    parts.append(f"reduce={options.reduce!r} num_slices={options.num_slices}")
    parts.append(f"comm_dtype={options.comm_dtype}")
    return "; ".join(parts)


def _abstract(descs: list[_Leaf], rows: int | None) -> list[jax.ShapeDtypeStruct]:
    """The leaves as the user's function sees them for a piece of `rows` rows."""
    out = []
    for d in descs:
        shape = d.aval.shape
        if d.role == "sliced":
            shape = (*shape[: d.axis], rows, *shape[d.axis + 1 :])
        elif d.role == PER_DEVICE:
            shape = shape[1:]
        out.append(jax.ShapeDtypeStruct(shape, d.aval.dtype, weak_type=d.aval.weak_type))
    return out


def _trace_outputs(core, options, descs, split, call_user) -> tuple[red.OutPlan, bool]:
    """Trace the function abstractly at every piece size: outputs, and synk.lax use."""
    sizes = [None] if split is None else split.piece_sizes()
    shapes, uses = [], False
    for rows in sizes:
        with synk_lax.tracing(bound=False) as t:
            shapes.append(jax.eval_shape(call_user, _abstract(descs, rows)))
            uses = uses or t.used
    out = red.plan_outputs(options.reduce, shapes[0], core.where)
    for rows, shape in zip(sizes[1:], shapes[1:]):
        _check_same_outputs(core, out, sizes[0], shape, rows)
    if split is not None:
        for op, aval, path in zip(out.ops, out.avals, _paths(shapes[0])):
            if op == "gather" and aval.shape[0] != sizes[0]:
                raise ValueError(
                    f"{core.where}: output out{path} has reduce 'gather' but {aval.shape[0]} "
                    f"rows for a piece of {sizes[0]} input rows; 'gather' needs one output "
                    "row per input row along axis 0. Return per-row values, or use a "
                    "reduction such as 'avg' or 'sum'."
                )
    return out, uses


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _check_same_outputs(core, out: red.OutPlan, rows0: int, shape, rows: int) -> None:
    leaves, treedef = jax.tree_util.tree_flatten(shape)
    for op, a, b, path in zip(out.ops, out.avals, leaves, _paths(shape), strict=True):
        if op == "gather":
            a_rest, b_rest = a.shape[1:], b.shape[1:]
        else:
            a_rest, b_rest = a.shape, b.shape
        if a_rest != b_rest or a.dtype != b.dtype:
            raise ValueError(
                f"{core.where}: output out{path} changes with the number of rows: "
                f"{a.dtype}{list(a.shape)} for {rows0} rows but {b.dtype}{list(b.shape)} for "
                f"{rows}. A reduced output must not depend on the batch length (reduce it "
                "over the rows in the function); a 'gather' output needs one row per input row."
            )
    assert treedef == out.treedef


def _check_whole_share(core: _Core, split: Split, uses_lax: bool) -> None:
    why = "calls synk.lax collectives" if uses_lax else "has 'per_device' outputs"
    if not split.even:
        raise ValueError(
            f"{core.where}: the function {why}, so it must run exactly once per device on "
            f"an equal share; but a batch of {split.rows} rows does not divide over "
            f"{split.devices} devices. Use a batch that is a multiple of {split.devices} "
            f"(e.g. {split.rows - split.extra or split.devices} rows)."
        )
    if split.slices != 1:
        raise ValueError(
            f"{core.where}: the function {why}, so it must run exactly once per device on "
            f"its whole share; num_slices={split.slices} would run it in pieces and give "
            "partial results. Use num_slices=1."
        )


# --------------------------------------------------------------------------
# The per-device body


def _compile(core, options, descs, split, out: red.OutPlan, call_user):
    ops = out.ops
    reduced = [i for i, op in enumerate(ops) if op in red.REDUCE_OPS]
    gathered = [i for i, op in enumerate(ops) if op == "gather"]
    per_dev = [i for i, op in enumerate(ops) if op == PER_DEVICE]
    uneven = split is not None and not split.even
    sliced = [i for i, d in enumerate(descs) if d.role == "sliced"]
    n = len(core.devices)
    layout = _Layout.of(descs, split)

    def run(base: list, piece: dict) -> list:
        flat = [piece.get(i, x) for i, x in enumerate(base)]
        with synk_lax.tracing(bound=True):
            return jax.tree_util.tree_leaves(call_user(flat))

    # When every piece on every device has the same rows, an 'avg' needs no
    # weights: the mean of the pieces' means, as a hand-written pmean takes it.
    uniform = split is not None and split.even and len(split.pieces()) == 1
    if split is None:  # no batch axis: one piece per device, each weighs 1
        divisor = n
    elif uniform:
        divisor = n * split.slices
    else:  # pieces weigh their rows
        divisor = split.rows

    def fold(acc, outs, rows):
        rows = 1 if uniform else rows
        new = [red.contribution(ops[i], outs[i], rows) for i in reduced]
        if acc is None:
            return new
        return [red.accumulate(ops[i], a, v) for i, a, v in zip(reduced, acc, new, strict=True)]

    def identities():
        return [_varying(red.identity(ops[i], out.avals[i])) for i in reduced]

    def body(*flat):
        base = []
        for d, x in zip(descs, flat):
            if d.role == "broadcast":
                # Cast replicated inputs to varying so that a gradient w.r.t. them
                # stays local; otherwise shard_map's transpose would psum it
                # implicitly and the reduction below would count it n times.
                x = _varying(x)
            elif d.role == PER_DEVICE:
                x = x[0]
            base.append(x)
        extras = {i: flat[slot] for i, slot in layout.extra.items()}
        for i, slots in layout.index.items():  # rows of synk.Data batches, on the devices
            base[i], extra = _view_rows(descs[i], base[i], [flat[k] for k in slots], split)
            if extra is not None:
                extras[i] = extra

        if split is None:  # no batch axis: one call per device, each device weighs 1
            outs = run(base, {})
            acc = fold(None, outs, 1)
            rows_out, extra_rows = [outs[i] for i in gathered], []
            per_out = [outs[i] for i in per_dev]
        else:
            acc, rows_out, per_out = _main_block(
                run, fold, identities, base, descs, sliced, split, out, gathered, per_dev
            )
            extra_rows = []
            if uneven:
                acc, extra_rows = _extra_row(
                    run, base, extras, acc, fold, identities, split, out, gathered, reduced
                )
        reduced_out = red.combine(tuple(ops[i] for i in reduced), acc, divisor, options.comm_dtype)
        per_out = [jnp.expand_dims(x, 0) for x in per_out]
        return reduced_out, rows_out, extra_rows, per_out

    out_specs = (
        [P()] * len(reduced),
        [P(AXIS)] * len(gathered),
        [P(AXIS)] * (len(gathered) if uneven else 0),
        [P(AXIS)] * len(per_dev),
    )
    mapped = jax.shard_map(body, mesh=core.mesh, in_specs=layout.specs, out_specs=out_specs)

    def outer(*flat):
        reduced_out, rows_out, extra_rows, per_out = mapped(*flat)
        if uneven:
            rows_out = [reassemble(m, e, split) for m, e in zip(rows_out, extra_rows)]
        if core.groups > 1:  # every process can read a gathered output (np.asarray)
            everywhere = NamedSharding(core.mesh, P())
            rows_out = [lax.with_sharding_constraint(x, everywhere) for x in rows_out]
        result = [None] * len(ops)
        for idx, vals in ((reduced, reduced_out), (gathered, rows_out), (per_dev, per_out)):
            for i, v in zip(idx, vals, strict=True):
                result[i] = v
        return result

    # in_shardings let jit's C++ dispatch move numpy arguments straight to
    # their shards: measurably cheaper per call than a Python device_put.
    shardings = tuple(NamedSharding(core.mesh, spec) for spec in layout.specs)
    return jax.jit(outer, in_shardings=shardings, donate_argnums=_donated(core, descs, layout))


def _view_rows(d: _Leaf, data, index: list, split: Split):
    """This device's main-block rows (and extra row, if uneven) of a synk.Data batch."""
    if d.view == "local":  # each device indexes its own shard: no communication
        return jnp.take(data, index[0][0], axis=0, mode="clip"), None
    if d.data_layout is None:  # replicated: gather this device's requests from its copy
        rows = [jnp.take(data, part, axis=0, mode="clip") for part in index]
        return rows[0], rows[1] if len(rows) > 1 else None
    main, extra = synk_data.requests(index[0], split)
    if split.main:
        rows = synk_data.rows_from_shards(data, main, d.data_layout)
    else:  # fewer rows than devices: nothing to move for the main block
        rows = jnp.zeros((0, *data.shape[1:]), data.dtype)
    if extra is None:
        return rows, None
    return rows, synk_data.rows_from_shards(data, extra, d.data_layout)


def _main_block(run, fold, identities, base, descs, sliced, split, out, gathered, per_dev):
    """The main block's rows as num_slices sequential pieces; a scan per run of equal pieces."""
    acc, rows_out, per_out, start = None, [], [], 0
    for count, size in split.pieces():
        if count == 1:
            piece = {
                i: lax.slice_in_dim(base[i], start, start + size, axis=descs[i].axis)
                for i in sliced
            }
            outs = run(base, piece)
            acc = fold(acc, outs, size)
            rows_out.append([outs[i] for i in gathered])
            per_out = [outs[i] for i in per_dev]
        else:
            xs = {i: take_pieces(base[i], descs[i].axis, start, count, size) for i in sliced}

            def step(carry, piece, size=size):
                outs = run(base, piece)
                return ([_varying(v) for v in fold(carry, outs, size)], [outs[i] for i in gathered])

            init = identities() if acc is None else [_varying(v) for v in acc]
            acc, ys = lax.scan(step, init, xs)
            rows_out.append([y.reshape((count * size, *y.shape[2:])) for y in ys])
        start += count * size
    if not rows_out:  # fewer rows than devices: the main block is empty
        empty = [jnp.zeros((0, *out.avals[i].shape[1:]), out.avals[i].dtype) for i in gathered]
        return acc, [_varying(e) for e in empty], per_out
    rows_out = [jnp.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*rows_out)]
    return acc, rows_out, per_out


def _extra_row(run, base, extras, acc, fold, identities, split, out, gathered, reduced):
    """Devices i < r run the function on their one extra row; the others skip it."""

    def yes(_):
        outs = run(base, extras)
        return ([_varying(v) for v in fold(None, outs, 1)], [_varying(outs[i]) for i in gathered])

    def no(_):
        rows = [
            _varying(jnp.zeros(out.avals[i].shape[1:], out.avals[i].dtype)[None]) for i in gathered
        ]
        return identities(), rows

    local_index = lax.axis_index(AXIS) % split.local_devices
    extra_acc, extra_rows = lax.cond(local_index < split.extra, yes, no, None)
    if acc is None:
        return extra_acc, extra_rows
    ops = [out.ops[i] for i in reduced]
    return [red.accumulate(op, a, e) for op, a, e in zip(ops, acc, extra_acc)], extra_rows


def _donated(core, descs, layout: _Layout) -> tuple[int, ...]:
    if not core.donate:
        return ()
    names = [core.signature.name(i) for i in core.donate]
    hit = [
        k
        for k, d in enumerate(descs)
        if not d.scalar
        and not d.view  # a view's data outlives the call
        and any(d.name == nm or d.name.startswith(nm + "[") for nm in names)
    ]
    return tuple(hit + [slot for i, slot in layout.extra.items() if i in hit])


# --------------------------------------------------------------------------
# Moving the arguments to the devices


def _placer(core: _Core, descs: list[_Leaf], split: Split | None, leaves: list) -> Callable:
    """A function from the call's leaves to the jit arguments, built once per plan.

    What to do with each leaf is decided here, once: the plan's key fixes
    every leaf's type and, for a jax.Array, its sharding, so a call only
    carries out the decisions. Host (numpy) values go to jit as they are: its
    in_shardings put each one straight onto its shards in one batched transfer.
    """
    mesh = core.mesh
    layout = _Layout.of(descs, split)
    uneven = split is not None and not split.even
    shardings = [NamedSharding(mesh, spec) for spec in layout.specs]
    replicated, device_set = NamedSharding(mesh, P()), set(core.devices)

    def splitter(i: int, axis: int, resharded: bool):
        target = shardings[i]
        parts = jax.jit(lambda x: device_parts(x, axis, split), out_shardings=[target, target])
        if not resharded:
            return parts
        return lambda x: parts(jax.device_put(x, replicated))  # jit needs it on the mesh

    actions = []  # per leaf: ("pass",) or (kind, what it needs)
    for i, (d, x) in enumerate(zip(descs, leaves)):
        on_device = isinstance(x, jax.Array)
        if d.view:  # the data stays where it is; only the indices travel
            own = d.view == "global" and d.data_layout is None
            parts = functools.partial(synk_data.host_requests, split=split) if own else None
            actions.append(("view", layout.index[i], f"{core.where}: argument `{d.name}`", parts))
        elif d.role == "sliced" and uneven and on_device:
            away = x.sharding.device_set != device_set
            actions.append(("split", layout.extra[i], splitter(i, d.axis, away)))
        elif d.role == "sliced" and uneven:
            actions.append(("split", layout.extra[i], functools.partial(_host_parts, d, split)))
        elif on_device and not x.sharding.is_equivalent_to(shardings[i], x.ndim):
            actions.append(("reshard", shardings[i]))  # another layout
        else:
            actions.append(("pass",))
    shares = frozenset(
        [i for i, d in enumerate(descs) if d.role == "sliced" and not d.view and d.host]
        + [slot for i, slot in layout.extra.items() if descs[i].host]
    )
    if core.groups == 1 and all(a == ("pass",) for a in actions):
        return list  # the common case: every leaf goes to jit as it is

    def place(leaves: list) -> list:
        jit_args = [None] * layout.size
        for i, (action, x) in enumerate(zip(actions, leaves)):
            kind = action[0]
            if kind == "pass":
                jit_args[i] = x
            elif kind == "view":
                _, slots, where, parts = action
                jit_args[i] = x.data._live(where)
                if jit_args[slots[0]] is None:  # not yet sent by a view with equal indices
                    for slot, part in zip(slots, parts(x.index) if parts else [x.index]):
                        jit_args[slot] = part
            elif kind == "split":
                jit_args[i], jit_args[action[1]] = action[2](x)
            else:
                jit_args[i] = jax.device_put(x, action[1])
        if core.groups > 1:
            _to_global(jit_args, shardings, shares, core.groups)
        return jit_args

    return place


def _host_parts(d: _Leaf, split: Split, x) -> list[np.ndarray]:
    return host_parts(np.asarray(x), d.axis, split)


def _to_global(jit_args: list, shardings: list, shares: frozenset, groups: int) -> None:
    """Several processes: turn the host values into global arrays.

    Slots in `shares` hold this process's share of the rows (sliced arguments
    and their extra rows); the others hold a value that is the same, whole,
    on every process (broadcast values, per-device values, indices).
    """
    for k, x in enumerate(jit_args):
        if isinstance(x, jax.Array):
            continue
        x, sharding = np.asarray(x), shardings[k]
        if k in shares:
            shape = list(x.shape)
            shape[list(sharding.spec).index(AXIS)] *= groups
            jit_args[k] = jax.make_array_from_process_local_data(sharding, x, tuple(shape))
        else:
            jit_args[k] = jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i])


# --------------------------------------------------------------------------
# The decorator


@overload
def function(fn: Callable, /) -> Function: ...
@overload
def function(
    fn: None = None,
    /,
    *,
    in_axes: Any = 0,
    reduce: Any = "avg",
    num_slices: int = 1,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    devices: Sequence[jax.Device] | int | None = None,
    comm_dtype: Any = None,
) -> Callable[[Callable], Function]: ...


def function(
    fn=None,
    /,
    *,
    in_axes=0,
    reduce="avg",
    num_slices=1,
    static_argnums=(),
    static_argnames=(),
    donate_argnums=(),
    devices=None,
    comm_dtype=None,
):
    """Replicate a single-device function over every device, exactly.

    The wrapped function is written for one device and a whole batch. synk
    slices the sliced arguments along their batch axis across the devices,
    runs the function on each device's rows, and combines the outputs so that
    the result equals ``fn(*args)`` on one device, for any batch size.

    Args:
      fn: the function. Use ``@synk.function`` bare or ``@synk.function(...)``.
      in_axes: for each positional argument (a pytree prefix of them, like
        ``jax.vmap``): an int, slice along that axis (default 0); ``None``,
        broadcast (every device sees the whole value); ``'per_device'``, the
        value has a leading axis of length ``device_count()`` and device i sees
        entry i. Python numbers and 0-d arrays are always broadcast.
        Keyword-only arguments take a single (non-tuple) ``in_axes``, else
        they are broadcast.
      reduce: how outputs combine, one op or a pytree prefix of the outputs:
        ``'avg'`` (outputs are means over rows; weighted by rows), ``'sum'``,
        ``'max'``, ``'min'``, ``'prod'``, ``'gather'`` (one row per input row,
        concatenated in input order), ``'per_device'`` (no reduction).
      num_slices: each device runs its rows as this many sequential pieces and
        accumulates them: less memory per step, the same result.
      static_argnums: positions of arguments that are compile-time constants.
      static_argnames: names of arguments that are compile-time constants.
      donate_argnums: positions of arguments whose device buffers the call may
        reuse (effective for device arrays already laid out for the call).
      devices: the devices to run on: a sequence of jax devices, or an int
        (the first that many). Default: every device.
      comm_dtype: floating outputs are reduced in this dtype (e.g.
        ``jnp.bfloat16``) and cast back.

    Returns:
      A `synk.Function`: call it like ``fn``.

    Raises:
      ValueError, TypeError: bad options, here; bad arguments, at the call,
        before anything runs.

    Example:
      >>> import numpy as np, jax.numpy as jnp, synk
      >>> @synk.function(in_axes=(None, 0))
      ... def mse(w, x):
      ...     return jnp.mean((x @ w) ** 2)
      >>> w, x = np.ones(3, np.float32), np.ones((1001, 3), np.float32)
      >>> float(mse(w, x))  # 1001 rows over every device; equals mse.serial(w, x)
      9.0
    """
    if fn is None:
        return functools.partial(
            function,
            in_axes=in_axes,
            reduce=reduce,
            num_slices=num_slices,
            static_argnums=static_argnums,
            static_argnames=static_argnames,
            donate_argnums=donate_argnums,
            devices=devices,
            comm_dtype=comm_dtype,
        )
    if not callable(fn):
        raise TypeError(f"synk.function expects a callable, got {type(fn).__name__}.")
    core = _Core(fn, in_axes, static_argnums, static_argnames, donate_argnums, devices)
    return Function(core, _check_options(reduce, num_slices, comm_dtype, core.where))
