"""synk.data: device-resident data sets and batches passed as indices."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PROCESSES, assert_tree_close, counting, fewer_under_mpi, single_process
from hypothesis import given
from hypothesis import strategies as st

import synk

N = synk.device_count()
RNG = np.random.default_rng(3)
OPS = ("avg", "sum", "max", "min", "prod", "gather")


def model(x, y):
    h = jnp.tanh(x)
    return {
        "avg": (h.mean(0), jnp.mean(y**2)),
        "sum": h.sum(0),
        "max": h.max(0),
        "min": y.min(),
        "prod": jnp.prod(1.0 + 0.1 * jnp.tanh(y)),
        "gather": h * y[:, None],
    }


# ------------------------------------------------------------- the object


@pytest.mark.parametrize("sharded", [False, True])
def test_attributes_and_repr(sharded):
    x = RNG.normal(size=(10 * N + 3, 4)).astype(np.float32)
    X = synk.data(x, sharded=sharded)
    assert isinstance(X, synk.Data)
    assert X.shape == x.shape and X.dtype == np.float32 and X.ndim == 2 and len(X) == len(x)
    assert X.sharded is sharded
    np.testing.assert_array_equal(np.asarray(X), x)
    per_device_rows = -(-len(x) // N) if sharded else len(x)  # shards padded to equal size
    assert X.nbytes == per_device_rows * 4 * 4
    if sharded:
        assert sum(X.rows_per_device) == len(x) and max(X.rows_per_device) == per_device_rows
    text = repr(X)
    assert f"shape={x.shape}" in text and "float32" in text and "per device" in text
    assert ("sharded" if sharded else "replicated") in text


def test_set_value_same_and_new_shape_and_later_calls_see_it():
    X = synk.data(np.zeros((8, 2), np.float32))
    f = synk.function(lambda x: x.sum(0), reduce="sum")
    assert np.asarray(f(X[:])).tolist() == [0.0, 0.0]
    X.set_value(np.ones((8, 2), np.float32))
    assert np.asarray(f(X[:])).tolist() == [8.0, 8.0]
    X.set_value(np.full((12, 2), 2.0))  # new shape; float64 is cast to float32
    assert X.shape == (12, 2) and X.dtype == np.float32
    assert np.asarray(f(X[:])).tolist() == [24.0, 24.0]


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16])
def test_set_value_of_integers_into_float_data(dtype):
    X = synk.data(np.zeros(10, np.float32))
    X.set_value(np.arange(10, dtype=dtype))
    assert X.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(X), np.arange(10, dtype=np.float32))


def test_set_value_with_an_unsafe_dtype_keeps_the_old_value():
    x = RNG.normal(size=(6, 2)).astype(np.float32)
    X = synk.data(x)
    with pytest.raises(TypeError, match=r"this data is float32 and the new value is complex64"):
        X.set_value(np.ones((6, 2), np.complex64))
    ints = synk.data(np.arange(6, dtype=np.int32))
    with pytest.raises(TypeError, match=r"cannot be cast safely to int32"):
        ints.set_value(np.ones(6, np.float32))
    np.testing.assert_array_equal(np.asarray(X), x)  # nothing lost
    np.testing.assert_array_equal(np.asarray(ints), np.arange(6))


def test_delete_frees_and_later_use_is_an_error():
    X = synk.data(np.ones((8, 2), np.float32))
    view = X[:4]
    f = synk.function(lambda x: x.sum(), reduce="sum")
    f(view)
    X.delete()
    assert repr(X) == "synk.Data(<deleted>)"
    with pytest.raises(RuntimeError, match=r"argument `x` holds a synk.Data that was deleted"):
        f(view)
    with pytest.raises(RuntimeError, match="was deleted"):
        X[:2]
    with pytest.raises(RuntimeError, match="was deleted"):
        len(X)


# ------------------------------------------------------------- views and set_value


def double(x):
    return x * 2


@pytest.mark.parametrize("sharded", [False, True])
def test_a_view_that_set_value_shrank_the_data_below_is_refused(sharded):
    X = synk.data(np.arange(4.0 * N), sharded=sharded)
    f = synk.function(double, reduce="gather")
    stale = X[[1, 4 * N - 1, 0]]
    X.set_value(np.arange(2.0 * N) + 100)
    fresh = X[[1, 2 * N - 1, 0]]  # the same key as `stale` but for fitting the data
    np.testing.assert_array_equal(np.asarray(f(fresh)), 2 * np.array([101, 2 * N + 99, 100]))
    with pytest.raises(
        IndexError,
        match=rf"argument `x` is a batch of a synk.Data that had {4 * N} rows when the batch "
        rf"was made and now has {2 * N} \(set_value shrank it\); its largest index is "
        rf"{4 * N - 1}, out of range for {2 * N} rows",
    ):
        f(stale)
    with pytest.raises(IndexError, match=r"argument `x` is a batch"):
        f(stale)  # refused every time, not only when its plan is first built


@pytest.mark.parametrize("sharded", [False, True])
def test_a_view_whose_indices_still_fit_after_set_value_reads_the_new_rows(sharded):
    X = synk.data(np.arange(4.0 * N), sharded=sharded)
    f = synk.function(double, reduce="gather")
    idx = [2, N + 1, 0, N + 1]
    view = X[idx]
    for rows in (N + 2, 6 * N):  # shrunk but still in range, then grown
        new = RNG.normal(size=rows).astype(np.float32)
        X.set_value(new)
        np.testing.assert_array_equal(np.asarray(f(view)), 2 * new[idx])


def test_a_local_view_that_set_value_shrank_the_shards_below_is_refused():
    X = synk.data(np.arange(4.0 * N), sharded=True)  # 4 rows per device
    f = synk.function(double, reduce="gather")
    stale, kept = X.local[[3]], X.local[[2, 0]]
    new = RNG.normal(size=4 * N - 1).astype(np.float32)  # the last device now holds 3
    X.set_value(new)
    with pytest.raises(
        IndexError,
        match=rf"argument `x` .* now has {4 * N - 1} .* its indices into each device's shard "
        rf"need at least {4 * N} rows dealt over {N} devices",
    ):
        f(stale)
    starts = np.cumsum([0, *X.rows_per_device[:-1]])
    want = np.concatenate([new[s + np.array([2, 0])] for s in starts])
    np.testing.assert_array_equal(np.asarray(f(kept)), 2 * want)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_a_view_keeps_its_own_copy_of_the_indices(dtype):
    x = RNG.normal(size=(3 * N, 2)).astype(np.float32)
    X, S = synk.data(x), synk.data(x, sharded=True)
    f = synk.function(double, reduce="gather")
    idx = np.array([3, 1, 4, 1, 5], dtype)
    local = np.tile(np.array([2, 0, 1], dtype), (N, 1))  # (n, k): one row per device
    view, local_view = X[idx], S.local[local]
    want = 2 * x[idx]
    want_local = 2 * np.concatenate([x[3 * d + np.array([2, 0, 1])] for d in range(N)])
    idx[:] = 0  # the caller reuses its index arrays
    local[:] = 0
    np.testing.assert_array_equal(np.asarray(f(view)), want)
    np.testing.assert_array_equal(np.asarray(f(local_view)), want_local)
    with pytest.raises(ValueError, match="read-only"):
        view.index[0] = 7


# ------------------------------------------------------------- batches


INDEXES = [
    np.arange(5),
    [3, 3, 0, 7],  # a list: any order, repeats allowed
    slice(2, 9),
    slice(-5, None),  # negative bounds, as numpy reads them
    slice(None, -3),
    np.array([-1, 0, 4]),  # negative indices, as numpy reads them
]


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("idx", fewer_under_mpi(INDEXES, keep=INDEXES[1:4:2]), ids=repr)
def test_views_equal_the_serial_function_on_the_rows(sharded, idx):
    x = RNG.normal(size=(4 * N + 5, 3)).astype(np.float32)
    y = RNG.normal(size=4 * N + 5).astype(np.float32)
    X, Y = synk.data(x, sharded=sharded), synk.data(y, sharded=sharded)
    f = synk.function(model, reduce={op: op for op in OPS})
    assert_tree_close(f(X[idx], Y[idx]), f.serial(x[idx], y[idx]))


@given(
    rows=st.integers(1, 6 * N + 5),
    k=st.integers(1, 5 * N + 3),
    sharded=st.booleans(),
    slices=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_indices_every_op(rows, k, sharded, slices, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2)).astype(np.float32)
    y = rng.normal(size=rows).astype(np.float32)
    idx = rng.integers(0, rows, size=k)
    slices = min(slices, max(1, k // N))
    f = synk.function(model, reduce={op: op for op in OPS}, num_slices=slices)
    X, Y = synk.data(x, sharded=sharded), synk.data(y, sharded=sharded)
    assert_tree_close(f(X[idx], Y[idx]), f.serial(x[idx], y[idx]))


def test_views_and_host_arrays_mix_in_one_call():
    x = RNG.normal(size=(50, 3)).astype(np.float32)
    X = synk.data(x)
    idx = RNG.permutation(50)[: (2 * N + 1) * PROCESSES]
    w = RNG.normal(size=3).astype(np.float32)
    labels = RNG.normal(size=len(idx)).astype(np.float32)
    f = synk.function(
        lambda w, x, y: jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w),
        in_axes=(None, 0, 0),
    )
    # The view takes global indices; the host array is this process's share.
    assert_tree_close(f(w, X[idx], synk.process_share(labels)), f.serial(w, x[idx], labels))


@pytest.mark.parametrize("rows", [8 * N, 8 * N + 3])
def test_local_views_index_each_shard(rows):
    x = RNG.normal(size=(rows, 2)).astype(np.float32)
    X = synk.data(x, sharded=True)
    held = X.rows_per_device
    starts = np.cumsum([0, *held[:-1]])  # device d holds rows starts[d] .. starts[d]+held[d]
    f = synk.function(lambda a: (a * 2, a.sum(0)), reduce=("gather", "sum"))
    shared = np.array([0, 3, 1, 3])  # one index array for every device
    per_device = np.stack([RNG.integers(0, h, 5) for h in held])  # (n, k)
    for idx in (shared, per_device):
        full = np.broadcast_to(idx, (N, idx.shape[-1]))
        want = np.concatenate([x[starts[d] + full[d]] for d in range(N)])
        rows_out, total = f(X.local[idx])
        np.testing.assert_allclose(np.asarray(rows_out), want * 2, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(total), want.sum(0), rtol=1e-5, atol=1e-5)


def executable_arguments(lowered) -> list[tuple[tuple[int, ...], np.dtype]]:
    """The (shape, dtype) of each argument of a lowered synk.Function call."""
    return [(arg.shape, arg.dtype) for arg in jax.tree.leaves(lowered.args_info)]


@single_process("several processes build the indices into global arrays, another transfer")
@pytest.mark.parametrize("reduce", [None, "avg"])
def test_only_the_indices_cross_from_host_to_device(capfd, reduce):
    x = RNG.normal(size=(1000, 16)).astype(np.float32)
    X, Y = synk.data(x), synk.data(x[:, 0])
    f = synk.function(lambda a, b: (a.mean(0), b.mean()), reduce=reduce)
    k = 32 * N  # an even batch: one index array, k / N indices per device
    idx = RNG.integers(0, 1000, k)
    f(X[idx], Y[idx])  # compile first
    lowered = f.lower(X[idx], Y[idx])
    # The executable takes the data whole and, X[idx] and Y[idx] having equal
    # indices, one index array: sent once.
    index = ((k,), np.dtype(np.int32))
    # With explicit reductions the batch shares a bucket: its traced length, on the devices.
    length = [((), np.dtype(np.int32))] if reduce else []
    assert executable_arguments(lowered) == [(x.shape, x.dtype), ((1000,), x.dtype), index,
                                             *length]  # fmt: skip
    capfd.readouterr()
    # The data stays where it is (nothing moves between devices or back to the
    # host), and what crosses from the host is the indices alone.
    with (
        jax.transfer_guard_device_to_device("disallow"),
        jax.transfer_guard_device_to_host("disallow"),
        jax.transfer_guard_host_to_device("log"),
    ):
        got = f(X[idx], Y[idx])
        jax.block_until_ready(got)
    sent = re.findall(r"host-to-device transfer: aval=(\S+?),", capfd.readouterr().err)
    assert sent and set(sent) == {f"ShapedArray(int32[{k}])"}, sent
    assert_tree_close(got, f.serial(x[idx], x[idx, 0]))
    # Replicated data: each device receives only its own k / N indices.
    index_sharding = lowered.compile().input_shardings[0][2]
    assert index_sharding.shard_shape((k,)) == (32,)


@pytest.mark.parametrize("sharded", [False, True])
def test_views_share_equal_indices_and_only_equal_ones(sharded):
    x = RNG.normal(size=(300, 3)).astype(np.float32)
    X, Y = synk.data(x, sharded=sharded), synk.data(x[:, 0], sharded=sharded)
    fn, traces = counting(lambda a, b: (a * 2, b + 1))
    f = synk.function(fn, reduce="gather")
    a, b = RNG.integers(0, 300, (2, 4 * N + 3))
    seen = []
    for i, j in [(a, a), (a, b), (b, b), (a, a.copy()), (b, a)]:  # equal, then not, ...
        assert_tree_close(f(X[i], Y[j]), f.serial(x[i], x[j, 0]))
        seen.append(len(traces))
    # Two signatures: one where the views share their indices, one where they do not;
    # later calls, equal indices or not, reuse them.
    assert seen[0] < seen[1] == seen[-1] and repr(f).endswith("compiled=2)")

    def index_arguments(lowered) -> int:  # the data is float32, the indices int32
        return sum(dtype == np.int32 for _, dtype in executable_arguments(lowered))

    # The executable takes the indices once (shared) or twice: for sharded data
    # the whole index; for replicated data each device's own rows and extra row.
    once = 1 if sharded else 2
    assert index_arguments(f.lower(X[a], Y[a.copy()])) == once
    assert index_arguments(f.lower(X[a], Y[b])) == 2 * once
    if sharded:  # local views with equal indices share one index too
        held = X.rows_per_device
        starts = np.cumsum([0, *held[:-1]])
        k = np.stack([RNG.integers(0, h, 2) for h in held])  # (n, 2)
        want = np.concatenate([x[starts[d] + k[d]] for d in range(N)])
        g = synk.function(lambda a, b: a[:, 0] + b, reduce="gather")
        np.testing.assert_allclose(np.asarray(g(X.local[k], Y.local[k])), 2 * want[:, 0])
        assert index_arguments(g.lower(X.local[k], Y.local[k])) == 1
        assert index_arguments(g.lower(X.local[k], Y.local[k[:, ::-1]])) == 2  # unequal


# ------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def X():
    return synk.data(np.arange(40.0).reshape(20, 2))


def test_out_of_range_indices_name_the_index_and_the_length(X):
    with pytest.raises(IndexError, match=r"index 25 is out of range for 20 rows.*largest given 25"):
        X[[1, 25, 3]]
    with pytest.raises(IndexError, match=r"index -21 is out of range for 20 rows"):
        X[[-21]]


@pytest.mark.parametrize(
    ("idx", "error", "pattern"),
    [
        (np.array([0.0, 1.0]), TypeError, r"indices must be integers, got dtype float64"),
        (np.array([True, False]), TypeError, r"boolean indices are not supported"),
        (slice(0, 10, 2), ValueError, r"slices with a step are not supported"),
        (3, TypeError, r"scalar index \(3\).*X\[3:4\]"),
        (-1, TypeError, r"scalar index \(-1\).*e\.g\. X\[-1:\]\."),
        (slice(None, None, 2), ValueError, r"^X\[::2\]: slices with a step"),
        (np.zeros((2, 2), int), ValueError, r"expected a 1-D index array, got shape \(2, 2\)"),
        (True, TypeError, r"^X\[idx\]: boolean indices .* np\.flatnonzero\(mask\)"),
        (np.array([], bool), TypeError, r"boolean indices are not supported"),
        (np.array(3), TypeError, r"scalar index \(3\).*X\[3:4\]"),
    ],
)
def test_bad_indices(X, idx, error, pattern):
    with pytest.raises(error, match=pattern):
        X[idx]


def test_views_of_different_lengths_name_both(X):
    f = synk.function(lambda a, b: a.sum() + b.sum(), reduce="sum")
    with pytest.raises(ValueError, match=r"`a` has 3 rows .* `b` has 5 rows"):
        f(X[:3], X[:5])


def test_an_empty_view_is_an_empty_batch(X):
    with pytest.raises(ValueError, match="batch is empty"):
        synk.function(lambda a: a.sum(), reduce="sum")(X[5:5])


def test_local_view_errors():
    replicated = synk.data(np.ones((8, 2)))
    with pytest.raises(ValueError, match=r"this synk.Data is replicated"):
        replicated.local[[0]]
    sharded = synk.data(np.ones((2 * N + 1, 2)), sharded=True)  # device 0 holds 3 rows, others 2
    with pytest.raises(IndexError, match=r"device 1 holds 2 rows of its shard, but its index 2"):
        sharded.local[[2]]
    with pytest.raises(ValueError, match=rf"shape \({N}, k\)"):
        sharded.local[np.zeros((N + 1, 2), int)]
    with pytest.raises(TypeError, match=r"^X\.local\[idx\]: a scalar index .* X\.local\[1:2\]\."):
        sharded.local[1]


def test_a_local_slice_from_the_end_takes_each_shards_own_last_rows():
    x = np.arange(2 * N + 3, dtype=np.float32)  # shards of 3 rows on 3 devices, 2 on the rest
    XS = synk.data(x, sharded=True)
    f = synk.function(lambda a: a, reduce="gather")
    starts, held = XS.layout.starts, XS.rows_per_device
    last = [x[starts[d] + held[d] - 1] for d in range(N)]
    np.testing.assert_array_equal(np.asarray(f(XS.local[-1:])), last)
    np.testing.assert_array_equal(np.asarray(f(XS.local[-1:])), np.asarray(f(XS.local[[-1]])))
    np.testing.assert_array_equal(np.asarray(f.serial(XS.local[-1:])), last)


def test_a_narrow_negative_index_counts_from_the_end_of_long_data():
    X = synk.data(np.arange(300, dtype=np.float32))
    f = synk.function(lambda a: a, reduce="gather")
    np.testing.assert_array_equal(np.asarray(f(X[np.array([-1, -128], np.int8)])), [299, 172])


def test_a_tuple_index_is_refused_with_the_list_it_may_have_meant(X):
    with pytest.raises(TypeError, match=r"^X\[1, 2\]: a tuple index; .* \(X\[\[1, 2\]\]\)"):
        X[1, 2]


def test_a_local_index_out_of_range_is_quoted_as_given():
    XS = synk.data(np.ones(2 * N - 1, np.float32), sharded=True)  # the last device holds 1 row
    with pytest.raises(IndexError, match=rf"device {N - 1} holds 1 row of its shard, but its "
                                         r"index -2 is out of range: .* \[-1, 0\]"):  # fmt: skip
        XS.local[[-2]]


def test_a_view_must_be_sliced(X):
    f = synk.function(lambda a: a.sum(), in_axes=None, reduce="sum")
    with pytest.raises(ValueError, match=r"argument `a` is a synk.Data batch .* in_axes entry"):
        f(X[:4])


@single_process("a function on one device cannot span two processes")
def test_a_view_on_other_devices_than_the_function(X):
    if N == 1:
        pytest.fail("this suite expects several devices (see tests/conftest.py)")
    f = synk.function(lambda a: a.sum(), reduce="sum", devices=1)
    with pytest.raises(ValueError, match=rf"synk.Data on {N} devices, but this function runs on 1"):
        f(X[:4])


# ------------------------------------------------------------- data never dropped or mangled


@pytest.mark.parametrize("reduce", [None, "sum"])
def test_local_every_row_of_uneven_shards_uses_every_row(reduce):
    x = np.arange(38.0 * N - N // 2, dtype=np.float32)  # shards of 38 and 37 rows
    X = synk.data(x, sharded=True)
    assert len(set(X.rows_per_device)) == 2
    f = synk.function(lambda x: (x.sum(), x.shape[0]), reduce=reduce)
    total, rows = f(X.local[:])
    assert int(rows) == len(x)
    np.testing.assert_allclose(float(total), x.sum(), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(X.local[:]), x)


def test_a_local_slice_that_would_take_unequal_counts_is_refused():
    X = synk.data(np.arange(38.0 * N - N // 2), sharded=True)
    with pytest.raises(IndexError, match=r"X.local\[:38\]: the shards hold 38 or 37 rows"):
        X.local[:38]
    assert len(X.local[:37]) == 37 * N  # the same count from every shard


@pytest.mark.parametrize("sharded", [False, True])
def test_a_batch_as_a_host_array_is_its_rows(sharded):
    x = RNG.normal(size=(10 * N + 3, 2)).astype(np.float32)
    X = synk.data(x, sharded=sharded)
    idx = np.array([3, -1, 0, 3, len(x) - 2])
    np.testing.assert_array_equal(np.asarray(X[idx]), x[idx])
    assert np.asarray(X[idx]).shape == (5, 2)
    if sharded:
        local = np.asarray(X.local[[1, 0]])
        starts = np.asarray(X.layout.starts)
        np.testing.assert_array_equal(local, x[(starts[:, None] + [1, 0]).reshape(-1)])


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (np.array([2**40, 1]), r"holds 1099511627776, which int32 cannot hold"),
        (np.array([1e300, 1.0]), r"holds 1e\+300, which float32 cannot hold"),
    ],
)
def test_values_the_device_dtype_cannot_hold_are_refused(value, pattern):
    with pytest.raises(ValueError, match=rf"synk.data\(value\): the value {pattern}.*x64"):
        synk.data(value)
    X = synk.data(np.zeros(2, value.dtype))
    with pytest.raises(ValueError, match=rf"Data.set_value\(value\): the value {pattern}"):
        X.set_value(value)
    np.testing.assert_array_equal(np.asarray(X), np.zeros(2))  # the old value stays
    assert synk.data(np.array([2**30, -(2**31)])).dtype == np.int32  # what fits is kept


@single_process("a device array laid out for one process's call")
@pytest.mark.parametrize("reduce", [None, "avg"])
def test_a_whole_data_set_passed_broadcast_moves_nothing(reduce):
    D = synk.data(RNG.normal(size=(50, 3)).astype(np.float32))
    mesh = jax.sharding.Mesh(np.array(synk.devices()), ("synk",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("synk"))
    x = jax.device_put(np.ones(4 * N, np.float32), rows)  # laid out as the call takes it
    f = synk.function(lambda D, x: D.sum() * x.mean(), in_axes=(None, 0), reduce=reduce)
    want = f(D, x)
    with jax.transfer_guard("disallow"):  # neither the data set nor the batch moves
        got = f(D, x)
    np.testing.assert_allclose(float(got), float(want))


@pytest.mark.parametrize("reduce", [None, "avg"])
def test_a_whole_data_set_passed_broadcast_is_its_device_array(reduce):
    table = RNG.normal(size=(50, 3)).astype(np.float32)
    D = synk.data(table)
    x = jnp.asarray(RNG.normal(size=(4 * N * PROCESSES,)).astype(np.float32))
    f = synk.function(lambda D, x: D[:, 0].mean() * x.mean() + D.sum(), in_axes=(None, 0),
                      reduce=reduce)  # fmt: skip
    want = f.serial(table, x)
    np.testing.assert_allclose(float(f(D, synk.process_share(np.asarray(x)))), float(want), 1e-5)
    np.testing.assert_allclose(float(f.serial(D, x)), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(jax.jit(lambda x: f(D, x))(x)), float(want), rtol=1e-5)


def test_a_batch_of_data_broadcast_is_refused_with_both_ways_to_pass_it():
    D = synk.data(np.ones((8, 2), np.float32))
    with pytest.raises(ValueError) as info:
        synk.function(lambda b: b.sum(), in_axes=None)(D[:4])
    assert str(info.value).endswith(
        ": argument `b` is a synk.Data batch (X[idx]), which is sliced along its rows, but its "
        "in_axes entry is None. Give it in_axes 0, or pass np.asarray(X) (the whole data set) "
        "to broadcast it."
    )


def test_a_whole_data_set_sliced_or_sharded_is_refused_by_name():
    D = synk.data(np.ones((8, 2), np.float32))
    with pytest.raises(ValueError, match=r"`D` is a whole synk.Data, which is broadcast.*D\[:\]"):
        synk.function(lambda D: D.sum())(D)
    S = synk.data(np.ones((8, 2), np.float32), sharded=True)
    with pytest.raises(ValueError, match=r"`D` is a sharded synk.Data passed whole"):
        synk.function(lambda D: D.sum(), in_axes=None)(S)
