"""Collectives for use inside a `synk.function`: synk.lax.

Inside a synk.Function they run over every device; under ``f.serial``, or
anywhere outside a synk.Function, they act as on a single device, so the
serial reference stays a plain single-device function. `row_keys` gives
per-row randomness that does not depend on the device count.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from synk._src.axis import AXIS

# A piece's rows: (a thunk giving its first global row index, the rows in it).
Rows = tuple[Callable[[], int | jax.Array], int]


class _Trace(threading.local):
    bound = False  # synk is tracing a function (or f.serial): the device axis exists
    rows: Rows | None = None  # the rows of the piece being traced, if known


_trace = _Trace()


@contextlib.contextmanager
def tracing(*, rows: Rows | None = None) -> Generator[None, None, None]:
    """Trace the user's function with synk's device axis bound.

    `rows` is ``(first, count)``: the piece's rows are global rows ``first()``
    to ``first() + count``; `first` is a thunk, so that nothing is computed for
    a function that never asks.
    """
    saved = _trace.bound, _trace.rows
    _trace.bound, _trace.rows = True, rows
    try:
        yield
    finally:
        _trace.bound, _trace.rows = saved


def inside() -> bool:
    """Whether synk is tracing a function's body (or ``f.serial``) in this thread."""
    return _trace.bound


def on_one_device(fn: Callable[[list[Any]], Any], arrays: list[Any]) -> Any:
    """``fn(arrays)`` with synk's device axis bound at size 1: the whole batch on one device.

    Collectives over the axis (synk.lax, or a library's ``lax.pmean(x,
    synk.lax.axis_name)``) then act as on a single device. The arrays enter
    the size-1 map as its (unmapped) arguments, not captured, so libraries
    that write state in place (Flax's Variables, made inside `fn`) see one
    trace level.
    """
    out = jax.vmap(fn, in_axes=(None,), axis_name=AXIS, axis_size=1)(arrays)
    return jax.tree_util.tree_map(lambda o: o[0], out)


axis_name = AXIS
"""The name of synk's device axis, for libraries that take an ``axis_name``.

Inside a `synk.function` (and under ``f.serial``, where the axis has one
device) ``lax.pmean(x, synk.lax.axis_name)`` averages over every device;
e.g. ``flax.nnx.BatchNorm(..., axis_name=synk.lax.axis_name)`` synchronises
its batch statistics. Like synk.lax, it needs an equal share per device and
``num_slices=1``.
"""


def _over_devices(
    collective: Callable[[Any, str], Any], name: str, summary: str, result: str, example: str
) -> Callable[[Any], Any]:
    """The synk.lax form of a JAX collective over the device axis: ``x`` itself where
    the axis is not bound (outside a synk.Function)."""

    def over_devices(x: Any) -> Any:
        return collective(x, AXIS) if inside() else x

    over_devices.__name__ = over_devices.__qualname__ = name
    over_devices.__doc__ = f"""{summary}

    Args:
      x: a pytree of arrays, this device's values.

    Returns:
      The {result} every device's ``x``, the same on each; on one device
      (``f.serial``, or outside a synk.Function), ``x`` itself.

    Example:
      >>> import numpy as np, synk
{example}
    """
    return over_devices


psum = _over_devices(
    lax.psum, "psum", "Sum ``x`` (a pytree) over all devices.", "sum over",
    """      >>> @synk.function(reduce="per_device")
      ... def total(x):
      ...     return synk.lax.psum(x.sum())  # every device gets the sum over all devices
      >>> n = synk.device_count()
      >>> out = total(np.ones(8 * n))
      >>> out.shape == (n,) and bool((out == 8 * n).all())
      True""",
)  # fmt: skip
pmean = _over_devices(
    lax.pmean, "pmean", "Average ``x`` (a pytree) over all devices (each device weighs the same).",
    "mean of",
    """      >>> f = synk.function(lambda x: synk.lax.pmean(x.mean()), reduce="per_device")
      >>> f(np.arange(64.0)).tolist() == [31.5] * synk.device_count()  # equal shares: the mean
      True""",
)  # fmt: skip
pmax = _over_devices(
    lax.pmax, "pmax", "Elementwise maximum of ``x`` (a pytree) over all devices.", "maximum over",
    """      >>> f = synk.function(lambda x: synk.lax.pmax(x.max()), reduce="per_device")
      >>> f(np.arange(64.0)).tolist() == [63.0] * synk.device_count()
      True""",
)  # fmt: skip
pmin = _over_devices(
    lax.pmin, "pmin", "Elementwise minimum of ``x`` (a pytree) over all devices.", "minimum over",
    """      >>> f = synk.function(lambda x: synk.lax.pmin(x.min()), reduce="per_device")
      >>> f(np.arange(64.0)).tolist() == [0.0] * synk.device_count()
      True""",
)  # fmt: skip


def all_gather(x: Any, *, axis: int = 0, tiled: bool = False) -> Any:
    """Every device's ``x``, stacked along a new ``axis`` (concatenated if ``tiled``).

    Args:
      x: an array, this device's value.
      axis: where the device axis goes in the result (default 0).
      tiled: concatenate along ``axis`` instead of stacking along a new one.

    Returns:
      The devices' ``x`` in device order, on every device; on one device
      (``f.serial``, or outside a synk.Function), ``x`` alone along ``axis``.

    Example:
      >>> import numpy as np, synk
      >>> n = synk.device_count()
      >>> f = synk.function(lambda x: synk.lax.all_gather(x.sum()), reduce="per_device")
      >>> f(np.ones(2 * n)).shape == (n, n)  # each device holds every device's sum
      True
    """
    if inside():
        return lax.all_gather(x, AXIS, axis=axis, tiled=tiled)
    return x if tiled else jnp.expand_dims(x, axis)


def device_index() -> jax.Array:
    """This device's index in ``0 .. device_count()-1`` (0 under ``f.serial``).

    Returns:
      An int32 scalar.

    Example:
      >>> import numpy as np, synk
      >>> f = synk.function(lambda x: synk.lax.device_index(), reduce="per_device")
      >>> f(np.ones(8)).tolist() == list(range(synk.device_count()))
      True
    """
    return lax.axis_index(AXIS) if inside() else jnp.int32(0)


def row_keys(key: jax.Array, num_rows: int | None = None) -> jax.Array:
    """One PRNG key per row of this device's rows, folded from each row's global index.

    Per-row randomness (dropout, noise per example) drawn from these keys is
    the same on any number of devices, for any ``num_slices``, and under
    ``f.serial``: row i of the global batch always gets ``fold_in(key, i)``.
    A broadcast key used directly would give every device the same stream.

    Args:
      key: a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``), passed
        broadcast (the same on every device).
      num_rows: the number of rows. Inside a synk.Function or ``f.serial``
        synk knows it (the batch's rows on this device); elsewhere give it, and
        the rows are 0 .. num_rows - 1.

    Returns:
      Keys of shape ``(rows,)``, one per row.

    Raises:
      ValueError: outside a synk.Function without ``num_rows``, or a
        ``num_rows`` that is not this device's rows.

    Example:
      >>> import jax, numpy as np, synk
      >>> @synk.function(in_axes=(None, 0), reduce="gather")
      ... def noisy(key, x):
      ...     keys = synk.lax.row_keys(key)
      ...     return x + jax.vmap(jax.random.normal)(keys)
      >>> key, x = jax.random.key(0), np.zeros(13, np.float32)
      >>> bool(np.allclose(noisy(key, x), noisy.serial(key, x)))
      True
    """
    rows = _trace.rows
    if rows is None:
        if num_rows is None:
            raise ValueError(_unknown_rows_error())
        first, count = (lambda: 0), num_rows
    else:
        first, count = rows
        if num_rows is not None and num_rows != count:
            raise ValueError(_other_rows_error(num_rows, count))
    index = first() + jnp.arange(count, dtype=jnp.int32)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def _unknown_rows_error() -> str:
    return (
        "synk.lax.row_keys(key): the rows are unknown here (no sliced argument, or "
        "outside a synk.Function and its f.serial). Pass num_rows=, the number of "
        "rows to draw keys for."
    )


def _other_rows_error(num_rows: int, count: int) -> str:
    return (
        f"synk.lax.row_keys(key, num_rows={num_rows}): this piece has {count} rows. "
        "Leave num_rows out inside a synk.Function, or pass the rows of the batch "
        "the function sees (x.shape[0])."
    )
