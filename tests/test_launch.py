"""Launches under mpiexec: a failing or vanished process stops the others in bounded time."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean_env

import synk

MPIEXEC = Path(sys.executable).with_name("mpiexec")
SCRIPT = Path(__file__).with_name("scripts") / "rank_fails.py"
LAYOUT = Path(__file__).with_name("scripts") / "layout.py"
TIMEOUT = 10  # SYNK_TIMEOUT for the launched processes

pytestmark = pytest.mark.skipif(
    synk.process_count() > 1, reason="launches mpiexec itself: runs in the single-process suite"
)


def launch(
    *args: str, timeout: float = 120, **env: str
) -> tuple[subprocess.CompletedProcess, float]:
    env = clean_env(
        **{"SYNK_CPU_DEVICES": "2", "SYNK_TIMEOUT": str(TIMEOUT), "PYTHONUNBUFFERED": "1", **env}
    )
    start = time.monotonic()
    res = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res, time.monotonic() - start


def test_mpiexec_is_installed():
    assert MPIEXEC.exists(), f"{MPIEXEC} is missing: install synk[mpi] (the mpich wheel)"


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_failed_or_vanished_rank_stops_the_others(how):
    res, seconds = launch(str(SCRIPT), how)
    out = res.stdout + res.stderr
    assert "first call 8.0" in out, out[-3000:]  # both ranks really ran together
    assert res.returncode != 0, out[-3000:]
    assert "unreachable" not in out
    bound = 5 * TIMEOUT if how == "exit" else TIMEOUT  # heartbeats, then shutdown
    assert seconds < bound, f"took {seconds:.0f} s; {out[-3000:]}"
    if how == "raise":
        assert "rank 1 failed on purpose" in out and "ending it now" in out


def test_info_shows_the_layout_on_every_rank():
    res, _ = launch("-m", "synk", "info")
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        assert f"process {rank} of 2" in res.stdout
    assert res.stdout.count("devices: 4 in all, 2 in this process") == 2
    assert "coordinator" in res.stdout and "collectives: gloo" in res.stdout


@pytest.mark.parametrize(
    "env, local, visible",
    [
        # One process per GPU, the default: each rank is given the GPU of its local rank.
        ({"SYNK_CPU_DEVICES": "1"}, 1, "{rank}"),
        # One process per node driving its GPUs: the ids SYNK_LOCAL_DEVICES names.
        ({"SYNK_CPU_DEVICES": "2", "SYNK_LOCAL_DEVICES": "0,1"}, 2, "0,1"),
        # ... or all the GPUs it sees, renumbered from 0.
        (
            {"SYNK_CPU_DEVICES": "2", "SYNK_LOCAL_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "3,5"},
            2,
            "0,1",
        ),
    ],
    ids=["one-device-per-process", "several-devices-per-process", "all-visible-devices"],
)
def test_both_layouts_reduce_over_every_device(env, local, visible):
    # CPU devices stand in for GPUs; the GPU ids each process is given are what
    # jax.distributed passes on to the GPU backend.
    res, _ = launch(str(LAYOUT), **env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for rank in (0, 1):
        line = f"rank {rank}: {local} local of {2 * local} devices, sum 28.0, visible "
        line += visible.format(rank=rank)
        assert line in res.stdout, res.stdout
