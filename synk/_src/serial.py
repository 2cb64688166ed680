"""``f.serial``: the undecorated function on one device, the reference of every call.

It takes what a call takes (whole modules, synk.Data batches, whole data
sets) and writes into Flax NNX Variables as a call does; synk's device axis
is bound at size 1, so synk.lax acts as on one device. One jitted executable
per call signature, keyed as a call is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from synk._src import first, take
from synk._src import lax as synk_lax
from synk._src.outputs import Outputs
from synk._src.partition import Call, Structure, is_batch, is_data, partition
from synk._src.plan import user_call
from synk._src.roles import entries
from synk._src.signature import Dyn, InAxis

if TYPE_CHECKING:
    from synk._src.core import Core


def call(core: Core, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``f.serial(*args, **kwargs)``: built once per call signature, keyed as a call is."""
    statics, dyn = core.bind(args, kwargs)
    bound = partition(dyn)
    key = (statics, bound.key)
    one = core.serials.get(key)
    if one is None:
        core.signature.check(args, kwargs, core.where)
        if first.slots(bound.treedef):  # synk.first_rows: the function sees the rows
            if first.traced_count(bound):
                raise TypeError(_traced_count_error(core.where))
            return call(core, first.concrete(args), first.concrete(kwargs))
        one = core.serials[key] = Serial.build(core, statics, dyn, bound)
    result, new = one.jitted([as_array(x) for x in bound.traced])
    if new:
        bound.write_back(new, one.structure)
    return one.outputs.restore(result)


def _traced_count_error(where: str) -> str:
    return (
        f"{where}.serial: a synk.first_rows count is traced here, so the rows the function "
        "would see have no fixed length on one device. Call f.serial outside jax.jit, with "
        "the count as a Python int (or pass x[:n] itself)."
    )


@dataclasses.dataclass(frozen=True)
class Serial:
    """`fn` on one device, jitted, for one call signature of `Function.serial`."""

    jitted: Callable
    structure: Structure
    outputs: Outputs

    @classmethod
    def build(cls, core: Core, statics: tuple, dyn: Dyn, call: Call) -> Serial:
        structure = call.structure()
        traced, _ = entries(core, dyn, call, structure)
        rows = rows_of(traced)
        first = None if rows is None else (lambda: 0, rows)
        outputs = Outputs()
        call_user = user_call(core.fn, structure, statics, outputs, core.where)

        def serial(arrays: list[Any]) -> Any:
            # synk's device axis bound at size 1: synk.lax acts as on one device.
            with synk_lax.tracing(rows=first):
                return synk_lax.on_one_device(call_user, arrays)

        return cls(jax.jit(serial), structure, outputs)


def as_array(x: Any) -> Any:
    """A traced leaf as one device takes it: a synk.Data batch as its rows, a whole
    synk.Data as its value (on the host, or gathered in the trace for a traced index)."""
    t = type(x)
    if is_batch(t):
        return take.rows(x) if x.traced else np.asarray(x)
    if is_data(t):
        return np.asarray(x)
    return x


def rows_of(traced: list[tuple[str, Any, InAxis]]) -> int | None:
    """The batch length of a call: the rows of its first sliced leaf (None if none)."""
    for _, leaf, entry in traced:
        shape = getattr(leaf, "shape", ())
        if isinstance(entry, int) and len(shape) > 0:
            return shape[entry]
    return None
