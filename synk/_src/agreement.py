"""The agreement between processes on each call: every process makes the same one.

A call is collective: processes that disagree on shapes or structure would
wait for each other in a collective forever. A call's description and its hash
are made once per plan; every call compares the hash across processes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from synk._src import allgather, compat, partition, settings
from synk._src.options import Options
from synk._src.roles import Entry

CHECK_CALLS = settings.check_calls()
"""Compare every call's signature across processes (SYNK_CHECK=0 switches it off)."""


def describe_call(
    options: Options,
    statics: tuple[Any, ...],
    names: list[str],
    structure: partition.Structure,
    traced_entries: list[Entry],
    shared: dict[int, int],
) -> str:
    """A call's structure, shapes, statics and options: the same text in every process
    that makes the same call (its hash is what `agree` compares)."""
    parts = []
    for k, (name, leaf, _) in enumerate(traced_entries):
        if partition.is_batch(type(leaf)):
            same = f" (equal to {traced_entries[shared[k]][0]}'s)" if k in shared else ""
            parts.append(f"{name}: synk.Data batch, indices {list(leaf.index.shape)}{same}")
        elif type(leaf) in partition.NUMBERS:
            parts.append(f"{name}: {type(leaf).__name__}")
        else:  # str(dtype): typed keys too
            parts.append(f"{name}: {leaf.dtype}{list(leaf.shape)}, {_lives(leaf)}")
    for name, slot in zip(names, structure.slots, strict=True):
        if type(slot) is partition.Static:
            parts.append(f"{name}: static {_show(slot.value)}")
    for name, _, value in statics:
        parts.append(f"static {name}: {_show(value)}")
    parts.append(f"reduce={options.reduce!r} num_slices={options.num_slices}")
    parts.append(f"comm_dtype={options.comm_dtype}")
    return "; ".join(parts)


def _lives(leaf: object) -> str:
    """Where an array argument lives: it decides whether it is a share or global."""
    if isinstance(leaf, compat.Tracer):
        return "a traced value"
    if not isinstance(leaf, jax.Array):
        return "a host array"
    return "a jax.Array of this process" if leaf.is_fully_addressable else "a global jax.Array"


def _show(value: object) -> str:
    simple = isinstance(value, int | float | str | bool | type(None) | tuple)
    return repr(value) if simple else str(type(value))


def signature_hash(description: str) -> int:
    """A hash of a call's description that is the same in every process."""
    return zlib.crc32(description.encode())


def agree(
    where: str, description: str, digest: int, values: Sequence[tuple[str, object]] = ()
) -> None:
    """Raise on every process if the processes are not making the same call.

    A call is collective: processes that disagree on shapes or structure would
    wait for each other in a collective forever. One tiny allgather of a hash
    per call (over MPI where mpiexec launched us) tells them apart first.
    `values` are (argument, value) pairs that must be equal too, hashed into the
    same number: Python numbers (a learning rate) and the indices of X[idx].
    """
    shown = [(name, _show_value(value)) for name, value in values]
    if shown:
        digest = zlib.crc32("\n".join(f"{n}={v}" for n, v in shown).encode(), digest)
    digests = allgather.values(int(digest))
    if len(set(digests)) == 1:
        return
    texts = allgather.values(json.dumps([description, shown]))
    calls = [json.loads(t) for t in texts]
    if len({c[0] for c in calls}) > 1:
        raise ValueError(_different_calls_error(where, calls))
    differ = [k for k, (name, _) in enumerate(calls[0][1]) if len({c[1][k][1] for c in calls}) > 1]
    raise ValueError(_different_values_error(where, calls, differ))


def _different_calls_error(where: str, calls: list[list]) -> str:
    lines = "\n".join(f"  process {i}: {c[0]}" for i, c in enumerate(calls))
    return (
        f"{where}: the processes made different calls; every process must call with the "
        f"same argument structure, shapes (its own share of the batch), dtypes, where "
        f"each argument lives, static arguments and options:\n{lines}"
    )


def _different_values_error(where: str, calls: list[list], differ: list[int]) -> str:
    lines = "\n".join(
        f"  `{calls[0][1][k][0]}`: "
        + ", ".join(f"process {i}: {c[1][k][1]}" for i, c in enumerate(calls))
        for k in differ
    )
    return (
        f"{where}: the processes passed different values for "
        + ", ".join(f"`{calls[0][1][k][0]}`" for k in differ)
        + ". Every process must pass the same Python numbers and broadcast values, and "
        f"the same global indices to X[idx]:\n{lines}"
    )


def _show_value(value: object) -> str:
    """A value as the agreement compares it: a number as it prints, indices by a hash."""
    if isinstance(value, np.ndarray):
        return f"{value.size} indices, crc32 {zlib.crc32(value.tobytes()):08x}"
    return repr(value)
