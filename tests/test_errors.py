"""Bad input gets a clear error that names the argument, before anything runs."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import single_process

import synk

# The messages quote batch lengths as one process sees them; the errors that
# are particular to several processes are in test_multiprocess.py.
pytestmark = single_process("the messages quote one process's whole batch")

N = synk.device_count()


def never_called(*args, **kwargs):
    raise AssertionError("the function ran although its input was refused")


def test_batch_lengths_that_differ_name_both_arguments():
    def step(params, inputs, labels):
        return (inputs.sum() + labels.sum()) * params

    f = synk.function(step, in_axes=(None, 0, 0))
    with pytest.raises(ValueError, match=r"`inputs` has 10 rows .* `labels` has 9 rows"):
        f(1.0, np.ones(10), np.ones(9))


def test_mismatch_inside_a_pytree_names_the_path():
    def loss(batch):
        return batch["x"].sum()

    f = synk.function(loss)
    with pytest.raises(ValueError, match=r"`batch\['x'\]` has 4 rows .* `batch\['y'\]` has 5"):
        f({"x": np.ones(4), "y": np.ones(5)})


def test_empty_batch():
    with pytest.raises(ValueError, match="batch is empty"):
        synk.function(never_called)(np.ones((0, 3)))


def test_unknown_reduce_op_is_refused_at_decoration():
    with pytest.raises(ValueError, match=r"unknown reduce op 'mean'.*'avg'"):
        synk.function(never_called, reduce="mean")
    with pytest.raises(ValueError, match=r"unknown reduce op 'total' at reduce\[1\]"):
        synk.function(never_called, reduce=("avg", "total"))


def test_reduce_tree_that_does_not_fit_the_outputs():
    f = synk.function(lambda x: (x.sum(), x.mean(), x.max()), reduce=("sum", "avg"))
    with pytest.raises(ValueError, match=r"reduce spec \('sum', 'avg'\) does not fit"):
        f(np.ones(8))


def test_avg_of_an_integer_output_suggests_sum():
    f = synk.function(lambda x: (x > 0).sum(), reduce="avg")
    with pytest.raises(TypeError, match=r"out has dtype int32, with reduce 'avg'.*reduce 'sum'"):
        f(np.ones(8))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_num_slices_below_one_or_not_an_int(bad):
    with pytest.raises(ValueError, match=r"num_slices=.*expected an integer >= 1"):
        synk.function(never_called, num_slices=bad)


# On exact shapes (a bucket's pieces serve any length: tests/test_buckets.py).


def test_num_slices_larger_than_the_rows_a_device_gets():
    f = synk.function(never_called, reduce="avg", num_slices=4, buckets=None)
    rows = 3 * N + 1
    with pytest.raises(ValueError, match=rf"num_slices=4 is larger .* {rows} rows on {N} devices"):
        f(np.ones(rows))


def test_batch_smaller_than_the_device_count_needs_one_slice():
    if N == 1:
        pytest.fail("this suite expects several devices (see tests/conftest.py)")
    f = synk.function(never_called, reduce="avg", num_slices=2, buckets=None)
    with pytest.raises(ValueError, match="Use num_slices=1 for batches smaller"):
        f(np.ones(N - 1))


@pytest.mark.parametrize(
    ("in_axes", "pattern"),
    [
        ("rows", r"in_axes is 'rows'"),
        ((0, 1.5), r"in_axes\[1\] is 1.5"),
        ((0, {"w": "x"}), r"in_axes\[1\]\['w'\] is 'x'"),
    ],
)
def test_bad_in_axes_entries(in_axes, pattern):
    with pytest.raises(ValueError, match=pattern):
        synk.function(never_called, in_axes=in_axes)


def test_in_axes_tuple_of_the_wrong_length():
    def f(params, x):
        return x.sum()

    with pytest.raises(ValueError, match=r"in_axes has 3 entries but the call has 2 .*`params`"):
        synk.function(f, in_axes=(None, 0, 0))(1.0, np.ones(8))


def test_in_axes_out_of_range_for_the_argument():
    with pytest.raises(ValueError, match=r"in_axes entry 2 for argument `x` .* shape \(4, 5\)"):
        synk.function(lambda x: x, in_axes=2)(np.ones((4, 5)))


def test_in_axes_that_is_not_a_prefix_of_the_argument():
    with pytest.raises(ValueError, match=r"in_axes entry for argument `x` .* not a pytree prefix"):
        synk.function(lambda x: x, in_axes=({"a": 0},))([np.ones(4)])


def test_an_unhashable_non_array_leaf_is_named():
    with pytest.raises(TypeError, match=r"argument `opts\['cb'\]` is a Unhashable, which is nei"):
        synk.function(lambda x, opts: x.sum())(np.ones(8), {"cb": Unhashable()})


class Unhashable:
    __hash__ = None


def test_unhashable_static_argument():
    f = synk.function(lambda x, sizes: x.sum(), static_argnums=1, reduce="sum")
    with pytest.raises(
        TypeError, match=r"static argument `sizes` is a list, which is not hashable"
    ):
        f(np.ones(8), [1, 2])


def test_static_argnames_that_is_not_a_parameter():
    with pytest.raises(ValueError, match=r"static_argnames names 'mode', which is not a parameter"):
        synk.function(lambda x, kind: x, static_argnames="mode")


def test_scalar_output_marked_gather():
    with pytest.raises(ValueError, match=r"out is a scalar, with reduce 'gather'"):
        synk.function(lambda x: x.sum(), reduce="gather")(np.ones(8))


def test_gather_output_without_one_row_per_input_row():
    with pytest.raises(ValueError, match=r"reduce 'gather' but \d+ rows for a piece of \d+"):
        synk.function(lambda x: x[:1], reduce="gather")(np.ones(4 * N))


def test_reduced_output_that_depends_on_the_batch_length():
    f = synk.function(lambda x: x * 2, reduce="sum")  # forgot to sum over rows
    with pytest.raises(ValueError, match=r"out changes with the number of rows"):
        f(np.ones(2 * N + 1))


def test_boolean_output_with_a_sum_or_mean():
    with pytest.raises(TypeError, match=r"boolean, with reduce 'sum': reductions need numbers"):
        synk.function(lambda x: (x > 0).any(), reduce="sum")(np.ones(8))


def test_devices_out_of_range():
    with pytest.raises(ValueError, match=rf"devices={N + 1}, but there are {N} devices"):
        synk.function(never_called, devices=N + 1)


def test_devices_given_as_a_bool_is_neither_a_count_nor_devices():
    with pytest.raises(TypeError, match="devices must be a non-empty sequence of jax devices"):
        synk.function(never_called, devices=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda c: synk.function(never_called, comm_dtype=c),
        lambda c: synk.reduce(synk.broadcast(np.ones(2)), "avg", comm_dtype=c),
        lambda c: synk.all_reduce(synk.broadcast(np.ones(2)), "sum", comm_dtype=c),
    ],
    ids=["function", "reduce", "all_reduce"],
)
def test_comm_dtype_is_checked_alike_everywhere(make):
    with pytest.raises(TypeError, match="comm_dtype=int8 is not a floating dtype"):
        make(jnp.int8)
    with pytest.raises(TypeError, match=r"comm_dtype='nope' is not a dtype; expected e\.g\."):
        make("nope")


@pytest.mark.parametrize(
    "make",
    [
        lambda op: synk.function(never_called, reduce=op),
        lambda op: synk.reduce(synk.broadcast(np.ones(2)), op),
        lambda op: synk.all_reduce(synk.broadcast(np.ones(2)), op),
    ],
    ids=["function", "reduce", "all_reduce"],
)
def test_op_names_are_checked_alike_everywhere(make):
    with pytest.raises(ValueError, match=r"unknown reduce op 'mean'. Expected one of 'avg', 'sum'"):
        make("mean")


def test_a_refused_call_leaves_the_function_usable():
    f = synk.function(lambda x, y: (x * y).mean())
    with pytest.raises(ValueError):
        f(np.ones(8), np.ones(7))
    assert float(f(np.ones(8), np.full(8, 2.0))) == 2.0
