"""What the subcommands' flags share: number parsers, and the flags of every timed run.

Each subcommand module declares its own flags in ``add_arguments(parser)``,
beside its ``run``; ``cli`` adds the output flags every subcommand has.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

CPU_MAX_CALLS = 20  # XLA's CPU collectives abort past ~50 un-blocked calls in flight


def timing(parser: argparse.ArgumentParser, rounds: int, calls: int) -> None:
    """``--rounds`` and ``--calls``, with this subcommand's defaults (see `harness.measure`)."""
    parser.add_argument("--rounds", type=positive_int, default=rounds, help="samples per variant")
    parser.add_argument(
        "--calls",
        type=positive_int,
        default=calls,
        help=f"calls per sample, then one block (<= {CPU_MAX_CALLS} on CPU)",
    )


Number = TypeVar("Number", int, float)


def _positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


positive_int, positive_float = _positive(int), _positive(float)


def sizes(count: int | None = None) -> Callable[[str], list[int]]:
    """A parser of comma-separated positive integers (exactly ``count`` of them, if given)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(b) for b in text.split(",") if b.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, got {text!r}"
            ) from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
        if count is not None and len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} integers, got {text!r}")
        return values

    return parse
