"""A synk.Data batch's rows taken on the devices, by JAX.

The executable takes a view's index in range (`device_index`: checked on the
host already, or resolved in the trace); `rows` takes the rows themselves
from the data array, as ``f.serial`` sees a traced view. (A call's body takes
sharded rows with `shards.rows_from_shards`.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from synk._src.views import Batch


def device_index(view: Batch) -> np.ndarray | jax.Array:
    """The view's indices as the executable takes them: in range, int32.

    An index checked on the host already is. A traced one is resolved in the
    trace as ``x[idx]`` resolves it under ``jax.jit``: negative indices wrap
    once, then indices still out of range are clamped.
    """
    index = view.index
    if not view.traced:
        return index
    if view.local:
        held = jnp.asarray(view.data.rows_per_device, np.int32)[:, None]
        index = jnp.broadcast_to(index, (len(held), index.shape[-1]))
    else:
        held = view.rows
    wide = index.astype(jnp.promote_types(index.dtype, jnp.int32))  # wraps without overflow
    wide = jnp.where(wide < 0, wide + held, wide)
    return jnp.clip(wide, 0, jnp.maximum(held - 1, 0)).astype(jnp.int32)


def rows(view: Batch) -> jax.Array:
    """The rows `view` picks, gathered by JAX (inside a trace: in the trace)."""
    array = view.data.live_array("X[idx]")
    index = device_index(view)
    if view.local:  # device d's rows idx[d] of its shard, in device order
        n = len(view.data.devices)
        shards = array.reshape((n, array.shape[0] // n, *array.shape[1:]))
        return shards[jnp.arange(n)[:, None], index].reshape((-1, *array.shape[1:]))
    layout = view.data.layout
    if layout is not None:  # global rows of sharded data: where each one lies
        owner, pos = layout.owner(index)
        index = owner * layout.per + pos
    return jnp.take(array, index, axis=0)
