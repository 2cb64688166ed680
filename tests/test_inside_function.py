"""What a user's function may do inside: control flow with constants, and gradients
taken inside through synk.lax collectives. Each equals the serial function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fewer_under_mpi, single_process
from jax import lax

import synk

N = synk.device_count()
P = synk.process_count()


def _close(got, want, rtol=2e-5, atol=2e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def _data(rows, d=3, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d,)).astype(np.float32)
    x = rng.normal(size=(rows * P, d)).astype(np.float32)
    return w, x  # numpy: each process passes its share of x; references take jnp.asarray(x)


def loss(w, x):
    return jnp.mean(jnp.tanh(x @ w) ** 2)


# ---------------------------------------------------------------- control flow


def scan_sum(w, x):
    def step(carry, row):
        return carry + jnp.tanh(row @ w) ** 2, row @ w

    total, per_row = lax.scan(step, 0.0, x)  # a constant initial carry
    return total / x.shape[0], per_row


def fori_sum(w, x):
    body = lambda i, acc: acc + jnp.tanh(x[i] @ w) ** 2  # noqa: E731
    return lax.fori_loop(0, x.shape[0], body, 0.0) / x.shape[0], x @ w


def while_sum(w, x):
    def body(state):
        i, acc = state
        return i + 1, acc + jnp.tanh(x[i] @ w) ** 2

    _, total = lax.while_loop(lambda s: s[0] < x.shape[0], body, (0, 0.0))
    return total / x.shape[0], x @ w


def cond_sum(w, x):
    positive = lax.cond(w.sum() > 100.0, lambda: 0.0, lambda: jnp.mean(jnp.tanh(x @ w) ** 2))
    return positive, x @ w


@pytest.mark.parametrize("fn", [scan_sum, fori_sum, while_sum, cond_sum], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("rows", "slices"),
    fewer_under_mpi(
        [(2 * N, 1), (2 * N, 2), (2 * N + 3, 1), (3, 1)], keep=[(2 * N, 2), (2 * N + 3, 1)]
    ),
)
def test_control_flow_with_constant_carries_and_branches_equals_serial(fn, rows, slices):
    w, x = _data(rows)
    f = synk.function(fn, in_axes=(None, 0), reduce=("avg", "gather"), num_slices=slices)
    mine = synk.process_share(x)
    xj = jnp.asarray(x)
    _close(f(w, mine), fn(w, xj))
    if fn is while_sum:
        return  # while_loop has no reverse-mode derivative, in JAX itself
    # and a gradient through it, taken inside
    g = synk.function(
        jax.grad(lambda w, x: fn(w, x)[0]), in_axes=(None, 0), reduce="avg", num_slices=slices
    )
    _close(g(w, mine), jax.grad(lambda w: fn(w, xj)[0])(w), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- gradients inside


@pytest.mark.parametrize("through", ["pmean", "psum"])
def test_gradient_taken_inside_through_synk_lax_equals_serial(through):
    w, x = _data(2 * N)

    def global_loss(w, x):  # every device's loss is the whole batch's
        if through == "pmean":
            return synk.lax.pmean(loss(w, x))
        return synk.lax.psum(loss(w, x)) / synk.lax.psum(1.0)

    step = synk.function(jax.value_and_grad(global_loss), in_axes=(None, 0))
    value, grad = step(w, synk.process_share(x))
    want_value, want_grad = jax.value_and_grad(loss)(w, x)
    _close(value, want_value)
    _close(grad, want_grad, rtol=1e-4)
    _close(step.serial(w, x), (want_value, want_grad), rtol=1e-4)


def test_gradient_inside_of_a_loss_normalised_across_devices_equals_serial():
    """Synchronised normalisation: statistics averaged over every device's rows."""
    w, x = _data(4 * N, d=5)

    def normalised_loss(w, x):
        h = x @ w
        mean = synk.lax.pmean(h.mean())
        var = synk.lax.pmean(((h - mean) ** 2).mean())
        return jnp.mean(jnp.tanh((h - mean) / jnp.sqrt(var + 1e-5)) ** 2)

    step = synk.function(jax.grad(normalised_loss), in_axes=(None, 0))
    _close(step(w, synk.process_share(x)), jax.grad(normalised_loss)(w, x), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- synk.lax, found


def test_collectives_in_a_jitted_helper_are_found_even_when_its_trace_is_cached():
    helper = jax.jit(lambda x: synk.lax.psum(x.sum()))  # every device: the whole batch's sum
    f = synk.function(lambda x: helper(x), reduce="max")
    x = np.arange(4.0 * N * P, dtype=np.float32)
    assert float(f.serial(x)) == float(x.sum())  # traces (and caches) the helper, unbound
    assert float(f(synk.process_share(x))) == float(x.sum())
    with pytest.raises(ValueError, match=r"calls synk.lax collectives.*num_slices=2"):
        f.with_options(num_slices=2)(synk.process_share(x))
    uneven = np.arange(4.0 * N * P + P, dtype=np.float32)
    with pytest.raises(ValueError, match=r"calls synk.lax collectives.*does not divide"):
        f(synk.process_share(uneven))


def test_a_collective_under_a_custom_derivative_or_scan_is_found():
    @jax.custom_jvp
    def total(x):
        return synk.lax.psum(x.sum())

    total.defjvp(lambda p, t: (total(*p), synk.lax.psum(t[0].sum())))

    def scanned(x):
        return lax.scan(lambda c, row: (c + synk.lax.psum(row.sum()), None), 0.0, x)[0]

    for fn in (total, scanned):
        f = synk.function(fn, reduce="max", num_slices=2)
        with pytest.raises(ValueError, match=r"calls synk\.lax collectives"):
            f(synk.process_share(np.ones(4 * N * P, np.float32)))


@single_process("control flow inside the function, as in serial: nothing of processes")
def test_a_flax_lstm_runs_as_in_serial():
    nn = pytest.importorskip("flax.linen")
    rnn = nn.RNN(nn.LSTMCell(features=4))
    x = np.random.default_rng(1).normal(size=(2 * N + 1) * P * 5 * 3).astype(np.float32)
    x = x.reshape((2 * N + 1) * P, 5, 3)  # (batch, time, features)
    params = rnn.init(jax.random.key(0), x[:1])
    f = synk.function(lambda p, x: rnn.apply(p, x), in_axes=(None, 0), reduce="gather")
    _close(f(params, synk.process_share(x)), rnn.apply(params, jnp.asarray(x)), rtol=1e-5)
