"""The documentation: every public name importable, documented and on the API page;
every public function's docstring follows one template (Google style, as optax's);
every docstring example and every Python block of the docs pages and the README runs
(and prints what the page says it prints); the docs' notebooks hold the outputs of
one run of the notebooks as they are; one version everywhere.
"""

import builtins
import doctest
import importlib
import importlib.resources
import inspect
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from helpers import clean_env, single_process
from pages import python_examples

import synk
import synk._src

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

# Every module of the package (synk, synk.lax, synk/_src and below), found by
# walking it: a new module's examples run without a list to edit.
MODULES = sorted(
    ["synk", *(info.name for info in pkgutil.walk_packages(synk.__path__, prefix="synk."))]
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


def test_the_package_is_marked_as_typed():
    # PEP 561: a type checker reads an installed package's annotations only with this marker.
    assert importlib.resources.files("synk").joinpath("py.typed").is_file()


def test_the_walk_finds_every_module_that_defines_public_names():
    missing = PUBLIC_HOMES - set(MODULES)
    assert not missing, missing


# --------------------------------------------------------------------------
# The docstring template: a summary line, a blank line, then Google-style
# sections. ``Args:`` names every parameter, in the signature's order;
# ``Returns:`` unless it is annotated to return None; ``Raises:`` the built-in
# exceptions it refuses input with; ``Example:`` a doctest that runs. Classes
# show an example; properties have a summary line.

SECTION = re.compile(r"^(Args|Returns|Raises|Example):$")
ENTRY = re.compile(r"^(\*{0,2}\w+(?:, \*{0,2}\w+)*)(?: \([^)]*\))?:(?: |$)")
# Public methods whose names start with an underscore.
DUNDERS = ("__call__", "__getitem__")
# Functions that take arguments but refuse none themselves: what they pass on,
# JAX checks and names.
REFUSES_NOTHING = {
    "synk.broadcast",
    "synk.lax.psum",
    "synk.lax.pmean",
    "synk.lax.pmax",
    "synk.lax.pmin",
    "synk.lax.all_gather",
}


def public_api() -> list[tuple[str, object]]:
    """(name, object) of every public function and class of synk and synk.lax, and of
    every public method and property of those classes."""
    found = []
    for module, names in ((synk, synk.__all__), (synk.lax, synk.lax.__all__)):
        for name in names:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue  # synk.lax, a module; synk.lax.axis_name, a constant
            found.append((f"{module.__name__}.{name}", obj))
            if inspect.isclass(obj):
                found += [
                    (f"{module.__name__}.{name}.{attr}", value)
                    for attr, value in vars(obj).items()
                    if (not attr.startswith("_") or attr in DUNDERS)
                    and (inspect.isfunction(value) or isinstance(value, property))
                ]
    return found


PUBLIC_API = public_api()
FUNCTIONS = [(n, o) for n, o in PUBLIC_API if inspect.isfunction(o)]


def sections(doc: str) -> dict[str, list[str]]:
    """A Google-style docstring's sections, by name, each its lines (the summary: '')."""
    found: dict[str, list[str]] = {"": []}
    name = ""
    for line in doc.splitlines():
        match = SECTION.match(line)
        if match:
            assert match[1] not in found, f"two {match[1]} sections"
            name = match[1]
            found[name] = []
        else:
            found[name].append(line)
    return found


def entries(lines: list[str]) -> list[str]:
    """The names a section's entries start with (``x:``, ``x, y:``, ``*args:``)."""
    body = [line for line in lines if line.strip()]
    if not body:
        return []
    indent = min(len(line) - len(line.lstrip()) for line in body)
    names = []
    for line in body:
        if len(line) - len(line.lstrip()) == indent:
            match = ENTRY.match(line.strip())
            assert match, f"not an entry (NAME: text): {line.strip()!r}"
            names += match[1].split(", ")
    return names


def test_the_template_reaches_every_public_name():
    names = {name for name, _ in PUBLIC_API}
    assert {"synk.function", "synk.Function.__call__", "synk.Data.__getitem__"} <= names
    assert {"synk.Batch.fits", "synk.Data.local", "synk.lax.row_keys"} <= names
    assert len(FUNCTIONS) >= 30, len(FUNCTIONS)


def check_summary(name: str, doc: str) -> None:
    lines = doc.splitlines()
    assert lines and lines[0].strip(), f"{name}: no summary line"
    assert lines[0].endswith("."), f"{name}: the summary line is not a sentence: {lines[0]!r}"
    assert len(lines) == 1 or not lines[1].strip(), f"{name}: no blank line after the summary"


@pytest.mark.parametrize("name, obj", FUNCTIONS, ids=[name for name, _ in FUNCTIONS])
def test_public_function_docstring_follows_the_template(name, obj):
    doc = inspect.getdoc(obj) or ""
    check_summary(name, doc)
    found = sections(doc)
    signature = inspect.signature(obj)
    params = [p for p in signature.parameters if p != "self"]
    if params:
        assert "Args" in found, f"{name}: takes {params} but has no Args section"
        named = [n.lstrip("*") for n in entries(found["Args"])]
        assert named == params, f"{name}: Args names {named}, the signature {params}"
    else:
        assert "Args" not in found, f"{name}: takes no arguments but has an Args section"
    returns_none = signature.return_annotation in (None, "None")
    assert ("Returns" in found) != returns_none, (
        f"{name}: a Returns section {'for None' if returns_none else 'is missing'}"
    )
    if params and name not in REFUSES_NOTHING:
        assert "Raises" in found, f"{name}: takes arguments but names no Raises"
    if name in REFUSES_NOTHING:
        assert "Raises" not in found, f"{name} raises: take it out of REFUSES_NOTHING"
    for kind in entries(found.get("Raises", [])):
        error = getattr(builtins, kind, None)
        assert isinstance(error, type) and issubclass(error, BaseException), (
            f"{name}: Raises names {kind!r}, not a built-in exception"
        )
    assert any(line.lstrip().startswith(">>>") for line in found.get("Example", [])), (
        f"{name}: no Example section with a doctest (>>>)"
    )


@pytest.mark.parametrize(
    "name, obj",
    [(n, o) for n, o in PUBLIC_API if not inspect.isfunction(o)],
    ids=[n for n, o in PUBLIC_API if not inspect.isfunction(o)],
)
def test_public_class_and_property_docstrings(name, obj):
    doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj) or ""
    check_summary(name, doc)
    if isinstance(obj, property):
        # Google style reads a property's "text: more" first line as "type: description".
        assert ":" not in doc.splitlines()[0], f"{name}: a colon in the summary line"
    else:
        assert any(line.lstrip().startswith(">>>") for line in sections(doc).get("Example", [])), (
            f"{name}: no Example section with a doctest (>>>)"
        )


def test_every_public_example_is_a_doctest_that_runs():
    """The modules the doctests run hold every example above, and doctest finds each one
    (a decorator that hid a function from doctest would leave its example unrun)."""
    homes = {obj.__module__ for _, obj in PUBLIC_API if not isinstance(obj, property)}
    assert homes <= set(MODULES), homes - set(MODULES)
    finder = doctest.DocTestFinder()
    found = {
        test.name
        for home in homes
        for test in finder.find(importlib.import_module(home))
        if test.examples
    }
    wanted = {
        f"{obj.__module__}.{obj.__qualname__}"
        for _, obj in PUBLIC_API
        if not isinstance(obj, property)
    }
    missing = wanted - found
    assert not missing, f"examples that the doctests do not run: {sorted(missing)}"


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


PAGES_WITH_CODE = [p for p in [*PAGES, ROOT / "README.md"] if python_examples(p)]


def test_the_pages_have_code_to_run():
    names = {p.name for p in PAGES_WITH_CODE}
    assert {"README.md", "getting_started.md", "how_a_call_works.md"} <= names, names


@single_process("the pages are one-process scripts on 8 simulated devices")
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: p.name)
def test_page_code_runs(page):
    """A page runs as a reader runs it: in a fresh Python, its blocks in order, each
    printing what the page shows. A crash shows its Python stacks (faulthandler)."""
    res = subprocess.run(
        [sys.executable, "-X", "faulthandler", str(ROOT / "tests" / "pages.py"), str(page)],
        env=clean_env(SYNK_CPU_DEVICES="8"),  # as the pages run: synk.init() finds 8
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert res.returncode == 0, f"{page.name}: exit {res.returncode}\n{res.stderr[-6000:]}"


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
