"""synk.data: data sets that live on the devices, and batches passed as indices.

A `Data` is put on the devices once. ``X[idx]`` and ``X.local[idx]`` are lazy batch views: a
`synk.Function` receives them in place of arrays, only the indices travel from host to device,
and each device gathers its own rows on the device, traced inside the function's body (a
``jnp.take`` from its copy, or `shards.rows_from_shards` for sharded data). `take` resolves a
view's index as the executable takes it, and takes its rows for ``f.serial``.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike
from numpy.typing import ArrayLike

from synk._src import compat, indices, runtime, wire
from synk._src.axis import AXIS
from synk._src.shards import ShardLayout
from synk._src.views import Batch, LocalIndexer


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


class Data:
    """A data set put on the devices once; index it to pass batches. See `synk.data`.

    Example:
      >>> import numpy as np, synk
      >>> X = synk.data(np.zeros((10, 2), np.float32), sharded=True)
      >>> X.rows_per_device, X.nbytes  # 10 rows dealt over 8 devices, 2 floats a row
      ((2, 2, 1, 1, 1, 1, 1, 1), 16)
    """

    def __init__(self, value: ArrayLike, *, sharded: bool = False) -> None:
        self._sharded = bool(sharded)
        self._devices = tuple(runtime.devices())
        self._mesh = runtime.mesh(self._devices)
        self._array: jax.Array | None = None
        self._rows = 0
        self._place(self._as_host(value, "synk.data(value)"))

    # ---------------------------------------------------------------- storage

    def _as_host(self, value: ArrayLike, where: str) -> np.ndarray:
        if isinstance(value, Data):
            value = np.asarray(value)
        array = np.asarray(value)
        if array.ndim == 0:
            raise ValueError(
                f"{where}: a data set needs rows; got a scalar. Pass an array of shape (rows, ...)."
            )
        if array.dtype == object:
            raise TypeError(f"{where}: expected a numeric array, got dtype object.")
        dtype = jax.dtypes.canonicalize_dtype(array.dtype)
        if dtype != array.dtype:
            wire.check_fits(array, dtype, where)
        return array.astype(dtype, copy=False)

    def _place(self, host: np.ndarray) -> None:
        rows = host.shape[0]
        if self._sharded:
            # Rows are dealt like a batch: device d holds rows [start_d, start_d +
            # held_d), held_d = q + (d < r); a shard that holds q rows ends in one
            # padding row, which no index can reach.
            layout = ShardLayout.of(rows, len(self._devices))
            if layout.padded != rows:
                padded = np.zeros((layout.padded, *host.shape[1:]), host.dtype)
                for d, (start, held) in enumerate(zip(layout.starts, layout.held)):
                    padded[d * layout.per : d * layout.per + held] = host[start : start + held]
                host = padded
            sharding = NamedSharding(self._mesh, P(AXIS))
        else:
            sharding = NamedSharding(self._mesh, P())
        # Every process holds the whole (equal) value; each device takes its part.
        array = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
        old = self._array
        self._array, self._rows = array, rows
        if old is not None:
            old.delete()

    # ---------------------------------------------------------------- public

    @property
    def devices(self) -> tuple[jax.Device, ...]:
        """The devices that hold the data, in mesh order (every device synk runs on)."""
        return self._devices

    @property
    def array(self) -> jax.Array | None:
        """The ``jax.Array`` on the devices (shards padded to equal length); None once deleted."""
        return self._array

    def live_array(self, where: str = "", argument: str = "") -> jax.Array:
        """`array`, refused once the data is deleted.

        Args:
          where: what the error starts with (the caller's name), if given.
          argument: the argument that holds this data, named in the error if given.

        Returns:
          The ``jax.Array`` on the devices (shards padded to equal length).

        Raises:
          RuntimeError: the data was deleted (`delete`).

        Example:
          >>> import numpy as np, synk
          >>> synk.data(np.zeros((4, 2))).live_array().shape
          (4, 2)
        """
        if self._array is None:
            raise RuntimeError(_deleted_error(where, argument))
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        """The data set's shape (rows first), as given."""
        return (self._rows, *self.live_array().shape[1:])

    @property
    def dtype(self) -> np.dtype:
        """The dtype on the devices (64-bit values as 32-bit unless JAX's 64-bit types are on)."""
        return self.live_array().dtype

    @property
    def ndim(self) -> int:
        """The number of axes, rows first."""
        return self.live_array().ndim

    @property
    def sharded(self) -> bool:
        """True if the rows are split across devices, False if every device holds all."""
        return self._sharded

    @property
    def nbytes(self) -> int:
        """Bytes held on each device."""
        array = self.live_array()
        per_device = array.shape[0] // len(self._devices) if self._sharded else array.shape[0]
        return per_device * math.prod(array.shape[1:]) * array.dtype.itemsize

    @property
    def rows_per_device(self) -> tuple[int, ...]:
        """The rows each device holds (all of them, or its shard; shards differ by at most 1)."""
        self.live_array()
        if self._sharded:
            return ShardLayout.of(self._rows, len(self._devices)).held
        return (self._rows,) * len(self._devices)

    @property
    def layout(self) -> ShardLayout | None:
        """How sharded rows are dealt over the devices (None if replicated)."""
        return ShardLayout.of(len(self), len(self._devices)) if self._sharded else None

    def __len__(self) -> int:
        self.live_array()
        return self._rows

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        array = self.live_array()
        if not array.is_fully_addressable:
            from jax.experimental import multihost_utils

            array = multihost_utils.process_allgather(array, tiled=True)
        out = np.asarray(array)
        layout = self.layout
        if layout is not None and layout.padded != self._rows:  # drop each shard's padding
            out = np.concatenate(
                [out[d * layout.per : d * layout.per + h] for d, h in enumerate(layout.held)]
            )
        return out if dtype is None else out.astype(dtype)

    def set_value(self, value: ArrayLike) -> None:
        """Replace the data (same or new shape). On any error the old value stays intact.

        A batch view holds indices, not rows: one made before ``set_value`` reads the new value's
        rows at its indices. Negative indices were resolved against the length the data had when
        the view was made. A view whose indices no longer fit the new length (the data shrank
        below them) is refused at the call, before anything runs; views whose indices all still
        fit stay valid.

        Args:
          value: the new data set, an array of shape (rows, ...), as `synk.data` takes.

        Raises:
          TypeError: the new value's dtype cannot be cast safely to this data's dtype.
          ValueError: a scalar, or values that this data's dtype cannot hold.
          RuntimeError: the data was deleted.

        Example:
          >>> import numpy as np, synk
          >>> X = synk.data(np.zeros((4, 2), np.float32))
          >>> X.set_value(np.ones((6, 2), np.float32))
          >>> X.shape
          (6, 2)
        """
        dtype = self.live_array("Data.set_value").dtype
        host = self._as_host(value, "Data.set_value(value)")
        if host.dtype != dtype and np.can_cast(host.dtype, dtype, casting="same_kind"):
            wire.check_fits(host, dtype, "Data.set_value(value)")
        if not np.can_cast(host.dtype, dtype, casting="same_kind"):
            raise TypeError(_unsafe_cast_error(dtype, host.dtype))
        self._place(host.astype(dtype, copy=False))

    def delete(self) -> None:
        """Free the device memory. Later use is an error.

        Example:
          >>> import numpy as np, synk
          >>> X = synk.data(np.zeros((4, 2)))
          >>> X.delete(); X
          synk.Data(<deleted>)
        """
        if self._array is not None:
            self._array.delete()
            self._array = None

    def __getitem__(self, idx: slice | ArrayLike) -> Batch:
        """A lazy batch of global rows: a slice (step 1) or 1-D int indices.

        Outside a trace the indices are checked here: out-of-range, float or boolean indices,
        stepped slices and scalars raise, and negative indices count from the end.

        Inside a trace (``jax.jit``, ``lax.scan``, ``jax.vmap``) `idx` may be a traced 1-D int
        array. Its values are not known until the executable runs, so they cannot be
        range-checked; they are read as ``x[idx]`` reads a ``jax.Array`` under ``jax.jit``: a
        negative index counts from the end (once), then an index still out of range is clamped
        to the first or last row (``jnp.take(x, idx, mode="clip")`` after wrapping). A slice
        needs bounds known when tracing (its length fixes the batch's shape); for a traced
        start, pass ``X[start + jnp.arange(k)]``. The data array is then a constant of the
        traced function, which JAX embeds in the program: sharded data spread over several
        processes is refused there (no process holds every row).

        Args:
          idx: a slice with step 1, or 1-D int row indices in any order, repeats allowed.

        Returns:
          A `synk.Batch`, to pass wherever a `synk.Function` slices an argument.

        Raises:
          IndexError: an index out of range (outside a trace).
          TypeError, ValueError: float, boolean or scalar indices, an index array that is not
            1-D, a slice with a step or with traced bounds.
          RuntimeError: the data was deleted.

        Example:
          >>> import jax, jax.numpy as jnp, numpy as np, synk
          >>> X = synk.data(np.arange(8.0).reshape(4, 2))
          >>> f = synk.function(lambda x: x.sum(0), reduce="sum")
          >>> np.asarray(f(X[[0, -1]]))
          array([6., 8.], dtype=float32)
          >>> np.asarray(jax.jit(lambda i: f(X[i]))(jnp.array([0, -1, 9])))  # 9: the last row
          array([12., 15.], dtype=float32)
        """
        self.live_array()
        if isinstance(idx, compat.Tracer):
            # No reach: a traced view lives inside one trace, which closes over the
            # data array it saw, so it never meets a later set_value (`Batch.fits`).
            index = indices.traced_index(idx, local=False, devices=len(self._devices))
            return Batch(self, index, local=False, rows=self._rows, reach=0)
        index = indices.global_index(idx, self._rows)
        reach = int(index.max()) + 1 if index.size else 0
        return Batch(self, index, local=False, rows=self._rows, reach=reach)

    @property
    def local(self) -> LocalIndexer:
        """Local views ``X.local[idx]``, each device indexing its own shard (sharded data only).

        ``X.local[idx]`` is a `synk.Batch` of rows ``idx`` of each device's own shard (a slice,
        int indices of shape (k,) for every device, or (devices, k), a row of them per device),
        no rows moving between devices; replicated data raises a ValueError.
        """
        self.live_array()
        if not self._sharded:
            raise ValueError(_replicated_local_error())
        return LocalIndexer(self)

    def __repr__(self) -> str:
        if self._array is None:
            return "synk.Data(<deleted>)"
        if self._sharded:
            held = sorted(set(self.rows_per_device), reverse=True)
            layout = f"sharded {' or '.join(map(str, held))} rows per device"
        else:
            layout = "replicated"
        kind = self._devices[0].platform
        return (
            f"synk.Data(shape={self.shape}, dtype={self.dtype}, {layout} over "
            f"{len(self._devices)} {kind} devices, {_fmt_bytes(self.nbytes)} per device)"
        )


def _unsafe_cast_error(dtype: np.dtype, new: np.dtype) -> str:
    return (
        f"Data.set_value: this data is {dtype} and the new value is {new}, which cannot be "
        f"cast safely to {dtype}. Convert it first (e.g. value.astype({str(dtype)!r})) or "
        "make a new synk.data(value)."
    )


def _replicated_local_error() -> str:
    return (
        "X.local[...] indexes each device's own shard, but this synk.Data is replicated. Use "
        "X[idx] (every device holds all rows), or create it with synk.data(value, sharded=True)."
    )


def data(value: ArrayLike, *, sharded: bool = False) -> Data:
    """Put a data set on the devices once; pass batches of it as indices.

    Args:
      value: an array of shape (rows, ...): numpy, jax, or anything ``np.asarray`` accepts.
        Under several processes, every process passes the same value.
      sharded: False (default): every device holds all rows (fast indexing, memory per device =
        the whole set). True: the rows are split across devices (for data larger than one
        device); global indices then move rows between devices with one ``all_to_all`` per call.

    Returns:
      A `synk.Data`. ``X[idx]`` (a slice with step 1, or 1-D int indices in any order, repeats
      allowed) is a lazy batch a `synk.Function` accepts wherever it slices an argument;
      ``X.local[idx]`` (sharded data) indexes each device's own shard with no communication.

    Raises:
      ValueError: a scalar, or values that JAX's dtype on the devices cannot hold (int64
        beyond int32 with 64-bit types off, say).
      TypeError: an array of Python objects.

    Example:
      >>> import numpy as np, synk
      >>> X = synk.data(np.arange(20.0).reshape(10, 2))
      >>> X
      synk.Data(shape=(10, 2), dtype=float32, replicated over 8 cpu devices, 80 B per device)
      >>> f = synk.function(lambda x: x.sum(0), reduce="sum")
      >>> np.asarray(f(X[[0, 9, 9]]))  # rows 0, 9, 9 gathered on the devices
      array([36., 39.], dtype=float32)
    """
    return Data(value, sharded=sharded)


def _deleted_error(where: str, argument: str) -> str:
    what = f"argument `{argument}` holds a synk.Data that" if argument else "this synk.Data"
    return (
        f"{where + ': ' if where else ''}{what} was deleted (Data.delete()); its device "
        "memory is gone. Create a new one with synk.data(value)."
    )
