"""How values reach and travel between devices: device dtypes, comm_dtype, floats as integers.

Host values that the device dtype cannot hold are refused (`check_fits`).

Sums, means and products of float16/bfloat16 accumulate and travel in
float32 (`widened`); `comm_dtype` compresses what travels, complex values as
their real and imaginary parts (`encode`, `decode`); max/min of floats travel
as integers in IEEE total order, so that NaN wins on every backend
(`ordered`, `from_ordered`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.typing import DTypeLike

# A value as it travels: one array, or a complex one's (real, imaginary) parts.
Encoded = jax.Array | tuple[jax.Array, jax.Array]


def widened(dtype: DTypeLike) -> np.dtype:
    """float16, bfloat16 (and narrower floats) accumulate in float32; the rest as they are."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def cast(x: jax.Array, dtype: DTypeLike) -> jax.Array:
    """`x` in `dtype`; no op at all when it already is, so the float32 path gains none."""
    return x if x.dtype == dtype else x.astype(dtype)


def over_devices(
    reduction: Callable[[jax.Array, tuple[int, ...]], jax.Array], x: Encoded
) -> Encoded:
    """`x` (or each part of an encoded complex value) reduced over axis 0, the devices."""
    return jax.tree.map(lambda part: reduction(part, (0,)), x)


def replicated(x: Encoded, sharding: NamedSharding) -> Encoded:
    """`x` (or each part of it) gathered onto every device."""
    return jax.tree.map(lambda part: lax.with_sharding_constraint(part, sharding), x)


def encode(x: jax.Array, comm_dtype: DTypeLike | None) -> Encoded:
    """`x` as it travels: floats in comm_dtype, complex as (real, imag) in comm_dtype."""
    if comm_dtype is not None and jnp.issubdtype(x.dtype, jnp.complexfloating):
        # A cast of complex to a real dtype drops the imaginary part.
        return cast(jnp.real(x), comm_dtype), cast(jnp.imag(x), comm_dtype)
    return encode_real(x, comm_dtype)


def encode_real(x: jax.Array, comm_dtype: DTypeLike | None) -> jax.Array:
    """`encode` of a value that is not complex (max and min refuse those): one array."""
    if comm_dtype is None or not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return cast(x, comm_dtype)


def decode(y: Encoded, dtype: DTypeLike) -> jax.Array:
    """`_encode`'s value back in `dtype`."""
    if isinstance(y, tuple):
        part = np.finfo(dtype).dtype  # complex64 -> float32
        return lax.complex(cast(y[0], part), cast(y[1], part))
    return cast(y, dtype)


def end(dtype: DTypeLike, *, low: bool) -> float | int:
    """The lowest (or highest) value of a dtype: -inf/inf for floats."""
    if jnp.issubdtype(dtype, jnp.inexact):
        return -jnp.inf if low else jnp.inf
    info = jnp.iinfo(dtype)
    return info.min if low else info.max


_SIGNED = {1: jnp.int8, 2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def ordered(x: jax.Array, *, nan_wins_high: bool) -> jax.Array:
    """Floats as same-width integers in IEEE total order; NaN at the winning end.

    Positive floats already order as their bits do; negative ones order
    backwards, so their magnitude bits are flipped. Every NaN (either sign,
    any payload) becomes the integer maximum for max, the minimum for min.
    Integers pass as they are.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    key_dtype = _SIGNED[x.dtype.itemsize]
    key = flip_negatives(lax.bitcast_convert_type(x, key_dtype))
    return jnp.where(jnp.isnan(x), end(key_dtype, low=not nan_wins_high), key)


def from_ordered(key: jax.Array, dtype: DTypeLike) -> jax.Array:
    """`ordered`'s integers back to floats; the integer ends decode to NaN."""
    if not jnp.issubdtype(dtype, jnp.floating):
        return key
    return lax.bitcast_convert_type(flip_negatives(key), dtype)


def flip_negatives(bits: jax.Array) -> jax.Array:
    """Flip every bit but the sign of negative integers: its own inverse."""
    sign = bits >> (bits.dtype.itemsize * 8 - 1)  # arithmetic: all ones if negative
    return bits ^ (sign & jnp.iinfo(bits.dtype).max)


def check_fits(array: np.ndarray, dtype: np.dtype, where: str) -> None:
    """Refuse values that the device dtype (32 bits, x64 off) would wrap or make infinite."""
    kind, into = array.dtype.kind, np.dtype(dtype).kind
    if kind in "iu" and into in "iu":  # integers into a float always fit its range
        info = np.iinfo(dtype)
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        bad = high if high > info.max else low if low < info.min else None
    elif kind in "fc" and into in "fc" and array.size:
        finite = np.isfinite(array)
        big = np.abs(array[finite]).max() if finite.any() else 0
        bad = big if big > np.finfo(dtype).max else None
    else:
        return
    if bad is not None:
        raise ValueError(_does_not_fit_error(where, bad, array.dtype, dtype))


def _does_not_fit_error(where: str, bad: object, given: np.dtype, dtype: np.dtype) -> str:
    return (
        f"{where}: the value holds {bad}, which {dtype} cannot hold; JAX keeps "
        f"{given} as {dtype} on the devices unless 64-bit types are on. Scale or "
        f"convert the values so that they fit {dtype}, or turn on 64-bit types "
        "(jax.config.update('jax_enable_x64', True), before anything uses JAX)."
    )


def parse_comm_dtype(comm_dtype: Any, where: str) -> np.dtype | None:
    """The dtype reductions travel in: None, or a floating dtype."""
    if comm_dtype is None:
        return None
    try:
        dtype = jnp.dtype(comm_dtype)
    except TypeError:
        raise TypeError(_not_a_dtype_error(where, comm_dtype)) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(_not_floating_error(where, dtype))
    return dtype


def _not_a_dtype_error(where: str, comm_dtype: object) -> str:
    return (
        f"{where}: comm_dtype={comm_dtype!r} is not a dtype; expected e.g. jnp.bfloat16 or "
        "jnp.float16."
    )


def _not_floating_error(where: str, dtype: np.dtype) -> str:
    return (
        f"{where}: comm_dtype={dtype} is not a floating dtype; expected e.g. jnp.bfloat16 "
        "(reductions of floating outputs travel in it)."
    )
