"""synk.Data batches with traced indices: ``X[idx]`` inside jax.jit, lax.scan and vmap.

Each result equals the eager call with the same indices and the serial
function on the host rows. Inside a trace values are global, so every process
passes the same global indices, as it does eagerly. Inside a trace the data is
a constant of the traced function, which JAX embeds whole: sharded data spread
over several processes is refused there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_close, counting, loss, per_row, single_process

import synk

N = synk.device_count()
P = synk.process_count()
SHARDED = [
    False,
    pytest.param(True, marks=pytest.mark.skipif(P > 1, reason="refused across processes")),
]
ROWS = 5 * N + 3  # the data set
BATCHES = [2 * N, 2 * N + 3, max(N - 1, 1)]  # even, uneven, fewer rows than devices
REDUCE = {k: k for k in ("avg", "sum", "max", "min", "prod", "gather")}


def _host(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3,)).astype(np.float32)
    x = rng.normal(size=(ROWS, 3)).astype(np.float32)
    y = rng.normal(size=(ROWS,)).astype(np.float32)
    return w, x, y


def _indices(k, seed=1):
    """k rows in any order, repeats and negative indices included (all in range)."""
    return np.random.default_rng(seed).integers(-ROWS, ROWS, size=k)


# ------------------------------------------------------------ inside jax.jit


@pytest.mark.parametrize("sharded", SHARDED)
@pytest.mark.parametrize("k", BATCHES)
@pytest.mark.parametrize("slices", [1, 2])
def test_traced_index_equals_the_eager_call_and_serial(sharded, k, slices):
    if slices > 1 and k // N < slices:
        pytest.skip("num_slices larger than the rows a device gets")
    w, x, y = _host()
    X, Y = synk.data(x, sharded=sharded), synk.data(y, sharded=sharded)
    f = synk.function(per_row, in_axes=(None, 0, 0), reduce=REDUCE, num_slices=slices)
    idx = _indices(k)
    inside = jax.jit(lambda idx: f(w, X[idx], Y[idx]))(idx)
    assert_tree_close(inside, f(w, X[idx], Y[idx]), rtol=1e-6, atol=1e-6)
    assert_tree_close(inside, f.serial(w, np.asarray(X)[idx], np.asarray(Y)[idx]))


@pytest.mark.parametrize("sharded", SHARDED)
def test_views_with_different_traced_indices_take_their_own_rows(sharded):
    w, x, y = _host()
    X, Y = synk.data(x, sharded=sharded), synk.data(y, sharded=sharded)
    f = synk.function(per_row, in_axes=(None, 0, 0), reduce=REDUCE)
    i, j = _indices(2 * N + 3, seed=1), _indices(2 * N + 3, seed=2)

    @jax.jit
    def both(i, j):
        return f(w, X[i], Y[i]), f(w, X[i], Y[j])  # one index, then two of the same shape

    same, apart = both(i, j)
    assert_tree_close(same, f.serial(w, x[i], y[i]))
    assert_tree_close(apart, f.serial(w, x[i], y[j]))


@pytest.mark.parametrize("sharded", SHARDED)
def test_out_of_range_traced_indices_wrap_then_clamp_as_jax_indexing_does(sharded):
    w, x, y = _host()
    X, Y = synk.data(x, sharded=sharded), synk.data(y, sharded=sharded)
    f = synk.function(per_row, in_axes=(None, 0, 0), reduce=REDUCE)
    idx = np.array([-3 * ROWS, -ROWS - 1, -1, 0, ROWS - 1, ROWS, 5 * ROWS] * N)
    inside = jax.jit(lambda idx: f(w, X[idx], Y[idx]))(idx)
    # What x[idx] gives for a jax.Array under jax.jit: the documented behaviour.
    rows = jax.jit(lambda idx: (jnp.asarray(x)[idx], jnp.asarray(y)[idx]))(idx)
    assert_tree_close(inside, f.serial(w, *rows))
    clamped = np.clip(np.where(idx < 0, idx + ROWS, idx), 0, ROWS - 1)
    assert_tree_close(inside, f.serial(w, x[clamped], y[clamped]))


@single_process("sharded data spread over several processes is refused inside a trace")
@pytest.mark.parametrize("k", [3, 1])
def test_local_views_with_a_traced_index_equal_the_eager_call(k):
    _, x, _ = _host()
    X = synk.data(x, sharded=True)
    f = synk.function(lambda x: jnp.tanh(x), reduce="gather")
    held = min(X.rows_per_device)
    rng = np.random.default_rng(4)
    every = rng.integers(-held, held, size=(N, k))  # one row of indices per device
    one = rng.integers(-held, held, size=k)  # the same indices on every device
    local = jax.jit(lambda i: f(X.local[i]))
    for idx in (every, one):
        assert_tree_close(local(idx), f(X.local[idx]), rtol=0, atol=0)


# ------------------------------------------------------------ scan, grad, vmap


@pytest.mark.parametrize("sharded", SHARDED)
def test_an_epoch_under_lax_scan_equals_the_eager_loop(sharded):
    w, x, y = _host()
    X, Y = synk.data(x, sharded=sharded), synk.data(y, sharded=sharded)
    step_grad = synk.function(jax.value_and_grad(loss), in_axes=(None, 0, 0))
    k = 2 * N + 3
    batches = np.random.default_rng(5).permutation(4 * k).reshape(4, k) % ROWS

    @jax.jit
    def epoch(w, batches):
        def step(w, idx):
            value, grad = step_grad(w, X[idx], Y[idx])
            return w - 0.1 * grad, value

        return jax.lax.scan(step, w, batches)

    w_scan, losses = epoch(w, batches)
    w_loop, eager = w, []
    for idx in batches:
        value, grad = step_grad(w_loop, X[idx], Y[idx])
        w_loop, eager = w_loop - 0.1 * grad, [*eager, value]
    assert_tree_close((w_scan, losses), (w_loop, np.stack(eager)), rtol=1e-5, atol=1e-6)
    w_serial = w
    for idx in batches:
        w_serial = w_serial - 0.1 * jax.grad(loss)(w_serial, x[idx], y[idx])
    assert_tree_close(w_scan, w_serial, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sharded", SHARDED)
def test_grad_and_vmap_through_traced_views_equal_serial(sharded):
    w, x, y = _host()
    X, Y = synk.data(x, sharded=sharded), synk.data(y, sharded=sharded)
    f = synk.function(loss, in_axes=(None, 0, 0))
    batches = np.random.default_rng(6).integers(0, ROWS, size=(3, 2 * N + 3))
    grad = jax.jit(jax.grad(lambda w, idx: f(w, X[idx], Y[idx])))(w, batches[0])
    assert_tree_close(grad, jax.grad(loss)(w, x[batches[0]], y[batches[0]]), rtol=1e-4)
    # A concrete index met inside a trace (an eager jax.grad) travels as a traced one does.
    grad = jax.grad(lambda w: f(w, X[batches[1]], Y[batches[1]]))(w)
    assert_tree_close(grad, jax.grad(loss)(w, x[batches[1]], y[batches[1]]), rtol=1e-4)
    mapped = jax.jit(jax.vmap(lambda idx: f(w, X[idx], Y[idx])))(batches)
    assert_tree_close(mapped, np.stack([loss(w, x[b], y[b]) for b in batches]), rtol=1e-5)


# ------------------------------------------------------------ plans


def test_a_traced_view_gets_its_own_plan_and_the_eager_path_is_unchanged():
    w, x, y = _host()
    X, Y = synk.data(x), synk.data(y)
    fn, traces = counting(loss)
    f = synk.function(fn, in_axes=(None, 0, 0))
    idx = _indices(2 * N)
    eager = f(w, X[idx], Y[idx])
    assert repr(f).endswith("compiled=1)")
    step = jax.jit(lambda idx: f(w, X[idx], Y[idx]))
    assert_tree_close(step(idx), eager, rtol=1e-6)
    assert repr(f).endswith("compiled=2)")  # the traced view: a plan of its own
    first = len(traces)
    for seed in range(3):
        step(_indices(2 * N, seed=10 + seed))
    assert len(traces) == first  # new index values: no retrace, nothing of synk runs
    f(w, X[idx], Y[idx])
    assert repr(f).endswith("compiled=2)")  # the eager plan is still the eager one


def test_a_jitted_function_keeps_the_data_it_was_traced_with():
    w, x, y = _host()
    X, Y = synk.data(x), synk.data(y)
    f = synk.function(loss, in_axes=(None, 0, 0))
    step = jax.jit(lambda idx: f(w, X[idx], Y[idx]))
    idx = np.arange(2 * N)
    before = step(idx)
    X.set_value(x + 1)  # a constant of the traced step, as any array it closes over
    assert_tree_close(step(idx), before, rtol=0, atol=0)
    step.clear_cache()  # traced again: the new value
    assert_tree_close(step(idx), f.serial(w, x[idx] + 1, y[idx]))


# ------------------------------------------------------------ errors


def test_bad_traced_indices_are_refused_while_tracing():
    X = synk.data(np.ones((ROWS, 2), np.float32))
    f = synk.function(lambda x: x.sum(), reduce="sum")
    with pytest.raises(TypeError, match=r"X\[idx\]: indices must be integers.*float32"):
        jax.jit(lambda i: f(X[i]))(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=r"X\[idx\]: boolean .* jnp\.flatnonzero\(mask, size=k\)"):
        jax.jit(lambda i: f(X[i]))(np.ones(4, bool))
    traced_2d = r"X\[idx\]: expected a 1-D index array, got a traced array of shape \(2, 2\)"
    with pytest.raises(ValueError, match=traced_2d):
        jax.jit(lambda i: f(X[i]))(np.zeros((2, 2), np.int32))
    with pytest.raises(TypeError, match=r"scalar index would drop the batch axis"):
        jax.jit(lambda i: f(X[i]))(np.int32(3))
    with pytest.raises(TypeError, match=r"traced bounds.*X\[start \+ jnp.arange\(k\)\]"):
        jax.jit(lambda s: f(X[s : s + 4]))(np.int32(0))
    sharded = synk.data(np.ones((ROWS, 2), np.float32), sharded=True)
    with pytest.raises(ValueError, match=rf"X.local\[idx\]: expected .* shape \({N}, k\)"):
        jax.jit(lambda i: f(sharded.local[i]))(np.zeros((N + 1, 2), np.int32))


@pytest.mark.skipif(P == 1, reason="several processes only")
def test_sharded_data_over_several_processes_is_refused_inside_a_trace():
    w, x, y = _host()
    X, Y = synk.data(x, sharded=True), synk.data(y, sharded=True)
    f = synk.function(loss, in_axes=(None, 0, 0))
    idx = np.arange(2 * N)
    with pytest.raises(ValueError, match=r"argument `x` is a batch of sharded synk.Data.*outside"):
        jax.jit(lambda idx: f(w, X[idx], Y[idx]))(idx)
    with pytest.raises(ValueError, match=r"spread over several processes"):
        jax.jit(lambda i: f(w, X.local[i], Y.local[i]))(np.zeros((N, 1), np.int32))
    assert_tree_close(f(w, X[idx], Y[idx]), f.serial(w, x[idx], y[idx]))  # eagerly, as ever
