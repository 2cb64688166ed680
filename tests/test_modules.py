"""Equinox and Flax NNX modules passed whole, unchanged, on the default path.

Equinox modules behave as under ``equinox.filter_jit`` (their non-array
fields are static); Flax NNX modules as under ``nnx.jit`` (what the function
writes into their Variables reaches the caller's module). Each result equals
the single-device run of the same code.
"""

import enum
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import PROCESSES, counting

import synk

N = synk.device_count()
ROWS = (2 * N + 3) * PROCESSES  # uneven on the devices


def _x(rows, *shape, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, *shape)).astype(np.float32)


def _close(got, want, rtol=2e-5, atol=2e-6):
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- Equinox


class _Layers(eqx.Module):
    """Layers whose non-array fields break when traced: bools, ints, floats."""

    conv: eqx.nn.Conv2d
    max_pool: eqx.nn.MaxPool2d  # init=-inf, a float field
    avg_pool: eqx.nn.AvgPool2d
    attention: eqx.nn.MultiheadAttention
    dropout: eqx.nn.Dropout  # inference: bool, p: float
    hidden: int  # an int field, as in Equinox's RNN example

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 2, kernel_size=3, padding=1, key=k1)
        self.max_pool = eqx.nn.MaxPool2d(kernel_size=2)
        self.avg_pool = eqx.nn.AvgPool2d(kernel_size=2)
        self.attention = eqx.nn.MultiheadAttention(num_heads=2, query_size=4, key=k2)
        self.dropout = eqx.nn.Dropout(0.3)
        self.hidden = 4

    def __call__(self, x, key):
        h = self.conv(x)  # (2, 6, 6)
        h = jnp.concatenate([self.max_pool(h), self.avg_pool(h)]).reshape(-1, self.hidden)
        h = self.attention(h, h, h)
        return self.dropout(h, key=key).sum()


def _loss(model, x, key):
    keys = jax.random.split(key, x.shape[0])
    return jnp.mean(jax.vmap(model)(x, keys) ** 2)


def test_equinox_layers_with_non_array_fields_and_their_gradients():
    model, key = _Layers(jax.random.key(0)), jax.random.key(1)
    x = _x(ROWS, 1, 6, 6)
    f = synk.function(eqx.filter_value_and_grad(_loss), in_axes=(None, 0, None))
    got = f(model, synk.process_share(x), key)
    want = eqx.filter_jit(eqx.filter_value_and_grad(_loss))(model, x, key)
    _close(got, want, rtol=1e-4, atol=1e-6)
    _close(f.serial(model, x, key), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_equinox_batch_norm_and_its_state(mode):
    class Net(eqx.Module):
        linear: eqx.nn.Linear
        norm: eqx.nn.BatchNorm

        def __init__(self, key):
            self.linear = eqx.nn.Linear(3, 4, key=key)
            kwargs = {} if mode == "ema" else {"mode": "batch"}
            self.norm = eqx.nn.BatchNorm(4, axis_name="batch", **kwargs)

        def __call__(self, x, state):
            return self.norm(self.linear(x), state)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ema's "defaults to 'ema'" notice
        model, state = eqx.nn.make_with_state(Net)(jax.random.key(0))

    def forward(model, state, x):
        out, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            x, state
        )
        return jnp.mean(out**2), out, state

    f = synk.function(forward, in_axes=(None, None, 0))
    reference = eqx.filter_jit(forward)
    mine, theirs = state, state
    for seed in range(3):  # the state carries over from call to call
        x = _x(ROWS, 3, seed=seed)
        loss, out, mine = f(model, mine, synk.process_share(x))
        want_loss, want_out, theirs = reference(model, theirs, x)
        _close((loss, out, mine), (want_loss, want_out, theirs), rtol=1e-4, atol=1e-5)


def test_equinox_spectral_norm_and_its_state():
    spectral = eqx.nn.SpectralNorm
    model, state = eqx.nn.make_with_state(spectral)(
        eqx.nn.Linear(3, 4, key=jax.random.key(0)), "weight", key=jax.random.key(1)
    )

    def forward(model, state, x):
        y, state = jax.vmap(model, in_axes=(0, None), out_axes=(0, None))(x, state)
        return jnp.mean(y**2), state

    f = synk.function(forward, in_axes=(None, None, 0))
    x = _x(ROWS, 3)
    _close(f(model, state, synk.process_share(x)), eqx.filter_jit(forward)(model, state, x),
           rtol=1e-4, atol=1e-6)  # fmt: skip


def test_a_returned_equinox_module_keeps_its_static_fields():
    optim = optax.adamw(1e-2)
    model, key = _Layers(jax.random.key(0)), jax.random.key(1)
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    def make_step(model, opt_state, x, key):
        value, grads = eqx.filter_value_and_grad(_loss)(model, x, key)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    step = synk.function(make_step, in_axes=(None, None, 0, None))
    reference = eqx.filter_jit(make_step)
    mine, theirs = (model, opt_state), (model, opt_state)
    for seed in range(3):
        x = _x(ROWS, 1, 6, 6, seed=seed)
        *mine, loss = step(*mine, synk.process_share(x), key)
        *theirs, want = reference(*theirs, x, key)
        _close(loss, want, rtol=1e-4)
    got_model = mine[0]
    assert got_model.hidden == 4 and got_model.dropout.inference is False
    assert got_model.max_pool.init == -np.inf and isinstance(got_model.max_pool.init, float)


# ---------------------------------------------------------------- the rule for Python numbers


def test_a_python_number_argument_is_traced_and_does_not_recompile():
    fn, traces = counting(lambda lr, w, x: w - lr * jnp.mean(x @ w))
    f = synk.function(fn, in_axes=(None, None, 0))
    w, x = np.ones(3, np.float32), _x(ROWS, 3)
    for lr in (0.1, 0.2, 0.3, 0.05, 1e-3, 7.0):
        np.testing.assert_allclose(
            np.asarray(f(lr, w, synk.process_share(x))), w - lr * np.mean(x @ w), rtol=1e-5
        )
    assert len(traces) == 1 and repr(f).endswith("compiled=1)")


class Scaled(eqx.Module):
    scale: float  # a leaf: a Python number inside an object is static

    def __call__(self, x):
        return x * self.scale


class StaticScaled(eqx.Module):
    scale: float = eqx.field(static=True)  # in the tree structure, not a leaf

    def __call__(self, x):
        return x * self.scale


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (Scaled, "`m.scale` is a Python float inside an object"),
        (StaticScaled, "compiled 5 times for arguments of the same shapes"),
    ],
)
def test_a_static_number_that_keeps_changing_compiles_per_value_and_warns_once(module, message):
    f = synk.function(lambda m, x: m(x).sum(), in_axes=(None, 0))
    x = _x(ROWS, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(6):
            np.testing.assert_allclose(
                float(f(module(float(k)), synk.process_share(x))), k * x.sum(), rtol=1e-4
            )
    assert repr(f).endswith("compiled=6)")  # static: one executable per value
    assert sum(message in str(w.message) for w in caught) == 1


class Mode(enum.IntEnum):
    TRAIN = 0
    EVAL = 1


def test_an_enum_is_static_in_a_call_and_in_serial():
    def fn(x, mode):
        return x.mean() if mode == Mode.TRAIN else x.sum()  # a Python branch on the enum

    f = synk.function(fn, in_axes=(0, None))
    x = _x(ROWS, 3)
    for mode in Mode:
        _close(f(synk.process_share(x), mode), f.serial(x, mode), rtol=1e-5)


# ---------------------------------------------------------------- Flax NNX


class _CNN(nnx.Module):
    """Conv with bias, batch norm and dropout, as in Flax's MNIST tutorial."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.linear = nnx.Linear(4 * 8 * 8, 3, rngs=rngs)

    def __call__(self, x):
        x = self.dropout(nnx.relu(self.norm(self.conv(x))))
        return self.linear(x.reshape(x.shape[0], -1))


class Count(nnx.Variable):
    """A Variable of the user's own."""


class _Counted(nnx.Module):
    def __init__(self):
        self.calls = Count(jnp.array(0, jnp.int32))
        self.total = Count(jnp.zeros(()))

    def __call__(self, x):
        self.calls[...] += 1
        self.total[...] += x.sum()
        return x.mean()


def _model():
    return _CNN(nnx.Rngs(0, dropout=1))


def _state(model):
    def host(a):
        is_key = jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
        return np.asarray(jax.random.key_data(a) if is_key else a)

    return jax.tree.map(host, nnx.state(model))


def test_nnx_in_place_updates_reach_the_caller_as_under_nnx_jit():
    def forward(model, x):
        return jnp.mean(model(x) ** 2)

    f = synk.function(forward, in_axes=(None, 0))
    mine, theirs, serial = _model(), _model(), _model()
    reference = nnx.jit(forward)
    for seed in range(3):
        x = _x(ROWS, 8, 8, 1, seed=seed)
        got = f(mine, synk.process_share(x))
        _close(got, reference(theirs, x), rtol=1e-4)
        _close(f.serial(serial, x), got, rtol=1e-4)
    # Batch statistics moved, the dropout stream advanced three times, as on one device.
    assert int(mine.dropout.rngs.count[...]) == 3
    _close(_state(mine), _state(theirs), rtol=1e-4, atol=1e-6)
    _close(_state(serial), _state(theirs), rtol=1e-4, atol=1e-6)


def test_nnx_variables_of_the_users_own_and_shared_ones():
    counted = _Counted()
    f = synk.function(lambda a, b, x: a(x) + b(x), in_axes=(None, None, 0))
    x = _x(ROWS, 3)
    f(counted, counted, synk.process_share(x))  # the same module twice: one set of Variables
    assert int(counted.calls[...]) == 2
    np.testing.assert_allclose(float(counted.total[...]), 2 * x.sum(), rtol=1e-4)


def test_nnx_optimizer_step_equals_nnx_jit():
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def make():
        model = _model()
        return model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

    step = synk.function(train_step, in_axes=(None, None, 0, 0))
    reference = nnx.jit(train_step)
    mine, theirs = make(), make()
    for seed in range(3):
        x = _x(ROWS, 8, 8, 1, seed=seed)
        y = np.random.default_rng(seed).integers(0, 3, ROWS)
        got = step(*mine, *synk.process_share((x, y)))
        _close(got, reference(*theirs, x, y), rtol=1e-4)
    assert int(mine[1].step[...]) == 3
    # Adam turns rounding noise in the (zero) gradient of the conv bias before
    # batch norm into steps of up to its learning rate: compare the rest closely.
    ours, reference = _state(mine[0]), _state(theirs[0])
    ours["conv"].pop("bias"), reference["conv"].pop("bias")
    _close(ours, reference, rtol=1e-3, atol=1e-4)


def test_nnx_jit_around_and_nnx_grad_through_a_synk_function():
    def loss(model, x):
        return jnp.mean(model(x) ** 2)

    f = synk.function(loss, in_axes=(None, 0))
    x = _x(ROWS, 8, 8, 1)
    mine, theirs = _model(), _model()
    # Inside a trace every value is global: the whole batch on every process.
    _close(nnx.jit(f)(mine, x), nnx.jit(loss)(theirs, x), rtol=1e-4)
    _close(_state(mine), _state(theirs), rtol=1e-4, atol=1e-6)
    got = nnx.grad(f)(mine, x)
    want = nnx.grad(loss)(theirs, x)
    _close(got, want, rtol=1e-3, atol=1e-5)
    _close(_state(mine), _state(theirs), rtol=1e-4, atol=1e-6)


def test_nnx_state_on_the_per_device_path_is_combined_and_sliced_state_is_refused():
    counted = _Counted()
    x = _x(2 * N * PROCESSES, 3)
    f = synk.function(lambda m, x: m(x), in_axes=(None, 0), reduce="avg")
    np.testing.assert_allclose(float(f(counted, synk.process_share(x))), x.mean(), rtol=1e-5)
    # Each device counted one call (the maximum), and its own rows' total (averaged).
    assert int(counted.calls[...]) == 1
    np.testing.assert_allclose(float(counted.total[...]), x.sum() / N, rtol=1e-4)
    g = synk.function(lambda m, x: m(x))  # in_axes 0 for the module too
    with pytest.raises(ValueError, match=r"`m.calls` is a Flax NNX Variable .* in_axes None"):
        g(counted, synk.process_share(x))


def test_nnx_structure_changes_are_refused_and_sown_values_can_be_returned():
    class Sown(nnx.Module):
        def __init__(self):
            self.total = nnx.Variable(jnp.zeros(3))

        def __call__(self, x):
            self.sow(nnx.Intermediate, "seen", x * 2)
            return x.sum()

    x = _x(ROWS, 3)
    f = synk.function(lambda m, x: m(x), in_axes=(None, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # sow outside nnx.capture
        with pytest.raises(ValueError, match=r"changed a Flax NNX module's structure.*nnx.pop"):
            f(Sown(), synk.process_share(x))
        g = synk.function(lambda m, x: (m(x), nnx.pop(m, nnx.Intermediate)), in_axes=(None, 0))
        total, sown = g(Sown(), synk.process_share(x))
    np.testing.assert_allclose(float(total), x.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sown["seen"].get_value()[0]), x * 2, rtol=1e-6)
