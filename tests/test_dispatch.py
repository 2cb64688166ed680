"""The call path: one plan per signature, one device_put, no copies, bounded queue."""

import jax
import numpy as np
import pytest
from helpers import compilations, counting, single_process
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import synk

N = synk.device_count()
RNG = np.random.default_rng(1)


@pytest.mark.parametrize(("rows", "slices"), [(8 * N, 1), (8 * N + 3, 1), (8 * N + 3, 3)])
def test_a_repeated_call_does_not_retrace_or_recompile(caplog, rows, slices):
    fn, traces = counting(lambda w, x: jax.grad(lambda w: ((x @ w) ** 2).mean())(w))
    f = synk.function(fn, in_axes=(None, 0), num_slices=slices)
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


def test_hundreds_of_calls_in_a_row_without_blocking():
    """XLA's CPU collectives abort when too many calls queue up; synk bounds them."""
    f = synk.function(lambda w, x: ((x @ w) ** 2).mean() + w.sum(), in_axes=(None, 0))
    w = np.ones(4, np.float32)
    x = RNG.normal(size=(2 * N + 1, 4)).astype(np.float32)
    outs = [f(w, x) for _ in range(300)]
    want = ((x @ w) ** 2).mean() + 4
    np.testing.assert_allclose(np.asarray(outs[-1]), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(outs[0]), want, rtol=1e-5)
