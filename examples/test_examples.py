"""Run every example script end to end, each in its own process.

Each ``examples/*.py`` (except this file) runs as ``python examples/NAME.py``
with small sizes, on 8 simulated CPU devices, and must exit with status 0.
The scripts that examples/README.md marks "2 processes" run once more under
``mpiexec -n 2``, with 2 simulated devices per process.
A new example is picked up automatically; give it an entry in `EXTRA_ARGS`
if it takes options that make it quicker (the default is ``--quiet``).

Run with ``make test-examples`` or
``python -m pytest -p no:cacheprovider -q examples/test_examples.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 300

EXAMPLES = sorted(p.name for p in HERE.glob("*.py") if p.name != Path(__file__).name)

# Ports of published examples, changed only in the lines marked "# synk"; each
# runs a few steps on 8 devices and on 1, and the two runs must agree
# (`test_port_equals_its_single_device_run`), which is their run here.
PORTS = {
    "equinox_mnist.py": {"STEPS": "24", "PRINT_EVERY": "7"},  # step 21: the 3-row batch
    "flax_mnist_tutorial.py": {"TRAIN_STEPS": "10", "EVAL_EVERY": "3"},
}
MAX_SYNK_LINES = 5

# Command-line arguments per example: small sizes, no progress bars.
DEFAULT_ARGS = ["--quiet"]
EXTRA_ARGS: dict[str, list[str]] = {
    "quickstart.py": ["--quiet", "--epochs", "3"],
    "equinox_mlp.py": ["--quiet", "--epochs", "10"],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The same simulated devices for every example, whatever the caller set
    # (e.g. SYNK_CPU_DEVICES=4 left over from the MPI run).
    env["SYNK_CPU_DEVICES"] = "8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _report(cmd: list[str], stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(s):
        if s is None:
            return ""
        return s.decode(errors="replace") if isinstance(s, bytes) else s

    return (
        f"command: {' '.join(cmd)}\n--- stdout ---\n{text(stdout)}\n--- stderr ---\n{text(stderr)}"
    )


def _run(name: str, launcher: list[str], env: dict[str, str]) -> str:
    """Run examples/NAME (under `launcher`, if any); fail unless it exits 0. Its output."""
    cmd = [*launcher, sys.executable, str(HERE / name), *EXTRA_ARGS.get(name, DEFAULT_ARGS)]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name} ran past {TIMEOUT_S} s\n{_report(cmd, e.stdout, e.stderr)}")
    report = _report(cmd, proc.stdout, proc.stderr)
    assert proc.returncode == 0, f"{name} exited with status {proc.returncode}\n{report}"
    return proc.stdout + proc.stderr


# An empty glob must fail, not be skipped as an empty parameter set.
@pytest.mark.parametrize(
    "name", [n for n in EXAMPLES if n not in PORTS] or [pytest.param(None, id="no-examples")]
)
def test_example_runs(name: str | None) -> None:
    if name is None:
        pytest.fail(f"no example scripts found in {HERE}")
    _run(name, [], _env())


def _losses(out: str) -> np.ndarray:
    """Every loss a port printed (``train_loss=...``, ``test_loss=...``), in order."""
    return np.array([float(v) for v in re.findall(r"_loss=([-0-9.e]+)", out)])


@pytest.mark.parametrize("name", sorted(PORTS))
def test_port_equals_its_single_device_run(name: str) -> None:
    # The published code with synk's lines: on 8 devices it must print what the
    # same code prints on one device, up to float rounding amplified by a few
    # steps of training (adam turns rounding noise into small steps).
    runs = {n: _run(name, [], {**_env(), **PORTS[name], "SYNK_CPU_DEVICES": n}) for n in "81"}
    assert "synk: 8 cpu device(s)" in runs["8"] and "synk: 1 cpu device(s)" in runs["1"]
    many, one = _losses(runs["8"]), _losses(runs["1"])
    assert len(many) >= 6 and len(many) == len(one), (runs["8"], runs["1"])
    np.testing.assert_allclose(many, one, rtol=5e-3)
    np.testing.assert_allclose(many[0], one[0], rtol=1e-5)  # the first loss: rounding only


@pytest.mark.parametrize("name", sorted(PORTS))
def test_port_changes_at_most_five_lines(name: str) -> None:
    # Every line synk changes in the published code carries the marker "# synk".
    marked = [line for line in (HERE / name).read_text().splitlines() if "# synk" in line]
    assert 1 <= len(marked) <= MAX_SYNK_LINES, marked


def _two_process_examples() -> list[str]:
    """The scripts whose row in examples/README.md's table says "2 processes"."""
    rows = (HERE / "README.md").read_text().splitlines()
    return [n for n in EXAMPLES for r in rows if r.startswith(f"| [`{n}`]") and "2 processes" in r]


@pytest.mark.parametrize("name", _two_process_examples() or [pytest.param(None, id="none-marked")])
def test_example_runs_under_two_processes(name: str | None) -> None:
    # As the README's table promises: the same script under mpiexec -n 2
    # (2 simulated devices each here), with its own check against serial.
    if name is None:
        pytest.fail("no example in examples/README.md is marked '2 processes'")
    mpiexec = str(Path(sys.executable).with_name("mpiexec"))
    out = _run(name, [mpiexec, "-n", "2"], {**_env(), "SYNK_CPU_DEVICES": "2"})
    assert "4 cpu device(s), 2 process(es)" in out, out[-3000:]


def test_extra_args_name_existing_examples() -> None:
    # A renamed or deleted example must not leave a stale entry behind.
    stale = sorted(set(EXTRA_ARGS) - set(EXAMPLES))
    assert not stale, f"EXTRA_ARGS names examples that do not exist: {stale}"


def test_every_example_is_in_the_gallery() -> None:
    # examples/README.md's table is how readers find an example.
    gallery = (HERE / "README.md").read_text()
    missing = [name for name in EXAMPLES if f"[`{name}`]({name})" not in gallery]
    assert not missing, f"examples missing from examples/README.md's table: {missing}"
