"""The decorator's options and methods, each against the serial function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import counting, single_process
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import synk

# These tests pass whole batches, as a script in one process does; the same
# options under several processes (each passing its share) are checked by
# test_equivalence.py and test_multiprocess.py, which run in both modes.
pytestmark = single_process("the tests pass one process's whole batch")

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def test_bare_and_with_arguments():
    @synk.function
    def bare(x):
        return x.mean(axis=0)

    @synk.function(reduce="sum")
    def with_args(x):
        return x.sum(axis=0)

    x = rand(13, 2)
    assert isinstance(bare, synk.Function) and isinstance(with_args, synk.Function)
    np.testing.assert_allclose(bare(x), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(with_args(x), x.sum(0), rtol=1e-5)
    assert bare.__name__ == "bare" and bare.__doc__ is None


def test_in_axes_int_axis_and_negative_axis():
    f = synk.function(lambda a, b: a.sum(axis=1) + b.sum(axis=0), in_axes=(1, -2), reduce="sum")
    a, b = rand(3, 11), rand(11, 3)
    np.testing.assert_allclose(f(a, b), f.serial(a, b), rtol=1e-5)


def test_in_axes_pytree_prefix():
    def f(batch, scale):
        return (batch["x"] * batch["meta"]["w"]).mean(axis=1).sum() * scale

    g = synk.function(f, in_axes=({"x": 1, "meta": {"w": 0}}, None))
    batch = {"x": rand(4, 21), "meta": {"w": rand(21)}}
    np.testing.assert_allclose(g(batch, 2.0), g.serial(batch, 2.0), rtol=1e-5)


def test_scalars_and_zero_d_arrays_are_always_broadcast():
    f = synk.function(lambda x, a, b: (x * a + b).sum(), reduce="sum")  # in_axes=0 for all
    x = rand(10)
    got = f(x, 3.0, np.float32(2.0))
    np.testing.assert_allclose(got, (x * 3 + 2).sum(), rtol=1e-5)


def test_keyword_arguments_keep_the_signature():
    def f(x, y, *, scale=1.0):
        return ((x - y) * scale).mean()

    g = synk.function(f, in_axes=(0, 0))
    x, y = rand(9), rand(9)
    want = f.__call__(x, y, scale=2.0)
    np.testing.assert_allclose(g(x, y, scale=2.0), want, rtol=1e-5)
    np.testing.assert_allclose(g(x, y=y, scale=2.0), want, rtol=1e-5)
    np.testing.assert_allclose(g(y=y, x=x), f(x, y), rtol=1e-5)


def test_keyword_only_arguments_in_any_order():
    # Declared w, b; flattened b, w (pytree dicts sort their keys): each keeps its shape.
    def f(x, *, w, b):
        return ((x @ w + b) ** 2).mean()

    g = synk.function(f, in_axes=(0,))  # keyword-only arguments are broadcast
    x, w, b = rand(13, 3), rand(3, 2), rand(2)
    np.testing.assert_allclose(g(x, w=w, b=b), f(x, w=w, b=b), rtol=1e-5)
    np.testing.assert_allclose(g(x, b=b, w=w), f(x, w=w, b=b), rtol=1e-5)


def test_no_reserved_keyword_names():
    """Parameters named like synk's own options are passed to the function untouched."""

    def f(x, reduce, devices, num_slices):
        return (x * reduce + devices - num_slices).sum()

    g = synk.function(f, in_axes=(0, None, None, None), reduce="sum")
    x = rand(10)
    np.testing.assert_allclose(g(x, reduce=2.0, devices=3.0, num_slices=1.0), f(x, 2, 3, 1), 1e-5)


def test_static_argnums_and_static_argnames():
    def f(x, power, *, mode):
        y = x**power
        return y.max() if mode == "max" else y.sum()

    counted, traces = counting(f)
    by_num = synk.function(counted, static_argnums=1, static_argnames="mode", reduce="max")
    by_name = synk.function(f, static_argnames=("power", "mode"), reduce="sum")
    x = rand(17)
    np.testing.assert_allclose(by_num(x, 3, mode="max"), (x**3).max(), rtol=1e-5)
    np.testing.assert_allclose(by_name(x, power=2, mode="sum"), (x**2).sum(), rtol=1e-5)
    first = len(traces)
    np.testing.assert_allclose(by_num(x, 2, mode="max"), (x**2).max(), rtol=1e-5)
    assert len(traces) > first  # a new static value traces anew
    assert repr(by_num).endswith("compiled=2)")  # one executable per static value
    again = len(traces)
    by_num(x, 3, mode="max")
    assert len(traces) == again  # a static value seen before does not


def test_donate_argnums_reuses_device_buffers():
    n = synk.device_count()
    mesh = jax.sharding.Mesh(np.array(synk.devices()), ("d",))
    x = jax.device_put(rand(4 * n, 3), NamedSharding(mesh, P("d")))
    f = synk.function(lambda x: x * 2, reduce="gather", donate_argnums=0)
    out = f(x)
    assert x.is_deleted()  # the input buffer was handed to the computation
    assert out.shape == (4 * n, 3)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_devices_subset(n):
    devs = synk.devices()[-n:]
    f = synk.function(lambda x: (x.sum(), x), reduce=("sum", "gather"), devices=devs)
    x = rand(10)
    total, rows = f(x)
    assert total.sharding.device_set == set(devs)
    np.testing.assert_allclose(total, x.sum(), rtol=1e-5)
    np.testing.assert_array_equal(rows, x)


def test_with_options_shares_the_cache_and_is_cached_itself():
    f, traces = counting(lambda x: x.sum())
    g = synk.function(f, reduce="sum")
    x = rand(32)
    g(x)
    h = g.with_options(num_slices=4)
    assert h is g.with_options(num_slices=4)  # cheap in a loop: the same object
    assert repr(h).endswith("compiled=1)")  # it sees g's compiled signature
    np.testing.assert_allclose(h(x), x.sum(), rtol=1e-5)
    assert repr(g).endswith("compiled=2)") and repr(h).endswith("compiled=2)")  # one cache
    traced = len(traces)
    for _ in range(3):
        g.with_options(num_slices=4)(x)
        g(x)
    assert len(traces) == traced
    assert h.options == {
        "reduce": "sum",
        "num_slices": 4,
        "comm_dtype": None,
        "buckets": "geometric",
    }


def test_with_options_reduce_and_comm_dtype():
    g = synk.function(lambda x: (x.mean(), x.max()), reduce="avg")
    x = 1.0 + np.abs(rand(20))
    mean, biggest = g.with_options(reduce=("avg", "max"))(x)
    np.testing.assert_allclose([mean, biggest], [x.mean(), x.max()], rtol=1e-5)
    low = g.with_options(reduce=("avg", "max"), comm_dtype=jnp.bfloat16)
    mean, biggest = low(x)
    assert mean.dtype == jnp.float32  # cast back after the reduction
    np.testing.assert_allclose(mean, x.mean(), rtol=1e-2)  # bf16 has 8 bits of mantissa
    assert "tensor<bf16>" in low.lower(x).as_text()  # the mean travels in bfloat16


def test_serial_runs_the_undecorated_function_on_one_device():
    f = synk.function(lambda x: x * 2, reduce="gather")
    x = rand(5)
    out = f.serial(x)
    assert len(out.sharding.device_set) == 1
    np.testing.assert_allclose(out, x * 2)


@pytest.mark.parametrize("rows", [16, 19])
def test_lower_shows_one_all_reduce_per_reduce_op(rows):
    """What f.lower compiles to: all outputs of one op in one all-reduce."""

    def stats(x):
        return x.mean(), (x**2).mean(), x.mean(axis=0)[None], x.max(), x.max(axis=0)

    f = synk.function(stats, reduce=("avg", "avg", "avg", "max", "max"))
    x = rand(rows, 3)
    hlo = f.lower(x).compile().as_text()
    assert hlo.count("all-reduce(") + hlo.count("all-reduce-start(") == 2  # avg, max
    for got, want in zip(f(x), stats(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_repr_names_the_function_and_options():
    @synk.function(in_axes=(None, 0), reduce="sum", num_slices=2)
    def step(w, x):
        return (x * w).sum()

    text = repr(step)
    for part in ("step", "in_axes=(None, 0)", "reduce='sum'", "num_slices=2", "compiled=0"):
        assert part in text, text
    step(1.0, rand(32))
    assert "compiled=1" in repr(step)


def test_no_batch_axis_runs_once_per_device():
    """Only broadcast inputs: each device computes once and counts as one row."""
    n = synk.device_count()
    f = synk.function(lambda w: (w * 2, w), in_axes=None, reduce=("avg", "gather"))
    w = rand(3)
    avg, rows = f(w)
    np.testing.assert_allclose(avg, w * 2, rtol=1e-6)
    np.testing.assert_allclose(rows, np.tile(w, n))
