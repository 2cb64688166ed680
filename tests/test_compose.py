"""A synk.Function is an ordinary JAX callable: inside jax.jit, under jax.grad,
jax.jvp and jax.vmap, with Equinox modules as arguments. Each result equals the
eager call and the serial function.

Inside jax.jit every value is global: the tests pass the whole batch on every
process (never a process's share). An eager jax.grad or vmap takes shares, as an
eager call does (tests/test_multiprocess.py); here, under several processes, the
transformations run inside jax.jit (`within`), so that the whole batch is global.
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_tree_close, counting, fewer_under_mpi, loss, per_row, single_process

import synk

N = synk.device_count()
P = synk.process_count()
ROWS = [2 * N, 2 * N + 3, max(N - 1, 1)]  # even, uneven, fewer rows than devices


def _data(rows, d=3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d,)).astype(np.float32)
    x = rng.normal(size=(rows, d)).astype(np.float32)
    y = rng.normal(size=(rows,)).astype(np.float32)
    return w, x, y


REDUCE = {k: k for k in ("avg", "sum", "max", "min", "prod", "gather")}


def within(transformed):
    """`transformed` (a jax.grad, vjp, vmap), inside jax.jit under several processes."""
    return transformed if P == 1 else jax.jit(transformed)


def _close(got, want, rtol=1e-5, atol=1e-6):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- inside jax.jit


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("slices", [1, 2])
def test_inside_jit_every_op_equals_the_eager_call_and_serial(rows, slices):
    if slices > max(rows // N, 1) or (slices > 1 and rows < N):
        pytest.skip("num_slices larger than the rows a device gets")
    w, x, y = _data(rows)
    f = synk.function(per_row, in_axes=(None, 0, 0), reduce=REDUCE, num_slices=slices)
    inside = jax.jit(lambda w, x, y: f(w, x, y))(w, x, y)
    _close(inside, f.serial(w, x, y))
    if P == 1:  # eagerly, each process passes its share; the same call here
        _close(inside, f(w, x, y), rtol=1e-6)


def test_inside_jit_per_device_no_batch_and_synk_lax():
    w, x, _ = _data(2 * N)
    per_device = synk.function(lambda s, x: s * x.sum(), in_axes=("per_device", 0), reduce="sum")
    s = np.arange(N, dtype=np.float32)
    got = jax.jit(per_device)(s, x)
    want = sum(s[d] * x[2 * d : 2 * d + 2].sum() for d in range(N))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)

    no_batch = synk.function(lambda w: (w**2).sum(), in_axes=None)
    np.testing.assert_allclose(float(jax.jit(no_batch)(w)), float((w**2).sum()), rtol=1e-6)

    centred = synk.function(lambda x: x - synk.lax.pmean(x.mean(0)), reduce="gather")
    _close(jax.jit(centred)(x), x - x.mean(0))


def test_a_traced_call_does_no_host_work_per_call():
    w, x, y = _data(2 * N)
    fn, traces = counting(loss)
    f = synk.function(fn, in_axes=(None, 0, 0))
    step = jax.jit(lambda w, x, y: f(w, x, y))
    for _ in range(3):
        step(w, x, y)
    assert repr(f).endswith("compiled=1)")  # planned once, at the outer trace
    first = len(traces)
    for _ in range(5):
        step(w, x + 1, y)
    assert len(traces) == first  # nothing of synk runs per call


def test_bad_input_is_refused_identically_under_jit():
    w, x, y = _data(2 * N)
    f = synk.function(loss, in_axes=(None, 0, 0))
    with pytest.raises(ValueError) as eager:
        f(w, x, y[:-1])
    with pytest.raises(ValueError) as traced:
        jax.jit(f)(w, x, y[:-1])
    if P == 1:  # several processes: eagerly each passes its share, so the rows differ
        assert str(eager.value) == str(traced.value)
    assert "`x` has" in str(traced.value) and "`y` has" in str(traced.value)
    g = synk.function(lambda s, x: s * x.sum(), in_axes=("per_device", 0))
    with pytest.raises(ValueError, match=rf"argument `s` has in_axes 'per_device'.*\({N}\)"):
        jax.jit(g)(np.ones(N + 1, np.float32), x)


# ---------------------------------------------------------------- jax.grad, jvp


@pytest.mark.parametrize("rows", fewer_under_mpi(ROWS, keep=ROWS[1:]))
@pytest.mark.parametrize(("reduce", "slices"), [(None, 1), ("avg", 1), ("avg", 2)])
def test_grad_and_jvp_of_a_synk_function_equal_serial(rows, reduce, slices):
    if slices > 1 and rows // N < slices:
        pytest.skip("num_slices larger than the rows a device gets")
    w, x, y = _data(rows)
    f = synk.function(loss, in_axes=(None, 0, 0), reduce=reduce, num_slices=slices)
    for argnums in (0, 1, (0, 1)):
        got = within(jax.grad(f, argnums))(w, x, y)
        _close(got, jax.grad(loss, argnums)(w, x, y), rtol=1e-4, atol=1e-6)
    got = within(jax.value_and_grad(f))(w, x, y)
    _close(got, jax.value_and_grad(loss)(w, x, y), rtol=1e-4)
    tangent = within(lambda w: jax.jvp(lambda w: f(w, x, y), (w,), (w,)))(w)
    _close(tangent, jax.jvp(lambda w: loss(w, x, y), (w,), (w,)), rtol=1e-4)


def test_grad_through_synk_lax_inside_equals_serial():
    w, x, y = _data(4 * N)

    def normalised(w, x, y):
        h = x @ w
        mean = synk.lax.pmean(h.mean())
        return jnp.mean((jnp.tanh(h - mean) - y) ** 2)

    f = synk.function(normalised, in_axes=(None, 0, 0))
    serial = lambda w: jnp.mean((jnp.tanh(x @ w - (x @ w).mean()) - y) ** 2)  # noqa: E731
    _close(jax.grad(f)(w, x, y), jax.grad(serial)(w), rtol=1e-4)


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_and_min_outputs_differentiate_like_jnp_max_ties_included(op):
    x = np.array([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0], [0.0, 5.0]] * N, np.float32)  # ties
    x[1::4] += np.arange(N)[:, None].astype(np.float32) * 0  # same values on every device
    reduce_fn = (lambda v: v.max(0)) if op == "max" else (lambda v: v.min(0))
    f = synk.function(reduce_fn, reduce=op)
    weights = np.array([1.0, 2.0], np.float32)
    got = within(jax.grad(lambda x: (f(x) * weights).sum()))(x)
    want = jax.grad(lambda x: (reduce_fn(x) * weights).sum())(jnp.asarray(x))
    _close(got, want)


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize(("rows", "slices"), fewer_under_mpi(
    [(2 * N, 1), (2 * N, 2), (2 * N + 3, 1), (4 * N + 5, 2)], keep=[(2 * N + 3, 1)]
))  # fmt: skip
def test_max_and_min_gradients_share_ties_over_every_tied_row_of_the_batch(op, rows, slices):
    # Three tied rows, two of them on one device: each gets a third, as under jnp.max
    # (not a half per device, shared again on the device).
    sign = 1.0 if op == "max" else -1.0
    x = np.zeros(rows * P, np.float32)
    x[[0, 1, 2]] = 5.0 * sign
    x[-1] = 5.0 * sign  # and one on the last device
    pick = {"max": jnp.max, "min": jnp.min}[op]
    f = synk.function(pick, reduce=op, num_slices=slices)
    want = jax.grad(pick)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(want)[[0, 1, 2, -1]], 0.25)
    signed = x.copy()
    signed[1] = -0.0 if op == "max" else 0.0  # a signed zero ties its opposite, as in jnp.max
    signed[[0, 2, -1]] = 0.0 if op == "max" else -0.0
    signed[3:-1] = -1.0 * sign
    _close(within(jax.grad(f))(signed), jax.grad(pick)(jnp.asarray(signed)))
    _close(within(jax.grad(f))(x), want)
    _close(jax.jit(jax.grad(f))(x), want)
    tangent = np.arange(rows * P, dtype=np.float32)
    got = within(lambda x, t: jax.jvp(f, (x,), (t,)))(x, tangent)
    _close(got, jax.jvp(pick, (jnp.asarray(x),), (tangent,)))
    # A vector output, ties per column; and a derived quantity of the rows.
    m = np.zeros((rows * P, 2), np.float32)
    m[[0, 1, rows * P - 1], 1] = 3.0 * sign
    g = synk.function(lambda m: pick(jnp.tanh(m), axis=0), reduce=op, num_slices=slices)
    weights = np.array([1.0, 2.0], np.float32)
    serial = lambda m: (pick(jnp.tanh(m), axis=0) * weights).sum()  # noqa: E731
    _close(within(jax.grad(lambda m: (g(m) * weights).sum()))(m), jax.grad(serial)(jnp.asarray(m)))


# ---------------------------------------------------------------- jax.vmap


def test_vmap_over_a_broadcast_argument_and_over_another_axis_of_a_sliced_one():
    w, x, y = _data(2 * N + 1)
    f = synk.function(loss, in_axes=(None, 0, 0))
    ws = np.stack([w, 2 * w, -w])
    got = within(jax.vmap(lambda w: f(w, x, y)))(ws)
    _close(got, jnp.stack([loss(v, x, y) for v in ws]))
    xs = np.stack([x, x + 1], axis=1)  # (rows, 2, d): vmap over axis 1, rows stay axis 0
    got = within(jax.vmap(lambda x: f(w, x, y), in_axes=1))(xs)
    _close(got, jnp.stack([loss(w, x, y), loss(w, x + 1, y)]))


# ---------------------------------------------------------------- a fused training step


@pytest.mark.parametrize("reduce", [None, "avg"])
def test_a_fused_training_step_is_one_executable_with_one_all_reduce(reduce):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
    x = rng.normal(size=(2 * N + 1, 3)).astype(np.float32)
    y = rng.normal(size=(2 * N + 1, 4)).astype(np.float32)

    def mse(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    f = synk.function(mse, in_axes=(None, 0, 0), reduce=reduce)
    opt = optax.adam(0.1)

    def step(loss_fn, p, s, x, y):
        u, s = opt.update(jax.grad(loss_fn)(p, x, y), s, p)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    fused = jax.jit(lambda p, s, x, y: step(f, p, s, x, y))
    _close(fused(params, state, x, y), step(mse, params, state, x, y), rtol=1e-5)
    hlo = fused.lower(params, state, x, y).compile().as_text()
    collective = r"= (\(.*?\)|\S+) (all-reduce|all-gather|reduce-scatter)(?:-start)?\("
    reductions = re.findall(collective, hlo)
    # The gradients of every parameter travel in one all-reduce, and nothing
    # else does: the loss's own reduction transposes to a broadcast.
    assert len(reductions) == 1, reductions
    ((types, kind),) = reductions
    kernel = "f32[3,4]" in types or "f32[4,3]" in types  # (XLA may reduce it transposed)
    assert kind == "all-reduce" and kernel and "f32[4]" in types, reductions


def _fused_loop(steps: int, wait_every: int | None):
    w, x, y = _data(2 * N)
    f = synk.function(loss, in_axes=(None, 0, 0))
    step = jax.jit(lambda w, x, y: w - 0.01 * jax.grad(f)(w, x, y))
    x, y = jnp.asarray(x), jnp.asarray(y)  # device arrays; the whole batch on every process
    for i in range(steps):
        w = step(w, x, y)
        if wait_every and i % wait_every == 0:
            jax.block_until_ready(w)
    assert np.isfinite(np.asarray(w)).all()


# Queued thousands deep, XLA's CPU rendezvous is fragile (numpy batches deadlock
# it, hand-written jit(shard_map) alike): make test runs this test alone, so
# that no other test process competes for the cores.
@pytest.mark.alone
@single_process("under several processes on CPUs (gloo) a loop that never waits stalls")
def test_a_loop_of_fused_steps_that_never_blocks_completes():
    _fused_loop(3000, wait_every=None)


def test_a_loop_of_fused_steps_that_waits_now_and_then_completes_under_any_processes():
    # Under several processes on CPUs (gloo) a loop that never waits stalls once
    # about a hundred steps are queued; the one-liner in docs/sharp_bits.md bounds the queue.
    _fused_loop(1000, wait_every=32)


# ---------------------------------------------------------------- Equinox modules


def test_an_equinox_module_passes_whole():
    model = eqx.nn.MLP(3, 1, 8, 2, activation=jax.nn.relu, key=jax.random.key(0))
    _, x, y = _data(2 * N + 1)

    def mse(model, x, y):
        return jnp.mean((jax.vmap(model)(x)[:, 0] - y) ** 2)

    fn, traces = counting(mse)
    f = synk.function(fn, in_axes=(None, 0, 0))
    _close(f(model, x, y) if P == 1 else eqx.filter_jit(f)(model, x, y), mse(model, x, y))
    _close(f.serial(model, x, y), mse(model, x, y))  # the serial reference takes it too
    grads = eqx.filter_grad(f)(model, x, y)
    assert_tree_close(eqx.filter(grads, eqx.is_array), eqx.filter(eqx.filter_grad(mse)(model, x, y),
                      eqx.is_array), rtol=1e-4, atol=1e-6)  # fmt: skip
    before = len(traces)
    other = eqx.tree_at(lambda m: m.activation, model, jax.nn.tanh)
    f(other, x, y) if P == 1 else eqx.filter_jit(f)(other, x, y)
    assert len(traces) > before  # a new static leaf (the activation) traces anew


def test_serial_runs_a_flax_model_that_updates_its_variables():
    nnx = pytest.importorskip("flax.nnx")
    _, x, _ = _data(2 * N)
    bn = nnx.BatchNorm(3, axis_name=synk.lax.axis_name, rngs=nnx.Rngs(0))
    graphdef, _ = nnx.split(bn)

    def normalised(state, x):
        model = nnx.merge(graphdef, state)  # train mode: updates its batch statistics
        return model(x), nnx.state(model, nnx.BatchStat)

    f = synk.function(normalised, in_axes=(None, 0), reduce=("gather", "avg"))
    # The statistics it writes reach the caller's state, as under nnx.jit: each
    # call starts from a state of its own.
    fresh = lambda: nnx.split(nnx.clone(bn))[1]  # noqa: E731
    mine, reference = fresh(), fresh()
    got = f(mine, synk.process_share(x)) if P == 1 else f.serial(mine, x)
    _close(got, f.serial(reference, x))
    _close(mine, reference)


# ---------------------------------------------------------------- one synk.Function in another


@pytest.mark.parametrize("rows", fewer_under_mpi(ROWS, keep=ROWS[1:2]))
@pytest.mark.parametrize("outer", [None, "avg"])
@pytest.mark.parametrize("inner", [None, "avg", "max"])
def test_a_synk_function_inside_another_runs_as_its_serial_function(rows, outer, inner):
    w, x, y = _data(rows * P)  # each process passes its share of it
    h = synk.function(lambda w, x: jnp.max(jnp.tanh(x @ w)), in_axes=(None, 0), reduce=inner)
    # Not row-separable: the pieces show. Exact shapes (buckets=None) pin them.
    f = synk.function(lambda w, x, y: loss(w, x, y) * h(w, x), in_axes=(None, 0, 0),
                      reduce=outer, buckets=None)  # fmt: skip
    # The inner function is part of the outer one's body, on the rows that body
    # sees: as an undecorated function. Without reduce that is the whole batch.
    want = f.serial(w, x, y)
    if outer is None:
        _close(want, loss(w, x, y) * jnp.max(jnp.tanh(x @ w)))
        _close(f(w, *synk.process_share((x, y))), want, rtol=1e-5)
        _close(within(jax.grad(f))(w, x, y), jax.grad(f.serial)(w, x, y), rtol=1e-4)
    elif P == 1:  # each piece: B // N rows per device, and one extra row on the first B % N
        q, r = divmod(rows, N)
        pieces = [range(j * q, (j + 1) * q) for j in range(N) if q] + [
            [N * q + j] for j in range(r)
        ]
        means = [float(f.serial(w, x[list(p)], y[list(p)])) * len(p) for p in pieces]
        _close(f(w, x, y), sum(means) / rows, rtol=1e-5)


@single_process("arrays committed to one process's device")
@pytest.mark.parametrize("reduce", [None, "avg"])
def test_arrays_committed_to_other_devices_pass_an_eager_grad(reduce):
    w, x, y = _data(2 * N + 1)
    f = synk.function(loss, in_axes=(None, 0, 0), reduce=reduce)
    want = jax.grad(loss)(w, x, y)
    for device in (jax.devices()[0], jax.devices()[-1]):
        _close(jax.grad(f)(jax.device_put(w, device), x, y), want, rtol=1e-4)
    backwards = synk.function(loss, in_axes=(None, 0, 0), reduce=reduce,
                              devices=synk.devices()[::-1])  # fmt: skip
    w_reversed = synk.function(lambda w: w * 1.0, in_axes=None)(w)  # on every device, in order
    _close(jax.grad(backwards)(w_reversed, x, y), want, rtol=1e-4)


def test_lower_takes_shapes_alone_for_any_batch_length():
    f = synk.function(loss, in_axes=(None, 0, 0))
    for rows in (2 * N, 2 * N + 3):
        shapes = [jax.ShapeDtypeStruct(s, np.float32) for s in ((3,), (rows, 3), (rows,))]
        for g in (f, f.with_options(reduce="avg")):
            assert "all-reduce" in g.lower(*shapes).compile().as_text()
