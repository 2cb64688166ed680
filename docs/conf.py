"""Sphinx configuration: MyST pages and notebooks (myst-nb), the API from docstrings.

``make docs`` builds it with warnings as errors. Notebooks render with the
outputs stored in ``docs/notebooks/`` (nothing executes here: the build stays
fast); ``notebooks/test_notebooks.py`` writes those copies and checks that they
are the outputs of the notebooks as they are.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports this checkout's synk

from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import synk  # noqa: E402

project = "synk"
author = "the synk authors"
copyright = "the synk authors"
release = version = synk.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = []

# MyST: Markdown pages, notebooks with their stored outputs.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True

# autodoc reads the Google-style docstrings.
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # defaults as written (a sentinel by its name)
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"  # types of what the docstring names
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# `name` in a docstring links to that object where Sphinx knows it.
default_role = "py:obj"

html_theme = "sphinx_book_theme"
html_title = f"synk {version}"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True


def _reexported_attribute_doc(app, what, name, obj, options, lines):
    """A constant re-exported from ``synk/_src`` gets the doc comment written beside it.

    ``synk.lax.axis_name`` is a string imported into ``synk/lax.py``; autodoc would
    show ``str``'s own docstring. Its documentation is the string literal after
    its assignment in ``synk/_src/lax.py``.
    """
    if what != "data" or not name.startswith("synk."):
        return
    module, _, attr = name.rpartition(".")
    private = "synk._src." + module.removeprefix("synk.")
    docs = ModuleAnalyzer.for_module(private).find_attr_docs()
    if ("", attr) in docs:
        lines[:] = list(docs["", attr])


def _no_constructor_signature(app, what, name, obj, options, signature, return_annotation):
    """synk's classes are made by functions (``synk.function``, ``synk.data``, ``X[idx]``),
    not by calling them: show a class without its constructor's private arguments."""
    if what == "class" and name.startswith("synk."):
        return "", return_annotation
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _reexported_attribute_doc)
    app.connect("autodoc-process-signature", _no_constructor_signature)
