"""What the tests share to run alike in one process and under ``mpiexec -n 2``."""

import pytest

import synk

PROCESSES, RANK = synk.process_count(), synk.process_index()


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
