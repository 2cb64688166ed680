"""The options of a synk.Function that ``with_options`` can change, checked once.

Hashable: part of the cache key, which every variant of a function shares.
"""

from __future__ import annotations

import dataclasses
import enum
import numbers
from typing import Any, Literal

import jax
import numpy as np
from jax.typing import DTypeLike

from synk._src import reduce as red
from synk._src import wire
from synk._src.buckets import GEOMETRIC, Buckets, Policy, as_option
from synk._src.refusals import Refusals


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
        """Validated options: every check of an option lives here (and in `reduce`).
        Every bad option is refused at once, with every option of the per-device
        path that was set without an explicit reduce."""
        refusals = Refusals(where, "these options")
        refusals.run(red.check_spec, reduce, where)
        slices_ok = isinstance(num_slices, numbers.Integral) and not isinstance(
            num_slices, bool | np.bool_
        )
        if slices_ok and num_slices >= 1:
            num_slices = int(num_slices)  # np.int64(2) as 2: the cache key and repr agree
        else:
            refusals.add(ValueError(_bad_num_slices_error(where, num_slices)))
        comm_dtype = refusals.run(wire.parse_comm_dtype, comm_dtype, where)
        option = refusals.run(as_option, buckets, where)  # checked here, before any call
        if reduce is None:  # the options of the per-device path need one
            shown = [f"num_slices={num_slices}"] if slices_ok and num_slices > 1 else []
            shown += [f"comm_dtype={comm_dtype}"] if comm_dtype is not None else []
            shown += [f"buckets={buckets!r}"] if option not in (None, GEOMETRIC) else []
            if shown:
                refusals.add(ValueError(_needs_reduce_error(where, shown)))
        refusals.raise_all()
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


# What each option of the per-device path does with the rows or their reductions.
_PER_DEVICE_OPTIONS = {
    "num_slices": "runs each device's rows in pieces and combines their outputs",
    "comm_dtype": "compresses the explicit reductions",
    "buckets": "shares one executable between batch lengths by running each device's rows "
    "in pieces",
}


_OFF = {"num_slices": "num_slices=1", "comm_dtype": "comm_dtype=None", "buckets": "buckets=None"}


def _needs_reduce_error(where: str, shown: list[str]) -> str:
    """`shown`: each option of the per-device path that was set, as written (num_slices=2)."""
    what = "; ".join(f"{s} {_PER_DEVICE_OPTIONS[s.split('=')[0]]}" for s in shown)
    this = "This needs" if len(shown) == 1 else "Each needs"
    off = ", ".join(_OFF[s.split("=")[0]] for s in shown)
    return (
        f"{where}: {what}. {this} outputs that combine over rows: give an explicit reduce "
        f"(e.g. reduce='avg' for a mean over rows), or set {off}. Without reduce the "
        "function runs whole under XLA's partitioner: exact for any function, in its own "
        "dtypes, and compiled once per batch length."
    )


class Unchanged(enum.Enum):
    """`with_options`: an option left as it is (None is a reduce spec)."""

    UNCHANGED = "unchanged"

    def __repr__(self) -> str:
        return "<unchanged>"


UNCHANGED: Literal[Unchanged.UNCHANGED] = Unchanged.UNCHANGED
