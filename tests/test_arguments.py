"""What the caller passes and what the function returns: only what was passed is
traced, statics key like jax.jit, and outputs that depend on the batch length
are refused before anything runs."""

import jax.numpy as jnp
import numpy as np
import pytest

import synk

N = synk.device_count()
P = synk.process_count()


def _rows(rows, d=2, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows * P, d)).astype(np.float32)
    return x, synk.process_share(x)


# ---------------------------------------------------------------- defaults


def test_parameters_left_to_their_defaults_keep_their_python_values():
    def f(x, axis=1, scale=2.0):
        return (x.sum(axis) * scale).mean()  # `axis` must stay a Python int

    x, mine = _rows(2 * N + 1)
    g = synk.function(f)
    np.testing.assert_allclose(float(g(mine)), float(f(jnp.asarray(x))), rtol=1e-5)
    np.testing.assert_allclose(float(g(mine, scale=3.0)), float(f(jnp.asarray(x), scale=3.0)))


ONES = np.ones(2, np.float32)


def test_in_axes_counts_only_what_the_caller_passed():
    def f(w, x, scale=ONES):  # a default array: never sliced
        return ((x * scale) @ w).mean()

    x, mine = _rows(2 * N)
    w = np.arange(2.0, dtype=np.float32)
    g = synk.function(f, in_axes=(None, 0))
    np.testing.assert_allclose(float(g(w, mine)), float(f(w, x)), rtol=1e-5)
    # An entry for the defaulted parameter is allowed, and used when it is passed.
    h = synk.function(f, in_axes=(None, 0, None))
    np.testing.assert_allclose(float(h(w, mine)), float(f(w, x)), rtol=1e-5)
    s = np.full(2, 3.0, np.float32)
    np.testing.assert_allclose(float(h(w, mine, scale=s)), float(f(w, x, s)), rtol=1e-5)


def test_a_library_function_with_many_defaults_works():
    x, mine = _rows(3 * N)
    total = synk.function(jnp.sum, reduce="sum")
    np.testing.assert_allclose(float(total(mine)), float(x.sum()), rtol=1e-5)


# ---------------------------------------------------------------- statics


def test_static_values_of_different_types_compile_apart():
    traces = []

    @synk.function(static_argnums=1, reduce="sum")
    def f(x, k):
        traces.append(type(k))
        return x.sum() * k

    x, mine = _rows(N)
    a, b = f(mine, 1), f(mine, 1.0)
    assert a.dtype == jnp.asarray(x.sum() * 1).dtype
    assert traces.count(int) >= 1 and traces.count(float) >= 1  # not one shared entry
    assert repr(f).endswith("compiled=2)")
    np.testing.assert_allclose(np.asarray(b), x.sum(), rtol=1e-5)


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("rows", [2 * N, 2 * N + 1])
def test_python_numbers_as_outputs_are_reduced(rows):
    x, mine = _rows(rows)
    f = synk.function(lambda x: (x.sum(), x.shape[0]), reduce="sum")
    total, count = f(mine)
    assert int(count) == rows * P
    np.testing.assert_allclose(float(total), x.sum(), rtol=1e-5)


@pytest.mark.parametrize("rows", [2 * N, 2 * N + 3])
def test_a_forgotten_reduction_is_refused(rows):
    x, mine = _rows(rows)
    f = synk.function(lambda x: (x**2).sum(1), reduce="avg")  # per-row values, reduce 'avg'
    with pytest.raises(ValueError, match=r"output out changes with the number of rows.*\.mean"):
        f(mine)
    # The same function with 'gather' is what was meant; without reduce, the rows come whole.
    for reduce in ("gather", None):
        got = f.with_options(reduce=reduce)(mine)
        np.testing.assert_allclose(np.asarray(got), (x**2).sum(1), rtol=1e-5)


@pytest.mark.parametrize("rows", [N, 2 * N, 2 * N + 1])
def test_a_gather_output_with_the_wrong_rows_is_refused(rows):
    _, mine = _rows(rows)
    f = synk.function(lambda x: x[:1], reduce="gather")
    with pytest.raises(ValueError, match=r"output out has reduce 'gather' but 1 rows for a piece"):
        f(mine)


def test_an_output_tree_that_changes_with_the_rows_is_refused():
    _, mine = _rows(2 * N + 1)

    def f(x):
        return (x.sum(),) if x.shape[0] > 1 else [x.sum()]

    with pytest.raises(ValueError, match="output structure changes with the number of rows"):
        synk.function(f, reduce="sum")(mine)


def test_a_static_argument_passed_by_keyword_after_a_default_is_static():
    def f(x, scale=1.0, n=2):
        return x[:, :n] * scale  # n slices: it must be a Python int

    x, mine = _rows(2 * N + 1)
    for options in ({"static_argnums": 2}, {"static_argnames": "n"}):
        g = synk.function(f, reduce="gather", **options)
        np.testing.assert_allclose(np.asarray(g(mine, n=1)), x[:, :1], rtol=1e-6)
        assert synk.function(f, **options).serial(x, n=1).shape == (len(x), 1)
