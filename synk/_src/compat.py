"""Every private or version-dependent JAX access, in one place.

Called by: `runtime` (has the backend started?), ``synk info`` (the
coordinator address), `placement` and `collectives` (a sharding's device order).
Calls: JAX only. When JAX moves one of these, this is the one file to change.
"""

from __future__ import annotations


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


def device_order(sharding) -> tuple | None:
    """The devices of a sharding in its order (None if unknown).

    jit takes committed arguments only on its devices in its order ("Received
    incompatible devices"), so an array on the same devices in another order
    must be moved first. Shardings have no public accessor for the order.
    """
    try:
        return tuple(sharding._device_assignment)
    except AttributeError:
        return None
