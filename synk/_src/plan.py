"""The plan of one call signature: its cache key, its leaves' roles, its outputs, its executable.

A `Plan` is built once per key (tree structure, each leaf's type, aval and
sharding, the statics, the options) from the leaves' records alone, then
reused by every call with that key. The steps of `Plan.build` are step 2 of
the map of a call in `function`'s docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from synk._src import agreement, buckets, compat, first, partition, partitioned, placement
from synk._src import body as synk_body
from synk._src import outputs as synk_outputs
from synk._src import reduce as red
from synk._src.abstract import check_whole_share, trace_outputs
from synk._src.layout import Layout
from synk._src.refusals import listed
from synk._src.roles import Leaf, Role, describe_leaves, entries
from synk._src.signature import Dyn, Statics
from synk._src.split import Split, check_not_empty, make_split
from synk._src.steps import Placer, UserCall
from synk._src.views import Batch

if TYPE_CHECKING:
    from synk._src.buckets import Policy
    from synk._src.core import Core
    from synk._src.options import Options


# --------------------------------------------------------------------------
# The plan


@dataclasses.dataclass
class Plan:
    """Everything about one call signature, fixed at its first call."""

    path: str  # "whole" (the default) or "per-device" (explicit reductions)
    structure: partition.Structure  # how the arguments are rebuilt from the traced leaves
    outputs: synk_outputs.Outputs  # the outputs' static leaves, from the trace
    # .treedef: the outputs and the in-place updates, as the executable returns them
    out: synk_outputs.OutPlan | partitioned.Outputs
    jitted: jax.stages.Wrapped
    place: Placer
    description: str  # the call as this process sees it, for the cross-process check
    digest: int | None  # its hash, where several processes must agree on every call
    shared: tuple[tuple[int, int], ...]  # (view, view it shares indices with)
    eager: bool  # called with values, not tracers: the CPU in-flight bound applies
    checked: tuple[tuple[int, str], ...] = ()  # leaves whose values the processes compare

    def sharing_holds(self, leaves: list[Any]) -> bool:
        """Whether the views this plan sends one index for still have equal indices."""
        return all(_same_indices(leaves[i], leaves[j]) for i, j in self.shared)

    def values(self, leaves: list[Any]) -> list[tuple[str, Any]]:
        """(argument, value) of the Python numbers and view indices of a call."""
        return agreed_values(self.checked, leaves)

    @classmethod
    def build(
        cls,
        core: Core,
        options: Options,
        statics: tuple,
        dyn: Dyn,
        call: partition.Call,
        share: bool = True,
    ) -> Plan:
        structure = call.structure()
        leaves = call.traced
        whole = options.reduce is None
        shared = equal_indices(leaves) if share else {}
        traced_entries, names = entries(core, dyn, call, structure)
        description = agreement.describe_call(
            options, statics, names, structure, traced_entries, shared
        )
        traced = any(_is_traced(x) for x in leaves)
        digest, checked = None, ()
        if core.groups > 1 and agreement.CHECK_CALLS and not traced:
            # Agree before any check can raise, so every process raises alike.
            digest = agreement.signature_hash(description)
            checked = tuple(
                (k, name)
                for k, (name, leaf, _) in enumerate(traced_entries)
                if type(leaf) in partition.NUMBERS or type(leaf) is Batch
            )
            agreement.agree(core.where, description, digest, agreed_values(checked, leaves))
        descs = describe_leaves(core, traced_entries, traced)
        descs = [dataclasses.replace(d, shares=shared.get(i)) for i, d in enumerate(descs)]
        core.recompiles.note(core.where, structure, names, call)
        outputs = synk_outputs.Outputs()
        call_user = user_call(core.fn, structure, statics, outputs, core.where)
        pairs = first.slots(call.treedef)
        if pairs:  # synk.first_rows inside a trace (a count known here never gets here)
            jitted, place, out = _first_rows(core, options, structure, descs, call, pairs,
                                             call_user, names)  # fmt: skip
            return cls(
                "per-device", structure, outputs, out, jitted, place, description, digest,
                tuple(shared.items()), False, checked,
            )  # fmt: skip
        if whole:
            return cls._whole(core, structure, outputs, descs, call_user, description, digest,
                              traced, tuple(shared.items()), checked)  # fmt: skip
        variables = [names[i] for i in structure.variables]
        policy = options.policy
        if policy is not None and not traced and buckets.may_share(descs):
            # A bucket's ladder serves any length: num_slices larger than the rows
            # a device gets is refused only on exact shapes (below).
            split = batch_split(core, descs, 1)
            made = _bucketed(core, options, policy, statics, structure, descs, split, call_user,
                             variables, outputs)  # fmt: skip
            if made is not None:
                jitted, place, out, outputs = made
                return cls(
                    "per-device", structure, outputs, out, jitted, place, description, digest,
                    tuple(shared.items()), True, checked,
                )  # fmt: skip
        split = batch_split(core, descs, options.num_slices)
        out, uses_lax = trace_outputs(core, options, descs, split, call_user, variables)
        if split is not None and (uses_lax or out.indices(red.PER_DEVICE)):
            check_whole_share(core, split, uses_lax)
        layout = Layout.of(descs, split, traced)
        body = synk_body.Body(
            call_user, descs, split, out, layout, options.comm_dtype, len(core.devices)
        )
        donated = () if traced else synk_body.donated(core, descs, layout)
        jitted = synk_body.executable(core, body, donated, traced, uses_lax)
        place = placement.placer(core, descs, split, layout)
        return cls(
            "per-device", structure, outputs, out, jitted, place, description, digest,
            tuple(shared.items()), not traced, checked,
        )  # fmt: skip

    @classmethod
    def _whole(
        cls,
        core: Core,
        structure: partition.Structure,
        outputs: synk_outputs.Outputs,
        descs: list[Leaf],
        call_user: UserCall,
        description: str,
        digest: int | None,
        traced: bool,
        shared: tuple[tuple[int, int], ...],
        checked: tuple[tuple[int, str], ...],
    ) -> Plan:
        partitioned.check_in_axes(core, descs)
        found = batch_rows(core, descs)
        pad = partitioned.pads(core, descs, traced)
        out = partitioned.Outputs()
        donated = () if traced else synk_body.donated(core, descs, None)
        first = None if found is None else (lambda: 0, found[0])
        jitted = partitioned.executable(core, descs, pad, call_user, first, traced, donated, out)
        place = partitioned.placer(core, descs, pad, traced)
        return cls(
            "whole", structure, outputs, out, jitted, place, description, digest, shared,
            not traced, checked,
        )  # fmt: skip


def _bucketed(
    core: Core,
    options: Options,
    policy: Policy,
    statics: tuple,
    structure: partition.Structure,
    descs: list[Leaf],
    split: Split | None,
    call_user: UserCall,
    variables: list[str],
    outputs: synk_outputs.Outputs,
) -> tuple[jax.stages.Wrapped, Placer, synk_outputs.OutPlan, synk_outputs.Outputs] | None:
    """(jitted, place, out, outputs) of the bucket this call's batch fits, or None.

    The bucket's executable is built at its first batch length and reused by
    every other length it holds; each length gets only its own placer.
    """
    if split is None:  # no batch axis (may_share found one: never)
        return None
    capacity = policy.capacity(split.rows, split.devices)
    if capacity is None or (split.groups > 1 and any(d.view is not None for d in descs)):
        return None
    cap_split = Split(capacity * split.devices, split.devices, 1, split.groups)
    cap = buckets.capacity_descs(descs, cap_split.rows)
    key = (options.key, statics, structure, tuple(cap), capacity)
    entry = core.buckets.get(key)
    if entry is None:
        sizes = buckets.ladder(capacity, options.num_slices)
        # The outputs at the largest and the smallest piece (and one more row): the
        # sizes between are traced by the executable alone.
        ends = sorted({sizes[0], sizes[-1]})
        out, uses_lax = trace_outputs(core, options, cap, cap_split, call_user, variables, ends)
        if not buckets.eligible(out, uses_lax):
            core.buckets[key] = False
            return None
        layout = Layout.of(cap, cap_split)
        body = buckets.BucketBody(
            call_user, cap, cap_split, out, layout, options.comm_dtype, len(core.devices),
            sizes=sizes,
        )  # fmt: skip
        jitted = buckets.executable(core, body, synk_body.donated(core, cap, layout))
        inner = placement.placer(core, cap, cap_split, layout)
        entry = core.buckets[key] = (jitted, inner, out, outputs)
    if entry is False:
        return None
    jitted, inner, out, bucket_outputs = entry
    length = buckets.traced_length(core, split.local_rows)
    place = buckets.placer(descs, split, capacity, inner, length)
    return jitted, place, out, bucket_outputs


def _first_rows(
    core: Core,
    options: Options,
    structure: partition.Structure,
    descs: list[Leaf],
    call: partition.Call,
    pairs: tuple[tuple[int, int], ...],
    call_user: UserCall,
    names: list[str],
) -> tuple[jax.stages.Wrapped, Placer, synk_outputs.OutPlan]:
    """(jitted, place, out) for ``synk.first_rows`` batches inside a trace: the bucket of
    their padded length, run on their first ``n`` rows (``n`` traced)."""
    where = core.where
    index = _traced_index(structure)
    arrays = [index[a] for a, _ in pairs]
    counts = [index[c] for _, c in pairs]
    leaves = call.traced
    first.check(where, options.reduce, descs, arrays, [leaves[c] for c in counts])
    rows = descs[arrays[0]].aval.shape[0]
    n = len(core.devices)
    capacity = -(-rows // n)
    cap_split = Split(capacity * n, n, 1)  # the ladder serves any num_slices
    sizes = buckets.ladder(capacity, options.num_slices)
    variables = [names[i] for i in structure.variables]
    ends = sorted({sizes[0], sizes[-1]})
    out, uses_lax = trace_outputs(core, options, descs, cap_split, call_user, variables, ends)
    first.check_outputs(where, out, uses_lax)
    layout = Layout.of(descs, cap_split, traced=True)
    body = buckets.BucketBody(
        call_user, descs, cap_split, out, layout, options.comm_dtype, n,
        sizes=sizes, count_leaf=counts[0], whole=frozenset(arrays),
    )  # fmt: skip
    jitted = buckets.executable(core, body, (), traced=True)
    place = placement.placer(core, descs, cap_split, layout)

    def place_counted(leaves: list[Any]) -> list[Any]:  # the same shapes, maybe other counts
        first.check_counts(where, [leaves[c] for c in counts])
        return place(leaves)

    return jitted, place_counted, out


def _traced_index(structure: partition.Structure) -> dict[int, int]:
    """Each traced leaf's position in the call's tree -> its index among the traced leaves."""
    index, k = {}, 0
    for pos, slot in enumerate(structure.slots):
        if slot is partition.TRACED:
            index[pos] = k
            k += 1
        elif type(slot) is partition.Var:
            k += slot.count
    return index


def agreed_values(checked: tuple[tuple[int, str], ...], leaves: list[Any]) -> list[tuple[str, Any]]:
    """The values several processes must pass alike: numbers, and views' indices."""
    return [(name, getattr(leaves[k], "index", leaves[k])) for k, name in checked]


def user_call(
    fn: Callable[..., Any],
    structure: partition.Structure,
    statics: tuple,
    outputs: synk_outputs.Outputs,
    where: str,
) -> UserCall:
    """The user's function on the traced leaves: (its traced outputs, what it wrote into
    Variables); `outputs` records the static ones."""

    rows_of = bool(first.slots(structure.treedef))  # synk.first_rows: the function sees rows

    def call_user(flat: list[Any]) -> tuple[Any, partition.Updates]:
        dyn, fresh = structure.rebuild(flat)
        args, kwargs = Statics.merge(statics, dyn)
        if rows_of:
            args, kwargs = first.unwrap(args), first.unwrap(kwargs)
        out = fn(*args, **kwargs)
        return outputs.split(out), partition.updates(structure, dyn, fresh, flat, where)

    return call_user


def _is_traced(x: object) -> bool:
    """A value inside a trace, or a view whose index is one."""
    return isinstance(x, compat.Tracer) or (type(x) is Batch and x.traced)


def _same_indices(a: Batch, b: Batch) -> bool:
    """Whether two views take the same rows. A traced index has no values to compare:
    only the same traced array, resolved against the same length, is the same."""
    if a.traced or b.traced:
        return a.index is b.index and a.rows == b.rows
    return a.index is b.index or np.array_equal(a.index, b.index)


def equal_indices(leaves: list[Any]) -> dict[int, int]:
    """View leaves whose indices equal an earlier view's of the same kind: {view: earlier}."""
    views = [i for i, x in enumerate(leaves) if type(x) is Batch]
    shared: dict[int, int] = {}
    for k, i in enumerate(views):
        a = leaves[i]
        for j in views[:k]:
            b = leaves[j]
            alike = j not in shared and a.local == b.local and a.index.shape == b.index.shape
            alike = alike and a.data.sharded == b.data.sharded  # the indices travel alike
            if alike and _same_indices(a, b):
                shared[i] = j
                break
    return shared


# --------------------------------------------------------------------------
# The batch


def batch_split(core: Core, descs: list[Leaf], slices: int) -> Split | None:
    """How the sliced leaves' rows are dealt; None when no leaf is sliced."""
    found = batch_rows(core, descs)
    if found is None:
        if slices != 1:
            raise ValueError(_slices_without_batch_error(core.where, slices))
        return None
    rows, groups = found
    return make_split(rows, len(core.devices), slices, groups=groups, where=core.where)


def _slices_without_batch_error(where: str, slices: int) -> str:
    return (
        f"{where}: num_slices={slices} needs an argument sliced along a batch "
        "axis, but every argument is broadcast or per-device."
    )


def batch_rows(core: Core, descs: list[Leaf]) -> tuple[int, int] | None:
    """The global batch length and the number of process groups that split it (None if
    nothing is sliced); checks that the sliced leaves agree."""
    sliced = [d for d in descs if d.role is Role.SLICED]
    if not sliced:
        return None
    lengths = [d.aval.shape[d.batch_axis] for d in sliced]
    rows = lengths[0]
    if any(n != rows for n in lengths):
        raise ValueError(_lengths_error(core.where, sliced, lengths))
    check_not_empty(rows, core.where)
    # Host arrays are each process's share, so each process splits its own
    # rows (groups = processes). Views and global device arrays are the same
    # on every process, so one split over all devices serves any batch length.
    count = core.groups if any(d.host for d in sliced) else 1
    if rows % count:
        other = next(d for d in sliced if not d.host)
        raise ValueError(_uneven_processes_error(core.where, other.name, rows, count))
    return rows, count


def _lengths_error(where: str, sliced: list[Leaf], lengths: list[int]) -> str:
    each = [f"`{d.name}` has {n} rows (axis {d.axis})" for d, n in zip(sliced, lengths)]
    return (
        f"{where}: sliced arguments must share one batch length, but {listed(each)}. Pass "
        "batches of equal length, or mark arguments that are not batched as broadcast "
        "with in_axes=None."
    )


def _uneven_processes_error(where: str, name: str, rows: int, count: int) -> str:
    return (
        f"{where}: `{name}` holds {rows} rows of the global batch, which do "
        f"not divide over {count} processes, but the host arrays beside it are each "
        "process's share of it. Use a global batch that is a multiple of the process "
        "count, or pass every batched argument the same way."
    )
