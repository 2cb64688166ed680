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

The docs site shows each notebook with the outputs of such a run, stored in
``docs/notebooks/`` (the docs build executes nothing). Each run here compares
its first pass with that copy: the same cells, and in each code cell outputs of
the same kinds whose text differs at most in its numbers (timings, digits of a
loss). ``make notebook-outputs`` (``SYNK_STORE_NOTEBOOKS=1``) writes the copies
afresh from a run; do so after changing a notebook or what it prints.

Run with ``python -m pytest -p no:cacheprovider -q notebooks/test_notebooks.py``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
DOCS_COPIES = HERE.parent / "docs" / "notebooks"  # with the outputs of a run, for the docs
STORE = os.environ.get("SYNK_STORE_NOTEBOOKS") == "1"
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


# Numbers (and hexadecimal ids) vary between runs and machines: timings, the
# last digits of a loss, a widget's model id. The text around them does not.
_NUMBER = re.compile(r"0x[0-9a-f]+|[0-9a-f]{32}|\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _output_kinds(nb) -> list:
    """Per code cell: each output's kind, mime types and text with its numbers masked
    (stdout and displays; stderr carries what the machine says, not the notebook)."""

    def masked(text: str) -> str:  # the numbers, and the padding that aligns them
        return " ".join(_NUMBER.sub("#", text).split())

    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs = []
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                continue  # a busy machine's warnings (XLA's "may be stuck") land here
            if out.output_type == "stream":
                # A stream arrives in chunks that depend on timing: merge them.
                if outs and outs[-1][:2] == ("stream", out.name):
                    outs[-1] = ("stream", out.name, outs[-1][2] + out.text)
                else:
                    outs.append(("stream", out.name, out.text))
            elif out.output_type in ("display_data", "execute_result"):
                text = out.data.get("text/plain", "")
                outs.append((out.output_type, sorted(out.data), text))
            else:
                outs.append((out.output_type,))
        cells.append([(*o[:2], masked(o[2])) if len(o) == 3 else o for o in outs])
    return cells


def _store(path: Path, executed) -> None:
    """Write the docs copy: the notebook with its outputs, without run timings."""
    for cell in executed.cells:
        cell.metadata.pop("execution", None)
    DOCS_COPIES.mkdir(exist_ok=True)
    nbformat.write(executed, DOCS_COPIES / path.name)


def _check_docs_copy(path: Path, executed) -> None:
    copy_path = DOCS_COPIES / path.name
    assert copy_path.exists(), f"{copy_path} is missing: run make notebook-outputs"
    stored = nbformat.read(copy_path, as_version=4)
    stale = f"{copy_path} is stale: run make notebook-outputs"
    assert [c.source for c in stored.cells] == [c.source for c in executed.cells], stale
    got, want = _output_kinds(executed), _output_kinds(stored)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == b, f"{stale} (code cell {i}: this run printed\n{a}\nthe copy holds\n{b})"


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
            if run == 1:
                executed = copy.deepcopy(nb)
                executed.cells.pop()  # the probe

    print(f"{path.name}: " + ", ".join(f"pass {i} {t:.1f} s" for i, t in enumerate(times, 1)))
    kernel = probes[0]
    print(f"kernel: {kernel['executable']} (prefix {kernel['prefix']})")
    assert kernel["prefix"] == sys.prefix, (
        f"the {KERNEL} kernel ran {kernel['executable']} (prefix {kernel['prefix']}), not "
        f"this environment's {sys.executable} (prefix {sys.prefix})"
    )
    assert len(probes) == passes
    assert len({p["pid"] for p in probes}) == 1, "the second pass ran in another kernel"
    if STORE:
        _store(path, executed)
    else:
        _check_docs_copy(path, executed)


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
