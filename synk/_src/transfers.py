"""Transfers of per-device values between the host and the devices, outside any synk.function.

A per-device value is a ``jax.Array`` whose leading axis has one entry per device
(``device_count()``, n below), entry i living on device i: what ``reduce="per_device"`` returns
and ``in_axes="per_device"`` takes. Each collective accepts a pytree of them and is compiled
once per shape; one that is not a per-device value is refused with a ValueError. `collectives`
holds the collectives between devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import PyTreeDef
from jax.typing import ArrayLike

from synk._src import compat, runtime
from synk._src.axis import AXIS
from synk._src.throttle import throttle


def devices_mesh() -> jax.sharding.Mesh:
    return runtime.mesh(tuple(runtime.devices()))


def _per_device_sharding() -> NamedSharding:
    return NamedSharding(devices_mesh(), P(AXIS))


def place(tree: Any, where: str) -> tuple[list[jax.Array], PyTreeDef]:
    """Check and place a pytree of per-device values (leading axis = device count)."""
    n = runtime.device_count()
    sharding = _per_device_sharding()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    out: list[jax.Array] = []
    for path, leaf in zip(paths, leaves, strict=True):
        shape = np.shape(leaf)
        if not shape or shape[0] != n:
            raise ValueError(_not_per_device_error(where, path, n, shape))
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            out.append(leaf)
        else:
            out.append(_to_devices(leaf, sharding))
    return out, treedef


def _not_per_device_error(where: str, path: str, n: int, shape: tuple[int, ...]) -> str:
    return (
        f"{where}: x{path} is not a per-device value: its leading axis must have one entry per "
        f"device ({n}); found shape {tuple(shape)}. Make one with synk.broadcast(value) or "
        "synk.scatter(batch), or return it from a function with reduce='per_device'."
    )


def _to_devices(x: ArrayLike, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)  # moves, reshards, or reorders shards
    # Several processes: every process holds the whole value (on the host or on
    # its own devices); each device takes its part.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _on_mesh(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """A device array as it is if it is on the mesh's devices in the mesh's order, else moved.

    A jit whose out_shardings lie on the mesh refuses an argument committed to other devices, or
    to the same ones in another order ("incompatible devices"): an array on one device, or a
    synk.Function's output with devices in another order.
    """
    if compat.device_order(x.sharding) == tuple(sharding.mesh.devices.flat):
        return x
    return _to_devices(x, sharding)


def dispatch(
    fn: Callable[..., list[jax.Array]], leaves: list[jax.Array], treedef: PyTreeDef
) -> Any:
    out = fn(*leaves)
    throttle(out[0] if out else None, runtime.devices()[0].platform)
    return jax.tree_util.tree_unflatten(treedef, out)


def mapped(body: Callable[..., list[jax.Array]], out_spec: P) -> Callable[..., list[jax.Array]]:
    """jit(shard_map(body)) over every device, per-device inputs; cached by the callers."""
    mesh = devices_mesh()

    def outer(*leaves: jax.Array) -> list[jax.Array]:
        specs = tuple(P(AXIS) for _ in leaves)
        outs = [out_spec for _ in leaves]
        # check_vma=False, as in a synk.function's body (see body.py).
        return jax.shard_map(
            lambda *xs: list(body(*xs)), mesh=mesh, in_specs=specs, out_specs=outs, check_vma=False
        )(*leaves)

    return jax.jit(outer)


# --------------------------------------------------------------- host -> devices


@compat.api_boundary
def broadcast(x: Any) -> Any:
    """Every device gets a copy of ``x`` (a pytree): a per-device value.

    Args:
      x: a pytree of arrays.

    Returns:
      Per-device values of shape ``(n, ...)`` (entry i is ``x``, on device i).

    Example:
      >>> import numpy as np, synk
      >>> w = synk.broadcast(np.array([1.0, 2.0]))
      >>> w.shape == (synk.device_count(), 2)
      True
    """
    n, sharding = runtime.device_count(), _per_device_sharding()
    replicated = NamedSharding(sharding.mesh, P())

    def one(leaf: ArrayLike) -> jax.Array:
        if isinstance(leaf, jax.Array):
            return _broadcast_fn(sharding)(_on_mesh(leaf, replicated))
        leaf = np.asarray(leaf)
        return _to_devices(np.broadcast_to(leaf, (n, *leaf.shape)), sharding)

    return jax.tree_util.tree_map(one, x)


@functools.cache
def _broadcast_fn(sharding: NamedSharding) -> Callable[[jax.Array], jax.Array]:
    n = len(sharding.mesh.devices.flat)
    return jax.jit(lambda x: jnp.broadcast_to(x[None], (n, *x.shape)), out_shardings=sharding)


@compat.api_boundary
def scatter(x: Any) -> Any:
    """Split axis 0 of ``x`` (a pytree) into ``device_count()`` equal parts, one per device.

    Args:
      x: a pytree of arrays whose axis 0 has a multiple of n rows, ``n * k``.

    Returns:
      Per-device values of shape ``(n, k, ...)``: entry i is rows ``[i * k, (i + 1) * k)``.

    Raises:
      ValueError: axis 0 does not divide by the device count.

    Example:
      >>> import numpy as np, synk
      >>> n = synk.device_count()
      >>> parts = synk.scatter(np.arange(3.0 * n))
      >>> parts.shape == (n, 3) and synk.get_value(parts, 1).tolist() == [3.0, 4.0, 5.0]
      True
    """
    n, sharding = runtime.device_count(), _per_device_sharding()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(x)[0]]
    leaves, treedef = jax.tree_util.tree_flatten(x)
    out: list[jax.Array] = []
    for path, leaf in zip(paths, leaves, strict=True):
        shape = np.shape(leaf)
        if not shape or shape[0] % n:
            raise ValueError(_uneven_scatter_error(path, n, shape))
        if isinstance(leaf, jax.Array):
            out.append(_reshape_fn(n, sharding)(_on_mesh(leaf, sharding)))
        else:
            leaf = np.asarray(leaf)
            out.append(_to_devices(leaf.reshape(n, shape[0] // n, *shape[1:]), sharding))
    return jax.tree_util.tree_unflatten(treedef, out)


def _uneven_scatter_error(path: str, n: int, shape: tuple[int, ...]) -> str:
    return (
        f"synk.scatter: x{path} has {shape[0] if shape else 'no'} rows along axis 0, which do not "
        f"split into {n} equal parts. Pass a multiple of {n} rows (pad or trim), or use a "
        "synk.function, which handles uneven batches."
    )


@functools.cache
def _reshape_fn(n: int, sharding: NamedSharding) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), out_shardings=sharding)


# --------------------------------------------------------------- devices -> host


@compat.api_boundary
def gather(x: Any, *, concat: bool = False) -> Any:
    """Every device's entry of ``x`` (a pytree of per-device values), on the host.

    Args:
      x: per-device values, as ``synk.scatter`` or a ``'per_device'`` output gives them.
      concat: join the entries end to end along their axis 0 (every device's rows,
        in device order), instead of stacking them.

    Returns:
      numpy arrays, on every process: shape ``(n, ...)``, or ``(n * k, ...)`` with ``concat``.

    Raises:
      ValueError: ``x`` is not a per-device value.

    Example:
      >>> import numpy as np, synk
      >>> n = synk.device_count()
      >>> x = synk.scatter(np.arange(2.0 * n))
      >>> synk.gather(x, concat=True).tolist() == list(np.arange(2.0 * n))
      True
    """
    leaves, treedef = place(x, "synk.gather")

    def host(leaf: jax.Array) -> np.ndarray:
        if not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        value = np.asarray(leaf)
        return value.reshape(-1, *value.shape[2:]) if concat else value

    return jax.tree_util.tree_unflatten(treedef, [host(leaf) for leaf in leaves])


@compat.api_boundary
def get_value(x: Any, i: int) -> Any:
    """Entry ``i`` of a per-device value (a pytree), as numpy arrays.

    Args:
      x: per-device values.
      i: the device's index, ``-n <= i < n``.

    Returns:
      numpy arrays, on every process: entry ``i`` of each leaf.

    Raises:
      IndexError, ValueError: ``i`` is not a device index; ``x`` is not a per-device value.

    Example:
      >>> import numpy as np, synk
      >>> x = synk.broadcast(np.float32(7))
      >>> float(synk.get_value(x, 0))
      7.0
    """
    n = runtime.device_count()
    if isinstance(i, bool) or not isinstance(i, int | np.integer) or not -n <= i < n:
        raise IndexError(f"synk.get_value: device index {i!r} is out of range for {n} devices.")
    leaves, treedef = place(x, "synk.get_value")
    device = runtime.devices()[i]

    def entry(leaf: jax.Array) -> np.ndarray:
        if jax.process_count() > 1:  # collective: every process takes part, every one gets it
            return gather(leaf)[i]
        (shard,) = (s for s in leaf.addressable_shards if s.device == device)
        return np.asarray(shard.data)[0]

    return jax.tree_util.tree_unflatten(treedef, [entry(leaf) for leaf in leaves])


@compat.api_boundary
def set_value(x: Any, i: int, v: Any) -> Any:
    """A copy of the per-device value ``x`` (a pytree) whose entry ``i`` is ``v``.

    Args:
      x: per-device values.
      i: the device's index, ``-n <= i < n``.
      v: the new entry: the structure and shapes of one entry of ``x`` (cast to its dtypes).

    Returns:
      Per-device values; ``x`` itself is unchanged.

    Raises:
      IndexError, ValueError: ``i`` is not a device index; ``x`` is not per-device, or ``v``
        does not fit one entry of it.

    Example:
      >>> import numpy as np, synk
      >>> x = synk.set_value(synk.broadcast(np.zeros(2)), 1, np.ones(2))
      >>> synk.get_value(x, 1).tolist(), synk.get_value(x, 0).tolist()
      ([1.0, 1.0], [0.0, 0.0])
    """
    n = runtime.device_count()
    if isinstance(i, bool) or not isinstance(i, int | np.integer) or not -n <= i < n:
        raise IndexError(f"synk.set_value: device index {i!r} is out of range for {n} devices.")
    leaves, treedef = place(x, "synk.set_value")
    values = jax.tree_util.tree_leaves(v)
    if len(values) != len(leaves):
        raise ValueError(_entry_structure_error(len(values), len(leaves)))
    out = []
    for leaf, value in zip(leaves, values, strict=True):
        if np.shape(value) != leaf.shape[1:]:
            raise ValueError(_entry_shape_error(np.shape(value), leaf.shape[1:]))
        out.append(_set_fn(_per_device_sharding())(leaf, i % n, jnp.asarray(value, leaf.dtype)))
    return jax.tree_util.tree_unflatten(treedef, out)


def _entry_structure_error(got: int, want: int) -> str:
    return (
        f"synk.set_value: v has {got} leaves but x has {want}; give v the structure of one "
        "entry of x."
    )


def _entry_shape_error(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    return f"synk.set_value: the new entry has shape {got}, but an entry of x has shape {want}."


@functools.cache
def _set_fn(sharding: NamedSharding) -> Callable[[jax.Array, int, jax.Array], jax.Array]:
    return jax.jit(lambda x, i, v: x.at[i].set(v), out_shardings=sharding)
