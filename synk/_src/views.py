"""Batch views of a synk.Data: ``X[idx]`` and ``X.local[idx]``, lazy rows picked at the call.

A view holds its data and a checked, frozen index (`indices`); only the index
travels to the devices, where `take` resolves it and each device gathers its
rows. `data.Data` makes views; a view reads its data through `DataLike`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import numpy as np
from jax.typing import DTypeLike
from numpy.typing import ArrayLike

from synk._src import compat, indices
from synk._src.shards import ShardLayout


class DataLike(Protocol):
    """What a view reads of its synk.Data (`data.Data`)."""

    @property
    def devices(self) -> tuple[jax.Device, ...]: ...
    @property
    def array(self) -> jax.Array | None: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def sharded(self) -> bool: ...
    @property
    def layout(self) -> ShardLayout | None: ...
    @property
    def rows_per_device(self) -> tuple[int, ...]: ...
    def __len__(self) -> int: ...
    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray: ...
    def __getitem__(self, idx: slice | ArrayLike) -> Batch: ...
    def live_array(self, where: str = "", argument: str = "") -> jax.Array: ...


class LocalIndexer:
    """``X.local``: indexing it makes a view of each device's own shard."""

    def __init__(self, data: DataLike) -> None:
        self._data = data

    def __getitem__(self, idx: slice | ArrayLike) -> Batch:
        data = self._data
        if isinstance(idx, slice) and indices.every_row(idx) and len(set(data.rows_per_device)) > 1:
            # Every row of every shard: the shards are the data's rows in order,
            # and they hold unequal counts, so one index per device cannot take them.
            return data[:]
        if isinstance(idx, compat.Tracer):  # resolved in the trace, as X[idx] is
            index = indices.traced_index(idx, local=True, devices=len(data.devices))
            return Batch(data, index, local=True, rows=len(data), reach=0)
        index = indices.local_index(idx, data.rows_per_device)
        return Batch(data, index, local=True, rows=len(data), reach=indices.local_reach(index))


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """A lazy batch view of a `Data`: rows picked on the devices at the call.

    Example:
      >>> import numpy as np, synk
      >>> synk.data(np.zeros((8, 2), np.float32))[2:5]
      synk.Data batch of 3 rows, shape=(3, 2), dtype=float32
    """

    data: DataLike
    index: np.ndarray | jax.Array  # int32, read-only, never the caller's array: (k,) global rows,
    # or (n_devices, k) rows of each shard. Inside a trace, the caller's traced index
    # as given, (k,), or (k,) or (n_devices, k) for local rows: `take.device_index` resolves it.
    local: bool
    rows: int  # the data's length when the view was made (its indices were checked for it)
    reach: int  # the fewest rows the data may have for every index to be in range

    def fits(self) -> bool:
        """Whether every index is still in range for the data's current length (hot path).

        Always true for a traced index (reach 0): its values are unknown, and the trace holds the
        data array it was made with.

        Returns:
          False once `Data.set_value` has shrunk the data below one of the view's indices.

        Example:
          >>> import numpy as np, synk
          >>> X = synk.data(np.zeros((8, 2))); view = X[6:8]
          >>> X.set_value(np.zeros((4, 2))); view.fits()
          False
        """
        return self.reach <= len(self.data)

    @property
    def traced(self) -> bool:
        """Whether the index is traced (the view was made inside ``jax.jit``, grad or vmap)."""
        return type(self.index) is not np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the batch the view picks, rows first."""
        # Local rows: k per device (a traced local index may be one (k,) for all).
        rows = self.index.shape[-1] * (len(self.data.devices) if self.local else 1)
        return (rows, *self.data.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        """The data's dtype."""
        return self.data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        """The rows this batch picks, on the host: what a function sees of it, whole."""
        if self.traced:
            raise TypeError(_traced_rows_error())
        if not self.fits():
            raise IndexError(_shrunk_batch_error(self.reach, len(self.data)))
        rows = np.asarray(self.data)
        if self.local:  # device d's rows idx[d] of its shard, in device order
            layout = self.data.layout
            assert layout is not None  # local views are of sharded data only
            starts = np.asarray(layout.starts)[:, None]
            out = rows[(starts + self.index).reshape(-1)]
        else:
            out = rows[self.index]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        kind = "local rows" if self.local else "rows"
        return f"synk.Data batch of {len(self)} {kind}, shape={self.shape}, dtype={self.dtype}"


def _traced_rows_error() -> str:
    return (
        "np.asarray(X[idx]): the index is traced (inside jax.jit, grad or vmap), so its rows "
        "are not known here. Use X[idx] as an argument of a synk.Function."
    )


def _shrunk_batch_error(reach: int, rows: int) -> str:
    return (
        f"np.asarray(X[idx]): the batch reaches row {reach - 1}, but the data now has {rows} "
        "rows (set_value shrank it). Make the batch again."
    )
