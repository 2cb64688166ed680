"""The code blocks of Markdown pages (the docs pages, the README), for the tests that run them.

A page's ```python blocks run in order, as a reader pastes them; a ```text
block right after one (before any other code block) is what it prints.
"""

import contextlib
import doctest
import io
import linecache
import re
import sys
from pathlib import Path

_FENCE = re.compile(r"^(\s*)```(.*)$")


def code_blocks(path: Path) -> list[tuple[str, str, int]]:
    """The fenced blocks of a Markdown page: (language, code, line of the opening fence).

    A MyST directive (```` ```{toctree} ````) counts as a block of language ``{toctree}``.
    """
    blocks, open_, lines = [], None, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = _FENCE.match(line)
        if open_ is None and fence:
            indent, info = fence.groups()
            open_, lines = (info.split()[0] if info.strip() else "", number, len(indent)), []
        elif open_ is not None and line.strip() == "```":
            blocks.append((open_[0], "".join(x[open_[2] :] + "\n" for x in lines), open_[1]))
            open_ = None
        elif open_ is not None:
            lines.append(line)
    assert open_ is None, f"{path.name}: the code block at line {open_[1]} never closes"
    return blocks


def python_examples(path: Path) -> list[tuple[str, str | None, int]]:
    """Each ```python block of a page, and what it prints: the ```text block right after
    it (before any other code block), where there is one."""
    examples, waiting = [], False
    for lang, code, line in code_blocks(path):
        if lang == "python":
            examples.append((code, None, line))
        elif lang == "text" and waiting:
            examples[-1] = (examples[-1][0], code, examples[-1][2])
        waiting = lang == "python"
    return examples


_OUTPUT = doctest.OutputChecker()
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def assert_prints(expected: str, got: str, where: str) -> None:
    if not _OUTPUT.check_output(expected, got, _FLAGS):
        raise AssertionError(f"{where} printed\n{got}\nwhere the page says\n{expected}")


def run_page(path: Path) -> None:
    """Run a page's Python blocks in order in one namespace, as a reader would paste them."""
    namespace = {"__name__": f"page_{path.stem}"}
    for code, expected, line in python_examples(path):
        name = f"{path.name}:{line}"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), namespace)
        if expected is not None:
            assert_prints(expected, out.getvalue(), f"the block at {name}")


if __name__ == "__main__":  # one page, as its own script: python tests/pages.py docs/PAGE.md
    run_page(Path(sys.argv[1]))
