"""Global-batch semantics that hold in one process and under ``mpiexec -n 2``.

Every process builds the same global batch from one seed and passes its own
share (the global batch is the concatenation in process order); results must
equal the serial function on the global batch, on every process.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PROCESSES as P_COUNT
from helpers import RANK

import synk


def loss(params, x, y):
    h = jnp.tanh(x @ params["w1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


LOCAL_DEVICES = synk.device_count() // P_COUNT


@pytest.mark.parametrize("rows_per_process", [1, 3, LOCAL_DEVICES, 16, 37])
def test_value_and_grad_on_the_global_batch(rows_per_process):
    rng = np.random.default_rng(rows_per_process)  # the same on every process
    params = {
        "w1": rng.normal(size=(4, 6)).astype(np.float32),
        "w2": rng.normal(size=(6, 1)).astype(np.float32),
    }
    rows = rows_per_process * P_COUNT
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = rng.normal(size=(rows, 1)).astype(np.float32)
    step = synk.function(lambda p, x, y: jax.value_and_grad(loss)(p, x, y), in_axes=(None, 0, 0))
    value, grads = step(params, synk.process_share(x), synk.process_share(y))
    want_value, want_grads = jax.value_and_grad(loss)(params, x, y)
    np.testing.assert_allclose(np.asarray(value), want_value, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rows_per_process", [2, 5, 12])
@pytest.mark.parametrize("slices", [1, 2])
def test_every_op_and_gather_order_on_the_global_batch(rows_per_process, slices):
    local_devices = synk.device_count() // P_COUNT
    if slices > max(1, rows_per_process // local_devices):
        slices = 1  # more slices than rows per device is an error, tested elsewhere
    rng = np.random.default_rng(100 + rows_per_process)
    x = 1.0 + rng.random((rows_per_process * P_COUNT, 3)).astype(np.float32)

    def stats(x):
        return x.mean(0), x.sum(0), x.max(0), x.min(0), jnp.prod(x[:, 0]), x * 2

    f = synk.function(
        stats, reduce=("avg", "sum", "max", "min", "prod", "gather"), num_slices=slices
    )
    got = [np.asarray(o) for o in f(synk.process_share(x))]  # readable on every process
    want = [np.asarray(o) for o in stats(x)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5)


def test_broadcast_and_scalar_inputs_on_every_process():
    rng = np.random.default_rng(7)
    w = rng.normal(size=3).astype(np.float32)
    x = rng.normal(size=(6 * P_COUNT, 3)).astype(np.float32)
    f = synk.function(lambda w, x, c: (x @ w).sum() * c, in_axes=(None, 0, None), reduce="sum")
    np.testing.assert_allclose(
        np.asarray(f(w, synk.process_share(x), 2.0)), (x @ w).sum() * 2, rtol=1e-5
    )


@pytest.mark.skipif(P_COUNT == 1, reason="needs several processes: runs under mpiexec -n 2")
def test_calls_that_differ_between_processes_raise_on_every_process():
    f = synk.function(lambda x: x.sum(), reduce="sum")
    rows = 4 + RANK  # process 0 passes 4 rows, process 1 passes 5
    with pytest.raises(
        ValueError, match=r"processes made different calls(.|\n)*process 1: .*\[5\]"
    ):
        f(np.ones(rows, np.float32))
    assert float(f(np.ones(4, np.float32))) == 4 * P_COUNT  # a consistent call still works
    with pytest.raises(ValueError, match=r"processes made different calls"):
        f(np.ones(4, np.float32 if RANK == 0 else np.int32))  # a cached plan on process 0


def test_per_device_values_span_every_process():
    n = synk.device_count()
    w = synk.broadcast(np.zeros(2, np.float32))
    step = synk.function(lambda w, x: w + x.mean(0), in_axes=("per_device", 0), reduce="per_device")
    rows = np.arange(2.0 * n * 3, dtype=np.float32).reshape(2 * n, 3)[:, :2]  # global batch
    w = step(w, synk.process_share(rows))
    want = rows.reshape(n, 2, 2).mean(1)  # device i took global rows 2i, 2i+1
    np.testing.assert_allclose(synk.gather(w), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(synk.reduce(w, "sum")), want.sum(0), rtol=1e-6)
    avg = synk.all_reduce(w, "avg")
    np.testing.assert_allclose(synk.get_value(avg, n - 1), want.mean(0), rtol=1e-6)
    ones = step(np.ones((n, 2), np.float32), synk.process_share(rows))  # a per-device numpy value
    np.testing.assert_allclose(synk.gather(ones), want + 1, rtol=1e-6)


def test_data_views_take_global_indices_on_every_process():
    rng = np.random.default_rng(11)  # the same data and indices on every process
    x = rng.normal(size=(50, 3)).astype(np.float32)
    idx = rng.integers(0, 50, size=6 * P_COUNT + 2 * P_COUNT)
    f = synk.function(lambda a: (a.sum(0), a * 2), reduce=("sum", "gather"))
    for sharded in (False, True):
        X = synk.data(x, sharded=sharded)
        total, rows = f(X[idx])
        np.testing.assert_allclose(np.asarray(total), x[idx].sum(0), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(rows), x[idx] * 2, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(X), x)


# ---------------------------------------------------------------- one convention


def _problem(seed, rows_per_process=5):
    rng = np.random.default_rng(seed)  # the same global batch on every process
    params = {
        "w1": rng.normal(size=(4, 6)).astype(np.float32),
        "w2": rng.normal(size=(6, 1)).astype(np.float32),
    }
    x = rng.normal(size=(rows_per_process * P_COUNT, 4)).astype(np.float32)
    y = rng.normal(size=(rows_per_process * P_COUNT, 1)).astype(np.float32)
    return params, x, y


def _close(got, want, rtol=1e-4, atol=1e-6):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduce", [None, "avg"])
def test_grad_of_a_synk_function_given_shares_equals_the_eager_call(reduce):
    params, x, y = _problem(21)
    f = synk.function(loss, in_axes=(None, 0, 0), reduce=reduce)
    mine = synk.process_share((x, y))
    want = jax.value_and_grad(loss)(params, x, y)  # the global batch, on one device
    _close(f(params, *mine), want[0])
    _close(jax.value_and_grad(f)(params, *mine), want)  # shares, under an eager grad
    _close(jax.grad(f)(params, *mine), want[1])


@pytest.mark.skipif(P_COUNT == 1, reason="needs several processes: runs under mpiexec -n 2")
def test_an_eager_grad_with_respect_to_a_share_is_refused_by_name():
    params, x, y = _problem(22)
    f = synk.function(loss, in_axes=(None, 0, 0))
    with pytest.raises(ValueError, match=r"`x` is this process's share.*synk.global_batch"):
        jax.grad(f, argnums=1)(params, *synk.process_share((x, y)))


@pytest.mark.parametrize("reduce", [None, "avg"])
def test_jax_arrays_of_each_process_are_its_shares(reduce):
    params, x, y = _problem(23)
    f = synk.function(loss, in_axes=(None, 0, 0), reduce=reduce)
    xs, ys = (jnp.asarray(s) for s in synk.process_share((x, y)))  # on this process's device
    _close(f(params, xs, ys), loss(params, x, y))


@pytest.mark.skipif(P_COUNT == 1, reason="needs several processes: runs under mpiexec -n 2")
def test_a_host_share_on_one_process_and_a_jax_array_on_another_raise_on_every_process():
    params, x, y = _problem(24)
    f = synk.function(loss, in_axes=(None, 0, 0))
    xs, ys = synk.process_share((x, y))
    if RANK == 1:
        xs = jnp.asarray(xs)
    with pytest.raises(ValueError, match=r"different calls(.|\n)*a host array(.|\n)*of this proc"):
        f(params, xs, ys)


@pytest.mark.skipif(P_COUNT == 1, reason="needs several processes: runs under mpiexec -n 2")
def test_numbers_and_indices_that_differ_between_processes_are_named():
    params, x, y = _problem(25)
    f = synk.function(lambda p, x, y, lr: lr * loss(p, x, y), in_axes=(None, 0, 0, None))
    mine = synk.process_share((x, y))
    f(params, *mine, 0.1)  # planned with equal values
    with pytest.raises(ValueError, match=r"different values for `lr`(.|\n)*process 1: 0.2"):
        f(params, *mine, 0.1 * (1 + RANK))
    X = synk.data(x)
    g = synk.function(lambda a: a.sum(), reduce="sum")
    with pytest.raises(ValueError, match=r"different values for `a`.*indices"):
        g(X[[0, 1 + RANK]])


@pytest.mark.parametrize("rows_per_process", [jax.local_device_count(), 3])
def test_a_global_batch_from_shares_feeds_a_fused_step(rows_per_process):
    params, x, y = _problem(26, rows_per_process)
    f = synk.function(loss, in_axes=(None, 0, 0))
    step = jax.jit(lambda p, x, y: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(f)(p, x, y)))
    xs, ys = synk.global_batch(synk.process_share((x, y)))
    assert xs.shape == x.shape and ys.shape == y.shape  # the whole batch, on every process
    want = jax.tree.map(lambda a, g: a - 0.1 * g, params, jax.grad(loss)(params, x, y))
    _close(step(params, xs, ys), want)
