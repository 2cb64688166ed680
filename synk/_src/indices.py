"""Indices of synk.Data batch views: validated, wrapped and frozen once, at ``X[idx]``."""

from __future__ import annotations

import jax
import numpy as np
from numpy.typing import ArrayLike

from synk._src import compat


def as_index_array(idx: ArrayLike, data: str, *, local: bool, devices: int) -> np.ndarray:
    """`idx` as an integer array, checked by `check_kind`; `data` names the indexed
    data (``X`` or ``X.local``)."""
    if isinstance(idx, tuple):  # X[1, 2]: numpy would read an axis per entry
        raise TypeError(_tuple_error(data, idx))
    array = np.asarray(idx)
    if array.size == 0 and array.dtype != np.bool_:  # np.asarray([]) is float64: no rows
        array = array.astype(np.int32)
    value = idx if array.ndim == 0 else None
    check_kind(array, data, local=local, devices=devices, value=value)
    return array.astype(np.int64, copy=False)  # wraps a negative int8 index past 127 rows


def _tuple_error(data: str, idx: tuple[object, ...]) -> str:
    rows = ", ".join(map(repr, idx))
    return (
        f"{data}[{rows}]: a tuple index; {data}[idx] picks rows only, where numpy would "
        f"read one axis per entry. Pass the rows as a list ({data}[[{rows}]]), and index "
        "the other axes inside the function."
    )


def check_kind(
    idx: np.ndarray | compat.Tracer,
    data: str,
    *,
    local: bool,
    devices: int,
    value: object = None,
) -> None:
    """What an index's dtype and shape must be, concrete or traced (its values come later).

    `value`: a Python or numpy scalar as given. A global index is 1-D; a local
    one is 1-D (every device the same rows) or one row per device.
    """
    traced = isinstance(idx, compat.Tracer)
    if idx.dtype == np.bool_:
        raise TypeError(_boolean_error(data, traced))
    if not jax.dtypes.issubdtype(idx.dtype, np.integer):
        raise TypeError(_float_error(data, idx.dtype, traced))
    if idx.ndim == 0:
        raise TypeError(_scalar_error(data, value, traced))
    if local and not (idx.ndim == 1 or (idx.ndim == 2 and idx.shape[0] == devices)):
        raise ValueError(_local_shape_error(data, devices, idx.shape, traced))
    if not local and idx.ndim != 1:
        raise ValueError(_not_1d_error(data, idx.shape, traced))


def _got(what: str, traced: bool) -> str:
    return f"a traced array of {what}" if traced else what


def _boolean_error(data: str, traced: bool) -> str:
    mask = "jnp.flatnonzero(mask, size=k)" if traced else "np.flatnonzero(mask)"
    return f"{data}[idx]: boolean indices are not supported; pass integer rows (e.g. {mask})."


def _float_error(data: str, dtype: np.dtype, traced: bool) -> str:
    got = _got(f"dtype {dtype}", traced)
    return f"{data}[idx]: indices must be integers, got {got}. Convert them, e.g. idx.astype(int)."


def _scalar_error(data: str, value: object, traced: bool) -> str:
    if traced or value is None:
        fix = f"Pass a 1-D array of rows, e.g. {data}[i[None]]."
        return f"{data}[idx]: a scalar index would drop the batch axis. {fix}"
    stop = int(np.asarray(value)) + 1 or ""  # the last row, -1, is the slice -1: to the end
    fix = f"Pass a slice or a list of rows, e.g. {data}[{value}:{stop}]."
    return f"{data}[idx]: a scalar index ({value}) would drop the batch axis. {fix}"


def _local_shape_error(data: str, devices: int, shape: tuple[int, ...], traced: bool) -> str:
    return (
        f"{data}[idx]: expected one index array for every device, shape (k,), or one row per "
        f"device, shape ({devices}, k); got {_got(f'shape {shape}', traced)}."
    )


def _not_1d_error(data: str, shape: tuple[int, ...], traced: bool) -> str:
    return (
        f"{data}[idx]: expected a 1-D index array, got {_got(f'shape {shape}', traced)}. For "
        "per-device indices into sharded data use X.local[idx] with shape (n_devices, k)."
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
    array = as_index_array(idx, "X", local=False, devices=0)
    return check_range(array, rows, "X[idx]")


def _stepped_slice_error(idx: slice) -> str:
    bounds = ":".join("" if b is None else str(b) for b in (idx.start, idx.stop, idx.step))
    return (
        f"X[{bounds}]: slices with a step are not supported; pass the rows as an index "
        "array, e.g. X[np.arange(start, stop, step)]."
    )


def traced_index(idx: compat.Tracer, *, local: bool, devices: int) -> compat.Tracer:
    """A traced index, checked for what its aval shows (dtype, shape); values later."""
    check_kind(idx, "X.local" if local else "X", local=local, devices=devices)
    return idx


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
        # Each shard's own rows: X.local[-1:] is the last row of every shard.
        return frozen(np.stack([np.arange(*idx.indices(int(h))) for h in held]))
    given = as_index_array(idx, "X.local", local=True, devices=n)
    if given.ndim == 1:
        given = np.broadcast_to(given, (n, given.shape[0]))
    array = np.where(given < 0, given + held[:, None], given)
    bad = (array < 0) | (array >= held[:, None])
    if bad.any():
        d, j = map(int, np.argwhere(bad)[0])
        raise IndexError(_local_out_of_range_error(d, int(held[d]), int(given[d, j])))
    return frozen(array)


def _uneven_local_slice_error(idx: slice, held: np.ndarray, counts: set[int]) -> str:
    bounds = ":".join("" if b is None else str(b) for b in (idx.start, idx.stop))
    return (
        f"X.local[{bounds}]: the shards hold {int(held.max())} or "
        f"{int(held.min())} rows, so this slice takes {max(counts)} rows of some "
        f"shards and {min(counts)} of others, and a local batch takes the same "
        f"count from every device. Take at most {_rows(int(held.min()))} of each "
        "shard (X.local[:k]), pass X.local[:] for every row, or use global "
        "indices (X[idx])."
    )


def _local_out_of_range_error(d: int, held: int, index: int) -> str:
    return (
        f"X.local[idx]: device {d} holds {_rows(held)} of its shard, but its index {index} is "
        f"out of range: each device's indices must be in [{-held}, {held - 1}], the rows it "
        "holds, counted from either end."
    )


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


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
