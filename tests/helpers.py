"""What the tests share to run alike in one process and under ``mpiexec -n 2``."""

import numpy as np
import pytest

import synk

PROCESSES, RANK = synk.process_count(), synk.process_index()


def share(global_batch, axis: int = 0):
    """This process's rows of a global batch (all of it in a one-process run).

    Under several processes, sliced host arrays are each process's share of
    the global batch; the results must equal the serial function on the
    global batch.
    """
    x = np.asarray(global_batch)
    rows = x.shape[axis] // PROCESSES
    index = [slice(None)] * x.ndim
    index[axis] = slice(RANK * rows, (RANK + 1) * rows)
    return x[tuple(index)]


def single_process(reason: str):
    """Skip under several processes, saying why the test is one process's alone."""
    return pytest.mark.skipif(PROCESSES > 1, reason=f"one process only: {reason}")


_LAUNCH_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDI_", "HYDRA_", "MPI_LOCAL", "SLURM_", "SYNK_")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's or synk's variables, plus `extra`.

    A subprocess started from a test under mpiexec must not think that it,
    too, is one rank of an MPI launch.
    """
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_PREFIXES)}
    env.update(extra)
    return env
