"""Differential fuzzing of the one promise: synk.function(f)(*args) equals f(*args).

Each example draws a whole call: a device count (1, 2, 3, 8), a batch length
B from 1 to 3n+5, num_slices (valid, or one too many: the documented
ValueError), comm_dtype, a pytree of inputs (float32 / float16 / bfloat16 /
int32 / bool / complex64 leaves, with NaN, +-inf and -0.0 among the floats;
Python numbers and 0-d arrays too) with random in_axes (ints, negative ints,
None, 'per_device', pytree prefixes), passed as numpy, as jax.Arrays on one or
every device, or as synk.Data batch views, and a data-parallel function with
outputs under every reduce op. The function is built from the drawn
description, and so is its reference: the same elementwise steps in numpy in
the leaves' own dtypes, then the reduction over the rows in float64 (not jnp:
on CPU, jnp.max can drop NaN). synk's result must match it on tolerances the
output dtype justifies, with NaN and +-inf in the same places, on a first call
(a new plan) and a second on new values (the cached plan). Calls the contract
refuses must raise a TypeError or ValueError that names the output, before
the function runs.

Per-device values have a serial meaning the reference can compute: a
per-device input enters per-device outputs (entry i from entry i, plus the
rows device i took), or a max/min once every device has rows.

Values are kept where the serial function is exact in its own dtype: sums and
products see values scaled into [-1, 1] (by a power of two, exactly), products
are of factors near 1, so no serial result overflows; averages, extrema and
gathered rows also see values up to 2**15, where a float16 mean is fine but a
sum weighted by rows is not.

Profiles: by default a fixed-seed run (derandomized, a few dozen examples per
test, well under a minute in one process); ``SYNK_FUZZ=long`` draws hundreds
of examples from the seed ``SYNK_FUZZ_SEED`` (default 0). Under
``mpiexec -n 2`` every process draws the same examples, fewer of them, and
passes its share of the sliced host arrays (``synk.process_share``); the
function then spans every device.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PROCESSES, single_process
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

import synk

# --------------------------------------------------------------------------
# Profiles

LONG = os.environ.get("SYNK_FUZZ", "") == "long"


def fuzz_settings(default: int, long: int):
    """A fixed-seed run by default; a long, seeded one with SYNK_FUZZ=long.

    No example database: every process must draw the same examples in the
    same order, or their collective calls would not match. Under several
    processes there is no shrinking either: a failure that one process sees
    and the other does not would send them down different paths.
    """
    examples = long if LONG else default
    phases = list(hypothesis.Phase)
    if PROCESSES > 1:
        examples = max(3, examples // 8)
        phases = [hypothesis.Phase.explicit, hypothesis.Phase.generate]
    decorate = hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=not LONG,
        database=None,
        phases=phases,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    if LONG:
        seeded = hypothesis.seed(int(os.environ.get("SYNK_FUZZ_SEED", "0")))
        return lambda test: seeded(decorate(test))
    return decorate


# --------------------------------------------------------------------------
# What is drawn

# Under several processes a function spans every process's devices.
DEVICE_COUNTS = (
    [n for n in (1, 2, 3, 8) if n <= synk.device_count()]
    if PROCESSES == 1
    else [synk.device_count()]
)
FLOATS = ("float32", "float16", "bfloat16")
DTYPES = (*FLOATS, "int32", "bool", "complex64")
DRAWN_DTYPES = (*DTYPES, "float16", "bfloat16")  # the half-precision ones twice as often
REDUCTIONS = ("avg", "sum", "max", "min", "prod")
OPS = (*REDUCTIONS, "gather", "per_device")
TRANSFORMS = {
    "float": ("id", "neg", "abs", "half"),
    "int": ("id", "neg", "abs", "half"),
    "complex": ("id", "neg", "abs", "half"),
    "bool": ("id",),
}
# How a leaf is passed: numpy (each process its share, if sliced); a jax.Array on the
# default device, on the last device or replicated on every device; a batch view
# of a synk.Data, replicated or sharded.
PLACES = ("host", "device", "last device", "every device", "data", "sharded data")
BIG = 15  # float values reach 2**15: a float16 mean of them is fine, twice them is not


def kind(dtype: str) -> str:
    if dtype in FLOATS:
        return "float"
    return {"int32": "int", "bool": "bool", "complex64": "complex"}[dtype]


def np_dtype(dtype: str) -> np.dtype:
    return np.dtype(jnp.dtype(dtype))  # bfloat16 through ml_dtypes


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One input leaf: its role, dtype, global shape and in_axes entry."""

    role: str  # "sliced", "broadcast", "per_device", or "scalar" (Python number / 0-d array)
    dtype: str
    shape: tuple[int, ...]  # global: a sliced leaf has B rows along `axis`
    axis: int | None  # non-negative batch axis of a sliced leaf
    entry: Any  # the in_axes entry as written (an int may be negative)
    exponent: int = 0  # float values have magnitudes in [2**(e-3), 2**e]
    specials: float = 0.0  # fraction of NaN, +-inf and -0.0 among float values
    positive: bool = False  # no negative values (but -0.0, -inf): sums that do not cancel
    python: bool = False  # a scalar passed as a Python number
    place: str = "host"  # how it is passed: one of PLACES


@dataclasses.dataclass(frozen=True)
class Out:
    """One output: op over the rows of transform(leaf) + bias + partner."""

    op: str
    source: int | None  # the sliced leaf (or per-device leaf, for op 'per_device')
    transform: str = "id"
    raw: bool = False  # the leaf at its own magnitude; else scaled into [-1, 1]
    bias: int | None = None  # a leaf whose first value is added to every row
    partner: int | None = None  # a sliced leaf whose first value in each row is added
    per_device: int | None = None  # max/min: a per-device leaf whose first value joins
    rows: bool = False  # op 'per_device': add the rows this device processed

    def __repr__(self) -> str:
        parts = [f"{self.transform}({'raw ' if self.raw else ''}leaf{self.source})"]
        parts += [f"first(leaf{self.bias})"] if self.bias is not None else []
        parts += [f"row_first(leaf{self.partner})"] if self.partner is not None else []
        parts += ["rows"] if self.rows else []
        joined = ""
        if self.per_device is not None:
            joined = f" [with first(leaf{self.per_device}) per device]"
        return f"{self.op}({' + '.join(parts)}){joined}"


@dataclasses.dataclass(frozen=True)
class Case:
    """A whole call: devices, batch, options, inputs, outputs."""

    devices: int
    rows: int  # B, the global batch
    slices: int
    comm_dtype: str | None
    leaves: tuple[Leaf, ...]
    args: tuple  # the positional arguments as trees of leaf indices
    in_axes: Any
    outs: tuple[Out, ...]
    full_reduce: bool  # the reduce spec as a full tree, not a prefix
    jit: bool  # called inside jax.jit
    seed: int
    buckets: Any = "geometric"  # None, 'geometric', or a tuple of capacities

    @property
    def local_rows_per_device(self) -> int:
        return (self.rows // PROCESSES) // (self.devices // PROCESSES)

    @property
    def slices_ok(self) -> bool:
        return self.slices <= max(1, self.local_rows_per_device)

    @property
    def whole_shares(self) -> bool:
        """Each device runs once on an equal share, as 'per_device' outputs need."""
        return self.rows % self.devices == 0 and self.slices == 1


# --------------------------------------------------------------------------
# Drawing a case


@st.composite
def leaves_of(draw, devices: int, rows: int, jit: bool):
    """One to five leaves; the first is sliced."""
    count = draw(st.integers(1, 5))
    roles = ["sliced"] + [
        draw(st.sampled_from(("sliced", "broadcast", "scalar", "per_device")))
        for _ in range(count - 1)
    ]
    return tuple(draw(leaf_of(role, devices, rows, jit)) for role in roles)


@st.composite
def leaf_of(draw, role: str, devices: int, rows: int, jit: bool = False):
    dtype = draw(st.sampled_from(DRAWN_DTYPES))
    dims = st.lists(st.integers(1, 3), max_size=2)  # up to two small dimensions more
    axis, entry, python = None, None, False
    if role == "sliced":
        rest = draw(dims)
        axis = draw(st.integers(0, len(rest)))
        shape = (*rest[:axis], rows, *rest[axis:])
        entry = axis - len(shape) if draw(st.booleans()) else axis
    elif role == "per_device":
        shape, entry = (devices, *draw(dims)), "per_device"
    elif role == "broadcast":
        shape = tuple(draw(dims))
    else:  # always broadcast, whatever its in_axes entry says
        shape = ()
        python = dtype in ("float32", "int32", "bool", "complex64") and draw(st.booleans())
        entry = draw(st.sampled_from((None, 0, -1, "per_device")))
    exponent = specials = 0
    if kind(dtype) in ("float", "complex") and role != "scalar":
        exponent = draw(st.sampled_from((0, 6, BIG, BIG)))
    if kind(dtype) == "float":
        specials = draw(st.sampled_from((0.0, 0.0, 0.15, 0.4)))
    positive = kind(dtype) in ("float", "int", "complex") and draw(st.booleans())
    places = ["host"]
    if PROCESSES == 1 and not python:
        places += ["host", "device"] + ([] if jit else ["last device", "every device"])
    if role == "sliced" and axis == 0 and devices == synk.device_count() and not jit:
        places += ["data", "sharded data"]  # a synk.Data lives on every device
    place = draw(st.sampled_from(places))
    assert place in PLACES
    return Leaf(role, dtype, shape, axis, entry, exponent, specials, positive, python, place)


def value_dtype(leaf: Leaf, out: Out) -> str:
    """The dtype of an output's per-row values, as `row_values` computes them."""
    k = kind(leaf.dtype)
    if k == "bool":
        keep = out.op in ("gather", "per_device") and not out.rows and out.bias is None
        return "bool" if keep else "int32"
    if k == "complex" and (out.op in ("max", "min") or out.transform == "abs"):
        return "float32"
    return leaf.dtype


def addable(leaf: Leaf, target: str) -> bool:
    """Whether a leaf's values can join per-row values of dtype `target` exactly enough.

    Floats take floats and bools (each bounded by 1 once scaled); ints take
    ints and bools; complex takes complex and bools (no specials, whose
    complex arithmetic numpy and XLA need not share).
    """
    src = kind(leaf.dtype)
    return src == "bool" or (src == kind(target) and kind(target) != "bool")


@st.composite
def out_of(draw, leaves: tuple[Leaf, ...], devices: int, rows: int, whole: bool = True):
    op = draw(st.sampled_from(OPS))
    if op == "per_device" and not whole and draw(st.integers(0, 3)):
        op = draw(st.sampled_from(OPS[:-1]))  # mostly a call that may have them
    sliced = [i for i, leaf in enumerate(leaves) if leaf.role == "sliced"]
    per_device = [i for i, leaf in enumerate(leaves) if leaf.role == "per_device"]
    broadcast = [i for i, leaf in enumerate(leaves) if leaf.role in ("broadcast", "scalar")]
    if op == "per_device":
        source = draw(st.sampled_from(per_device)) if per_device else None
        base = leaves[source] if source is not None else Leaf("x", "float32", (), None, None)
    else:
        source = draw(st.sampled_from(sliced))
        base = leaves[source]
    transform = draw(st.sampled_from(TRANSFORMS[kind(base.dtype)]))
    raw = kind(base.dtype) == "float" and op in ("avg", "max", "min", "gather", "per_device")
    raw = raw and draw(st.integers(0, 2)) > 0
    add_rows = op == "per_device" and (source is None or draw(st.booleans()))
    out = Out(op, source, transform, raw, rows=add_rows)
    target = value_dtype(base, out)
    if target != "bool":
        biases = [i for i in broadcast if addable(leaves[i], target)]
        if biases and draw(st.booleans()):
            out = dataclasses.replace(out, bias=draw(st.sampled_from(biases)))
            target = value_dtype(base, out)
    if op not in ("per_device",) and target != "bool":
        partners = [i for i in sliced if addable(leaves[i], target)]
        if partners and draw(st.booleans()):
            out = dataclasses.replace(out, partner=draw(st.sampled_from(partners)))
    if op in ("max", "min") and rows >= devices:  # then every device runs the function
        joins = [i for i in per_device if addable(leaves[i], target)]
        if joins and draw(st.booleans()):
            out = dataclasses.replace(out, per_device=draw(st.sampled_from(joins)))
    return out


@st.composite
def args_of(draw, leaves: tuple[Leaf, ...]):
    """Group the leaves into positional arguments (pytrees of leaf indices) and in_axes."""
    order = list(range(len(leaves)))
    args, axes = [], []
    while order:
        take = draw(st.integers(1, len(order)))
        group, order = order[:take], order[take:]
        tree, spec = draw(tree_of(group, leaves))
        args.append(tree)
        axes.append(spec)
    entries = {repr(a) for a in axes}
    if len(entries) == 1 and not isinstance(axes[0], dict | list | tuple) and draw(st.booleans()):
        return tuple(args), axes[0]  # one entry for every argument
    return tuple(args), tuple(axes)


@st.composite
def tree_of(draw, group: list[int], leaves: tuple[Leaf, ...]):
    """A pytree over leaf indices and the matching in_axes tree, or one entry for it all."""
    shape = draw(st.sampled_from(("leaf", "tuple", "list", "dict", "nested")))
    if shape == "leaf" and len(group) == 1:
        tree = group[0]
    elif shape == "tuple":
        tree = tuple(group)
    elif shape == "list":
        tree = list(group)
    elif shape == "nested" and len(group) >= 2:
        tree = {"p": tuple(group[:2]), "q": list(group[2:])}
    else:
        tree = {f"k{j}": i for j, i in enumerate(group)}
    spec = jax.tree.map(lambda i: leaves[i].entry, tree)
    # A prefix: one entry for the whole argument, where its leaves agree (scalars agree with
    # anything, as they are broadcast whatever their entry).
    entries = {repr(leaves[i].entry) for i in group if leaves[i].role != "scalar"}
    if len(entries) <= 1 and draw(st.booleans()):
        firsts = [leaves[i].entry for i in group if leaves[i].role != "scalar"]
        spec = firsts[0] if firsts else leaves[group[0]].entry
    return tree, spec


@st.composite
def cases(draw, outs: bool = True, jit: bool = False):
    devices = draw(st.sampled_from(DEVICE_COUNTS))
    local_devices = devices // PROCESSES
    local_rows = draw(st.integers(1, (3 * devices + 5) // PROCESSES))
    rows = local_rows * PROCESSES
    most = max(1, local_rows // local_devices)
    # Mostly valid; more slices than a device has rows is an error, checked too.
    slices = draw(st.one_of(st.just(1), st.integers(1, most), st.integers(1, most + 1)))
    comm_dtype = draw(st.sampled_from((None, None, None, None, "bfloat16", "float16")))
    leaves = draw(leaves_of(devices, rows, jit))
    args, in_axes = draw(args_of(leaves))
    drawn = ()
    if outs:
        whole = rows % devices == 0 and slices == 1
        one = out_of(leaves, devices, rows, whole)
        drawn = tuple(draw(st.lists(one, min_size=1, max_size=4)))
    return Case(
        devices=devices,
        rows=rows,
        slices=slices,
        comm_dtype=comm_dtype,
        leaves=leaves,
        args=args,
        in_axes=in_axes,
        outs=drawn,
        full_reduce=draw(st.booleans()),
        jit=jit,
        seed=draw(st.integers(0, 2**32 - 1)),
        # Exact shapes, powers of two per device, or a capacity at or past the batch.
        buckets=draw(
            st.one_of(
                st.sampled_from((None, "geometric")),
                st.tuples(st.integers(rows, rows + 2 * devices)),
            )
        ),
    )


# --------------------------------------------------------------------------
# Values


def make_inputs(case: Case, number: int = 0) -> tuple[list, list]:
    """(values, passed): every leaf's global value, and what the call passes for it.

    Drawn from the case's seed and the call's number, so every process builds
    the same global values. A synk.Data leaf passes a batch view of a table
    of its own, indexed by a permutation with repeats or by a slice.
    """
    rng = np.random.default_rng([case.seed, number])
    values, passed = [], []
    for leaf in case.leaves:
        if leaf.place not in ("data", "sharded data"):
            value = leaf_value(leaf, rng)
            values.append(value)
            passed.append(placed(leaf, value))
            continue
        rows, spare = leaf.shape[0], int(rng.integers(0, 4))
        table = leaf_value(dataclasses.replace(leaf, shape=(rows + spare, *leaf.shape[1:])), rng)
        if rng.random() < 0.25:
            start = int(rng.integers(0, spare + 1))
            index = slice(start, start + rows)
        else:
            index = rng.integers(0, rows + spare, rows)
        values.append(table[index])
        passed.append(synk.data(table, sharded=leaf.place == "sharded data")[index])
    return values, passed


def placed(leaf: Leaf, value):
    """A host value as the leaf's place has it: numpy, or a jax.Array on some devices."""
    if leaf.place == "device":
        return jax.device_put(value)
    if leaf.place == "last device":
        return jax.device_put(value, synk.devices()[-1])
    if leaf.place == "every device":
        mesh = jax.sharding.Mesh(np.array(synk.devices()), ("all",))
        return jax.device_put(value, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    return value


def leaf_value(leaf: Leaf, rng: np.random.Generator):
    shape, k = leaf.shape, kind(leaf.dtype)
    if leaf.role == "scalar":
        # Dyadic values with few bits: exact in every dtype, however a Python number is cast.
        if k == "bool":
            value = np.asarray(rng.random() < 0.5)
        elif k == "int":
            value = np.asarray(int(rng.integers(-100, 101)), np.int32)
        elif k == "complex":
            value = np.asarray(complex(*(rng.integers(-16, 17, 2) / 16)), np.complex64)
        else:
            value = rng.integers(-16, 17) / 16
            if rng.random() < leaf.specials:
                value = rng.choice([np.nan, np.inf, -np.inf, -0.0])
            value = np.asarray(value, np_dtype(leaf.dtype))
        return value.item() if leaf.python else value
    if k == "bool":
        value = rng.random(shape) < 0.5
    elif k == "int":
        value = rng.integers(0 if leaf.positive else -100, 101, shape)
    else:
        value = magnitudes(rng, shape, leaf.exponent, leaf.positive)
        if k == "complex":
            value = value + 1j * magnitudes(rng, shape, leaf.exponent, leaf.positive)
        else:
            special = rng.random(shape) < leaf.specials
            value[special] = rng.choice([np.nan, np.inf, -np.inf, -0.0], size=special.sum())
    return np.asarray(value).astype(np_dtype(leaf.dtype))


def magnitudes(rng: np.random.Generator, shape, exponent: int, positive: bool) -> np.ndarray:
    """Signed values in [2**(e-3), 2**e] and some zeros: normal numbers once scaled to 2**0."""
    value = np.array(np.exp2(rng.uniform(exponent - 3, exponent, shape)))
    if not positive:
        value *= rng.choice([-1.0, 1.0], size=shape)
    value[rng.random(shape) < 0.05] = 0.0
    return value


# --------------------------------------------------------------------------
# The function and its reference, from one description


def first(x, xp):
    """The first value of a leaf (a Python number, an array, a tracer)."""
    return xp.asarray(x).reshape(-1)[0]


def scaled(x, leaf: Leaf, xp):
    """The values of a float or complex leaf scaled into [-1, 1]: exact, a power of two."""
    if kind(leaf.dtype) in ("float", "complex") and leaf.exponent:
        return x * xp.asarray(2.0**-leaf.exponent, x.dtype)
    return x


def row_values(out: Out, case: Case, values: list, xp, per_entry: bool = False):
    """An output's values, rows first, in their dtype: the same steps in jnp and numpy.

    `values` are the leaves as the function sees them (jnp, a device's piece)
    or global (numpy). For op 'per_device' the "rows" are the per-device
    entries: a device's entry in the function (`per_entry`), all of them in
    the reference.
    """
    if out.source is None:  # a per-device output of broadcast values only
        v = xp.zeros((), np_dtype("float32"))
        src = Leaf("x", "float32", (), None, None)
        if not per_entry:
            v = xp.zeros((case.devices,), np_dtype("float32"))
    else:
        src = case.leaves[out.source]
        v = xp.asarray(values[out.source])
        if src.role == "sliced":
            v = xp.moveaxis(v, src.axis, 0)
    target = np_dtype(value_dtype(src, out))
    if kind(src.dtype) == "complex" and target == np.float32 and out.transform != "abs":
        v = xp.real(v)
    elif kind(src.dtype) == "bool":
        v = v.astype(target)
    if not out.raw:
        v = scaled(v, src, xp)
    if out.transform == "neg":
        v = -v
    elif out.transform == "abs":
        v = xp.abs(v)
    elif out.transform == "half":
        v = (
            v // xp.asarray(2, v.dtype)
            if kind(src.dtype) == "int"
            else v * xp.asarray(0.5, v.dtype)
        )
    assert v.dtype == target, (v.dtype, target)
    if out.bias is not None:
        leaf = case.leaves[out.bias]
        v = v + scaled(first(values[out.bias], xp).astype(np_dtype(leaf.dtype)), leaf, xp).astype(
            target
        )
    if out.partner is not None:
        leaf = case.leaves[out.partner]
        q = xp.moveaxis(xp.asarray(values[out.partner]), leaf.axis, 0)
        q = scaled(q.reshape(q.shape[0], -1)[:, 0], leaf, xp).astype(target)
        v = v + q.reshape(q.shape + (1,) * (v.ndim - 1))
    if out.rows:
        sliced = next(i for i, leaf in enumerate(case.leaves) if leaf.role == "sliced")
        leaf = case.leaves[sliced]
        count = values[sliced].shape[leaf.axis] if per_entry else case.rows // case.devices
        v = v + xp.asarray(count, target)
    return v


def prod_factors(v, xp):
    """Factors near 1 (exact in the value dtype as far as its rounding goes): no overflow."""
    if v.dtype.kind in "iu":
        return xp.asarray(1, v.dtype) - xp.asarray(2, v.dtype) * (v % xp.asarray(2, v.dtype))
    return xp.asarray(1, v.dtype) + v * xp.asarray(2.0**-6, v.dtype)


def function_of(case: Case):
    """The user's function: data-parallel, one output per drawn Out, grouped by op."""
    order = jax.tree.leaves(case.args)  # leaf indices in the order tree_flatten gives them

    def fn(*args, unit=1):
        # A parameter left to its default keeps its Python value: it is not traced.
        if type(unit) is not int:
            raise AssertionError(f"the default unit=1 reached the function as {unit!r}")
        values = [None] * len(case.leaves)
        for i, x in zip(order, jax.tree.leaves(args), strict=True):
            values[i] = x
        result = {}
        for out in case.outs:
            result.setdefault(out.op, []).append(one_output(out, case, values))
        return {op: tuple(vals) for op, vals in result.items()}

    return fn


def one_output(out: Out, case: Case, values: list):
    v = row_values(out, case, values, jnp, per_entry=True)
    if out.op == "avg":
        return jnp.mean(v, axis=0)
    if out.op == "sum":
        return jnp.sum(v, axis=0)
    if out.op in ("max", "min"):
        r = jnp.max(v, axis=0) if out.op == "max" else jnp.min(v, axis=0)
        if out.per_device is not None:
            leaf = case.leaves[out.per_device]
            e = scaled(first(values[out.per_device], jnp).astype(np_dtype(leaf.dtype)), leaf, jnp)
            e = e.astype(r.dtype)
            r = jnp.maximum(r, e) if out.op == "max" else jnp.minimum(r, e)
        return r
    if out.op == "prod":
        return jnp.prod(prod_factors(v, jnp), axis=0)
    return v  # gather, per_device


def reduce_spec(case: Case):
    ops = list(dict.fromkeys(out.op for out in case.outs))
    counts = {op: sum(out.op == op for out in case.outs) for op in ops}
    if len(ops) == 1 and not case.full_reduce:
        return ops[0]
    if case.full_reduce:
        return {op: (op,) * counts[op] for op in ops}
    return {op: op for op in ops}  # a pytree prefix of the outputs


@dataclasses.dataclass
class Want:
    """The reference for one output leaf."""

    value: np.ndarray  # float64 / complex128 / int64 / bool
    scale: np.ndarray  # the magnitude the tolerance is relative to
    dtype: np.dtype  # the output's dtype


def reference(case: Case, values: list) -> dict:
    """What the serial function means: numpy, reductions over the rows in float64."""
    want = {}
    for out in case.outs:
        with np.errstate(invalid="ignore"):  # inf - inf is NaN, as in the function
            v = row_values(out, case, values, np)
            want.setdefault(out.op, []).append(reduced(out, case, values, v))
    return {op: tuple(w) for op, w in want.items()}


def reduced(out: Out, case: Case, values: list, v: np.ndarray) -> Want:
    wide, terms = widen(v), magnitude_of_terms(out, case, values, v)
    if out.op in ("gather", "per_device"):
        return Want(wide, terms, v.dtype)
    if out.op == "avg":
        dtype = np.dtype(np.float32) if v.dtype.kind in "iu" else v.dtype
        return Want(wide.mean(axis=0), terms.mean(axis=0), dtype)
    if out.op == "sum":
        return Want(wide.sum(axis=0), terms.sum(axis=0), v.dtype)
    if out.op == "prod":
        value = widen(prod_factors(v, np)).prod(axis=0)
        return Want(value, np.abs(value), v.dtype)
    value = wide.max(axis=0) if out.op == "max" else wide.min(axis=0)  # numpy keeps NaN
    if out.per_device is not None:
        leaf = case.leaves[out.per_device]
        entries = np.asarray(values[out.per_device]).reshape(case.devices, -1)[:, 0]
        entries = widen(scaled(entries.astype(np_dtype(leaf.dtype)), leaf, np).astype(v.dtype))
        pick = np.maximum if out.op == "max" else np.minimum
        value = pick(value, entries.max() if out.op == "max" else entries.min())
    # The extreme row's terms are finite where the extreme is: leave out the infinite ones.
    terms = np.where(np.isfinite(terms), terms, 0.0).max(axis=0)
    return Want(value, np.maximum(np.abs(value), terms), v.dtype)


def magnitude_of_terms(out: Out, case: Case, values: list, v: np.ndarray) -> np.ndarray:
    """|transform| + |bias| + |partner| (+ rows) per row: what rounding is relative to.

    XLA may keep excess precision between elementwise steps, so a sum of
    terms that cancel is only as exact as the terms' own size.
    """
    if v.dtype == bool:
        return np.zeros(v.shape)
    if v.dtype.kind in "iu":  # exact, but an 'avg' of them is a float
        return np.abs(widen(v)).astype(np.float64)
    alone = dataclasses.replace(out, bias=None, partner=None, rows=False)
    total = np.abs(widen(row_values(alone, case, values, np)))
    if out.bias is not None:
        leaf = case.leaves[out.bias]
        b = scaled(first(values[out.bias], np).astype(np_dtype(leaf.dtype)), leaf, np)
        total = total + np.abs(widen(b))
    if out.partner is not None:
        leaf = case.leaves[out.partner]
        q = np.moveaxis(np.asarray(values[out.partner]), leaf.axis, 0)
        q = np.abs(widen(scaled(q.reshape(q.shape[0], -1)[:, 0], leaf, np)))
        total = total + q.reshape(q.shape + (1,) * (total.ndim - 1))
    if out.rows:
        total = total + case.rows // case.devices
    return np.broadcast_to(total, v.shape)


def widen(v) -> np.ndarray:
    v = np.asarray(v)
    if v.dtype == bool:
        return v
    if v.dtype.kind in "iu":
        return v.astype(np.int64)
    if v.dtype.kind == "c":
        return v.astype(np.complex128)
    return v.astype(np.float64)


# --------------------------------------------------------------------------
# Comparing

# Relative to the magnitude of the terms: float32 (and complex64) rounding over
# a few dozen rows, and the half-precision dtypes' 2**-11 and 2**-8 with room
# for the serial function's own rounding.
RTOL = {"float32": 1e-5, "complex64": 1e-5, "float16": 1e-2, "bfloat16": 2e-2}


def tolerance(case: Case, out: Out, dtype: np.dtype) -> float:
    rtol = RTOL[str(dtype)]
    if out.op == "prod":
        # jnp.prod multiplies in the dtype itself (bfloat16 too): one rounding per factor.
        rtol += (case.rows + 2 * case.devices) * float(jnp.finfo(dtype).eps) / 2
    if case.comm_dtype is not None and out.op in REDUCTIONS:
        # Each device's value is rounded to comm_dtype once, and combined in it. (Values
        # stay in float16's range: means are at most 2**15, sums and products small.)
        rtol += (2 * case.devices + 2) * float(jnp.finfo(case.comm_dtype).eps)
    return rtol


def check_output(path: str, got, want: Want, rtol: float) -> None:
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"{path}: dtype {got.dtype}, want {want.dtype}"
    assert got.shape == want.value.shape, f"{path}: shape {got.shape}, want {want.value.shape}"
    if want.dtype.kind in "biu":
        assert np.array_equal(got, want.value), f"{path}: got\n{got}\nwant\n{want.value}"
        return
    g = widen(got)
    # The reference as the output dtype holds it: NaN and +-inf must be where it has them.
    held = want.value.astype(want.dtype)
    w = widen(held)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    inf_w = np.isinf(w) & ~nan_w
    finite = ~nan_w & ~inf_w
    with np.errstate(invalid="ignore"):
        err = np.where(finite & ~nan_g, np.abs(g - want.value), 0.0)
    problems = {
        "NaN lost": nan_w & ~nan_g,
        "NaN where numpy has none": nan_g & ~nan_w,
        "infinity wrong": inf_w & ~nan_g & (g != w),
        "infinity where numpy is finite": finite & np.isinf(g),
        "off by more than rtol": finite & np.isfinite(g) & ~(err <= rtol * want.scale),
    }
    found = [
        f"{what} at {np.argwhere(bad)[:4].tolist()}" for what, bad in problems.items() if bad.any()
    ]
    assert not found, (
        f"{path} ({want.dtype}, rtol {rtol:g} of the terms' size): {'; '.join(found)}\n"
        f"synk:  {got.tolist()}\nnumpy: {held.tolist()}"
    )


# --------------------------------------------------------------------------
# Calling


def build(case: Case, fn, reduce) -> synk.Function:
    return synk.function(
        fn,
        in_axes=case.in_axes,
        reduce=reduce,
        num_slices=case.slices,
        # the first k devices, as a list or as a count
        devices=synk.devices()[: case.devices] if case.seed % 2 else case.devices,
        comm_dtype=None if case.comm_dtype is None else jnp.dtype(case.comm_dtype),
        buckets=case.buckets if reduce is not None else "geometric",
    )


def arguments(case: Case, passed: list) -> tuple:
    """The positional arguments: each process passes its own share of sliced host arrays."""

    def one(i):
        leaf, x = case.leaves[i], passed[i]
        if leaf.role == "sliced" and leaf.place == "host":
            return synk.process_share(x, axis=leaf.axis)
        return x

    return tuple(jax.tree.map(one, tree) for tree in case.args)


def call(case: Case, f: synk.Function, args: tuple):
    if case.jit:
        return jax.jit(lambda *a: f(*a))(*args)
    return f(*args)


def expect_equal(case: Case, got, want: dict, number: int) -> None:
    assert isinstance(got, dict) and sorted(got) == sorted(want), (got, want)
    for op, wants in want.items():
        assert len(got[op]) == len(wants)
        for j, (g, w) in enumerate(zip(got[op], wants, strict=True)):
            out = [o for o in case.outs if o.op == op][j]
            if op == "per_device" and PROCESSES > 1:
                # Its entries live on every process's devices: synk.gather brings them here.
                g = synk.gather(g)
            rtol = tolerance(case, out, w.dtype) if w.dtype.kind in "fcV" else 0.0
            check_output(f"call {number}: out[{op!r}][{j}] = {out!r}", g, w, rtol)


def run_and_compare(case: Case) -> None:
    """Call synk's function twice (a new plan, then the cached one), each on new values."""
    f = build(case, function_of(case), reduce_spec(case))
    for number in range(2):
        values, passed = make_inputs(case, number)
        args = arguments(case, passed)
        if not case.slices_ok:
            # More slices than a device's rows: refused on exact shapes; a bucket's
            # pieces serve it where the call can share one (then it must be right).
            if case.buckets is None or case.jit:
                with pytest.raises(ValueError, match="num_slices"):
                    call(case, f, args)
                return
            try:
                got = call(case, f, args)
            except ValueError as e:
                assert "num_slices" in str(e), str(e)
                return
            expect_equal(case, got, reference(case, values), number)
            continue
        if any(out.op == "per_device" for out in case.outs) and not case.whole_shares:
            with pytest.raises(ValueError, match="per_device"):
                call(case, f, args)
            return
        want = reference(case, values)
        complex_reduced = [
            f"out[{op!r}][{j}]"
            for op, wants in want.items()
            if op in REDUCTIONS
            for j, w in enumerate(wants)
            if w.dtype.kind == "c"
        ]
        if case.comm_dtype is not None and complex_reduced:
            # A complex value cannot travel in a real comm_dtype as it is: synk may
            # refuse it, naming the output, or reduce it correctly (checked below).
            try:
                got = call(case, f, args)
            except (TypeError, ValueError) as e:
                assert any(path in str(e) for path in complex_reduced), str(e)
                return
        else:
            got = call(case, f, args)
        expect_equal(case, got, want, number)


# --------------------------------------------------------------------------
# The tests


def pinned(leaves: tuple[Leaf, ...], outs: tuple[Out, ...], **options) -> Case:
    """A case on every device, 2 rows more than devices: uneven in one process and in two."""
    n = synk.device_count()
    fields = {"slices": 1, "comm_dtype": None, "full_reduce": False, "jit": False, "seed": 0}
    fields.update(options)
    args = tuple(range(len(leaves)))
    return Case(n, n + 2, leaves=leaves, args=args, in_axes=0, outs=outs, **fields)


def sliced(dtype: str, **fields) -> Leaf:
    """A leaf of shape (rows, 3) sliced along axis 0, in a case from `pinned`."""
    return Leaf("sliced", dtype, (synk.device_count() + 2, 3), 0, 0, **fields)


# Edges that random draws reach only now and then, run first in every profile.
PINNED = [
    # Means of float16 values near 2**15: each fits, rows times one does not.
    pinned((sliced("float16", exponent=BIG, positive=True),), (Out("avg", 0, raw=True),)),
    # NaN in some rows (seed 2 puts them on some devices but not others): it wins max and min.
    pinned((sliced("float32", specials=0.15),), (Out("max", 0), Out("min", 0)), seed=2),
    # Complex sums and means with a real comm_dtype keep their imaginary parts.
    pinned((sliced("complex64"),), (Out("sum", 0), Out("avg", 0)), comm_dtype="bfloat16"),
]


def with_examples(examples: list):
    """Run these cases first, as hypothesis' explicit examples."""

    def apply(test):
        for example in examples:
            test = hypothesis.example(example)(test)
        return test

    return apply


@fuzz_settings(default=40, long=400)
@with_examples(PINNED)
@given(cases())
def test_synk_equals_the_serial_meaning(case):
    """Random calls, eager, on numpy, device arrays and synk.Data views: numpy's answer."""
    run_and_compare(case)


@fuzz_settings(default=8, long=100)
@given(cases(jit=True))
@single_process("inside jit, host arrays are global: there is no process share to pass")
def test_inside_jit_equals_the_serial_meaning(case):
    """The same, called on tracers inside jax.jit: the body is inlined, the answer the same."""
    run_and_compare(case)


@st.composite
def per_device_cases(draw):
    """Every device runs once on an equal share, and per-device values go in and out."""
    case = draw(cases(outs=False))
    rows = max(1, case.rows // case.devices) * case.devices
    leaves = [
        dataclasses.replace(leaf, shape=rows_to(leaf, rows)) if leaf.role == "sliced" else leaf
        for leaf in case.leaves
    ]
    extra = draw(leaf_of("per_device", case.devices, rows))
    leaves = (*leaves, extra)
    args = (*case.args, len(leaves) - 1)
    in_axes = case.in_axes if isinstance(case.in_axes, tuple) else (case.in_axes,) * len(case.args)
    in_axes = (*in_axes, "per_device")
    outs = [draw(out_of(leaves, case.devices, rows)) for _ in range(draw(st.integers(0, 3)))]
    mine = Out("per_device", len(leaves) - 1, draw(st.sampled_from(TRANSFORMS[kind(extra.dtype)])))
    outs.insert(draw(st.integers(0, len(outs))), mine)
    return dataclasses.replace(
        case, rows=rows, slices=1, leaves=leaves, args=args, in_axes=in_axes, outs=tuple(outs)
    )


def rows_to(leaf: Leaf, rows: int) -> tuple[int, ...]:
    shape = list(leaf.shape)
    shape[leaf.axis] = rows
    return tuple(shape)


@fuzz_settings(default=12, long=150)
@given(per_device_cases())
def test_per_device_values_equal_their_serial_meaning(case):
    """Per-device inputs feed per-device outputs (and max/min): entry i is device i's."""
    run_and_compare(case)


# Outputs the contract refuses: (reduce op, what the output is). A dtype: the
# dtype of a reduction over the rows; "rows": the rows themselves under a
# reduction (a forgotten reduction); "scalar": a scalar under 'gather'.
REFUSED = [("avg", "int32"), ("avg", "bool"), ("max", "complex64"), ("min", "complex64")]
REFUSED += [(op, "bool") for op in ("sum", "prod")]  # max and min of bools: any and all
REFUSED += [("sum", "rows"), ("avg", "rows"), ("max", "rows"), ("gather", "scalar")]


@fuzz_settings(default=30, long=200)
@hypothesis.example(pinned((sliced("float32"),), ()), ("max", "complex64"), 0)
@given(cases(), st.sampled_from(REFUSED), st.integers(0, 4))
def test_refused_outputs_are_named_before_anything_runs(case, refused, position):
    """An output the contract refuses, among valid ones: a TypeError or ValueError naming it."""
    run_refused(case, refused, position)


def run_refused(case: Case, refused: tuple[str, str], position: int) -> None:
    """The case's outputs and one that the contract refuses: a clear error that names it."""
    op, what = refused
    # A valid split, so that the refusal is the only thing wrong with the call.
    outs = tuple(out for out in case.outs if out.op != "per_device")
    case = dataclasses.replace(case, slices=1, outs=outs)
    index = min(position, sum(out.op == op for out in outs))
    fn = function_of(case)
    source = next(i for i, leaf in enumerate(case.leaves) if leaf.role == "sliced")
    order = jax.tree.leaves(case.args)
    ran = []

    def with_refused(*args):
        jax.debug.callback(lambda: ran.append(True))  # fires only if the function runs
        result = {k: list(v) for k, v in fn(*args).items()}
        x = jax.tree.leaves(args)[order.index(source)]
        x = jnp.moveaxis(x, case.leaves[source].axis, 0)
        x = jnp.real(x) if what != "complex64" else x
        x = x.astype("float32" if what in ("rows", "scalar") else what)
        if what == "rows":
            bad = x
        elif what == "scalar":
            bad = jnp.sum(x)
        elif what == "bool":
            bad = {"max": jnp.max, "min": jnp.min, "prod": jnp.all}.get(op, jnp.any)(x, axis=0)
        elif what == "int32":
            bad = jnp.sum(x, axis=0)
        else:
            bad = jnp.max(x, axis=0) if op == "max" else jnp.min(x, axis=0)
        result.setdefault(op, []).insert(index, bad)
        return {k: tuple(v) for k, v in result.items()}

    reduce = {k: k for k in sorted({*(out.op for out in outs), op})}
    f = build(case, with_refused, reduce)
    args = arguments(case, make_inputs(case)[1])
    path = f"out[{op!r}][{index}]"
    with pytest.raises((TypeError, ValueError)) as caught:
        call(case, f, args)
    assert path in str(caught.value), f"the error does not name {path}: {caught.value}"
    jax.effects_barrier()
    assert not ran, f"the function ran before the error: {caught.value}"


# --------------------------------------------------------------------------
# Gradients: jax.grad of the synk function equals jax.grad of f.serial

GRAD_OPS = ("avg", "sum", "max", "min", "prod", "gather")


@st.composite
def grad_cases(draw):
    """float32 leaves with few distinct values (ties in max and min are common), sliced
    and broadcast, and outputs under every reduce op, mostly on uneven batches."""
    devices = draw(st.sampled_from(DEVICE_COUNTS))
    local_rows = draw(st.integers(1, (3 * devices + 5) // PROCESSES))
    rows = local_rows * PROCESSES
    most = max(1, local_rows // (devices // PROCESSES))
    slices = draw(st.integers(1, most))
    roles = ["sliced"] + [
        draw(st.sampled_from(("sliced", "broadcast"))) for _ in range(draw(st.integers(0, 3)))
    ]
    leaves = []
    for role in roles:
        dims = draw(st.lists(st.integers(1, 3), max_size=1))
        if role == "sliced":
            axis = draw(st.integers(0, len(dims)))
            shape = (*dims[:axis], rows, *dims[axis:])
            leaves.append(Leaf(role, "float32", shape, axis, axis))
        else:
            leaves.append(Leaf(role, "float32", tuple(dims), None, None))
    leaves = tuple(leaves)
    args, in_axes = tuple(range(len(leaves))), tuple(leaf.entry for leaf in leaves)
    sliced_ = [i for i, leaf in enumerate(leaves) if leaf.role == "sliced"]
    broadcast = [i for i, leaf in enumerate(leaves) if leaf.role == "broadcast"]
    outs = []
    for op in draw(st.lists(st.sampled_from(GRAD_OPS), min_size=1, max_size=5)):
        out = Out(op, draw(st.sampled_from(sliced_)), draw(st.sampled_from(TRANSFORMS["float"])))
        if broadcast and draw(st.booleans()):
            out = dataclasses.replace(out, bias=draw(st.sampled_from(broadcast)))
        if draw(st.booleans()):
            out = dataclasses.replace(out, partner=draw(st.sampled_from(sliced_)))
        outs.append(out)
    return Case(devices, rows, slices, None, leaves, args, in_axes, tuple(outs),
                draw(st.booleans()), PROCESSES > 1, draw(st.integers(0, 2**32 - 1)))  # fmt: skip


def tied_values(case: Case) -> tuple:
    """Small integers as float32: exact, and often equal (ties within and across devices)."""
    rng = np.random.default_rng(case.seed)
    return tuple(rng.integers(-2, 3, leaf.shape).astype(np.float32) for leaf in case.leaves)


def objective(outputs):
    """A scalar of every output, each element with its own weight: every gradient flows."""
    total = 0.0
    for out in jax.tree.leaves(outputs):
        weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
        total = total + jnp.sum(out.astype(jnp.float32) * weights)
    return total


@fuzz_settings(default=20, long=200)
@given(grad_cases())
def test_gradients_equal_the_serial_gradients(case):
    """jax.grad through every reduce op, ties, uneven batches and num_slices: f.serial's.

    In one process the gradient runs eagerly on the batch; under several
    processes it runs inside jax.jit, where the whole batch is global.
    """
    f = build(case, function_of(case), reduce_spec(case))
    values = tied_values(case)

    def grads(fn):
        g = jax.grad(lambda args: objective(fn(*args)))
        return (jax.jit(g) if case.jit else g)(values)

    got, want = grads(f), grads(f.serial)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        scale = max(1.0, float(np.abs(np.asarray(w)).max()))
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5 * scale,
            err_msg=f"d/d leaf{i} of {case.outs} ({case.rows} rows, {case.devices} devices, "
            f"num_slices={case.slices})",
        )  # fmt: skip
