"""A newcomer's path: docs/getting_started.md followed as written, in a clean virtualenv.

A fresh virtualenv (no system or other site-packages) gets synk from a copy of
this checkout with the page's own ``pip install .``, pip resolving jax and
numpy as it would for any user (from its index or its cache), and then runs
the page's first example, which must print what the page says. It catches
what the suite, run in the development environment, cannot: a dependency
missing from pyproject.toml, a file left out of the package, an example that
needs more than the page installs.

About half a minute where pip finds its wheels locally; ``make test`` runs it
once, in the one-process suite (marked ``slow``: not again on the newest jax).
"""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, in_a_fresh_process
from pages import assert_prints, code_blocks, python_examples

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "getting_started.md"


def _checkout_copy(dest: Path) -> Path:
    """The files a clone of this checkout would have (and new ones git does not ignore)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is still listed
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


def _run(args, cwd: Path, timeout: int) -> str:
    # The development environment's variables stay out: launchers', synk's, and
    # the suite's XLA_FLAGS (tests/conftest.py); a newcomer has none of them.
    env = {k: v for k, v in clean_env().items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@in_a_fresh_process
def test_the_getting_started_page_from_a_clean_virtualenv(tmp_path):
    install = [
        line.split("#")[0].split()
        for lang, code, _ in code_blocks(PAGE)
        if lang == "bash"
        for line in code.splitlines()
        if line.startswith("pip install .")
    ]
    assert install[0] == ["pip", "install", "."], install
    example, prints, line = python_examples(PAGE)[0]
    assert prints is not None, "the page's first example says what it prints"

    checkout = _checkout_copy(tmp_path / "synk")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, timeout=120)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", *install[0][2:]], checkout, timeout=900)

    where = _run(
        [str(python), "-c", "import sys, synk; print(synk.__file__); print(*sys.path, sep='\\n')"],
        tmp_path,
        timeout=120,
    ).splitlines()
    site = str(venv / "lib")
    assert where[0].startswith(site), f"synk came from {where[0]}, not the new virtualenv"
    strays = [p for p in where[1:] if "site-packages" in p and not p.startswith(site)]
    assert not strays, f"the virtualenv sees other packages: {strays}"

    script = tmp_path / "example.py"
    script.write_text(example)
    out = _run([str(python), str(script)], tmp_path, timeout=300)
    assert_prints(prints, out, f"getting_started.md's example (line {line})")
