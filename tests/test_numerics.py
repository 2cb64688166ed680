"""Special values and narrow dtypes: results as numpy's, in float64, would give them.

Low-precision outputs accumulate in float32, NaN wins max/min on every
device, complex values keep their imaginary part in a narrow comm_dtype.
Each test builds the same global batch on every process and passes this
process's share (`synk.process_share`), so it passes in one process and under
``mpiexec -n 2`` alike. References are numpy in float64: on CPU, ``jnp.max``
itself drops NaN in large reductions.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synk

N, P = synk.device_count(), synk.process_count()
FLOATS = [np.float16, jnp.bfloat16, np.float32]


def call(fn, x, **options):
    """`fn` as a synk.Function on the global batch `x` (each process passes its share)."""
    return np.asarray(synk.function(fn, **options)(synk.process_share(x)))


def global_rows(rows: int) -> int:
    """At least `rows` rows, a multiple of the process count (each process a share)."""
    return rows + (-rows) % P


def f64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def hlo(f, *args) -> str:
    return f.lower(*args).compile().as_text()


def count_all_reduces(text: str) -> int:
    return len(re.findall(r"\ball-reduce(?:-start)?\(", text))


def float_casts(text: str) -> list[str]:
    """Conversions to or from a float type (the cond of an uneven split has integer ones)."""
    lines = [line for line in text.splitlines() if re.search(r"\bconvert\(", line)]
    return [line for line in lines if re.search(r"\b(bf16|f16|f32|f64)\[", line)]


# --------------------------------------------------------------- low precision


def test_avg_of_float16_does_not_overflow_where_the_mean_does_not():
    x = np.full(global_rows(64), 1e4, np.float16)  # a float16 sum of 64 rows is inf
    got = call(lambda x: x.mean(), x)
    assert got.dtype == np.float16 and got == np.float16(1e4)


def test_avg_of_float16_over_more_rows_than_float16_can_count():
    # 70,001 is inf in float16: the divisor must not be a float16.
    x = np.full(global_rows(70_001), 1e-3, np.float16)
    got = call(lambda x: x.mean(), x)
    assert got.dtype == np.float16
    np.testing.assert_allclose(f64(got), f64(x).mean(), rtol=1e-3)


def test_avg_of_bfloat16_ones_is_one():
    x = np.ones(global_rows(4947), jnp.bfloat16)  # an uneven split over any device count
    got = call(lambda x: x.mean(), x)
    assert got.dtype == jnp.bfloat16 and float(got) == 1.0


@pytest.mark.parametrize("num_slices", [1, 3])
def test_sum_of_float16_accumulates_in_float32(num_slices):
    # Each device sums 1001 ones. Partial float16 sums of those round (above
    # 2048 only even numbers exist, above 4096 multiples of 4); in float32 the
    # total is exact and rounds once, on the way back.
    x = np.ones(global_rows(N * 1001), np.float16)
    got = call(lambda x: x.sum(), x, reduce="sum", num_slices=num_slices)
    assert got.dtype == np.float16 and got == np.float16(f64(x).sum())


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_reduce_avg_of_low_precision_does_not_overflow(dtype):
    x = synk.broadcast(np.asarray(1e4, dtype))
    got = synk.reduce(x, "avg")
    assert got.dtype == dtype and float(got) == float(np.asarray(1e4, dtype))
    everywhere = synk.gather(synk.all_reduce(x, "avg"))
    assert everywhere.dtype == dtype
    np.testing.assert_array_equal(f64(everywhere), float(np.asarray(1e4, dtype)))


def test_avg_with_float16_comm_dtype_divides_before_the_cast():
    # The devices' weighted sums (up to 64 * 1e4) leave float16's range; their mean does not.
    x = np.full(global_rows(64), 1e4, np.float32)
    got = call(lambda x: x.mean(), x, reduce="avg", comm_dtype=jnp.float16)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 1e4, rtol=4e-3)  # float16's rounding, not inf
    reduced = synk.reduce(synk.broadcast(np.float32(1e4)), "avg", comm_dtype=jnp.float16)
    np.testing.assert_allclose(np.asarray(reduced), 1e4, rtol=4e-3)


@pytest.mark.parametrize("op", ["avg", "sum"])
def test_comm_dtype_keeps_the_imaginary_part_of_complex_outputs(op):
    rows = global_rows(2 * N + 1)
    z = (np.arange(rows) + 2j * np.arange(rows)).astype(np.complex64)
    fn = (lambda z: z.mean()) if op == "avg" else (lambda z: z.sum())
    got = call(fn, z, reduce=op, comm_dtype=jnp.bfloat16)
    want = {"avg": np.mean, "sum": np.sum}[op](z.astype(np.complex128))
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, want, rtol=2e-2)
    assert abs(got.imag - want.imag) < 2e-2 * abs(want.imag)


@pytest.mark.parametrize("op", ["avg", "sum", "prod"])
def test_reduce_with_comm_dtype_keeps_the_imaginary_part(op):
    entries = np.full(N, 1 + 2j, np.complex64) * (1 + np.arange(N) % 2 / 8)
    want = {"avg": np.mean, "sum": np.sum, "prod": np.prod}[op](entries.astype(np.complex128))
    for fn in (synk.reduce, synk.all_reduce):
        got = fn(entries, op, comm_dtype=jnp.float16)
        value = np.asarray(got) if fn is synk.reduce else synk.gather(got)[0]
        assert value.dtype == np.complex64
        np.testing.assert_allclose(value, want, rtol=1e-2)


# --------------------------------------------------------------- NaN and max/min


def nan_cases(dtype, rows: int):
    """Batches of (rows, 3) with a NaN at the start, the middle, the end (and none)."""
    base = np.linspace(-3, 3, rows * 3).reshape(rows, 3)
    base[rows // 3, 1] = np.inf
    base[rows // 2, 2] = -np.inf
    cases = [base]
    for at in (0, rows // 2, rows - 1):
        x = base.copy()
        x[at, 0] = np.nan
        x[(at + 1) % rows, 1] = np.nan
        cases.append(x)
    return [x.astype(dtype) for x in cases]


@pytest.mark.parametrize("num_slices", [1, 3])
@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_max_min_propagate_nan_from_any_row(dtype, op, num_slices):
    rows = global_rows(3 * N + 1)  # uneven: some devices have an extra row
    pick, ref = {"max": (jnp.max, np.max), "min": (jnp.min, np.min)}[op]
    f = synk.function(lambda x: pick(x, axis=0), reduce=op, num_slices=num_slices)
    for x in nan_cases(dtype, rows):
        got = np.asarray(f(synk.process_share(x)))
        assert got.dtype == dtype
        np.testing.assert_array_equal(f64(got), ref(f64(x), axis=0))


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_max_min_of_per_device_values_propagate_nan(dtype, op):
    ref = {"max": np.max, "min": np.min}[op]
    for at in (0, N // 2, N - 1):
        x = np.tile(np.array([1.0, -np.inf, np.inf, -2.0]), (N, 1))
        x[at, 0] = np.nan
        x[(at + 1) % N, 3] = np.nan
        x = x.astype(dtype)
        got = np.asarray(synk.reduce(x, op))
        np.testing.assert_array_equal(f64(got), ref(f64(x), axis=0))
        every = synk.gather(synk.all_reduce(x, op))
        np.testing.assert_array_equal(f64(every), np.tile(ref(f64(x), axis=0), (N, 1)))


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_nan_survives_a_float16_comm_dtype(op):
    x = np.arange(3.0 * global_rows(2 * N)).reshape(-1, 3).astype(np.float32)
    x[-1, 0] = np.nan
    pick = {"max": jnp.max, "min": jnp.min}[op]
    got = call(lambda x: pick(x, axis=0), x, reduce=op, comm_dtype=jnp.float16)
    assert np.isnan(got[0]) and not np.isnan(got[1:]).any()


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_of_infinities_signed_zeros_and_rows_fewer_than_devices(op):
    pick, ref = {"max": (jnp.max, np.max), "min": (jnp.min, np.min)}[op]
    f = synk.function(lambda x: pick(x, axis=0), reduce=op)
    one_row_each = [  # one row per process: most devices have no rows (identities)
        [-np.inf, np.inf, np.nan, -0.0],
        [-np.inf, np.inf, 1.0, 0.0],
    ]
    for row in one_row_each:
        x = np.tile(np.array(row, np.float32), (P, 1))
        got = np.asarray(f(synk.process_share(x)))
        np.testing.assert_array_equal(got, ref(x, axis=0))  # -0.0 == 0.0: sign of zero aside
    # Across devices -0.0 orders below 0.0 (IEEE total order).
    x = np.tile(np.array([[-0.0], [0.0]], np.float32), (global_rows(N), 1))
    got = call(lambda x: pick(x, axis=0), x, reduce=op)
    assert got[0] == 0 and np.signbit(got[0]) == (op == "min")


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.int32])
def test_integer_max_min_identities_are_the_dtype_ends(dtype, op):
    info = np.iinfo(dtype)
    pick, ref = {"max": (jnp.max, np.max), "min": (jnp.min, np.min)}[op]
    end = info.min if op == "max" else info.max  # a value only the identity could hide
    f = synk.function(lambda x: pick(x, axis=0), reduce=op)
    for rows in (P, global_rows(3 * N + 1)):  # fewer rows than devices, and an uneven split
        x = np.full((rows, 3), end, dtype)
        x[rows // 2, 2] = (info.min + info.max) // 2
        got = np.asarray(f(synk.process_share(x)))
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, ref(x, axis=0))
        np.testing.assert_array_equal(np.asarray(synk.reduce(x[:1].repeat(N, 0), op)), x[0])


@pytest.mark.parametrize("op", ["max", "min"])
def test_complex_max_min_are_refused_before_anything_runs(op):
    z = np.ones((global_rows(N), 2), np.complex64)
    f = synk.function(lambda z: (z.sum(0).real, z.sum(0)), reduce=op)
    with pytest.raises(TypeError, match=r"out\[1\] has dtype complex64.*'" + op + r"'.*jnp.abs"):
        f(synk.process_share(z))
    for fn in (synk.reduce, synk.all_reduce):
        with pytest.raises(TypeError, match=r"x\['z'\] has dtype complex64.*no order.*gather"):
            fn({"z": np.ones((N, 2), np.complex64)}, op)


@pytest.mark.parametrize("op", ["avg", "sum"])
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: np.dtype(d).name)
def test_avg_sum_propagate_nan_and_infinities(dtype, op):
    rows = global_rows(3 * N + 1)
    x = np.ones((rows, 5))
    x[rows - 1, 0] = np.nan  # NaN
    x[0, 1] = np.inf  # inf
    x[rows // 2, 2] = -np.inf  # -inf
    x[1, 3], x[rows - 2, 3] = np.inf, -np.inf  # inf - inf = NaN
    x = x.astype(dtype)
    fn = (lambda x: x.mean(0)) if op == "avg" else (lambda x: x.sum(0))
    got = call(fn, x, reduce=op, num_slices=2)
    want = {"avg": np.mean, "sum": np.sum}[op](f64(x), axis=0)
    assert got.dtype == dtype
    np.testing.assert_array_equal(f64(got)[:4], want[:4])
    np.testing.assert_allclose(f64(got)[4], want[4], rtol=1e-2)


# --------------------------------------------------------------- what compiles


@pytest.mark.parametrize("rows", [4 * N, 4 * N + 1])  # even, uneven
def test_float32_avg_and_sum_compile_to_one_all_reduce_per_op_and_no_casts(rows):
    x = synk.process_share(np.ones((global_rows(rows), 3), np.float32))
    # Exact shapes; in a bucket the traced batch length is cast once, to divide by it.
    for buckets in (None, "geometric"):
        f = synk.function(lambda x: (x.mean(0), (x * x).mean()), reduce="avg", buckets=buckets)
        text = hlo(f, x)
        assert count_all_reduces(text) == 1
        assert only_the_length_is_cast(float_casts(text), buckets)
        assert "all-gather" not in text
        g = synk.function(lambda x: (x.mean(0), x.sum(0), x.sum()),
                          reduce=("avg", "sum", "sum"), buckets=buckets)  # fmt: skip
        text = hlo(g, x)
        assert count_all_reduces(text) <= 2  # one per op (XLA may merge the two)
        assert only_the_length_is_cast(float_casts(text), buckets)
        assert "all-gather" not in text


def only_the_length_is_cast(casts: list[str], buckets) -> bool:
    """No float cast on exact shapes; in a bucket, float32 scalars only (the length)."""
    if buckets is None:
        return not casts
    return bool(casts) and all(re.search(r"= f32\[\] convert\(", line) for line in casts)


def test_float16_and_float32_avg_share_one_float32_all_reduce():
    x = synk.process_share(np.ones((global_rows(4 * N), 3), np.float32))
    f = synk.function(lambda x: (x.mean(0), x.astype(jnp.float16).mean(0)), reduce="avg")
    text = hlo(f, x)
    assert count_all_reduces(text) == 1
    assert re.search(r"\(f32\[3\]\{0\}, f32\[3\]\{0\}\) all-reduce", text)
    mean32, mean16 = f(x)
    assert mean32.dtype == np.float32 and mean16.dtype == np.float16


def test_max_min_travel_as_one_integer_all_reduce_per_op():
    x = synk.process_share(np.ones((global_rows(4 * N), 3), np.float32))
    f = synk.function(
        lambda x: (x.max(0), x.max(), x.min(0), x.min()), reduce=("max", "max", "min", "min")
    )
    text = hlo(f, x)
    reduces = re.findall(r"= (\(.*?\)|\S+) all-reduce(?:-start)?\(", text)
    assert len(reduces) == 2  # max, min
    assert all("s32" in r and "f32" not in r for r in reduces)
    assert "all-gather" not in text


# --------------------------------------------------------------- gradients


@pytest.mark.parametrize("op", ["max", "min"])
def test_gradient_through_the_max_min_combine_matches_serial(op):
    # jnp.max's rule splits the tangent among ties; across devices the devices
    # that hold the result share it. Floats cross devices as integer keys,
    # which must not make this gradient silently zero.
    pick = {"max": jnp.max, "min": jnp.min}[op]
    f = synk.function(pick, reduce=op)  # each device: the extremum of its one row
    x = np.random.default_rng(0).normal(size=(N, 3)).astype(np.float32)
    for ties in ([(N - 1, 1)], [(0, 2), (N // 2, 0)]):  # one winner; then devices tie
        for i, j in ties:
            x[i, j] = 9.0 if op == "max" else -9.0
        grad = jax.grad(f) if P == 1 else jax.jit(jax.grad(f))  # inside jit: the whole batch
        np.testing.assert_allclose(grad(x), jax.grad(pick)(x))


# ---------------------------------------------------------------- booleans


@pytest.mark.parametrize("rows", [2 * N, 2 * N + 3, max(N - 1, 1)])
@pytest.mark.parametrize("slices", [1, 2])
def test_max_and_min_of_booleans_are_any_and_all(rows, slices):
    rows = global_rows(rows)
    if rows // N < slices:
        pytest.skip("num_slices larger than the rows a device gets")
    for hit in ([], [0], [rows - 1], list(range(rows))):  # no row, the first, the last, every
        x = np.zeros((rows, 2), np.float32)
        x[hit] = 1.0
        fn = lambda x: ((x > 0).any(0), (x > 0).all(0))  # noqa: E731
        got = synk.function(fn, reduce=("max", "min"), num_slices=slices)(synk.process_share(x))
        want = fn(x)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.bool_
            np.testing.assert_array_equal(np.asarray(g), w)
