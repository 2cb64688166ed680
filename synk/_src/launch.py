"""Launching several processes: jax.distributed, started where a launcher ran us.

Launchers (mpiexec, srun) start one process per node or per GPU; synk.init
connects them through jax.distributed (gloo collectives on CPU, NCCL on GPU).
Nothing here is imported work until a launch with several ranks is seen.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TypedDict

import jax

from synk._src import settings

_RANK_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def launched_ranks() -> int:
    """How many ranks the launcher (mpiexec, srun) started, from its environment."""
    for var in _RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


class _Settings(TypedDict, total=False):
    """What `start_distributed` passes to jax.distributed.initialize beyond its timeouts."""

    cluster_detection_method: str
    local_device_ids: list[int]


def start_distributed() -> None:
    if jax.distributed.is_initialized():
        return
    # Open MPI and MPICH expose the rank layout through mpi4py; JAX's mpi4py
    # cluster detection then finds the coordinator without any env set-up.
    # local_device_ids defaults to one device per process under MPI/Slurm
    # detection; we keep that default (one process per GPU) unless the user
    # sets SYNK_LOCAL_DEVICES=all (one process per node driving all its GPUs).
    kwargs: _Settings = {}
    try:
        import mpi4py  # noqa: F401

        kwargs["cluster_detection_method"] = "mpi4py"
    except ImportError:
        pass
    local = settings.local_devices()
    if local:
        kwargs["local_device_ids"] = _local_device_ids(local)
    # A process that stops early must not leave the others waiting forever in
    # a collective: the coordination service declares it dead after `timeout`
    # seconds without a heartbeat, and a process that exits waits at most that
    # long for the others at shutdown.
    timeout = settings.timeout()
    jax.distributed.initialize(
        heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout, **kwargs
    )
    _end_at_once_on_error()


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

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        previous(kind, value, tb)
        sys.stderr.write(
            f"synk: process {jax.process_index()} raised {kind.__name__}; ending it now so "
            "that the other processes stop instead of waiting for it.\n"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    sys.excepthook = hook
