"""The options of a synk.Function that ``with_options`` can change, checked once.

Hashable: part of the cache key, which every variant of a function shares.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal

import jax
from jax.typing import DTypeLike

from synk._src import reduce as red
from synk._src import wire
from synk._src.buckets import GEOMETRIC, Buckets, Policy, as_option


@dataclasses.dataclass(frozen=True)
class Options:
    """The options `with_options` can change; hashable, part of the cache key."""

    reduce: red.ReduceSpec
    num_slices: int
    comm_dtype: DTypeLike | None  # a floating dtype, once `of` has checked it
    buckets: Buckets = GEOMETRIC  # as given (lengths as a tuple); `policy` is it parsed

    @classmethod
    def of(
        cls,
        reduce: red.ReduceSpec,
        num_slices: int,
        comm_dtype: DTypeLike | None,
        where: str,
        buckets: Buckets = GEOMETRIC,
    ) -> Options:
        """Validated options: every check of an option lives here (and in `reduce`)."""
        red.check_spec(reduce, where)
        if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
            raise ValueError(_bad_num_slices_error(where, num_slices))
        comm_dtype = wire.parse_comm_dtype(comm_dtype, where)
        if reduce is None and num_slices != 1:
            raise ValueError(_slices_without_reduce_error(where, num_slices))
        if reduce is None and comm_dtype is not None:
            raise ValueError(_comm_dtype_without_reduce_error(where, comm_dtype))
        option = as_option(buckets, where)  # checked here, before any call
        if reduce is None and option is not None and option != GEOMETRIC:
            raise ValueError(_buckets_without_reduce_error(where, buckets))
        return cls(reduce, num_slices, comm_dtype, option)

    @property
    def policy(self) -> Policy | None:
        """The bucket policy (None: each batch length compiles its own executable)."""
        return Policy.of(self.buckets, "")

    @property
    def key(self) -> tuple[Any, ...]:
        leaves, treedef = jax.tree_util.tree_flatten(self.reduce)
        return (tuple(leaves), treedef, self.num_slices, self.comm_dtype, self.buckets)


def _bad_num_slices_error(where: str, num_slices: object) -> str:
    return (
        f"{where}: num_slices={num_slices!r}; expected an integer >= 1 (the number of "
        "sequential pieces each device splits its rows into)."
    )


def _slices_without_reduce_error(where: str, num_slices: int) -> str:
    return (
        f"{where}: num_slices={num_slices} runs each device's rows in pieces and "
        "combines their outputs, which needs outputs that combine over rows: give an "
        "explicit reduce (e.g. reduce='avg' for a mean over rows). Without reduce the "
        "function runs whole under XLA's partitioner, exact for any function."
    )


def _comm_dtype_without_reduce_error(where: str, comm_dtype: DTypeLike) -> str:
    return (
        f"{where}: comm_dtype={comm_dtype} compresses explicit reductions: give one "
        "(e.g. reduce='avg'). Without reduce, XLA's partitioner places the "
        "collectives, in the function's own dtypes."
    )


def _buckets_without_reduce_error(where: str, buckets: Buckets) -> str:
    return (
        f"{where}: buckets={buckets!r} shares one executable between batch lengths by "
        "running each device's rows in pieces, which needs outputs that combine over "
        "rows: give an explicit reduce (e.g. reduce='avg'). Without reduce the "
        "function runs whole under XLA's partitioner and compiles once per length."
    )


class Unchanged(enum.Enum):
    """`with_options`: an option left as it is (None is a reduce spec)."""

    UNCHANGED = "unchanged"

    def __repr__(self) -> str:
        return "<unchanged>"


UNCHANGED: Literal[Unchanged.UNCHANGED] = Unchanged.UNCHANGED
