"""What the tests share to run alike in one process and under ``mpiexec -n 2``.

The observations here use public interfaces only (synk's and JAX's), so that
a test keeps passing while its behaviour holds, however synk is built inside.
"""

import contextlib
import functools
import logging
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import synk

PROCESSES, RANK = synk.process_count(), synk.process_index()


def single_process(reason: str):
    """Skip under several processes, saying why the test is one process's alone."""
    return pytest.mark.skipif(PROCESSES > 1, reason=f"one process only: {reason}")


def fewer_under_mpi(cases, keep):
    """`cases` for ``pytest.mark.parametrize``; under several processes only those in `keep`
    (compared by ``repr``: arrays do not compare with ``==``).

    Every case compiles its own executables, and across processes each costs
    about twice as much. The one-process run takes every case; the cases kept
    are those where processes change something (uneven splits, num_slices).
    """
    kept = {repr(k) for k in keep}
    return list(cases) if PROCESSES == 1 else [c for c in cases if repr(c) in kept]


# A fresh Python, outside any launch, is the same whichever rank starts it.
in_a_fresh_process = single_process("it starts its own one-process Python")


_LAUNCH_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "HYDI_", "HYDRA_", "MPI_LOCAL", "SLURM_", "SYNK_")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's or synk's variables, plus `extra`.

    A subprocess started from a test under mpiexec must not think that it,
    too, is one rank of an MPI launch.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_PREFIXES)}
    env.update(extra)
    return env


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python (JAX not yet started), in `clean_env(**env)`."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_tree_close(got, want, rtol=2e-5, atol=2e-5):
    """Same tree structure, shapes and dtypes, and values equal up to float rounding."""
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def counting(fn):
    """`fn`, and a list that grows by one each time JAX traces it (or it runs eagerly)."""
    traces = []

    @functools.wraps(fn)  # keeps fn's signature: synk binds arguments by it
    def wrapped(*args, **kwargs):
        traces.append(1)
        return fn(*args, **kwargs)

    return wrapped, traces


@contextlib.contextmanager
def compilations(caplog: pytest.LogCaptureFixture):
    """A list of what XLA compiles inside the block, from JAX's ``log_compiles`` messages."""
    compiled: list[str] = []
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        start = len(caplog.records)
        yield compiled
        messages = [r.getMessage() for r in caplog.records[start:]]
    compiled += [m for m in messages if m.startswith("Compiling ")]


def loss(w, x, y):
    """A data-parallel loss (a mean over rows) that the composition tests share."""
    import jax.numpy as jnp

    return jnp.mean((jnp.tanh(x @ w) - y) ** 2)


def per_row(w, x, y):
    """One output per reduce op, each what that op expects over the rows."""
    import jax.numpy as jnp

    r = jnp.tanh(x @ w) - y
    return {"avg": jnp.mean(r**2), "sum": r.sum(), "max": r.max(), "min": r.min(),
            "prod": jnp.prod(1 + 0.01 * r), "gather": r}  # fmt: skip
