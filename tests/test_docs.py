"""The documentation: every public name importable, documented and on the API page;
every docstring example and every Python block of the docs pages and the README runs
(and prints what the page says it prints); the docs' notebooks hold the outputs of
one run of the notebooks as they are; one version everywhere.
"""

import contextlib
import doctest
import importlib
import importlib.resources
import inspect
import io
import linecache
import pkgutil
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
from helpers import single_process
from pages import assert_prints, python_examples

import synk
import synk._src

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

# Every module under synk/_src, found by walking the package: a new module's
# examples run without a list to edit.
MODULES = sorted(
    info.name for info in pkgutil.walk_packages(synk._src.__path__, prefix="synk._src.")
)

# The modules that define public names: each must show examples.
PUBLIC_HOMES = {getattr(synk, name).__module__ for name in synk.__all__ if name != "lax"} | {
    getattr(synk.lax, name).__module__
    for name in synk.lax.__all__
    if callable(getattr(synk.lax, name))
}


def test_every_public_name_is_importable_and_documented():
    assert sorted(synk.__all__) == sorted(set(synk.__all__))
    for name in synk.__all__:
        obj = getattr(synk, name)
        doc = inspect.getdoc(obj)
        assert doc and len(doc) > 20, f"synk.{name} has no docstring"
    for name in synk.lax.__all__:
        obj = getattr(synk.lax, name)
        if callable(obj):
            assert inspect.getdoc(obj), f"synk.lax.{name} has no docstring"
        else:  # a constant: documented in the module's docstring
            assert f"``{name}``" in synk.lax.__doc__, f"synk.lax.{name} is not documented"


def test_public_functions_show_an_example():
    for name in synk.__all__:
        obj = getattr(synk, name)
        if inspect.isfunction(obj):
            assert ">>>" in inspect.getdoc(obj), f"synk.{name} has no example"


def test_the_package_is_marked_as_typed():
    # PEP 561: a type checker reads an installed package's annotations only with this marker.
    assert importlib.resources.files("synk").joinpath("py.typed").is_file()


def test_the_walk_finds_every_module_that_defines_public_names():
    missing = PUBLIC_HOMES - set(MODULES)
    assert not missing, missing


@single_process("docstring examples are one-process scripts that pass whole batches")
@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(
        mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False
    )
    if module in PUBLIC_HOMES:
        assert result.attempted > 0, f"{module} defines public names but has no examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module}"


# --------------------------------------------------------------------------
# The docs pages and the README


def test_the_api_page_documents_every_public_name():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: (synk[\w.]*)", text, flags=re.M))
    public = {f"synk.{name}" for name in synk.__all__} | {
        f"synk.lax.{name}" for name in synk.lax.__all__
    }
    missing = public - documented
    assert not missing, f"docs/api.md has no autodoc entry for {sorted(missing)}"


def run_page(path: Path) -> None:
    """Run a page's Python blocks in order in one namespace, as a reader would paste them."""
    namespace = {"__name__": f"page_{path.stem}"}
    for code, expected, line in python_examples(path):
        name = f"{path.relative_to(ROOT)}:{line}"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), namespace)
        if expected is not None:
            assert_prints(expected, out.getvalue(), f"the block at {name}")


PAGES_WITH_CODE = [p for p in [*PAGES, ROOT / "README.md"] if python_examples(p)]


def test_the_pages_have_code_to_run():
    names = {p.name for p in PAGES_WITH_CODE}
    assert {"README.md", "getting_started.md", "how_a_call_works.md"} <= names, names


@single_process("the pages are one-process scripts on 8 simulated devices")
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.name)
def test_page_code_runs(page, monkeypatch):
    monkeypatch.setenv("SYNK_CPU_DEVICES", "8")  # as the pages run: synk.init() finds 8
    run_page(page)


def test_readme_links_resolve():
    """The README's relative links (into docs/, as GitHub shows them) name files that exist."""
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert sum(link.startswith("docs/") for link in links) >= 10, links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the rest belongs in docs/"


# --------------------------------------------------------------------------
# The docs' notebooks: the outputs of a run, stored (the docs build executes nothing)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_docs_notebook_is_an_executed_copy(path):
    """docs/notebooks/NAME holds notebooks/NAME's cells as they are, run top to bottom.

    notebooks/test_notebooks.py compares each run's outputs with the copy's (as
    far as numbers that vary allow) and writes the copy afresh under
    ``make notebook-outputs``.
    """
    copy_path = DOCS / "notebooks" / path.name
    assert copy_path.exists(), f"{copy_path} is missing: run make notebook-outputs"
    source, stored = nbformat.read(path, as_version=4), nbformat.read(copy_path, as_version=4)
    stale = f"{copy_path.relative_to(ROOT)} is stale: run make notebook-outputs"
    assert [(c.cell_type, c.source) for c in stored.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], stale
    code = [c for c in stored.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{stale}: not one run top to bottom"
    empty = [i for i, c in enumerate(code) if not c.outputs]
    assert not empty, f"{copy_path.name}: code cells {empty} have no stored output"
    errors = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    assert not errors, f"{copy_path.name}: code cells {errors} stored an error"


# --------------------------------------------------------------------------
# One version


def test_one_version_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert released, "CHANGELOG.md names no released version (## [x.y.z] - YYYY-MM-DD)"
    assert project["version"] == synk.__version__ == released[0], (
        project["version"],
        synk.__version__,
        released[0],
    )
