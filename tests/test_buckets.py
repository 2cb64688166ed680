"""Batch-size buckets: with explicit reductions, batch lengths share executables, exactly.

Every result is compared with ``f.serial`` on the same batch. That the function
never sees a padding row is observed through its own outputs: a 'sum' of the
rows each piece sees, and of their row numbers, equals the batch's exactly
when every real row is seen once and no other row is.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PROCESSES, assert_tree_close, compilations, counting, single_process
from hypothesis import given, settings
from hypothesis import strategies as st

import synk

N = synk.device_count()
RNG = np.random.default_rng(0)


def regression(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5], np.float32) + rng.normal(size=rows)).astype(
        np.float32
    )


def loss_and_grad(w, x, y):
    return jax.value_and_grad(lambda w: jnp.mean((jnp.tanh(x @ w) - y) ** 2))(w)


def rows_seen(x, numbers):
    """What a piece sees: its row count, the sum of its row numbers, and extremes."""
    n = jnp.asarray(x.shape[0], jnp.float32)
    return n, numbers.sum(), numbers.max(), numbers.min(), x.mean(0)


W = np.array([0.3, -0.2, 0.1], np.float32)


# ------------------------------------------------------------------ exact


@settings(max_examples=12 if PROCESSES == 1 else 6, deadline=None, derandomize=True)
@given(
    lengths=st.lists(st.integers(1, 12 * N), min_size=2, max_size=4),
    slices=st.sampled_from([1, 2]),
    policy=st.sampled_from(["geometric", (4 * N, 12 * N)]),
)
def test_lengths_in_one_bucket_equal_the_serial_function(lengths, slices, policy):
    """Every op, a gradient inside the function, num_slices; one function for every length."""
    step = synk.function(loss_and_grad, in_axes=(None, 0, 0), reduce="avg",
                         num_slices=slices, buckets=policy)  # fmt: skip
    seen = synk.function(rows_seen, reduce=("sum", "sum", "max", "min", "avg"),
                         num_slices=slices, buckets=policy)  # fmt: skip
    prod = synk.function(lambda x: jnp.prod(1 + x / 64, axis=0), reduce="prod",
                         num_slices=slices, buckets=policy)  # fmt: skip
    for length in lengths:
        rows = length * PROCESSES
        if slices > max(1, length // (N // PROCESSES)):
            continue  # more pieces than a device has rows: refused, as on exact shapes
        x, y = regression(rows, length)
        numbers = np.arange(rows, dtype=np.float32)
        share = synk.process_share
        assert_tree_close(step(W, share(x), share(y)), step.serial(W, x, y), rtol=1e-5)
        count, total, top, bottom, mean = seen(share(x), share(numbers))
        # Each real row seen once, no padding row: the counts and sums are exact.
        assert float(count) == rows and float(total) == rows * (rows - 1) / 2
        assert float(top) == rows - 1 and float(bottom) == 0
        assert_tree_close(mean, x.mean(0), rtol=1e-5)
        assert_tree_close(prod(share(x)), prod.serial(x), rtol=1e-5)


def test_thirty_lengths_compile_at_most_six_executables(caplog):
    """The issue's sweep: 30 distinct lengths from 200 to 2000 on 8 devices."""
    step = synk.function(loss_and_grad, in_axes=(None, 0, 0), reduce="avg")
    lengths = np.random.default_rng(1).choice(np.arange(200, 2001), 30, replace=False)
    lengths = [int(n) // PROCESSES * PROCESSES for n in lengths]
    with compilations(caplog) as compiled:
        for rows in lengths:
            x, y = regression(rows, rows)
            share = synk.process_share
            assert_tree_close(step(W, share(x), share(y)), step.serial(W, x, y), rtol=1e-5)
    ours = [c for c in compiled if "synk_per_device_loss_and_grad" in c]
    need = {1 << (-(-n // N) - 1).bit_length() for n in lengths}  # capacities per device
    assert len(ours) == len(need) and len(need) <= 6, (ours, need)
    assert repr(step).endswith(f"compiled={len(need)})")


def test_a_new_length_in_a_compiled_bucket_neither_traces_nor_compiles(caplog):
    fn, traces = counting(loss_and_grad)
    step = synk.function(fn, in_axes=(None, 0, 0), reduce="avg", buckets=(16 * N,))
    step(W, *map(synk.process_share, regression(9 * N)))
    first = len(traces)
    with compilations(caplog) as compiled:
        for rows in (9 * N + 2, 12 * N + 6, 16 * N):  # global lengths, even for 2 processes
            x, y = regression(rows, rows)
            got = step(W, synk.process_share(x), synk.process_share(y))
            assert_tree_close(got, step.serial(W, x, y), rtol=1e-5)
    assert len(traces) == first + 3  # f.serial's own traces only
    assert not [c for c in compiled if "synk_per_device" in c], compiled


def test_the_policy_decides_which_lengths_share(caplog):
    f = synk.function(lambda x: x.sum(0), reduce="sum", buckets=(8 * N, 32 * N))
    lengths = [3 * N, 8 * N, 8 * N + 2, 32 * N, 32 * N + 2, 40 * N]  # global lengths
    for rows in lengths:
        x = RNG.normal(size=(rows, 2)).astype(np.float32)
        assert_tree_close(f(synk.process_share(x)), x.sum(0), rtol=1e-5, atol=1e-5)
    # Two buckets; past the last, each length compiles its own.
    assert repr(f).endswith("compiled=4)")
    exact = f.with_options(buckets=None)
    for rows in lengths[:3]:
        exact(synk.process_share(np.ones((rows, 2), np.float32)))
    assert repr(exact).endswith("compiled=7)")  # the cache is shared: 4 + 3


# ------------------------------------------------------------------ what travels


@single_process("the indices of one process's view")
def test_for_views_only_the_indices_cross_and_a_new_length_compiles_nothing(capfd, caplog):
    x = RNG.normal(size=(500, 3)).astype(np.float32)
    X, Y = synk.data(x), synk.data(x[:, 0])
    f = synk.function(loss_and_grad, in_axes=(None, 0, 0), reduce="avg")
    f(W, X[np.arange(9 * N)], Y[np.arange(9 * N)])  # a bucket of 16 rows per device
    capfd.readouterr()
    idx = RNG.integers(0, 500, 13 * N + 3)
    for call in ("a new length", "the same length again"):
        with (
            compilations(caplog) as compiled,
            jax.transfer_guard_device_to_device("disallow"),
            jax.transfer_guard_host_to_device("log"),
        ):
            got = f(W, X[idx], Y[idx])
            jax.block_until_ready(got)
        sent = re.findall(r"host-to-device transfer: aval=(\S+?),", capfd.readouterr().err)
        # The index, padded to the bucket (16 rows per device), and W, a host value; a new
        # length also puts its length on the devices, once.
        allowed = {f"ShapedArray(int32[{16 * N}])", "ShapedArray(float32[3])"}
        if call == "a new length":
            allowed.add("ShapedArray(int32[])")
        assert f"ShapedArray(int32[{16 * N}])" in sent and set(sent) <= allowed, (call, sent)
        assert not [c for c in compiled if "synk_per_device" in c], compiled
        assert_tree_close(got, f.serial(W, x[idx], x[idx, 0]), rtol=1e-5)


# ------------------------------------------------------------------ what compiles per length


def test_what_cannot_share_a_bucket_compiles_per_length():
    def talks(x):
        return synk.lax.psum(x.sum(0))

    cases = [  # (function, what it returns of the whole batch)
        (synk.function(lambda x: x * 2, reduce="gather"), lambda x: x * 2),  # input order
        (synk.function(lambda x: jnp.sqrt((x**2).mean())), lambda x: np.sqrt((x**2).mean())),
    ]
    if PROCESSES == 1:  # per-device outputs: one process reads them all
        # collectives need an equal share each: every device's entry is the total
        cases.append(
            (synk.function(talks, reduce="per_device"), lambda x: np.stack([x.sum(0)] * N))
        )
    for f, want in cases:
        for rows in (2 * N, 3 * N, 4 * N):
            x = RNG.normal(size=(rows * PROCESSES, 2)).astype(np.float32)
            assert_tree_close(f(synk.process_share(x)), want(x), rtol=1e-5, atol=1e-5)
        assert repr(f).endswith("compiled=3)"), f


def test_inside_jit_each_length_compiles_exactly():
    f = synk.function(loss_and_grad, in_axes=(None, 0, 0), reduce="avg")
    for rows in (2 * N + 1, 5 * N):
        x, y = regression(rows)
        got = jax.jit(f)(W, x, y)
        assert_tree_close(got, f.serial(W, x, y), rtol=1e-5)


# ------------------------------------------------------------------ options


def test_repr_and_options_show_the_policy():
    f = synk.function(lambda x: x.sum(), reduce="sum")
    assert "buckets='geometric'" in repr(f) and f.options["buckets"] == "geometric"
    g = f.with_options(buckets=[64, 16])
    assert g.options["buckets"] == (64, 16) and "buckets=(64, 16)" in repr(g)
    assert f.with_options(buckets=None).options["buckets"] is None


@pytest.mark.parametrize("bad", ["powers", (), (0, 8), (8.0,), (True,), 12])
def test_a_bad_policy_is_refused_with_what_to_pass(bad):
    with pytest.raises(ValueError, match=r"buckets=.*expected 'geometric'.*sequence of positive"):
        synk.function(lambda x: x.sum(), reduce="sum", buckets=bad)
    with pytest.raises(ValueError, match=r"buckets=.*expected 'geometric'"):
        synk.function(lambda x: x.sum(), reduce="sum").with_options(buckets=bad)


def test_buckets_without_a_reduce_are_refused():
    with pytest.raises(ValueError, match=r"buckets=\(64,\).*give an explicit reduce"):
        synk.function(lambda x: x.sum(), buckets=(64,))
    synk.function(lambda x: x.sum(), buckets=None)  # off: nothing to refuse


# ------------------------------------------------------------------ inside the user's jit


def test_a_fused_step_on_first_rows_compiles_once_per_bucket_and_is_exact():
    """A batch padded to a bucket and its traced row count: one program for every count."""
    grads = synk.function(jax.grad(lambda w, x, y: jnp.mean((jnp.tanh(x @ w) - y) ** 2)),
                          in_axes=(None, 0, 0), reduce="avg")  # fmt: skip
    traces = []

    @jax.jit
    def step(w, x, y, n):
        traces.append(1)
        return w - 0.1 * grads(w, synk.first_rows(x, n), synk.first_rows(y, n))

    capacity = 16 * N
    for n in (5 * N + 3, capacity, 1, 9 * N + 1, 2):
        x, y = regression(n, n)
        padded_x = np.concatenate([x, np.full((capacity - n, 3), np.nan, np.float32)])
        padded_y = np.concatenate([y, np.full(capacity - n, np.nan, np.float32)])
        want = W - 0.1 * grads.serial(W, x, y)
        # NaN padding: a row of it reaching the function would make the step NaN.
        assert_tree_close(step(W, padded_x, padded_y, n), want, rtol=1e-5, atol=1e-6)
    assert len(traces) == 1


def test_first_rows_with_a_known_count_are_its_rows():
    total = synk.function(lambda x: x.sum(0), reduce="sum")
    x = RNG.normal(size=(8 * N * PROCESSES, 2)).astype(np.float32)
    n = 3 * N * PROCESSES + PROCESSES
    share = synk.process_share(x[:n])
    padded = np.concatenate([share, np.zeros((len(share), 2), np.float32)])
    assert_tree_close(total(synk.first_rows(padded, len(share))), x[:n].sum(0), rtol=1e-5)
    assert_tree_close(total.serial(synk.first_rows(x, n)), x[:n].sum(0), rtol=1e-5)


def test_first_rows_refusals_say_what_to_do():
    x, n = np.ones((4 * N, 2), np.float32), 3
    cases = [
        (synk.function(lambda x: x.sum()), r"without explicit reductions .* reduce='avg'"),
        (synk.function(lambda x: synk.lax.psum(x.sum()), reduce="sum"), r"synk.lax .* Pass x"),
        (synk.function(lambda x: x * 2, reduce="gather"), r"reduce \['gather'\]"),
        (synk.function(lambda x: x.max(0), reduce="max"), r"reduce \['max'\]"),
    ]
    for f, message in cases:
        with pytest.raises(ValueError, match=message):
            jax.jit(lambda x, n, f=f: f(synk.first_rows(x, n)))(x, n)
    two = synk.function(lambda a, b: (a * b).sum(), reduce="sum")
    with pytest.raises(ValueError, match="share one count"):
        jax.jit(lambda x, n, m: two(synk.first_rows(x, n), synk.first_rows(x, m)))(x, n, n)
    with pytest.raises(ValueError, match=r"every sliced argument must be synk\.first_rows"):
        jax.jit(lambda x, n: two(synk.first_rows(x, n), x))(x, n)
    with pytest.raises(TypeError, match="count is traced"):
        jax.jit(lambda x, n: two.serial(synk.first_rows(x, n), synk.first_rows(x, n)))(x, n)
    with pytest.raises(ValueError, match=r"n=9 rows, but x has shape \(8, 2\)"):
        synk.first_rows(np.ones((8, 2)), 9)
    with pytest.raises(TypeError, match="n must be an integer"):
        synk.first_rows(np.ones((8, 2)), 2.5)


# ------------------------------------------------------------------ found by trying to break them


@single_process("per-device values read on one process")
def test_per_device_arguments_keep_the_exact_split():
    """Which rows meet device i's value is part of the result: no bucket deals them."""
    weights = synk.scatter(np.arange(N, dtype=np.float32))  # device i holds i
    f = synk.function(lambda w, x: (x * w).sum(), in_axes=("per_device", 0), reduce="sum")
    exact = f.with_options(buckets=None)
    for rows in (N, N + 5, 2 * N, 2 * N + 5):
        x = np.arange(rows, dtype=np.float32)
        assert float(f(weights, x)) == float(exact(weights, x))
    # Each length compiled its own, for f and for its variant (the cache is shared).
    assert repr(f).endswith("compiled=8)")


def test_num_slices_past_a_small_batch_is_served_by_its_bucket():
    f = synk.function(lambda x: (x.sum(0), x.max(0)), reduce=("sum", "max"), num_slices=3)
    for rows in (1, N + 1, 2 * N, 5 * N + 3):  # fewer rows per device than slices, and more
        x = RNG.normal(size=(rows * PROCESSES, 2)).astype(np.float32)
        assert_tree_close(f(synk.process_share(x)), f.serial(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_slices=3 is larger than the rows a device gets"):
        f.with_options(buckets=None)(synk.process_share(np.ones((N * PROCESSES, 2), np.float32)))
    padded = np.concatenate([np.ones((13, 2), np.float32), np.zeros((3, 2), np.float32)])
    total = synk.function(lambda x: x.sum(0), reduce="sum", num_slices=3)
    g = jax.jit(lambda x, n: total(synk.first_rows(x, n)))  # 2 rows per device, 3 slices
    assert_tree_close(g(padded, 13), total.serial(padded[:13]), rtol=1e-5)


def test_bucket_lengths_may_be_numpy_integers():
    f = synk.function(lambda x: x.sum(), reduce="sum", buckets=tuple(np.arange(1, 3) * 64))
    assert f.options["buckets"] == (64, 128) and "buckets=(64, 128)" in repr(f)
    assert f.with_options(buckets=[np.int32(32)]).options["buckets"] == (32,)
    g = synk.function(lambda x: x.sum(), reduce="sum", buckets=np.arange(1, 3) * 64)
    assert g.options["buckets"] == (64, 128)  # a numpy array of lengths, as a tuple
    h = synk.function(lambda x: x.sum(0), reduce="sum", num_slices=np.int64(2))
    assert h.options["num_slices"] == 2 and "num_slices=2" in repr(h)
    x = np.ones((4 * N * PROCESSES, 2), np.float32)
    assert_tree_close(h(synk.process_share(x)), h.serial(x))


def test_buckets_false_turns_buckets_off_as_none_does():
    f = synk.function(lambda x: x.sum(), reduce="sum", buckets=False)
    assert f.options["buckets"] is None and "buckets=None" in repr(f)
    g = synk.function(lambda x: x.sum(), reduce="sum").with_options(buckets=False)
    assert g.options["buckets"] is None
    x = np.ones((2 * N + 1) * PROCESSES, np.float32)
    assert float(g(synk.process_share(x))) == float(g.serial(x))


def test_first_rows_broadcast_is_refused_by_name():
    g = synk.function(lambda a, x: (x * a.sum()).sum(), in_axes=(None, 0), reduce="sum")
    a, x = np.ones((16, 3), np.float32), np.ones(16, np.float32)
    with pytest.raises(ValueError, match=r"argument `a` is not sliced.*give it in_axes 0"):
        jax.jit(lambda a, x, n: g(synk.first_rows(a, n), synk.first_rows(x, n)))(a, x, 3)


def test_first_rows_refusals_name_every_argument_at_fault():
    g = synk.function(lambda a, b, x, y: (x * y).sum() + a.sum() + b.sum(),
                      in_axes=(None, None, 0, 0), reduce="sum")  # fmt: skip
    a, x = np.ones((16, 3), np.float32), np.ones(16, np.float32)

    def call(a, x, n):
        first = synk.first_rows
        return g(first(a, n), first(a, n), first(x, n), x)

    with pytest.raises(ValueError) as info:
        jax.jit(call)(a, x, 3)
    message = str(info.value)
    assert "2 problems" in message
    assert "arguments `a` and `b` are not sliced" in message
    assert "plain batches (`y`)" in message


def test_first_rows_off_axis_0_is_one_refusal_not_also_a_length():
    g = synk.function(lambda a, x: (a.sum(0) * x).sum(), in_axes=(1, 0), reduce="sum")
    a, x = np.ones((3, 64), np.float32), np.ones(64, np.float32)
    f = synk.first_rows
    with pytest.raises(ValueError) as info:
        jax.jit(lambda a, x, n: g(f(a, n), f(x, n)))(a, x, 5)
    message = str(info.value)
    assert "`a` is sliced on axis 1" in message
    assert "problems" not in message and "padded to one length" not in message


def test_first_rows_of_different_padded_lengths_are_refused():
    two = synk.function(lambda a, b: a.sum() + b.sum(), reduce="sum")
    f = synk.first_rows
    with pytest.raises(ValueError, match=r"padded to one length; found \[16, 32\]"):
        jax.jit(lambda a, b, n: two(f(a, n), f(b, n)))(np.ones(16), np.ones(32), 3)


def test_first_rows_counts_are_checked_on_every_call_of_a_compiled_bucket():
    x = np.arange(64, dtype=np.float32)
    sums = synk.function(lambda a, b: (a.sum(), b.sum()), reduce="sum")
    f = synk.first_rows
    same = jax.jit(lambda a, b, n: sums(f(a, n), f(b, n)))
    assert_tree_close(same(x, x, 10), (x[:10].sum(), x[:10].sum()))
    two = jax.jit(lambda a, b, n, m: sums(f(a, n), f(b, m)))  # the same shapes: the plan exists
    with pytest.raises(ValueError, match="share one count"):
        two(x, x, 10, 20)


@pytest.mark.parametrize("n", [64, 65, 100, 1000])
def test_a_traced_count_past_the_padded_rows_reads_them_all(n):
    x = np.arange(64, dtype=np.float32)
    total = synk.function(lambda a: a.sum(), reduce="sum")
    mean = synk.function(lambda a: a.mean(), reduce="avg")
    g = jax.jit(lambda x, n: (total(synk.first_rows(x, n)), mean(synk.first_rows(x, n))))
    assert_tree_close(g(x, n), (x.sum(), x.mean()), rtol=1e-6)
