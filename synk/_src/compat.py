"""Every private or version-dependent JAX access, in one place.

Called by: `runtime` (has the backend started?), `body` and `reduce` (is a
value varying over the device axis?), `synk info` (the coordinator address).
Calls: JAX only. When JAX moves one of these, this is the one file to change.
"""

from __future__ import annotations

import jax
from jax import lax


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


def varying_axes(x) -> frozenset:
    """The mesh axes over which a value inside shard_map varies."""
    aval = jax.typeof(x)
    # jax 0.10 keeps the varying axes in aval.mat.varying; older and newer: aval.vma.
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", None) or ())


def varying(x, axis: str):
    """Cast an invariant value to varying over `axis` (a no-op if it already varies).

    Inside shard_map with check_vma, a replicated input, a constant carry or a
    constant branch is invariant while per-device values are varying; mixing
    them is a type error, and differentiating an implicit cast psums the
    gradient. Casting explicitly keeps both right.
    """
    return x if axis in varying_axes(x) else lax.pcast(x, axis, to="varying")


def coordinator_address() -> str | None:
    """The jax.distributed coordinator's address (it has no public accessor)."""
    try:
        from jax._src import distributed

        return distributed.global_state.coordinator_address
    except (ImportError, AttributeError):
        return None
