"""A call's leaves, partitioned once: what is traced, what is static, what is state.

One predicate (`kind`) decides for the call, the cache key, ``f.serial`` and
the cross-process description:

* arrays (numpy, ``jax.Array``, numpy scalars, tracers) and synk.Data batches
  are traced;
* a Python number (bool, int, float, complex) is traced where it is an
  argument itself or sits in tuples, lists, dicts and named tuples, as under
  ``jax.jit``: a learning rate that changes every call does not recompile.
  Where it is a field of an object (an Equinox module, a dataclass) it is
  static, as under ``equinox.filter_jit``: the ``inference`` flag of a
  Dropout, a hidden size, MaxPool's ``init=-inf`` are configuration;
* anything else (functions, strings, enums) is static: part of the cache key,
  reaching the function as it is;
* a Flax NNX ``Variable`` is state: its value is traced, and what the
  function writes into it reaches the caller's Variable after the call, as
  under ``nnx.jit`` (`Structure.rebuild`, `Call.write_back`). A Variable
  that appears twice (a model inside an optimiser) stays one Variable.

`partition` runs at every call, so it reads each leaf once and caches what a
tree structure tells (which leaves sit inside objects).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import sys
from collections.abc import Callable, Hashable
from typing import Any, Literal

import jax
import numpy as np
from jax.tree_util import PyTreeDef

from synk._src import compat

NUMBERS = (bool, int, float, complex)
_PLAIN = (tuple, list, dict, type(None))
# Types whose every value is traced: numpy's, and each jax.Array type once seen
# (`kind`); and the concrete jax.Array types among them (with a sharding). The
# common leaves take a set lookup or two per call, not an isinstance of an ABC.
_ARRAYS: set[type] = {np.ndarray}
_DEVICE: set[type] = set()
IsVariable = Callable[[Any], bool]  # isinstance(x, nnx.Variable)
Updates = dict[int, list[jax.Array]]  # what a function wrote into Variables, by variable number


class Traced(enum.Enum):
    TRACED = "TRACED"

    def __repr__(self) -> str:
        return "TRACED"


TRACED: Literal[Traced.TRACED] = Traced.TRACED  # a slot whose leaf is traced


@dataclasses.dataclass(frozen=True)
class Static:
    """A static leaf: its value, and the key it compiles under (what compares)."""

    value: Any = dataclasses.field(compare=False)
    key: Any


@dataclasses.dataclass(frozen=True)
class Var:
    """A Flax NNX Variable: rebuilt from `count` traced leaves by `treedef`."""

    treedef: PyTreeDef
    count: int


@dataclasses.dataclass(frozen=True)
class Alias:
    """A Variable seen before, at variable number `index`."""

    index: int


# --------------------------------------------------------------------------
# The predicate


def kind(x: object, plain: bool) -> Traced | Static:
    """TRACED, or a `Static` for a leaf that is not: the one rule for every step."""
    t = type(x)
    if t in _ARRAYS:
        return TRACED
    if isinstance(x, jax.Array):
        _ARRAYS.add(t)
        if not isinstance(x, compat.Tracer):
            _DEVICE.add(t)
        return TRACED
    if is_batch(t) or is_data(t):
        return TRACED
    if t in NUMBERS:
        return TRACED if plain else Static(x, _number_key(x))
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # numpy scalars, array-likes
        return TRACED
    try:
        hash(x)
    except TypeError:
        return Static(x, _Unhashable(x))
    return Static(x, (t, x))


def _number_key(x: object) -> tuple[Any, ...]:
    # -0.0 == 0.0 and NaN != NaN: key floats by their bits, as they compile.
    if type(x) is float:
        return (float, x.hex())
    if type(x) is complex:
        return (complex, x.real.hex(), x.imag.hex())
    return (type(x), x)


@functools.cache
def is_batch(t: type) -> bool:
    """A synk.Data batch view (known by name: data imports the runtime, this module not)."""
    return t.__name__ == "Batch" and t.__module__ == "synk._src.views"


@functools.cache
def is_data(t: type) -> bool:
    """A whole synk.Data, passed as an argument."""
    return t.__name__ == "Data" and t.__module__ == "synk._src.data"


class _Unhashable:
    """The key of an unhashable static leaf: never equal, so the plan refuses it by name."""

    def __init__(self, value: object) -> None:
        self.value = value


def unhashable(slot: Static) -> bool:
    return type(slot.key) is _Unhashable


# --------------------------------------------------------------------------
# A call, partitioned


@dataclasses.dataclass(frozen=True)
class Structure:
    """How a call's arguments are rebuilt from its traced leaves (part of the cache key)."""

    treedef: PyTreeDef
    slots: tuple[Traced | Static | Var | Alias, ...]  # one per leaf of `treedef`
    paths: tuple[str, ...]  # each slot's pytree path, for messages

    def rebuild(self, traced: list[Any]) -> tuple[Any, list[Any]]:
        """The arguments, and the Variables made afresh for this trace (in order)."""
        it = iter(traced)
        leaves, fresh = [], []
        for slot in self.slots:  # inside the trace, once: isinstance tells the checker too
            if slot is TRACED:
                leaves.append(next(it))
            elif isinstance(slot, Static):
                leaves.append(slot.value)
            elif isinstance(slot, Var):
                # Made inside the trace that runs the function, so that the
                # function may write into it (flax refuses writes from another trace).
                var = slot.treedef.unflatten([next(it) for _ in range(slot.count)])
                fresh.append(var)
                leaves.append(var)
            else:
                leaves.append(fresh[slot.index])
        return jax.tree_util.tree_unflatten(self.treedef, leaves), fresh

    @property
    def variables(self) -> list[int]:
        """The slot of each Variable, in order."""
        return [i for i, s in enumerate(self.slots) if type(s) is Var]


def updates(structure: Structure, tree: Any, fresh: list, traced: list, where: str) -> Updates:
    """What the function wrote into Variables: {variable number: its new leaves}.

    A Variable counts as written when any of its leaves is no longer the one
    it was built from (as ``nnx.jit`` tells), so unchanged state never travels.
    `tree` is the arguments as the function left them: a function that added,
    replaced or removed a Variable (as ``sow`` adds one) is refused.
    """
    is_var = variable_test()
    if not fresh or is_var is None:  # no Variables (none at all where Flax NNX is not imported)
        return {}
    now = list(
        {id(x): x for x in jax.tree_util.tree_leaves(tree, is_leaf=is_var) if is_var(x)}.values()
    )
    if len(now) != len(fresh) or any(a is not b for a, b in zip(now, fresh)):
        raise ValueError(_structure_error(where))
    at = structure.variables
    out, start = {}, 0
    for k, (slot, var) in enumerate(zip(_var_slots(structure), fresh, strict=True)):
        before = traced[start : start + slot.count]
        start += slot.count
        after, inner = jax.tree_util.tree_flatten(var)
        if inner != slot.treedef:
            raise ValueError(_structure_error(where, structure.paths[at[k]]))
        if any(a is not b for a, b in zip(after, before)):
            out[k] = [jax.numpy.asarray(a) for a in after]
    return out


def _structure_error(where: str, path: str | None = None) -> str:
    what = f"the Variable at {path} now holds a value of another structure" if path else (
        "a Variable added (as Module.sow adds one), replaced or removed"
    )  # fmt: skip
    return (
        f"{where}: the function changed a Flax NNX module's structure: {what}. synk carries "
        "back the new values of a module's existing Variables only. Return what the "
        "function makes as an output instead (for sown values: nnx.pop(model, "
        "nnx.Intermediate) inside the function), and set attributes outside it."
    )


def _var_slots(structure: Structure) -> list[Var]:
    return [s for s in structure.slots if type(s) is Var]


class Call:
    """One call's leaves: the traced ones, the key of the call, the caller's Variables."""

    __slots__ = ("key", "leaves", "traced", "tracing", "treedef", "variables")

    def __init__(self, traced: list, key: tuple, treedef: PyTreeDef, leaves: list, variables: list,
                 tracing: bool = False) -> None:  # fmt: skip
        self.traced = traced
        self.key = key
        self.treedef = treedef
        self.leaves = leaves  # every leaf, Variables whole
        self.variables = variables  # the caller's Variables, in order of first appearance
        self.tracing = tracing  # a leaf is a tracer: the call is inside jax.jit, grad, vmap

    def structure(self) -> Structure:
        """The call's `Structure` (on a cache miss only: it walks every leaf's path)."""
        flags = plain(self.treedef)
        slots, seen = [], {}
        for x, p in zip(self.leaves, flags, strict=True):
            if _is_variable(x):
                if id(x) in seen:
                    slots.append(Alias(seen[id(x)]))
                else:
                    seen[id(x)] = len(seen)
                    leaves, treedef = jax.tree_util.tree_flatten(x)
                    slots.append(Var(treedef, len(leaves)))
            else:
                slots.append(kind(x, p))
        paths = _paths(self.treedef)
        return Structure(self.treedef, tuple(slots), paths)

    def write_back(self, new: Updates, structure: Structure) -> None:
        """Set the caller's Variables to what the function wrote into them."""
        slots = _var_slots(structure)
        for k, leaves in new.items():
            fresh = slots[k].treedef.unflatten(leaves)
            self.variables[k].set_raw_value(fresh.get_raw_value())


def partition(tree: Any) -> Call:
    """Split a call's pytree into its traced leaves and the key of the call.

    The key holds the tree structure, each traced leaf's `leaf_key` and each
    static leaf's value: what a compiled plan depends on. Runs at every call,
    so the common call, arrays only, takes one pass that builds nothing else.
    """
    is_var = variable_test()
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_var)
    key = [treedef]
    for x in leaves:
        t = type(x)
        if t is np.ndarray:
            key.append((t, x.shape, x.dtype))
        elif t in _DEVICE:
            key.append((t, x.aval, x.sharding))  # aval: shape, dtype, weak type
        else:
            return _partition(leaves, treedef, is_var)
    return Call(leaves, tuple(key), treedef, leaves, [])


def _partition(leaves: list, treedef: PyTreeDef, is_var: IsVariable | None) -> Call:
    """`partition` for a call with other leaves than arrays: numbers, objects, Variables."""
    flags = plain(treedef)
    traced, key, variables, tracing = [], [treedef], [], False
    for x, p in zip(leaves, flags):
        t = type(x)
        if t is np.ndarray:  # the common cases first, inline
            traced.append(x)
            key.append((t, x.shape, x.dtype))
        elif t in _DEVICE:
            traced.append(x)
            key.append((t, x.aval, x.sharding))
        elif p and t in NUMBERS:
            traced.append(x)
            key.append(t)
        elif is_var is not None and is_var(x):
            key.append(_variable(x, traced, variables))
        else:
            k = kind(x, p)
            if k is TRACED:
                traced.append(x)
                key.append(leaf_key(x))
                tracing = tracing or isinstance(x, compat.Tracer)
            else:
                key.append(k.key)
    return Call(traced, tuple(key), treedef, leaves, variables, tracing)


def leaf_key(x: Any) -> Hashable:
    """What of a traced leaf a plan depends on: on the hot path, so cheap to read."""
    t = type(x)
    if t in NUMBERS:
        return t
    if is_batch(t):
        array = x.data.array
        if array is None:
            return (t, id(x))  # deleted: the plan refuses it, naming the argument
        layout = x.data.layout  # sharded rows: the owner of a row depends on the count
        # fits: a view made before set_value shrank the data may no longer fit it;
        # it gets its own plan, which refuses it (`roles`).
        key = (t, x.local, x.index.shape, array.shape, array.dtype, array.sharding, layout)
        if type(x.index) is not np.ndarray:  # a traced index: a traced plan of its own
            return (*key, "traced")
        return (*key, x.fits())
    if is_data(t):
        array = x.array
        if array is None:
            return (t, id(x))  # deleted: the plan refuses it, naming the argument
        return (t, array.shape, array.dtype, array.sharding, x.sharded)
    if isinstance(x, compat.Tracer):  # inside jax.jit, grad, vmap: no sharding
        return (t, x.aval)
    if isinstance(x, jax.Array):
        return (t, x.aval, x.sharding)  # aval: shape, dtype, weak type (cheapest to read)
    return (t, x.shape, x.dtype)


def _variable(x: Any, traced: list[Any], variables: list[Any]) -> tuple[Any, ...]:
    for k, v in enumerate(variables):
        if v is x:
            return ("alias", k)
    variables.append(x)
    leaves, treedef = jax.tree_util.tree_flatten(x)
    traced.extend(leaves)
    return ("variable", treedef, *map(leaf_key, leaves))


# --------------------------------------------------------------------------
# What a tree structure tells


@functools.lru_cache(maxsize=1024)
def plain(treedef: PyTreeDef) -> tuple[bool, ...]:
    """For each leaf: whether only tuples, lists, dicts and named tuples hold it."""
    out: list[bool] = []

    def walk(node: PyTreeDef, plain: bool) -> None:
        children = node.children()
        if not children:
            if node.num_leaves == 1:
                out.append(plain)
            return
        kind_ = node.node_data()[0]
        inside = plain and (kind_ in _PLAIN or issubclass(kind_, tuple | dict))
        for child in children:
            walk(child, inside)

    walk(treedef, True)
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def _paths(treedef: PyTreeDef) -> tuple[str, ...]:
    """Each leaf's pytree path as text."""
    dummy = jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves)
    is_var = variable_test()
    flat = jax.tree_util.tree_flatten_with_path(dummy, is_leaf=is_var)[0]
    return tuple(jax.tree_util.keystr(p) for p, _ in flat)


def variable_test() -> IsVariable | None:
    """``isinstance(x, nnx.Variable)``, or None where Flax NNX is not imported (no Variables)."""
    nnx = sys.modules.get("flax.nnx")
    cls = getattr(nnx, "Variable", None) if nnx is not None else None
    return None if cls is None else _instance_test(cls)


@functools.cache
def _instance_test(cls: type) -> IsVariable:
    return lambda x: isinstance(x, cls)


def _is_variable(x: object) -> bool:
    test = variable_test()
    return test is not None and test(x)
