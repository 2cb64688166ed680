"""Rows of device-resident data on the devices: how sharded rows are dealt, and gathered.

Sharded data is dealt like a batch (`ShardLayout`): device d holds rows
``[start_d, start_d + held_d)``, the first ``rows % n`` devices one row more,
each shard padded to equal length. A batch of it passed by global indices
reaches each device with one ``all_to_all`` (`rows_from_shards`), given every
device's requests (`requests`, on the host or traced).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from synk._src.axis import AXIS
from synk._src.split import Split

# Indices on the host (numpy) or traced (inside the body): `requests` keeps the kind.
Index = TypeVar("Index", np.ndarray, jax.Array)


@dataclasses.dataclass(frozen=True)
class ShardLayout:
    """Rows of sharded data over n devices: device d holds `held[d]` rows from `starts[d]`."""

    rows: int
    devices: int

    @classmethod
    @functools.cache
    def of(cls, rows: int, devices: int) -> ShardLayout:
        return cls(rows, devices)

    @property
    def per(self) -> int:
        """Rows of each shard on the device, padding included."""
        return -(-self.rows // self.devices)

    @property
    def padded(self) -> int:
        return self.per * self.devices

    @property
    def held(self) -> tuple[int, ...]:
        q, r = divmod(self.rows, self.devices)
        return tuple(q + (d < r) for d in range(self.devices))

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(int(s) for s in np.cumsum((0, *self.held[:-1])))

    def owner(self, rows: np.ndarray | jax.Array) -> tuple[jax.Array, jax.Array]:
        """The device holding each global row, and the row's position in its shard (traced)."""
        q, r = divmod(self.rows, self.devices)
        big = r * (q + 1)  # rows held by the devices with q + 1 rows
        in_big = rows < big
        rest = rows - big
        safe_q = max(q, 1)
        owner = jnp.where(in_big, rows // (q + 1), r + rest // safe_q)
        pos = jnp.where(in_big, rows % (q + 1), rest % safe_q)
        return owner, pos


def requests(index: Index, split: Split) -> tuple[Index, Index | None]:
    """Every device's main-block and extra-row indices, from the global index.

    Returns arrays of shape (n, q) and (n, 1) (None if the split is even): row
    d holds what device d processes, following `split.py`'s layout. `index` is
    a numpy array (on the host) or a traced one (inside the body).
    """
    g, m, q, r, L = split.groups, split.local_devices, split.main, split.extra, split.local_rows
    dev = np.arange(g * m)
    proc, j = dev // m, dev % m
    main = index[(proc * L + j * q)[:, None] + np.arange(q)[None, :]]
    if not r:
        return main, None
    # Devices j >= r take a real row as a stand-in; it is never computed on.
    extra = index[(proc * L + m * q + np.minimum(j, r - 1))[:, None]]
    return main, extra


def host_requests(index: np.ndarray, split: Split) -> list[np.ndarray]:
    """`requests` flattened for a P(AXIS) argument: each device receives its own rows' indices.

    For replicated data every device can gather its rows from its own copy,
    so it needs only its own requests (q, and 1 extra), not the whole index.
    """
    if split.even:
        return [index]  # device d's rows are already index[d*q : (d+1)*q]
    main, extra = requests(index, split)
    return [main.reshape(-1)] + ([] if extra is None else [extra.reshape(-1)])


def rows_from_shards(data: jax.Array, requests: jax.Array, layout: ShardLayout) -> jax.Array:
    """This device's rows of sharded data, given every device's requests (n, k) (in shard_map)."""
    # Each device sends every other device the rows it owns of that device's
    # request; one all_to_all moves them. Selecting the owner's copy
    # afterwards is exact (no arithmetic on the rows).
    me = lax.axis_index(AXIS)
    owner, pos = layout.owner(requests)
    owned = (owner == me).reshape(owner.shape + (1,) * (data.ndim - 1))
    send = jnp.where(owned, data[pos], jnp.zeros((), data.dtype))  # (n, k, ...)
    got = lax.all_to_all(send, AXIS, 0, 0, tiled=True)  # got[src] = src's rows for me
    return got[owner[me], jnp.arange(requests.shape[1])]
