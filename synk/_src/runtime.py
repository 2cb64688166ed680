"""Set-up: simulated CPU devices, jax.distributed, the device list and the mesh.

Nothing here touches a JAX backend at import time: the backend starts on the
first call that needs devices, after `init` has had its chance to configure it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import KeyPath
from numpy.typing import ArrayLike

from synk._src import allgather, compat, launch, settings
from synk._src.axis import AXIS

# What `init` set up, so that a second call with the same request is a no-op
# and one with a different request is an error instead of being ignored.
_state: dict[str, object] = {}
_lock = threading.Lock()


def init(*, cpu_devices: int | None = None, distributed: bool | None = None) -> None:
    """Configure the devices synk runs on. Optional and idempotent.

    Call it at the top of a script or notebook, before anything else uses JAX.
    Without it, synk configures itself on first use from the environment
    (``SYNK_CPU_DEVICES``, and an ``mpiexec``/``srun`` launch).

    Args:
      cpu_devices: simulate this many CPU devices (for machines without an
        accelerator, tests and notebooks). Where a GPU backend is present it
        is the default and this only affects the CPU backend. Defaults to
        the ``SYNK_CPU_DEVICES`` environment variable, else JAX's default.
      distributed: start ``jax.distributed`` so that functions span every
        device of every process. ``None`` (default) starts it when the
        process was launched by ``mpiexec``/``srun`` with more than one rank.

    Raises:
      RuntimeError: JAX's backend already started with a different device
        count (``init`` came too late), or ``init`` was already called with
        other settings.
      ValueError: ``cpu_devices`` (or ``SYNK_CPU_DEVICES``) is not a positive integer.

    Example:
      >>> import synk
      >>> synk.init(cpu_devices=8)  # a no-op when called again with the same settings
      >>> synk.device_count()
      8
    """
    if cpu_devices is not None and (
        isinstance(cpu_devices, bool) or not isinstance(cpu_devices, int) or cpu_devices < 1
    ):
        raise ValueError(_bad_cpu_devices_error(cpu_devices))
    if cpu_devices is None:
        cpu_devices = settings.cpu_devices()
    if distributed is None:
        distributed = launch.launched_ranks() > 1
    request = {"cpu_devices": cpu_devices, "distributed": bool(distributed)}
    with _lock:
        if _state:
            if _state == request:
                return
            raise RuntimeError(_changed_settings_error(_state, request))
        if compat.backend_started():
            _check_late_request(request)
        else:
            if cpu_devices is not None:
                jax.config.update("jax_num_cpu_devices", cpu_devices)
            if distributed:
                launch.start_distributed()
        _state.update(request)


def _bad_cpu_devices_error(cpu_devices: object) -> str:
    return (
        f"synk.init(cpu_devices={cpu_devices!r}): expected a positive integer, "
        "the number of CPU devices to simulate."
    )


def _changed_settings_error(state: Mapping[str, object], request: Mapping[str, object]) -> str:
    return (
        f"synk.init was already called with {_fmt(state)}; now asked for "
        f"{_fmt(request)}. Settings cannot change once JAX has started: restart "
        "the process (or the notebook kernel) to change them."
    )


def _fmt(request: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in request.items())


def _check_late_request(request: Mapping[str, object]) -> None:
    """The backend is up: accept the request only if it already holds."""
    wanted = request["cpu_devices"]
    if wanted is not None and jax.default_backend() == "cpu":
        have = jax.local_device_count()
        if have != wanted:
            raise RuntimeError(_late_cpu_devices_error(wanted, have))
    if request["distributed"] and not jax.distributed.is_initialized():
        raise RuntimeError(_late_distributed_error())


def _late_cpu_devices_error(wanted: object, have: int) -> str:
    return (
        f"synk.init(cpu_devices={wanted}) came too late: JAX's backend has already "
        f"started with {have} CPU device(s), and the count cannot change now. "
        "Call synk.init(...) (or set SYNK_CPU_DEVICES) before anything else uses "
        "JAX: before jax.devices(), before creating any jax array, at the top of "
        "the script or notebook; or restart the process."
    )


def _late_distributed_error() -> str:
    return (
        "synk.init(distributed=True) came too late: JAX's backend has already started, "
        "and jax.distributed must start before it. Call synk.init() at the top of the "
        "script, before anything else uses JAX."
    )


def ensure_init() -> None:
    """Run `init` with its defaults if the user did not call it."""
    if not _state:
        init()


def devices() -> list[jax.Device]:
    """Every device synk runs on, across all processes, in mesh order.

    Returns:
      A list of ``jax.Device``.

    Example:
      >>> import synk
      >>> len(synk.devices()) == synk.device_count()
      True
    """
    ensure_init()
    return list(jax.devices())


def device_count() -> int:
    """The number of devices synk runs on, across all processes.

    Returns:
      ``len(synk.devices())``.

    Example:
      >>> import synk
      >>> synk.device_count() >= 1
      True
    """
    ensure_init()
    return jax.device_count()


def process_index() -> int:
    """This process's rank (0 in a single-process run).

    Returns:
      An int from 0 to ``process_count() - 1``.

    Example:
      >>> import synk
      >>> synk.process_index()
      0
    """
    ensure_init()
    return jax.process_index()


def process_count() -> int:
    """The number of processes (1 unless launched with ``mpiexec``/``srun``).

    Returns:
      An int, at least 1.

    Example:
      >>> import synk
      >>> synk.process_count()
      1
    """
    ensure_init()
    return jax.process_count()


def process_share(x: Any, axis: int = 0) -> Any:
    """This process's share of a global batch: the whole of ``x`` in one process.

    Under ``mpiexec -n P`` a sliced host argument is each process's own share
    of the global batch, the global batch being the shares concatenated in
    process order. A script that builds the same global batch on every process
    passes ``synk.process_share(batch)`` to a `synk.Function`; the result is
    the serial function's on the whole batch, on every process.

    Args:
      x: the global batch (a pytree of arrays), the same on every process.
      axis: the batch axis (default 0).

    Returns:
      The same pytree, each leaf cut to rows ``[i * B/P, (i + 1) * B/P)`` along
      ``axis`` for process ``i`` of ``P`` (numpy arrays).

    Raises:
      ValueError: under several processes, a leaf with no axis ``axis``, or whose length along
        it does not divide over the processes.

    Example:
      >>> import numpy as np, synk
      >>> f = synk.function(lambda x: x.sum(), reduce="sum")
      >>> batch = np.arange(16.0)  # the same global batch on every process
      >>> float(f(synk.process_share(batch)))  # 120.0 under mpiexec too
      120.0
    """
    count, rank = process_count(), process_index()

    def cut(path: KeyPath, leaf: ArrayLike) -> np.ndarray:
        leaf = np.asarray(leaf)
        if count == 1:
            return leaf
        if leaf.ndim == 0 or not -leaf.ndim <= axis < leaf.ndim:
            raise ValueError(_no_share_axis_error(path, leaf.shape, axis, count))
        rows = leaf.shape[axis]
        if rows % count:
            raise ValueError(_indivisible_batch_error(path, rows, axis, count))
        per = rows // count
        index = (slice(None),) * (axis % leaf.ndim) + (slice(rank * per, (rank + 1) * per),)
        return leaf[index]  # a view, not a copy

    return jax.tree_util.tree_map_with_path(cut, x)


def _no_share_axis_error(
    path: jax.tree_util.KeyPath, shape: tuple[int, ...], axis: int, count: int
) -> str:
    return (
        f"synk.process_share: x{jax.tree_util.keystr(path)} has shape {shape}, "
        f"which has no axis {axis} to split over {count} processes. Pass the batch "
        "arrays only, or give the batch axis with axis=."
    )


def _indivisible_batch_error(path: jax.tree_util.KeyPath, rows: int, axis: int, count: int) -> str:
    return (
        f"synk.process_share: x{jax.tree_util.keystr(path)} has {rows} rows along axis "
        f"{axis}, which do not divide over {count} processes. Use a global batch "
        f"that is a multiple of {count} rows."
    )


def global_batch(x: Any, axis: int = 0) -> Any:
    """Global ``jax.Array`` values of this process's share of a batch, for your own ``jax.jit``.

    Inside ``jax.jit`` every value is global: under ``mpiexec`` a batch passed
    to a jitted step must be the whole batch, on every process, where a
    `synk.Function` called eagerly takes each process's share. This builds
    that global batch from the shares without moving more than needed: each
    process's rows stay on its own devices when they divide over them (the
    batch then comes sharded over every device along `axis`); otherwise the
    shares are gathered and the batch is replicated.

    Args:
      x: this process's share (a pytree of arrays); the global batch is the
        shares concatenated along `axis` in process order.
      axis: the batch axis (default 0).

    Returns:
      The same pytree of global ``jax.Array`` values on synk's devices.

    Raises:
      ValueError: a leaf with no axis ``axis`` (a scalar, say).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, synk
      >>> loss = synk.function(lambda w, x: jnp.mean((x @ w) ** 2), in_axes=(None, 0))
      >>> step = jax.jit(lambda w, x: w - 0.1 * jax.grad(loss)(w, x))
      >>> x = synk.global_batch(synk.process_share(np.ones((16, 3), np.float32)))
      >>> x.shape  # the whole batch, on every process
      (16, 3)
      >>> np.round(np.asarray(step(np.ones(3, np.float32), x)), 4)  # 1 - 0.1 * 6
      array([0.4, 0.4, 0.4], dtype=float32)
    """
    count = process_count()
    mesh_ = mesh(tuple(devices()))
    local = jax.local_device_count()

    def build(path: KeyPath, leaf: ArrayLike) -> jax.Array:
        leaf = np.asarray(leaf)
        if leaf.ndim == 0 or not -leaf.ndim <= axis < leaf.ndim:
            raise ValueError(_no_batch_axis_error(path, leaf.shape, axis))
        ax = axis % leaf.ndim
        if leaf.shape[ax] % local == 0:  # each process's rows on its own devices
            spec: list[str | None] = [None] * leaf.ndim
            spec[ax] = AXIS
            shape = list(leaf.shape)
            shape[ax] *= count
            sharding = NamedSharding(mesh_, P(*spec))
            return jax.make_array_from_process_local_data(sharding, leaf, tuple(shape))
        whole = allgather.rows(leaf, ax) if count > 1 else leaf
        replicated = NamedSharding(mesh_, P())
        return jax.make_array_from_callback(whole.shape, replicated, lambda i: whole[i])

    return jax.tree_util.tree_map_with_path(build, x)


def _no_batch_axis_error(path: jax.tree_util.KeyPath, shape: tuple[int, ...], axis: int) -> str:
    return (
        f"synk.global_batch: x{jax.tree_util.keystr(path)} has shape {shape}, "
        f"which has no axis {axis} to be a batch along. Pass the batch arrays only, "
        "or give the batch axis with axis=."
    )


def pick_devices(
    requested: Sequence[jax.Device] | int | None, where: str
) -> tuple[jax.Device, ...]:
    """The devices a synk.function runs on: all, the first N, or the ones given."""
    everything = devices()
    if requested is None:
        return tuple(everything)
    if isinstance(requested, int) and not isinstance(requested, bool):
        if not 1 <= requested <= len(everything):
            raise ValueError(_device_count_error(where, requested, len(everything)))
        return tuple(everything[:requested])
    picked = () if isinstance(requested, bool) else tuple(requested)  # a bool is no count
    if not picked or not all(isinstance(d, jax.Device) for d in picked):
        raise TypeError(_not_devices_error(where))
    if len(set(picked)) != len(picked):
        raise ValueError(f"{where}: devices lists a device twice: {picked}.")
    return picked


def _device_count_error(where: str, requested: int, available: int) -> str:
    return (
        f"{where}: devices={requested}, but there are {available} devices; "
        f"expected 1 <= devices <= {available} (the first that many are used)."
    )


def _not_devices_error(where: str) -> str:
    return (
        f"{where}: devices must be a non-empty sequence of jax devices (e.g. "
        "synk.devices()[:4]) or an int count."
    )


def process_groups(devs: tuple[jax.Device, ...], where: str) -> int:
    """The number of processes the devices span; each must hold an equal, contiguous run."""
    owners = [d.process_index for d in devs]
    count = jax.process_count()
    if count == 1:
        return 1
    runs = [p for i, p in enumerate(owners) if i == 0 or owners[i - 1] != p]
    per = {p: owners.count(p) for p in set(owners)}
    if sorted(runs) != list(range(count)) or len(set(per.values())) != 1:
        raise ValueError(_process_groups_error(where, count, owners))
    return count


def _process_groups_error(where: str, count: int, owners: list[int]) -> str:
    return (
        f"{where}: with {count} processes, the devices must hold the same number of "
        "devices of every process, grouped by process in process order (e.g. "
        f"synk.devices(), or None); got devices of processes {owners}."
    )


@functools.cache
def mesh(devs: tuple[jax.Device, ...]) -> jax.sharding.Mesh:
    """A one-axis mesh over `devs`, cached so every function shares it."""
    # Mesh (not make_mesh) keeps the Auto axis type: inputs we place ourselves
    # are never rejected for a sharding that differs from in_specs.
    return jax.sharding.Mesh(np.array(devs, dtype=object), (AXIS,))
