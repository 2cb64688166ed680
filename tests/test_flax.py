"""Flax NNX models inside a synk.function: batch norm synchronised over synk.lax.axis_name.

The model travels as its ``nnx.split`` state (a pytree of arrays), broadcast
with ``in_axes=None``, and is merged again inside the function. Each result
equals the serial function's, on one device.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_tree_close

import synk

N = synk.device_count()
P = synk.process_count()
EPS, MOMENTUM = 1e-5, 0.9


def _rows(rows, d, seed=0):
    # The same global batch on every process, far from zero mean and unit variance.
    return (np.random.default_rng(seed).normal(size=(rows, d)) * 3.0 + 1.0).astype(np.float32)


def _batch_norm(d):
    return nnx.BatchNorm(
        d, momentum=MOMENTUM, epsilon=EPS, axis_name=synk.lax.axis_name, rngs=nnx.Rngs(0)
    )


def _merge(graphdef, *states):
    # copy=True: the Variables are made afresh in the trace that updates them.
    # Without it f.serial raises flax's TraceContextError ("Cannot mutate
    # BatchStat from a different trace level"), as it binds the device axis
    # around a call whose arguments were unflattened outside that binding.
    return nnx.merge(graphdef, *states, copy=True)


@pytest.mark.parametrize("rows", [N, 3 * N])
def test_batch_norm_over_the_axis_name_equals_serial_and_the_whole_batch(rows):
    graphdef, state = nnx.split(_batch_norm(5))

    @synk.function(in_axes=(None, 0), reduce=("gather", "avg"))
    def train_forward(state, x):
        model = _merge(graphdef, state)
        y = model(x)  # train mode: normalise by the batch's statistics, update the running ones
        return y, nnx.state(model)

    x = _rows(rows, 5)
    y, new_state = train_forward(state, synk.process_share(x))
    want_y, want_state = train_forward.serial(state, x)
    assert_tree_close(y, want_y, rtol=1e-5, atol=1e-5)
    assert_tree_close(new_state, want_state, rtol=1e-5, atol=1e-6)

    # Synchronised: the statistics are the whole batch's, not an average of each
    # device's (which would give another variance and other outputs).
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + EPS), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"][...], (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state["var"][...], MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-5)


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(4, 6, rngs=rngs)
        self.norm = _batch_norm(6)
        self.out = nnx.Linear(6, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.linear(x))))


def test_gradient_through_synchronised_batch_norm_equals_serial():
    graphdef, params, stats = nnx.split(_Net(nnx.Rngs(1)), nnx.Param, nnx.BatchStat)

    def loss(params, stats, x, y):
        model = _merge(graphdef, params, stats)
        value = jnp.mean((model(x)[:, 0] - y) ** 2)
        return value, nnx.state(model, nnx.BatchStat)

    # Gradients taken inside, then averaged over devices: exact, as the loss is a
    # mean over rows (whose normalisation spans every device).
    step = synk.function(jax.value_and_grad(loss, has_aux=True), in_axes=(None, None, 0, 0))
    x, y = _rows(4 * N, 4, seed=1), _rows(4 * N, 1, seed=2)[:, 0]
    got = step(params, stats, *synk.process_share((x, y)))
    want = step.serial(params, stats, x, y)
    assert_tree_close(got, want, rtol=1e-4, atol=1e-5)
    (value, new_stats), grads = got
    assert float(value) > 0 and not np.allclose(new_stats["norm"]["var"][...], 1.0)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))


def test_batch_norm_over_the_axis_name_refuses_a_batch_the_devices_do_not_divide():
    graphdef, state = nnx.split(_batch_norm(3))
    f = synk.function(
        lambda state, x: _merge(graphdef, state)(x).mean(0), in_axes=(None, 0), reduce="avg"
    )
    x = _rows(2 * N + P, 3)  # each process an equal share; the devices an uneven one
    with pytest.raises(ValueError, match=r"synk\.lax\.axis_name.*does not divide over"):
        f(state, synk.process_share(x))
    with pytest.raises(ValueError, match=r"synk\.lax\.axis_name.*Use num_slices=1"):
        f.with_options(num_slices=2)(state, synk.process_share(_rows(4 * N, 3)))
    # The serial function has no devices to divide over: any batch is fine; nor
    # has the whole function under XLA's partitioner (no reduce), which equals it.
    want = f.serial(state, x)
    assert want.shape == (3,)
    got = f.with_options(reduce=None)(state, synk.process_share(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
