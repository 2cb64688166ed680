"""Refusing a call once, naming every leaf at fault.

A check runs over all the leaves it checks and gathers what it refuses
(`Refusals.run`); `Refusals.raise_all` then raises one error that names
them all, so that a call with three bad arguments takes one run to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

_REFUSED = (TypeError, ValueError, IndexError)
_PARTS = "_synk_refusals"  # the refusals that an error of several names


class Refused(TypeError, ValueError, IndexError):
    """Several refusals of different kinds at once: it is caught as any of them."""


class Refusals:
    """The refusals of one check, over every leaf it looks at."""

    def __init__(self, where: str, subject: str = "this call") -> None:
        self.where, self.subject = where, subject  # subject: what the problems are with
        self.errors: list[Exception] = []

    def run(self, fn: Callable[..., R], *args: Any) -> R | None:
        """``fn(*args)``; what it refuses is kept for `raise_all` (and None returned)."""
        try:
            return fn(*args)
        except _REFUSED as e:
            self.errors.extend(getattr(e, _PARTS, [e]))  # another check's refusals, each
            return None

    def add(self, error: Exception) -> None:
        self.errors.append(error)

    def raise_all(self) -> None:
        """Raise what was refused, if anything: one error, or one naming each."""
        errors = self.errors
        if not errors:
            return
        if len(errors) == 1:
            raise errors[0]
        kinds = {type(e) for e in errors}
        kind = kinds.pop() if len(kinds) == 1 else Refused
        prefix = f"{self.where}: "
        items = "\n".join(f"  {i}. {str(e).removeprefix(prefix)}" for i, e in enumerate(errors, 1))
        heading = f"{prefix}{len(errors)} problems with {self.subject}; fix them all:"
        error = kind(f"{heading}\n{items}")
        setattr(error, _PARTS, list(errors))  # so that a check around this one lists them
        raise error


def listed(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: the items as a message names them."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
