"""Execute every notebook in this folder and fail on any cell error.

Each ``notebooks/*.ipynb`` runs top to bottom with nbclient in a fresh
``python3`` kernel. The quickstart then runs once more in the SAME kernel, as
a user who re-runs every cell: ``synk.init(cpu_devices=8)`` again is a no-op,
functions and data are redefined, compiled functions are called again. (The
other notebooks run once: a second pass of each cost half a minute of
``make test`` for calls of the same kinds.) A probe cell
appended in memory checks that the kernel is this environment's Python and
that both passes ran in one kernel process. Outputs are never written back:
the committed notebooks stay without outputs, which
``test_committed_without_outputs`` checks.

Run with ``python -m pytest -p no:cacheprovider -q notebooks/test_notebooks.py``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL = "python3"
RERUN = "01_quickstart.ipynb"  # run twice in one kernel, as a user re-runs every cell

PROBE = """\
import json, os, sys
print(json.dumps({"pid": os.getpid(), "executable": sys.executable, "prefix": sys.prefix}))
"""


def _probe_result(cell) -> dict:
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])


def _ids(path: Path | None) -> str:
    return path.name if path is not None else "no-notebooks"


# An empty glob must fail, not be skipped as an empty parameter set.
@pytest.mark.parametrize("path", NOTEBOOKS or [None], ids=_ids)
def test_notebook_runs(path: Path | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if path is None:
        pytest.fail(f"no notebooks found in {HERE}")
    # The kernel inherits this environment: the notebooks' 8 simulated devices
    # must not be overridden by a leftover SYNK_CPU_DEVICES (e.g. 4 from an MPI run).
    monkeypatch.setenv("SYNK_CPU_DEVICES", "8")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))  # in memory only
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(HERE)}},
    )
    probes, times = [], []
    passes = 2 if path.name == RERUN else 1
    with client.setup_kernel():
        for run in range(1, passes + 1):
            start = time.perf_counter()
            try:
                # cleanup_kc=False: keep the kernel alive for the second pass.
                client.execute(cleanup_kc=False)
            except CellExecutionError as e:
                pytest.fail(f"{path.name}, pass {run}: a cell failed\n{e}")
            times.append(time.perf_counter() - start)
            probes.append(_probe_result(nb.cells[-1]))

    print(f"{path.name}: " + ", ".join(f"pass {i} {t:.1f} s" for i, t in enumerate(times, 1)))
    kernel = probes[0]
    print(f"kernel: {kernel['executable']} (prefix {kernel['prefix']})")
    assert kernel["prefix"] == sys.prefix, (
        f"the {KERNEL} kernel ran {kernel['executable']} (prefix {kernel['prefix']}), not "
        f"this environment's {sys.executable} (prefix {sys.prefix})"
    )
    assert len(probes) == passes
    assert len({p["pid"] for p in probes}) == 1, "the second pass ran in another kernel"


@pytest.mark.parametrize("path", NOTEBOOKS or [None], ids=_ids)
def test_committed_without_outputs(path: Path | None) -> None:
    if path is None:
        pytest.fail(f"no notebooks found in {HERE}")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts"
