"""The call path: one plan per signature, one device_put, no copies, bounded queue."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PROCESSES, compilations, counting, single_process
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import synk

N = synk.device_count()
RNG = np.random.default_rng(1)


@pytest.mark.parametrize(
    ("rows", "reduce", "slices"),
    [(8 * N, None, 1), (8 * N + 3, None, 1), (8 * N, "avg", 1), (8 * N + 3, "avg", 1),
     (8 * N + 3, "avg", 3)],
)  # fmt: skip
def test_a_repeated_call_does_not_retrace_or_recompile(caplog, rows, reduce, slices):
    fn, traces = counting(lambda w, x: jax.grad(lambda w: ((x @ w) ** 2).mean())(w))
    # Exact shapes (buckets=None): a new batch length is a new signature.
    f = synk.function(fn, in_axes=(None, 0), reduce=reduce, num_slices=slices, buckets=None)
    w = RNG.normal(size=3).astype(np.float32)
    x = RNG.normal(size=(rows, 3)).astype(np.float32)
    with compilations(caplog) as first_compiled:
        f(w, x)
    first = len(traces)
    assert first >= 1 and first_compiled  # the first call traces and compiles
    with compilations(caplog) as compiled:
        for _ in range(5):
            f(w, RNG.normal(size=(rows, 3)).astype(np.float32))
    assert len(traces) == first  # no new trace for the same shapes
    assert compiled == []  # and nothing compiled: one executable for the signature
    assert repr(f).endswith("compiled=1)")
    f(w, RNG.normal(size=(rows + 1, 3)).astype(np.float32))
    assert len(traces) > first and repr(f).endswith("compiled=2)")  # a new shape compiles anew


def spy_device_put(monkeypatch) -> list:
    calls = []
    real = jax.device_put

    def spy(x, device=None, **kwargs):
        calls.append((x, device))
        return real(x, device, **kwargs)

    monkeypatch.setattr(jax, "device_put", spy)
    return calls


@pytest.mark.parametrize("rows", [10 * N, 10 * N + 3])
def test_host_inputs_go_straight_to_their_target_shardings(monkeypatch, rows):
    """numpy arguments go to jit as they are; its in_shardings place each on its shards.

    No Python-level device_put per leaf, no stop on a default device: the
    executable's inputs are the target shardings (rows split, params replicated).
    """
    f = synk.function(lambda p, x, y: ((x @ p["w"]) * y).mean(), in_axes=(None, 0, 0))
    p = {"w": RNG.normal(size=(4,)).astype(np.float32)}
    x, y = RNG.normal(size=(rows, 4)), RNG.normal(size=rows)
    f(p, x, y)  # compile outside the spy
    calls = spy_device_put(monkeypatch)
    got = f(p, x, y)
    assert calls == []
    np.testing.assert_allclose(got, ((x @ p["w"]) * y).mean(), rtol=1e-5)
    # Compare layouts, not mesh objects: which devices hold which part of each input.
    mesh = jax.sharding.Mesh(np.array(synk.devices()), ("d",))
    replicated, rows_split = NamedSharding(mesh, P()), NamedSharding(mesh, P("d"))
    lowered = f.lower(p, x, y)
    ndims = [len(arg.shape) for arg in jax.tree.leaves(lowered.args_info)]
    params, *batch = lowered.compile().input_shardings[0]
    assert params.is_equivalent_to(replicated, ndims[0])
    # x and y (and, for an uneven batch, however their remainder rows travel) split by rows
    assert len(batch) >= 2
    for sharding, ndim in zip(batch, ndims[1:], strict=True):
        assert sharding.is_equivalent_to(rows_split, ndim)


def test_device_arrays_with_the_right_sharding_are_not_copied():
    mesh = jax.sharding.Mesh(np.array(synk.devices()), ("d",))
    f = synk.function(lambda p, x: (x @ p).sum(), in_axes=(None, 0), reduce="sum")
    p = jax.device_put(np.ones(3, np.float32), NamedSharding(mesh, P()))
    x = jax.device_put(np.ones((4 * N, 3), np.float32), NamedSharding(mesh, P("d")))
    f(p, x)  # compile (and any one-off constants) outside the guard
    with jax.transfer_guard("disallow_explicit"):
        out = f(p, x)  # would raise on any host<->device or device<->device transfer
        with pytest.raises(Exception, match=r"[Dd]isallowed"):
            f(p, np.ones((4 * N, 3), np.float32))  # the guard is really on
    assert float(out) == 12 * N


@single_process("the array lives on one device, which one process alone can address")
def test_device_arrays_with_another_layout_are_resharded():
    f = synk.function(lambda x: x.sum(), reduce="sum")
    x = jax.device_put(np.arange(5 * N + 2, dtype=np.float32), synk.devices()[0])
    assert float(f(x)) == float(np.arange(5 * N + 2).sum())


def each_process_reversed():
    """Every device, each process's own in reverse: another order, valid for any process count."""
    devices = synk.devices()
    per = len(devices) // PROCESSES
    return [d for p in range(PROCESSES) for d in reversed(devices[p * per : (p + 1) * per])]


@pytest.mark.parametrize("rows", [3 * N, 3 * N + 5])
def test_device_arrays_on_the_same_devices_in_another_order_are_placed(rows):
    backwards = synk.function(
        lambda x: (x * 2, x.sum(0)), reduce=("gather", "sum"), devices=each_process_reversed()
    )
    x = RNG.normal(size=(rows * PROCESSES, 3)).astype(np.float32)  # the global batch
    doubled, total = backwards(synk.process_share(x))
    assert list(doubled.sharding.mesh.devices.flat) == each_process_reversed()
    assert list(total.sharding.mesh.devices.flat) == each_process_reversed()
    # Sliced (an uneven batch for rows=3N+5: the device splitter) and broadcast.
    f = synk.function(
        lambda a, t: (a * t, (a * t).sum(0)), in_axes=(0, None), reduce=("gather", "sum")
    )
    rows_out, summed = f(doubled, total)
    want = 2 * x * x.sum(0)
    np.testing.assert_allclose(np.asarray(rows_out), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(summed), want.sum(0), rtol=1e-4, atol=1e-4)


def test_hundreds_of_calls_in_a_row_without_blocking():
    """XLA's CPU collectives abort when too many calls queue up; synk bounds them."""
    f = synk.function(lambda w, x: ((x @ w) ** 2).mean() + w.sum(), in_axes=(None, 0))
    w = np.ones(4, np.float32)
    x = RNG.normal(size=(2 * N + 1, 4)).astype(np.float32)
    outs = [f(w, x) for _ in range(300)]
    want = ((x @ w) ** 2).mean() + 4
    np.testing.assert_allclose(np.asarray(outs[-1]), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(outs[0]), want, rtol=1e-5)


# ------------------------------------------------------- outputs the user donates or deletes
# The bound above waits on outputs it holds; the user may have donated or
# deleted every one of them since. A loop several times longer than the bound
# (16 calls) shows it.

STEPS = 60


def loss_and_grad(w, x, y):
    return jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)


def momentum(w, velocity, total, loss, grad):
    velocity = 0.9 * velocity + grad
    return w - 0.05 * velocity, velocity, total + loss


def regression(rows: int):
    x = RNG.normal(size=(rows, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)


def test_a_loop_that_donates_every_output_to_a_jitted_update():
    """The optax pattern: a jitted update that donates synk's outputs, loss and gradient."""
    step = synk.function(loss_and_grad, in_axes=(None, 0, 0))
    # Donated buffers are reused for outputs of their shape: grad for w or velocity,
    # loss for total (a donation with no such output would not delete the input).
    update = jax.jit(momentum, donate_argnums=(3, 4))
    x, y = regression((2 * N + 3) * PROCESSES)  # an uneven split on every process
    xs, ys = synk.process_share(x), synk.process_share(y)
    w, velocity, total = jnp.zeros(3), jnp.zeros(3), jnp.zeros(())
    want = (np.zeros(3, np.float32), np.zeros(3, np.float32), np.float32(0))
    for _ in range(STEPS):
        loss, grad = step(w, xs, ys)
        w, velocity, total = update(w, velocity, total, loss, grad)
        assert grad.is_deleted() and loss.is_deleted()  # donated: the update took them
        want = momentum(*want, *step.serial(want[0], x, y))
    for got, expected in zip((w, velocity, total), want, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-6)


def test_a_loop_that_deletes_every_output():
    f = synk.function(lambda w, x: ((x @ w) ** 2).mean(), in_axes=(None, 0))
    w = np.ones(3, np.float32)
    x, _ = regression((2 * N + 3) * PROCESSES)
    xs = synk.process_share(x)
    per_device = synk.broadcast(np.ones(3, np.float32))
    for _ in range(STEPS):
        f(w, xs).delete()
        synk.all_reduce(per_device, "sum").delete()  # per-device collectives are bounded too
    np.testing.assert_allclose(np.asarray(f(w, xs)), ((x @ w) ** 2).mean(), rtol=1e-5)


def test_a_loop_whose_first_output_is_a_typed_key():
    """A Monte Carlo step returns its next key first; the bound waits on a key too."""

    def draw(key, x):
        key, sub = jax.random.split(key)
        return key, (x * jax.random.normal(sub, x.shape)).sum()

    f = synk.function(draw, in_axes=(None, 0))
    x, _ = regression((2 * N + 3) * PROCESSES)
    xs = synk.process_share(x)
    key = want_key = jax.random.key(0)
    for _ in range(STEPS):
        key, total = f(key, xs)
        want_key, want = f.serial(want_key, x)
    assert jax.random.key_data(key).tolist() == jax.random.key_data(want_key).tolist()
    np.testing.assert_allclose(np.asarray(total), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_donate_argnums_feeding_outputs_back():
    """Local SGD: each call donates the replicas the previous call returned."""

    def sgd_step(w, x, y):
        return w - 0.1 * loss_and_grad(w, x, y)[1]

    local_step = synk.function(
        sgd_step, in_axes=("per_device", 0, 0), reduce="per_device", donate_argnums=0
    )
    x, y = regression(4 * N)
    xs, ys = synk.process_share(x), synk.process_share(y)
    first = w = synk.broadcast(np.zeros(3, np.float32))
    for _ in range(STEPS):
        w = local_step(w, xs, ys)
    assert first.is_deleted()  # really donated
    replicas = synk.gather(w)
    for i in range(N):  # replica i trains on rows 4i .. 4i+3 only
        want = np.zeros(3, np.float32)
        for _ in range(STEPS):
            want = sgd_step(want, x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4])
        np.testing.assert_allclose(replicas[i], want, rtol=1e-4, atol=1e-6)
