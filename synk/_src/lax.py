"""Collectives for use inside a `synk.function`: synk.lax.

Inside a synk.Function they run over every device; under ``f.serial`` (or
anywhere outside a synk.Function) they act as on a single device, so the
serial reference stays a plain single-device function.
"""

from __future__ import annotations

import contextlib
import threading

import jax.numpy as jnp
from jax import lax

from synk._src.runtime import AXIS


class _Trace(threading.local):
    bound = False  # tracing the per-device body: the device axis exists


_trace = _Trace()


@contextlib.contextmanager
def tracing(*, bound: bool):
    """Trace the user's function with the device axis bound (or not: one device)."""
    saved = _trace.bound
    _trace.bound = bound
    try:
        yield _trace
    finally:
        _trace.bound = saved


def _bound() -> bool:
    return _trace.bound


def psum(x):
    """Sum ``x`` (a pytree) over all devices.

    Example:
      >>> import numpy as np, synk
      >>> @synk.function(reduce="per_device")
      ... def total(x):
      ...     return synk.lax.psum(x.sum())  # every device gets the sum over all devices
      >>> n = synk.device_count()
      >>> out = total(np.ones(8 * n))
      >>> out.shape == (n,) and bool((out == 8 * n).all())
      True
    """
    return lax.psum(x, AXIS) if _bound() else x


def pmean(x):
    """Average ``x`` (a pytree) over all devices (each device weighs the same)."""
    return lax.pmean(x, AXIS) if _bound() else x


def pmax(x):
    """Elementwise maximum of ``x`` (a pytree) over all devices."""
    return lax.pmax(x, AXIS) if _bound() else x


def pmin(x):
    """Elementwise minimum of ``x`` (a pytree) over all devices."""
    return lax.pmin(x, AXIS) if _bound() else x


def all_gather(x, *, axis: int = 0, tiled: bool = False):
    """Every device's ``x``, stacked along a new ``axis`` (concatenated if ``tiled``)."""
    if _bound():
        return lax.all_gather(x, AXIS, axis=axis, tiled=tiled)
    return x if tiled else jnp.expand_dims(x, axis)


def device_index():
    """This device's index in ``0 .. device_count()-1`` (0 under ``f.serial``)."""
    return lax.axis_index(AXIS) if _bound() else jnp.int32(0)
