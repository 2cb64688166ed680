"""The one promise: synk.function(f)(*args) equals f(*args) on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PROCESSES, assert_tree_close, fewer_under_mpi, single_process
from hypothesis import given
from hypothesis import strategies as st

import synk

# Under several processes a function spans every process's devices.
DEVICE_COUNTS = [n for n in (1, 2, 3, 8) if n <= synk.device_count()] if PROCESSES == 1 else [None]
OPS = ("avg", "sum", "max", "min", "prod", "gather")


def model(params, x, z):
    """Per-row features, then one output per reduce op (and ints where they make sense)."""
    h = jnp.tanh(x @ params["w"] + params["b"])  # (B, k)
    row = h.sum(axis=1) + z["a"] + z["t"].sum(axis=0)  # z["t"] is sliced along axis 1
    return {
        "avg": (h.mean(axis=0), jnp.mean(row**2)),
        "sum": (h.sum(axis=0), (x > 0).astype(jnp.int32).sum()),
        "max": (h.max(axis=0), jnp.argmax(x, axis=1).max()),
        "min": h.min(axis=0),
        "prod": jnp.prod(1.0 + 0.1 * jnp.tanh(row)),
        "gather": {"row": 2.0 * row, "h": h},
    }


def make_inputs(rng, rows, d, k):
    params = {
        "w": rng.normal(size=(d, k)).astype(np.float32),
        "b": float(rng.normal()),  # a Python scalar: always broadcast
    }
    x = rng.normal(size=(rows, d)).astype(np.float32)
    z = {"a": rng.normal(size=rows).astype(np.float32), "t": rng.normal(size=(2, rows))}
    return params, x, z


@st.composite
def calls(draw):
    n = draw(st.sampled_from(DEVICE_COUNTS))
    devices = n or synk.device_count()
    rows = draw(st.integers(1, 5 * devices + 7)) * PROCESSES  # each process passes its share
    slices = draw(st.integers(1, max(1, rows // devices)))
    d, k = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return n, rows, slices, d, k, seed


@given(calls())
def test_every_reduce_op_equals_serial(call):
    n, rows, slices, d, k, seed = call
    f = synk.function(
        model,
        in_axes=(None, 0, {"a": 0, "t": 1}),
        reduce={op: op for op in OPS},
        num_slices=slices,
        devices=synk.devices()[:n],
    )
    params, x, z = make_inputs(np.random.default_rng(seed), rows, d, k)
    mine = {"a": synk.process_share(z["a"]), "t": synk.process_share(z["t"], axis=1)}
    assert_tree_close(f(params, synk.process_share(x), mine), f.serial(params, x, z))


@given(calls(), st.sampled_from(("avg", "sum", "max", "min")))
def test_one_op_for_every_output(call, op):
    n, rows, slices, d, _, seed = call

    def stats(x, y):
        reduce_rows = {"avg": jnp.mean, "sum": jnp.sum, "max": jnp.max, "min": jnp.min}[op]
        return reduce_rows(x, axis=0), [reduce_rows(y), reduce_rows(x * y[:, None])]

    f = synk.function(stats, reduce=op, num_slices=slices, devices=n)
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(rows, d)).astype(np.float32), rng.normal(size=rows).astype(np.float32)
    assert_tree_close(f(synk.process_share(x), synk.process_share(y)), f.serial(x, y))


@pytest.mark.parametrize("n", DEVICE_COUNTS)
@pytest.mark.parametrize("rows", fewer_under_mpi([1, 2, 7, 9, 64, 1001], keep=[7, 1001]))
def test_value_and_grad_of_broadcast_params_is_exact(n, rows):
    """Gradients w.r.t. broadcast inputs are not multiplied by the device count."""

    def loss(params, x, y):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    step = synk.function(
        lambda p, x, y: jax.value_and_grad(loss)(p, x, y),
        in_axes=(None, 0, 0),
        devices=synk.devices()[:n],
    )
    rng = np.random.default_rng(rows)
    params = {
        "w1": rng.normal(size=(5, 8)).astype(np.float32),
        "b1": np.zeros(8, np.float32),
        "w2": rng.normal(size=(8, 1)).astype(np.float32),
    }
    x = rng.normal(size=(rows * PROCESSES, 5)).astype(np.float32)  # the global batch
    y = rng.normal(size=(rows * PROCESSES, 1)).astype(np.float32)
    got = step(params, synk.process_share(x), synk.process_share(y))
    assert_tree_close(got, step.serial(params, x, y), rtol=1e-4, atol=1e-5)
    # And against plain JAX, so that serial() itself is checked too.
    assert_tree_close(got, jax.value_and_grad(loss)(params, x, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 9, 17, 24])
def test_avg_is_weighted_by_rows_not_devices(rows):
    """With 9 rows on 8 devices, device 0 has 2 rows: equal device weights would be wrong."""
    f = synk.function(lambda x: x.mean(), devices=min(8, synk.device_count()))
    x = np.arange(rows * PROCESSES, dtype=np.float32) ** 2
    assert float(f(synk.process_share(x))) == pytest.approx(float(x.mean()), rel=1e-6)


ROWS_AND_SLICES = [
    (rows, slices)
    for rows in (1, 5, 8, 13, 40)
    for slices in (1, 2, 3)
    # larger num_slices is an error: each device gets rows // (devices per process)
    if slices <= max(1, rows * PROCESSES // synk.device_count())
]


@pytest.mark.parametrize(("rows", "slices"), ROWS_AND_SLICES)
def test_no_padding_row_reaches_the_function(rows, slices):
    """Counting rows, min of positive data and prod of values > 1 all see real rows only."""
    f = synk.function(
        lambda x: (jnp.float32(x.shape[0]), x.min(), jnp.prod(x), x),
        reduce=("sum", "min", "prod", "gather"),
        num_slices=slices,
    )
    x = 1.0 + np.random.default_rng(rows).random(rows * PROCESSES).astype(np.float32)
    count, low, prod, rows_out = f(synk.process_share(x))
    assert float(count) == rows * PROCESSES
    assert float(low) == float(x.min())
    np.testing.assert_allclose(float(prod), np.prod(x, dtype=np.float64), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(rows_out), x)


@pytest.mark.parametrize("rows", [1, 7, 8, 29])
def test_gather_keeps_input_order(rows):
    f = synk.function(lambda i: i * 10, reduce="gather", num_slices=1)
    idx = np.arange(rows * PROCESSES, dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(f(synk.process_share(idx))), idx * 10)


@single_process("several processes replicate gathered outputs so every process can read them")
def test_gather_of_an_even_batch_stays_sharded_along_rows():
    n = synk.device_count()
    out = synk.function(lambda x: x + 1, reduce="gather")(np.zeros((4 * n, 3), np.float32))
    assert out.sharding.spec[0] is not None  # split along rows, not replicated
    assert len(out.sharding.device_set) == n


def test_reduced_outputs_are_replicated_jax_arrays():
    out = synk.function(lambda x: x.sum(), reduce="sum")(np.ones(10, np.float32))
    assert isinstance(out, jax.Array)
    assert out.sharding.is_fully_replicated
    assert len(out.sharding.device_set) == synk.device_count()
