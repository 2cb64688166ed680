"""Every private or version-dependent JAX access, in one place.

When JAX moves one of these, this is the one file to change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import jax
from jax.typing import DTypeLike

if TYPE_CHECKING:
    from jax.core import Tracer
    from jax.extend.core import ClosedJaxpr
else:
    # The type of values inside jax.jit, grad and vmap (public as jax.core.Tracer).
    Tracer = getattr(jax.core, "Tracer", None) or importlib.import_module("jax._src.core").Tracer

F = TypeVar("F", bound=Callable[..., Any])


def backend_started() -> bool:
    """Whether JAX has started its backends (the device count can no longer change)."""
    # JAX has no public query; this private one has been stable for years. If
    # it moves, assume not started and let JAX's own config validator raise
    # when the device count is set.
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        return False


def coordinator_address() -> str | None:
    """The jax.distributed coordinator's address (it has no public accessor)."""
    try:
        from jax._src import distributed

        return distributed.global_state.coordinator_address
    except (ImportError, AttributeError):
        return None


def uses_axis(jaxpr: ClosedJaxpr, axis: str) -> bool:
    """Whether a traced program names `axis` in any equation (a collective or axis_index).

    Walks every sub-program (jit, scan, cond, custom derivatives). Read from the
    program rather than recorded while tracing: a jitted helper traced earlier
    is not traced again, so a side effect would miss it.
    """
    seen: set[int] = set()

    def names(value: object) -> bool:
        if isinstance(value, str):
            return value == axis
        if isinstance(value, tuple | list | frozenset | set):
            return any(names(v) for v in value)
        return False

    def walk(program: Any) -> bool:  # a Jaxpr, a ClosedJaxpr, or what holds one
        program = getattr(program, "jaxpr", program)  # a ClosedJaxpr holds a Jaxpr
        if id(program) in seen:
            return False
        seen.add(id(program))
        for eqn in program.eqns:
            for value in eqn.params.values():
                if names(value):
                    return True
                for sub in value if isinstance(value, tuple | list) else (value,):
                    if hasattr(getattr(sub, "jaxpr", sub), "eqns") and walk(sub):
                        return True
        return False

    return walk(jaxpr)


def hide_frames(path: str) -> None:
    """Leave the frames of files under `path` out of the tracebacks that pass an
    `api_boundary`, as JAX leaves out its own (``JAX_TRACEBACK_FILTERING=off``
    shows them)."""
    try:
        from jax._src import traceback_util

        traceback_util.register_exclusion(path)
    except (ImportError, AttributeError):
        pass


def api_boundary(fn: F) -> F:
    """`fn`, whose errors reach the caller with the hidden frames left out.

    A refused call's traceback then ends in the user's line, as a refused
    ``jax.jit`` call's does.
    """
    try:
        from jax._src import traceback_util

        return traceback_util.api_boundary(fn)
    except (ImportError, AttributeError):
        return fn


def under_jit() -> bool:
    """Whether JAX is tracing a program to compile (jit, scan, ...), not only
    transforming eagerly (an eager jax.grad or jax.vmap computes as it goes)."""
    try:
        from jax._src import core

        return core.unsafe_am_i_under_a_jit()
    except (ImportError, AttributeError):
        return True  # unknown: the convention inside a trace, every value global


def device_order(sharding: jax.sharding.Sharding) -> tuple[jax.Device, ...] | None:
    """The devices of a sharding in its order (None if unknown).

    jit takes committed arguments only on its devices in its order ("Received
    incompatible devices"), so an array on the same devices in another order
    must be moved first. Shardings have no public accessor for the order.
    """
    try:
        return tuple(sharding._device_assignment)
    except AttributeError:
        return None


def missing_private_names() -> list[str]:
    """The private JAX names this module reaches that the installed JAX lacks (none, ideally).

    Each accessor above falls back quietly when its name is gone; this says
    which have, so that a test fails on a JAX release that moved one.
    """
    checks = {
        "jax._src.xla_bridge.backends_are_initialized": (
            "jax._src.xla_bridge",
            "backends_are_initialized",
        ),
        "jax._src.distributed.global_state": ("jax._src.distributed", "global_state"),
        "jax._src.core.unsafe_am_i_under_a_jit": ("jax._src.core", "unsafe_am_i_under_a_jit"),
        "jax._src.traceback_util.register_exclusion": (
            "jax._src.traceback_util",
            "register_exclusion",
        ),
        "jax._src.traceback_util.api_boundary": ("jax._src.traceback_util", "api_boundary"),
    }
    missing = [
        label
        for label, (module, name) in checks.items()
        if not hasattr(importlib.import_module(module), name)
    ]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if device_order(sharding) is None:
        missing.append("Sharding._device_assignment")
    if not hasattr(jax.random.key(0).dtype, "_impl"):
        missing.append("PRNG key dtype ._impl")
    return missing


def zeros(shape: tuple[int, ...], dtype: DTypeLike) -> jax.Array:
    """Zeros of any dtype; for typed PRNG keys, keys made of zero bits (a placeholder)."""
    import jax.numpy as jnp

    if not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return jnp.zeros(shape, dtype)
    key_dtype: Any = dtype  # a typed key's dtype, which the public types do not name
    impl = key_dtype._impl  # a key dtype's implementation has no public accessor
    data = jnp.zeros((*shape, *impl.key_shape), jnp.uint32)
    return jax.random.wrap_key_data(data, impl=impl)
