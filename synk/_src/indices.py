"""Indices of synk.Data batch views: validated, wrapped and frozen once, at ``X[idx]``."""

from __future__ import annotations

import jax
import numpy as np
from numpy.typing import ArrayLike

from synk._src import compat


def as_index_array(idx: ArrayLike, data: str) -> np.ndarray:
    """`idx` as an integer array; `data` names the indexed data (``X`` or ``X.local``)."""
    what = f"{data}[idx]"
    if isinstance(idx, bool | np.bool_):
        raise TypeError(f"{what}: a boolean index; pass integer row indices.")
    if isinstance(idx, int | np.integer):
        raise TypeError(_scalar_index_error(data, idx))
    array = np.asarray(idx)
    if array.dtype == np.bool_:
        raise TypeError(_boolean_indices_error(what))
    if array.size == 0:
        return array.astype(np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(_float_indices_error(what, array.dtype))
    return array


def _scalar_index_error(data: str, idx: int | np.integer) -> str:
    stop = int(idx) + 1 or ""  # the last row, -1, is the slice -1: to the end
    return (
        f"{data}[idx]: a scalar index ({idx}) would drop the batch axis. Pass a slice or a "
        f"list of rows, e.g. {data}[{idx}:{stop}]."
    )


def _boolean_indices_error(what: str) -> str:
    return (
        f"{what}: boolean indices are not supported; pass integer rows (e.g. np.flatnonzero(mask))."
    )


def _float_indices_error(what: str, dtype: np.dtype) -> str:
    return (
        f"{what}: indices must be integers, got dtype {dtype}. Convert them, e.g. idx.astype(int)."
    )


def check_range(array: np.ndarray, rows: int, what: str) -> np.ndarray:
    if array.size:
        low, high = int(array.min()), int(array.max())
        if high >= rows or low < -rows:
            raise IndexError(_out_of_range_error(what, rows, low, high))
        if low < 0:
            array = np.where(array < 0, array + rows, array)
    return frozen(array)


def _out_of_range_error(what: str, rows: int, low: int, high: int) -> str:
    bad = high if high >= rows else low
    return (
        f"{what}: index {bad} is out of range for {rows} rows (valid: {-rows} .. "
        f"{rows - 1}; largest given {high}, smallest {low})."
    )


def global_index(idx: slice | ArrayLike, rows: int) -> np.ndarray:
    if isinstance(idx, slice):
        traced_slice(idx, local=False)
        if idx.step not in (None, 1):
            raise ValueError(_stepped_slice_error(idx))
        return frozen(np.arange(*idx.indices(rows), dtype=np.int32))
    array = as_index_array(idx, "X")
    if array.ndim != 1:
        raise ValueError(_not_1d_error(array.shape))
    return check_range(array, rows, "X[idx]")


def _stepped_slice_error(idx: slice) -> str:
    bounds = ":".join("" if b is None else str(b) for b in (idx.start, idx.stop, idx.step))
    return (
        f"X[{bounds}]: slices with a step are not supported; pass the rows as an index "
        "array, e.g. X[np.arange(start, stop, step)]."
    )


def _not_1d_error(shape: tuple[int, ...]) -> str:
    return (
        f"X[idx]: expected a 1-D index array, got shape {shape}. For per-device "
        "indices into sharded data use X.local[idx] with shape (n_devices, k)."
    )


def traced_index(idx: compat.Tracer, *, local: bool, devices: int) -> compat.Tracer:
    """A traced index, checked for what its aval shows (dtype, shape); values later."""
    data = "X.local" if local else "X"
    dtype = idx.dtype
    if dtype == np.bool_:
        raise TypeError(_traced_boolean_error(data))
    if not jax.dtypes.issubdtype(dtype, np.integer):
        raise TypeError(_traced_float_error(data, dtype))
    if idx.ndim == 0:
        raise TypeError(_traced_scalar_error(data))
    if local:
        if idx.ndim == 1 or (idx.ndim == 2 and idx.shape[0] == devices):
            return idx
        raise ValueError(_traced_local_shape_error(data, devices, idx.shape))
    if idx.ndim != 1:
        raise ValueError(_traced_not_1d_error(data, idx.shape))
    return idx


def _traced_boolean_error(data: str) -> str:
    return (
        f"{data}[idx]: boolean indices are not supported; pass integer rows (e.g. "
        "jnp.flatnonzero(mask, size=k))."
    )


def _traced_float_error(data: str, dtype: np.dtype) -> str:
    return (
        f"{data}[idx]: indices must be integers, got a traced array of dtype {dtype}. Convert "
        "them, e.g. idx.astype(int)."
    )


def _traced_scalar_error(data: str) -> str:
    return (
        f"{data}[idx]: a scalar index would drop the batch axis. Pass a 1-D array of rows, "
        f"e.g. {data}[i[None]]."
    )


def _traced_local_shape_error(data: str, devices: int, shape: tuple[int, ...]) -> str:
    return (
        f"{data}[idx]: expected one index array for every device, shape (k,), or one row per "
        f"device, shape ({devices}, k); got a traced array of shape {shape}."
    )


def _traced_not_1d_error(data: str, shape: tuple[int, ...]) -> str:
    return (
        f"{data}[idx]: expected a 1-D index array, got a traced array of shape {shape}. "
        "For per-device indices into sharded data use X.local[idx] with shape "
        "(n_devices, k)."
    )


def traced_slice(idx: slice, *, local: bool) -> None:
    data = "X.local" if local else "X"
    if any(isinstance(b, compat.Tracer) for b in (idx.start, idx.stop, idx.step)):
        raise TypeError(_traced_slice_error(data))


def _traced_slice_error(data: str) -> str:
    return (
        f"{data}[idx]: a slice with traced bounds; the batch's length must be known "
        "when tracing. Pass the rows as an index array of fixed length k instead, e.g. "
        f"{data}[start + jnp.arange(k)]."
    )


def every_row(idx: slice) -> bool:
    """Whether a slice takes every row, whatever the length (``[:]``, ``[0:]``)."""
    return idx.start in (None, 0) and idx.stop is None and idx.step in (None, 1)


def local_index(idx: slice | ArrayLike, rows_per_device: tuple[int, ...]) -> np.ndarray:
    n, held = len(rows_per_device), np.array(rows_per_device)
    if isinstance(idx, slice):
        traced_slice(idx, local=True)
        if idx.step not in (None, 1):
            raise ValueError("X.local[a:b:step]: slices with a step are not supported.")
        counts = {len(range(*idx.indices(int(h)))) for h in held}
        if len(counts) > 1:
            raise IndexError(_uneven_local_slice_error(idx, held, counts))
        idx = np.arange(*idx.indices(int(held.min())))
    array = as_index_array(idx, "X.local")
    if array.ndim == 1:
        array = np.broadcast_to(array, (n, array.shape[0]))
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(_local_shape_error(n, array.shape))
    array = np.where(array < 0, array + held[:, None], array)
    bad = (array < 0) | (array >= held[:, None])
    if bad.any():
        d, j = map(int, np.argwhere(bad)[0])
        largest = int(np.asarray(idx).max())
        raise IndexError(_local_out_of_range_error(d, int(held[d]), int(array[d, j]), largest))
    return frozen(array)


def _uneven_local_slice_error(idx: slice, held: np.ndarray, counts: set[int]) -> str:
    bounds = ":".join("" if b is None else str(b) for b in (idx.start, idx.stop))
    return (
        f"X.local[{bounds}]: the shards hold {int(held.max())} or "
        f"{int(held.min())} rows, so this slice takes {max(counts)} rows of some "
        f"shards and {min(counts)} of others, and a local batch takes the same "
        f"count from every device. Take at most {int(held.min())} rows of each "
        "shard (X.local[:k]), pass X.local[:] for every row, or use global "
        "indices (X[idx])."
    )


def _local_shape_error(n: int, shape: tuple[int, ...]) -> str:
    return (
        f"X.local[idx]: expected one index array for every device, shape (k,), or one "
        f"row per device, shape ({n}, k); got shape {shape}."
    )


def _local_out_of_range_error(d: int, held: int, index: int, largest: int) -> str:
    return (
        f"X.local[idx]: device {d} holds {held} rows of its shard, but its index {index} is out of "
        f"range (largest index given {largest}). Each device's indices must be below the rows it "
        "holds."
    )


def frozen(array: np.ndarray) -> np.ndarray:
    """A read-only int32 copy: a view must not change when the caller's index array does."""
    out = np.array(array, dtype=np.int32, order="C", copy=True)
    out.flags.writeable = False
    return out


def local_reach(index: np.ndarray) -> int:
    """The fewest rows sharded data may have for every device's index to be in its shard.

    Rows are dealt so that device d of n holds its k-th row once the data has
    (k - 1) * n + d + 1 rows (`ShardLayout`): device d's largest index j needs
    j * n + d + 1 rows.
    """
    if not index.size:
        return 0
    n = index.shape[0]
    return int((index.max(axis=1) * n + np.arange(n) + 1).max())
