"""Per-row randomness that does not depend on the device count: synk.lax.row_keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fewer_under_mpi

import synk

N = synk.device_count()
P = synk.process_count()
COUNTS = sorted({k for k in (1, 2, 3, 8) if k <= N} if P == 1 else {N})


def dropout(key, x, rate=0.5):
    keys = synk.lax.row_keys(key)
    keep = jax.vmap(lambda k, row: jax.random.bernoulli(k, 1 - rate, row.shape))(keys, x)
    return jnp.where(keep, x / (1 - rate), 0.0)


ROWS_AND_SLICES = [(1, 1), (5, 1), (16, 2), (19, 1), (19, 2), (26, 3)]


@pytest.mark.parametrize("devices", COUNTS)
@pytest.mark.parametrize(
    ("rows", "slices"), fewer_under_mpi(ROWS_AND_SLICES, keep=[(5, 1), (26, 3)])
)
def test_row_keys_give_the_same_rows_on_any_device_count(devices, rows, slices):
    if slices > 1 and rows // devices < slices:
        pytest.skip("num_slices larger than the rows a device gets")
    x = np.random.default_rng(rows).normal(size=(rows * P, 4)).astype(np.float32)
    key = jax.random.key(7)
    f = synk.function(
        dropout,
        in_axes=(None, 0),
        reduce="gather",
        num_slices=slices,
        devices=synk.devices()[:devices] if P == 1 else None,
    )
    got = np.asarray(f(key, synk.process_share(x)))
    want = np.asarray(f.serial(key, x))
    np.testing.assert_array_equal(got, want)
    # Row i always gets fold_in(key, i): the same rows as a plain loop over rows.
    by_row = [jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, (4,)) for i in range(len(x))]
    np.testing.assert_array_equal(got != 0, np.stack(by_row) & (x != 0))


def test_row_keys_in_a_reduced_output_and_with_old_style_keys():
    x = np.ones(((3 * N + 1) * P, 2), np.float32)
    f = synk.function(lambda k, x: dropout(k, x).mean(), in_axes=(None, 0))
    for key in (jax.random.key(1), jax.random.PRNGKey(1)):
        np.testing.assert_allclose(
            float(f(key, synk.process_share(x))), float(f.serial(key, x)), rtol=1e-6
        )


def test_row_keys_outside_a_function_need_the_number_of_rows():
    keys = synk.lax.row_keys(jax.random.key(0), num_rows=3)
    assert keys.shape == (3,)
    want = jax.random.key_data(jax.random.fold_in(jax.random.key(0), 2))
    np.testing.assert_array_equal(jax.random.key_data(keys[2]), want)
    with pytest.raises(ValueError, match=r"the rows are unknown here.*Pass num_rows="):
        synk.lax.row_keys(jax.random.key(0))


def test_row_keys_with_a_wrong_row_count_is_refused():
    f = synk.function(lambda k, x: synk.lax.row_keys(k, num_rows=99).shape[0] + x.sum(),
                      in_axes=(None, 0), reduce="sum")  # fmt: skip
    with pytest.raises(ValueError, match=r"num_rows=99\): this piece has"):
        f(jax.random.key(0), np.ones(2 * N * P, np.float32))


# ---------------------------------------------------------------- typed keys as values


def _bits(keys):
    return np.asarray(jax.random.key_data(keys))


@pytest.mark.skipif(P > 1, reason="one process: key arrays made here live on this process only")
@pytest.mark.parametrize("rows", [2 * N, 2 * N + 1])
def test_typed_keys_pass_sliced_broadcast_and_per_device_and_come_back(rows):
    keys = jax.random.split(jax.random.key(3), rows)  # sliced: one key per row
    base = jax.random.key(5)  # broadcast
    streams = jax.random.split(jax.random.key(9), N)  # per device

    def draw(base, keys, x):
        return x + jax.vmap(jax.random.uniform)(keys), jax.vmap(jax.random.fold_in)(keys, x)

    f = synk.function(draw, in_axes=(None, 0, 0), reduce="gather")
    x = np.arange(rows, dtype=np.int32)
    got_values, got_keys = f(base, keys, x)
    want_values, want_keys = draw(base, keys, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(got_values), np.asarray(want_values))
    np.testing.assert_array_equal(_bits(got_keys), _bits(want_keys))

    g = synk.function(
        lambda s, b: jax.random.fold_in(s, 1), in_axes=("per_device", None), reduce="per_device"
    )
    out = g(streams, base)
    assert jax.dtypes.issubdtype(out.dtype, jax.dtypes.prng_key) and out.shape == (N,)
    np.testing.assert_array_equal(
        _bits(out), _bits(jax.vmap(jax.random.fold_in, (0, None))(streams, 1))
    )


@pytest.mark.parametrize("op", ["avg", "sum", "max", "min", "prod"])
def test_a_reduce_op_on_keys_is_a_clear_type_error(op):
    f = synk.function(lambda k, x: (jax.random.fold_in(k, 1), x.sum()), in_axes=(None, 0),
                      reduce=(op, "sum"))  # fmt: skip
    with pytest.raises(TypeError, match=rf"output out\[0\] is a PRNG key array .*reduce {op!r}"):
        f(jax.random.key(0), np.ones(2 * N * P, np.float32))
