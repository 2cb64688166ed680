"""Allgathers between processes on the host, outside any executable.

Over MPI where mpiexec launched us (mpi4py present), else through
``jax.experimental.multihost_utils``: the hashes that processes compare on
each call, and each process's share of a batch gathered whole. (Collectives
between devices, ``synk.all_gather`` among them, are in `collectives`.)
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, overload

import jax
import numpy as np

from synk._src import compat, partition
from synk._src.signature import InAxis

if TYPE_CHECKING:  # importing MPI starts it: only where mpiexec launched us (`_world`)
    from mpi4py import MPI


@overload
def values(value: int) -> list[int]: ...
@overload
def values(value: str) -> list[str]: ...
def values(value: int | str) -> list[int] | list[str]:
    """Every process's `value` (an int; a str on the error path), in process order."""
    comm = _world()
    if comm is not None:
        if isinstance(value, str):
            return comm.allgather(value)
        # Non-blocking, yielding the core while waiting: MPI's busy-wait would
        # otherwise starve the XLA threads of an oversubscribed machine.
        send, got = np.array([value], np.int64), np.empty(comm.Get_size(), np.int64)
        request = comm.Iallgather(send, got)
        while not request.Test():
            time.sleep(0)
        return got.tolist()
    from jax.experimental import multihost_utils

    if isinstance(value, str):  # only on the error path: bytes through a device collective
        raw = value.encode()
        size = max(values(len(raw)))
        data = np.frombuffer(raw.ljust(size), np.uint8)
        got = np.asarray(multihost_utils.process_allgather(data))
        return [bytes(row).rstrip().decode(errors="replace") for row in got]
    got = multihost_utils.process_allgather(np.array(value, np.int64))
    return [int(v) for v in np.asarray(got).reshape(-1)]


def shares(where: str, traced_entries: list[tuple[str, Any, InAxis]]) -> list[Any]:
    """A call's traced leaves, with each process's share of a batch gathered whole.

    For an eager jax.grad or jax.vmap under several processes: there host
    arrays are shares, as in an eager call, and a tracer of a share cannot be
    gathered (refused, naming the argument).
    """
    out = []
    for name, leaf, entry in traced_entries:
        sliced = isinstance(entry, int) and np.ndim(leaf) > 0 and not partition.is_batch(type(leaf))
        traced = isinstance(leaf, compat.Tracer)
        if not sliced or (
            not traced and isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
        ):
            out.append(leaf)  # broadcast, a view, or a global array: the same everywhere
            continue
        if traced:
            raise ValueError(_traced_share_error(where, name))
        out.append(rows(np.asarray(leaf), entry % np.ndim(leaf)))
    return out


def _traced_share_error(where: str, name: str) -> str:
    return (
        f"{where}: argument `{name}` is this process's share of the batch, and "
        "a JAX transformation outside jax.jit (jax.grad, jax.vmap) traces it; a "
        "share cannot be gathered there. Differentiate with respect to broadcast "
        "arguments only, or call the function inside jax.jit on a global batch "
        "(synk.global_batch(share))."
    )


def rows(share: np.ndarray, axis: int) -> np.ndarray:
    """Every process's share concatenated along `axis`, in process order, on every process."""
    comm = _world()
    if comm is not None:  # on the host: usable inside a JAX transformation too
        return np.concatenate(comm.allgather(share), axis=axis)
    from jax.experimental import multihost_utils

    got = multihost_utils.process_allgather(np.moveaxis(share, axis, 0), tiled=True)
    return np.moveaxis(np.asarray(got), 0, axis)


@functools.cache
def _world() -> MPI.Intracomm | None:
    """MPI's world communicator when mpiexec launched us (mpi4py present), else None."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    if MPI.Is_initialized() and MPI.COMM_WORLD.Get_size() > 1:
        return MPI.COMM_WORLD
    return None
