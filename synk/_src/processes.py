"""Several processes: start jax.distributed, bound failures, agree on each call.

Launchers (mpiexec, srun) start one process per node or per GPU; synk.init
connects them through jax.distributed (gloo collectives on CPU, NCCL on GPU).
Nothing here is imported work until a launch with several ranks is seen.

Called by: `runtime` (starting jax.distributed), `plan` (the call's description
and the agreement on a new plan), `function` (the agreement on every later
call). Calls: jax.distributed, mpi4py where a launcher started us.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import zlib

import jax
import numpy as np

from synk._src import compat, partition

_RANK_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def launched_ranks() -> int:
    """How many ranks the launcher (mpiexec, srun) started, from its environment."""
    for var in _RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def start_distributed() -> None:
    if jax.distributed.is_initialized():
        return
    # Open MPI and MPICH expose the rank layout through mpi4py; JAX's mpi4py
    # cluster detection then finds the coordinator without any env set-up.
    # local_device_ids defaults to one device per process under MPI/Slurm
    # detection; we keep that default (one process per GPU) unless the user
    # sets SYNK_LOCAL_DEVICES=all (one process per node driving all its GPUs).
    kwargs = {}
    try:
        import mpi4py  # noqa: F401

        kwargs["cluster_detection_method"] = "mpi4py"
    except ImportError:
        pass
    local = os.environ.get("SYNK_LOCAL_DEVICES", "")
    if local:
        kwargs["local_device_ids"] = _local_device_ids(local)
    # A process that stops early must not leave the others waiting forever in
    # a collective: the coordination service declares it dead after `timeout`
    # seconds without a heartbeat, and a process that exits waits at most that
    # long for the others at shutdown.
    timeout = _timeout()
    jax.distributed.initialize(
        heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout, **kwargs
    )
    _end_at_once_on_error()


def _timeout() -> int:
    value = os.environ.get("SYNK_TIMEOUT", "60")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"SYNK_TIMEOUT={value!r} is not a positive integer: the seconds after which "
            "processes stop when one of them has died."
        )
    return int(value)


def _local_device_ids(value: str) -> list[int]:
    """SYNK_LOCAL_DEVICES: 'all' GPUs of the node for one process, or a list like '0,1'."""
    if value != "all":
        try:
            return [int(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(
                f"SYNK_LOCAL_DEVICES={value!r}: expected 'all' or device ids like '0,1,2,3'."
            ) from None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return list(range(len(visible.split(","))))
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        return list(range(sum(line.startswith("GPU ") for line in listing.splitlines())))
    return [0]


def _end_at_once_on_error() -> None:
    """After an uncaught exception, end this process at once (non-zero).

    A normal interpreter exit waits for the other processes at the shutdown
    barrier while they wait for us in a collective; ending at once lets the
    launcher (mpiexec, srun) see the failure and stop the others.
    """
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.write(
            f"synk: process {jax.process_index()} raised {kind.__name__}; ending it now so "
            "that the other processes stop instead of waiting for it.\n"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    sys.excepthook = hook


def _check_enabled() -> bool:
    return os.environ.get("SYNK_CHECK", "1") not in ("0", "false", "False", "no")


CHECK_CALLS = _check_enabled()
"""Compare every call's signature across processes (SYNK_CHECK=0 switches it off)."""


@contextlib.contextmanager
def checking(enabled: bool):
    """Plan calls with the per-call check on or off (the benchmark times both)."""
    global CHECK_CALLS
    before, CHECK_CALLS = CHECK_CALLS, enabled
    try:
        yield
    finally:
        CHECK_CALLS = before


def describe_call(options, statics, names, structure, traced_entries, shared: dict) -> str:
    """A call's structure, shapes, statics and options: the same text in every process
    that makes the same call (its hash is what `agree` compares)."""
    parts = []
    for k, (name, leaf, _) in enumerate(traced_entries):
        if partition.is_batch(type(leaf)):
            same = f" (equal to {traced_entries[shared[k]][0]}'s)" if k in shared else ""
            parts.append(f"{name}: synk.Data batch, indices {list(leaf.index.shape)}{same}")
        elif type(leaf) in partition.NUMBERS:
            parts.append(f"{name}: {type(leaf).__name__}")
        else:  # str(dtype): typed keys too
            parts.append(f"{name}: {leaf.dtype}{list(leaf.shape)}, {_lives(leaf)}")
    for name, slot in zip(names, structure.slots, strict=True):
        if type(slot) is partition.Static:
            parts.append(f"{name}: static {_show(slot.value)}")
    for name, _, value in statics:
        parts.append(f"static {name}: {_show(value)}")
    parts.append(f"reduce={options.reduce!r} num_slices={options.num_slices}")
    parts.append(f"comm_dtype={options.comm_dtype}")
    return "; ".join(parts)


def _lives(leaf) -> str:
    """Where an array argument lives: it decides whether it is a share or global."""
    if isinstance(leaf, compat.Tracer):
        return "a traced value"
    if not isinstance(leaf, jax.Array):
        return "a host array"
    return "a jax.Array of this process" if leaf.is_fully_addressable else "a global jax.Array"


def _show(value) -> str:
    simple = isinstance(value, int | float | str | bool | type(None) | tuple)
    return repr(value) if simple else str(type(value))


def gather_shares(core, dyn, call) -> list:
    """A call's traced leaves, with each process's share of a batch gathered whole.

    For an eager jax.grad or jax.vmap under several processes: there host
    arrays are shares, as in an eager call, and a tracer of a share cannot be
    gathered (refused, naming the argument).
    """
    from synk._src import roles  # roles -> data -> runtime -> processes: import when used

    entries, _ = roles.entries(core, dyn, call, call.structure())
    out = []
    for name, leaf, entry in entries:
        sliced = isinstance(entry, int) and np.ndim(leaf) > 0 and not partition.is_batch(type(leaf))
        traced = isinstance(leaf, compat.Tracer)
        if not sliced or (
            not traced and isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
        ):
            out.append(leaf)  # broadcast, a view, or a global array: the same everywhere
            continue
        if traced:
            raise ValueError(
                f"{core.where}: argument `{name}` is this process's share of the batch, and "
                "a JAX transformation outside jax.jit (jax.grad, jax.vmap) traces it; a "
                "share cannot be gathered there. Differentiate with respect to broadcast "
                "arguments only, or call the function inside jax.jit on a global batch "
                "(synk.global_batch(share))."
            )
        out.append(gather_rows(np.asarray(leaf), entry % np.ndim(leaf)))
    return out


def gather_rows(share: np.ndarray, axis: int) -> np.ndarray:
    """Every process's share concatenated along `axis`, in process order, on every process."""
    comm = _mpi_world()
    if comm is not None:  # on the host: usable inside a JAX transformation too
        return np.concatenate(comm.allgather(share), axis=axis)
    from jax.experimental import multihost_utils

    rows = multihost_utils.process_allgather(np.moveaxis(share, axis, 0), tiled=True)
    return np.moveaxis(np.asarray(rows), 0, axis)


def signature_hash(description: str) -> int:
    """A hash of a call's description that is the same in every process."""
    return zlib.crc32(description.encode())


def agree(where: str, description: str, digest: int, values: list | tuple = ()) -> None:
    """Raise on every process if the processes are not making the same call.

    A call is collective: processes that disagree on shapes or structure would
    wait for each other in a collective forever. One tiny allgather of a hash
    per call (over MPI where mpiexec launched us) tells them apart first.
    `values` are (argument, value) pairs that must be equal too, hashed into the
    same number: Python numbers (a learning rate) and the indices of X[idx].
    """
    shown = [(name, _show_value(value)) for name, value in values]
    if shown:
        digest = zlib.crc32("\n".join(f"{n}={v}" for n, v in shown).encode(), digest)
    digests = _allgather(int(digest))
    if len(set(digests)) == 1:
        return
    texts = _allgather(json.dumps([description, shown]))
    calls = [json.loads(t) for t in texts]
    if len({c[0] for c in calls}) > 1:
        lines = "\n".join(f"  process {i}: {c[0]}" for i, c in enumerate(calls))
        raise ValueError(
            f"{where}: the processes made different calls; every process must call with the "
            f"same argument structure, shapes (its own share of the batch), dtypes, where "
            f"each argument lives, static arguments and options:\n{lines}"
        )
    differ = [k for k, (name, _) in enumerate(calls[0][1]) if len({c[1][k][1] for c in calls}) > 1]
    lines = "\n".join(
        f"  `{calls[0][1][k][0]}`: "
        + ", ".join(f"process {i}: {c[1][k][1]}" for i, c in enumerate(calls))
        for k in differ
    )
    raise ValueError(
        f"{where}: the processes passed different values for "
        + ", ".join(f"`{calls[0][1][k][0]}`" for k in differ)
        + ". Every process must pass the same Python numbers and broadcast values, and "
        f"the same global indices to X[idx]:\n{lines}"
    )


def _show_value(value) -> str:
    """A value as the agreement compares it: a number as it prints, indices by a hash."""
    if isinstance(value, np.ndarray):
        return f"{value.size} indices, crc32 {zlib.crc32(value.tobytes()):08x}"
    return repr(value)


def _allgather(value):
    comm = _mpi_world()
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
        size = max(_allgather(len(raw)))
        data = np.frombuffer(raw.ljust(size), np.uint8)
        rows = np.asarray(multihost_utils.process_allgather(data))
        return [bytes(row).rstrip().decode(errors="replace") for row in rows]
    got = multihost_utils.process_allgather(np.array(value, np.int64))
    return [int(v) for v in np.asarray(got).reshape(-1)]


@functools.cache
def _mpi_world():
    """MPI's world communicator when mpiexec launched us (mpi4py present), else None."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    if MPI.Is_initialized() and MPI.COMM_WORLD.Get_size() > 1:
        return MPI.COMM_WORLD
    return None
