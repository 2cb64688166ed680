"""Every public name is importable and documented; every docstring example runs."""

import doctest
import importlib
import inspect

import pytest
from helpers import single_process

import synk

MODULES = [
    "synk._src.runtime",
    "synk._src.function",
    "synk._src.lax",
    "synk._src.data",
    "synk._src.collectives",
]


def test_every_public_name_is_importable_and_documented():
    assert sorted(synk.__all__) == sorted(set(synk.__all__))
    for name in synk.__all__:
        obj = getattr(synk, name)
        doc = inspect.getdoc(obj)
        assert doc and len(doc) > 20, f"synk.{name} has no docstring"
    for name in synk.lax.__all__:
        assert inspect.getdoc(getattr(synk.lax, name)), f"synk.lax.{name} has no docstring"


def test_public_functions_show_an_example():
    for name in synk.__all__:
        obj = getattr(synk, name)
        if inspect.isfunction(obj):
            assert ">>>" in inspect.getdoc(obj), f"synk.{name} has no example"


@single_process("docstring examples are one-process scripts that pass whole batches")
@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(
        mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False
    )
    assert result.attempted > 0, f"{module} has no examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module}"
