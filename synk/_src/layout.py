"""The executable's arguments: which slot holds what, and how each slot is sharded.

Slots ``[0, leaves)`` hold one value per leaf (a view's data array); then the
extra rows of sliced arrays when the split is uneven; then views' indices,
one set of slots for views whose indices are equal (``X[idx], Y[idx]``).
Inside a trace nothing is cut on the host: uneven batches and replicated
data's indices travel whole and each device takes its own rows.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import PartitionSpec as P

from synk._src.axis import AXIS
from synk._src.roles import Leaf, Role, View
from synk._src.split import Split


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each leaf's parts sit among the executable's arguments."""

    extra: dict[int, int]  # sliced array leaf -> slot of its padded extra rows
    index: dict[int, tuple[int, ...]]  # view leaf -> slots of its indices
    specs: tuple[P, ...]  # every slot's PartitionSpec over the device axis
    whole: frozenset[int] = frozenset()  # sliced leaves passed whole: each device slices its own
    traced: bool = False  # inside a trace: replicated data's views send their whole index

    @classmethod
    def of(cls, descs: list[Leaf], split: Split | None, traced: bool = False) -> Layout:
        uneven = split is not None and not split.even
        arrays = [i for i, d in enumerate(descs) if d.sliced_array]
        # Inside a trace an uneven batch cannot be cut on the host: each device
        # slices its own rows of the whole (replicated) value, with no communication.
        whole = frozenset(arrays) if uneven and traced else frozenset()
        extra = {i: len(descs) + j for j, i in enumerate(arrays)} if uneven and not traced else {}
        specs = [P() if i in whole else spec(d) for i, d in enumerate(descs)]
        specs += [spec(descs[i]) for i in extra]
        index: dict[int, tuple[int, ...]] = {}
        for i, d in enumerate(descs):
            if d.view is None:
                continue
            if d.shares is not None:  # equal indices: one transfer, the same slots
                index[i] = index[d.shares]
                continue
            own = index_specs(d, uneven, traced)
            index[i] = tuple(range(len(specs), len(specs) + len(own)))
            specs += own
        return cls(extra, index, tuple(specs), whole, traced)

    @property
    def size(self) -> int:
        return len(self.specs)


def spec(d: Leaf) -> P:
    """How a leaf's slot is sharded: replicated, one entry per device, or rows split."""
    if d.role is Role.BROADCAST or (d.view is not None and d.data_layout is None):
        return P()
    if d.role is Role.PER_DEVICE or d.view is not None:
        return P(AXIS)
    return P(*([None] * d.batch_axis), AXIS)


def index_specs(d: Leaf, uneven: bool, traced: bool = False) -> list[P]:
    """How a view's indices travel: each device its own, or all of them everywhere."""
    if d.view is View.LOCAL:  # (n_devices, k): row d for device d
        return [P(AXIS)]
    if d.data_layout is None and not traced:
        return [P(AXIS)] * (2 if uneven else 1)  # each device its own requests (+ extra row)
    # Sharded data: every device needs every request (all_to_all). Replicated data
    # inside a trace: the host cannot cut a traced index into each device's
    # requests, so each device slices its own from the whole (`Body._own_rows`).
    return [P()]
