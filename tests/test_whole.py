"""The default path: with no reduce, any function equals one device's result.

The function runs whole under XLA's partitioner, so outputs that are not
means over rows (a root mean square, batch statistics without an axis name,
dropout from one key, anything that depends on the order of the rows) come
back as one device computes them, for any batch length. Each result is
compared with ``f.serial`` and with ``jax.jit(fn)`` on one device.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import PROCESSES, counting, fewer_under_mpi
from hypothesis import given
from hypothesis import strategies as st

import synk

N = synk.device_count()
ROWS = [2 * N, 2 * N + 3, max(N - 1, 1), 1]  # even, uneven, fewer rows than devices, one


def rms(key, w, x):
    """Not a mean over rows: the square root of one."""
    return jnp.sqrt(jnp.mean(jnp.tanh(x @ w) ** 2))


def batch_norm(key, w, x):
    """Per-row outputs normalised by the batch's statistics, with no axis name."""
    h = x @ w
    return (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5), h.var(0)


def dropout(key, w, x):
    """One mask over the whole batch, drawn from one broadcast key."""
    h = jnp.tanh(x @ w)
    keep = jax.random.bernoulli(key, 0.7, h.shape)
    return jnp.mean(jnp.where(keep, h / 0.7, 0.0) ** 2), keep


def in_order(key, w, x):
    """Outputs that depend on the order of the rows, and of every kind."""
    h = x @ w
    return {
        "cumsum": jnp.cumsum(h, axis=0),
        "median": jnp.median(h, axis=0),
        "sorted": jnp.sort(h[:, 0]),
        "softmax over rows": jax.nn.softmax(h[:, 0]),
        "count": (h > 0).sum(),
        "any": (h > 3).any(),
        "rows": x.shape[0],
    }


FUNCTIONS = [rms, batch_norm, dropout, in_order]


def _inputs(rows, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k)).astype(np.float32)
    x = rng.normal(size=(rows, d)).astype(np.float32)
    return jax.random.key(seed), w, x


def _close(got, want, rtol=2e-5, atol=2e-6):
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- eager


@given(
    st.sampled_from(FUNCTIONS),
    st.integers(1, 3 * N + 5),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
)
def test_any_function_equals_one_device_for_any_batch_length(fn, rows, d, seed):
    key, w, x = _inputs(rows * PROCESSES, d=d, seed=seed)  # each process passes its share
    f = synk.function(fn, in_axes=(None, None, 0))
    got = f(key, w, synk.process_share(x))
    _close(got, f.serial(key, w, x))
    _close(got, jax.jit(fn)(key, w, x))


@pytest.mark.parametrize("rows", ROWS)
def test_per_row_outputs_come_back_in_input_order(rows):
    _, w, x = _inputs(rows * PROCESSES)
    f = synk.function(lambda w, x: (x @ w, jnp.arange(x.shape[0])), in_axes=(None, 0))
    values, index = f(w, synk.process_share(x))
    np.testing.assert_allclose(np.asarray(values), x @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(index), np.arange(rows * PROCESSES))


def test_a_function_of_no_batch_runs_whole():
    f = synk.function(lambda w: jnp.linalg.norm(w) * jnp.ones(3), in_axes=None)
    w = np.arange(4.0, dtype=np.float32)
    _close(f(w), f.serial(w))


def test_the_path_shows_in_repr_and_in_the_lowered_program():
    _, w, x = _inputs(2 * N * PROCESSES)
    f = synk.function(rms, in_axes=(None, None, 0))
    assert f.path == "whole" and "path='whole'" in repr(f) and "reduce=None" in repr(f)
    g = f.with_options(reduce="avg")
    assert g.path == "per-device" and "path='per-device'" in repr(g)
    key = jax.random.key(0)
    assert "jit_synk_whole_rms" in f.lower(key, w, synk.process_share(x)).as_text()
    assert "jit_synk_per_device_rms" in g.lower(key, w, synk.process_share(x)).as_text()
    assert g.with_options(reduce=None) is f.with_options(reduce=None)


def test_a_repeated_call_does_not_retrace():
    fn, traces = counting(rms)
    f = synk.function(fn, in_axes=(None, None, 0))
    key, w, x = _inputs((2 * N + 1) * PROCESSES)
    mine = synk.process_share(x)
    f(key, w, mine)
    first = len(traces)
    for _ in range(3):
        f(key, w, mine + 1)
    assert len(traces) == first and repr(f).endswith("compiled=1)")


# ---------------------------------------------------------------- composing with JAX
# Inside a trace every value is global, as in jax.jit: the whole batch on every process.


@pytest.mark.parametrize("rows", fewer_under_mpi(ROWS, keep=ROWS[:2]))
@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.__name__)
def test_inside_jit_equals_eager_and_serial(fn, rows):
    key, w, x = _inputs(rows * PROCESSES)
    f = synk.function(fn, in_axes=(None, None, 0))
    want = f.serial(key, w, x)
    _close(jax.jit(f)(key, w, x), want)
    _close(jax.jit(lambda w: f(key, w, x))(w), want)


@pytest.mark.parametrize("rows", fewer_under_mpi(ROWS, keep=ROWS[1:2]))
@pytest.mark.parametrize("fn", [rms, dropout], ids=lambda fn: fn.__name__)
def test_grad_equals_serial(fn, rows):
    key, w, x = _inputs(rows * PROCESSES)
    f = synk.function(lambda k, w, x: fn(k, w, x) if fn is rms else fn(k, w, x)[0],
                      in_axes=(None, None, 0))  # fmt: skip
    want = jax.grad(f.serial, argnums=(1, 2))(key, w, x)
    grad = jax.grad(f, argnums=(1, 2))  # eagerly the batch would be a share: inside jit
    _close((grad if PROCESSES == 1 else jax.jit(grad))(key, w, x), want, rtol=1e-4, atol=1e-6)
    if PROCESSES > 1:  # and eagerly, given this process's share
        _close(jax.grad(f, argnums=1)(key, w, synk.process_share(x)), want[0], 1e-4, 1e-6)
    _close(jax.jit(jax.grad(f, argnums=1))(key, w, x), want[0], rtol=1e-4, atol=1e-6)


def test_vmap_equals_serial():
    key, w, x = _inputs((2 * N + 3) * PROCESSES)
    ws = np.stack([w, 2 * w, -w])
    f = synk.function(batch_norm, in_axes=(None, None, 0))
    got = jax.vmap(f, in_axes=(None, 0, None))(key, ws, synk.process_share(x))  # eager: a share
    _close(got, jax.vmap(f.serial, in_axes=(None, 0, None))(key, ws, x))


@pytest.mark.parametrize("rows", [2 * N, 12 * N + 4])  # 100 rows on 8 devices: 25 on 4
def test_a_fused_step_compiles_the_whole_function_with_its_update(rows):
    # The batch enters the caller's jit as an argument, as a training loop passes it:
    # its layout there must be one the caller's jit can take.
    key, w, x = _inputs(rows * PROCESSES)
    f = synk.function(dropout, in_axes=(None, None, 0))

    @jax.jit
    def step(w, x):
        g = jax.grad(lambda w: f(key, w, x)[0])(w)
        return w - 0.1 * g

    want = w - 0.1 * jax.grad(lambda w: dropout(key, w, x)[0])(w)
    _close(step(w, x), want, rtol=1e-4)


def test_a_fused_optimiser_step_takes_an_uneven_batch_as_an_argument():
    # XLA, left to itself, would lay out these 100 rows as 25 on each of 4 devices,
    # twice over (no PartitionSpec over the 8 devices names that): the caller's
    # jit could then not take the batch.
    rows = 12 * N + 4
    rng = np.random.default_rng(0)
    sizes = [(8, 16), (16, 3)]
    params = [{"w": rng.normal(size=s).astype(np.float32), "b": np.zeros(s[1], np.float32)}
              for s in sizes]  # fmt: skip
    x = rng.normal(size=(rows * PROCESSES, 8)).astype(np.float32)
    y = rng.integers(0, 3, rows * PROCESSES)

    def loss(params, x, y):
        h = jax.nn.relu(x @ params[0]["w"] + params[0]["b"])
        logits = h @ params[1]["w"] + params[1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    optimizer = optax.adam(1e-2)
    f = synk.function(loss, in_axes=(None, 0, 0))

    def step(loss_fn, params, state, x, y):
        updates, state = optimizer.update(jax.grad(loss_fn)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    fused = jax.jit(functools.partial(step, f))
    mine = theirs = (params, optimizer.init(params))
    for _ in range(2):
        mine = fused(*mine, x, y)
        theirs = jax.jit(functools.partial(step, loss))(*theirs, x, y)
        _close(mine, theirs, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- device-resident data


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("count", fewer_under_mpi([2 * N, 2 * N + 3, 3], keep=[2 * N + 3]))
def test_views_equal_serial(sharded, count):
    key, w, x = _inputs(100)
    X = synk.data(x, sharded=sharded)
    idx = np.random.default_rng(count).integers(0, 100, count)
    f = synk.function(in_order, in_axes=(None, None, 0))
    want = f.serial(key, w, x[idx])
    _close(f(key, w, X[idx]), want)
    if sharded and PROCESSES > 1:
        return  # inside a trace the data is a constant, which no process holds whole
    _close(jax.jit(lambda i: f(key, w, X[i]))(idx), want)


def test_local_views_equal_serial():
    key, w, x = _inputs(10 * N + 3)
    X = synk.data(x, sharded=True)
    f = synk.function(batch_norm, in_axes=(None, None, 0))
    idx = np.array([0, 2, 1])
    view = X.local[idx]
    # Device d's rows idx of its own shard, in device order.
    rows = np.concatenate([x[X.layout.starts[d] + idx] for d in range(N)])
    _close(f(key, w, view), f.serial(key, w, rows))


# ---------------------------------------------------------------- what needs explicit reductions


def test_options_of_the_per_device_path_need_an_explicit_reduce():
    with pytest.raises(ValueError, match=r"num_slices=2 .* give an explicit reduce"):
        synk.function(rms, num_slices=2)
    with pytest.raises(ValueError, match=r"comm_dtype=bfloat16 .* give an explicit reduce"):
        synk.function(rms, comm_dtype=jnp.bfloat16)
    # Several at once: one refusal names them all, and what each does.
    with pytest.raises(ValueError) as e:
        synk.function(rms, num_slices=2, comm_dtype=jnp.bfloat16, buckets=(64,))
    assert str(e.value) == (
        "synk.function(rms): num_slices=2 runs each device's rows in pieces and combines "
        "their outputs; comm_dtype=bfloat16 compresses the explicit reductions; "
        "buckets=(64,) shares one executable between batch lengths by running each "
        "device's rows in pieces. Each needs outputs that combine over rows: give an "
        "explicit reduce (e.g. reduce='avg' for a mean over rows), or set num_slices=1, "
        "comm_dtype=None, buckets=None. Without reduce the function runs whole under XLA's "
        "partitioner: exact for any function, in its own dtypes, and compiled once per "
        "batch length."
    )
    # With a bad option: both in one refusal.
    with pytest.raises(ValueError, match=r"2 problems with these options(.|\n)*buckets=\(64,\)"):
        synk.function(rms, num_slices=0, buckets=(64,))
    f = synk.function(rms, reduce="avg", num_slices=2)
    with pytest.raises(ValueError, match=r"^[^\n]*num_slices=2 runs.*Each needs"):
        f.with_options(reduce=None, comm_dtype=jnp.float16)
    f = synk.function(lambda s, x: s.sum() + x.sum(), in_axes=("per_device", 0))
    ran = []
    with pytest.raises(ValueError, match=r"`s` has in_axes 'per_device'.*explicit reduce"):
        f(jax.jit(lambda: ran.append(1) or jnp.ones((N, 2)))(), np.ones(2 * N * PROCESSES))
    assert len(ran) == 1  # only the argument's own jit ran


def test_synk_lax_acts_as_on_one_device():
    """On the default path the function sees the whole batch: a psum over devices
    is the value itself, device_index is 0, row_keys cover every row."""
    key, w, x = _inputs((2 * N + 1) * PROCESSES)

    def fn(key, w, x):
        h = x @ w
        keys = synk.lax.row_keys(key)
        noise = jax.vmap(lambda k: jax.random.normal(k, ()))(keys)
        return synk.lax.psum(h.sum()), synk.lax.device_index(), h[:, 0] + noise

    f = synk.function(fn, in_axes=(None, None, 0))
    _close(f(key, w, synk.process_share(x)), f.serial(key, w, x))
