"""A refused call names every leaf at fault at once, and its traceback is short."""

import traceback

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import single_process

import synk

pytestmark = single_process("the messages quote one process's whole batch")

N = synk.device_count()


def never_called(*args, **kwargs):
    raise AssertionError("the function ran although its input was refused")


# --------------------------------------------------------------------------
# Every failing leaf, in one error


def test_three_bad_arguments_are_named_in_one_error():
    f = synk.function(never_called, in_axes=(5, "per_device", -4), reduce="sum")
    with pytest.raises(ValueError) as info:
        f(np.ones((8, 2)), np.ones((N + 1, 3)), np.ones((8, 2)))
    message = str(info.value)
    assert "3 problems with this call" in message
    assert "in_axes entry 5 for argument `args[0]`" in message
    assert "argument `args[1]` has in_axes 'per_device'" in message
    assert "in_axes entry -4 for argument `args[2]`" in message


def test_every_batch_length_is_named():
    f = synk.function(never_called)
    each = r"`.*\['a'\]` has 8 rows .*, `.*\['b'\]` has 9 rows .* and `.*\['c'\]` has 7"
    with pytest.raises(ValueError, match=each):
        f({"a": np.ones(8), "b": np.ones(9), "c": np.ones(7)})


def test_every_output_that_cannot_be_reduced_is_named():
    f = synk.function(lambda x: (x.sum() > 0, x.astype(jnp.int32).sum()), reduce="avg")
    with pytest.raises(TypeError) as info:
        f(np.ones(16))
    message = str(info.value)
    assert "2 problems" in message
    assert "output out[0] has dtype bool" in message
    assert "output out[1] has dtype int32" in message


def test_refusals_of_different_kinds_are_caught_as_either():
    f = synk.function(never_called, in_axes=(None, 0))

    class Model:  # neither an array nor hashable: refused as a static leaf
        __hash__ = None

    nnx = pytest.importorskip("flax.nnx")
    g = synk.function(never_called, in_axes=(0, None))
    with pytest.raises(TypeError, match="neither an array nor hashable"):
        f(Model(), np.ones(8))
    with pytest.raises(ValueError) as info:  # a TypeError and a ValueError at once
        g(nnx.Param(jnp.ones(3)), [Model()])
    assert isinstance(info.value, TypeError)
    assert "Flax NNX Variable" in str(info.value) and "neither an array" in str(info.value)


def test_every_unhashable_static_argument_is_named():
    f = synk.function(never_called, static_argnums=(0, 1))
    with pytest.raises(TypeError, match=r"2 problems(.|\n)*`args\[0\]` is a list(.|\n)*a dict"):
        f([1], {"a": 1}, np.ones(8))


def test_every_unknown_reduce_op_is_named():
    with pytest.raises(ValueError, match=r"'mean' at reduce\[0\](.|\n)*'total' at reduce\[1\]"):
        synk.function(never_called, reduce=("mean", "total"))


def test_every_bad_option_is_named():
    with pytest.raises(ValueError) as info:  # a TypeError (the dtype) among ValueErrors
        synk.function(never_called, reduce="avg", num_slices=0, comm_dtype="int8", buckets=[0])
    message = str(info.value)
    assert isinstance(info.value, TypeError) and "3 problems" in message
    assert "num_slices=0; expected an integer >= 1" in message
    assert "comm_dtype=int8 is not a floating dtype" in message
    assert "buckets=[0]; expected 'geometric'" in message


def test_refusals_of_a_check_inside_another_are_listed_once_each():
    with pytest.raises(ValueError) as info:
        synk.function(never_called, reduce=("mean", "total"), num_slices=0)
    message = str(info.value)
    assert "3 problems" in message and message.count("problems") == 1
    assert "  1. unknown reduce op 'mean'" in message
    assert "  2. unknown reduce op 'total'" in message
    assert "  3. num_slices=0" in message


def test_a_call_that_does_not_fit_the_signature_is_refused_before_it_runs():
    def loss(w, x):
        raise AssertionError("ran")

    f = synk.function(loss, in_axes=(None, 0), reduce="avg")
    with pytest.raises(TypeError, match=r"\(.*loss\): the call does not fit .*\(w, x\)"):
        f(1.0, np.ones(8), np.ones(8))
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        f.serial(1.0)


# --------------------------------------------------------------------------
# Short tracebacks


def _frames(call) -> list[traceback.FrameSummary]:
    try:
        call()
    except Exception as e:
        return traceback.extract_tb(e.__traceback__)
    raise AssertionError("not refused")


@pytest.mark.parametrize(
    "refused",
    [
        lambda: synk.function(never_called, reduce="avg")(np.ones(8), np.ones(9)),
        lambda: synk.function(never_called, reduce="bogus"),
        lambda: synk.function(never_called)(np.ones(8), {1}),
        lambda: synk.function(never_called).with_options(num_slices=0),
        lambda: synk.function(never_called).lower(np.ones(8), np.ones(9)),
        lambda: synk.reduce(np.ones((N, 2), bool), "sum"),
        lambda: synk.first_rows(np.ones(4), 9),
    ],
    ids=["call", "decorator", "unhashable", "with_options", "lower", "reduce", "first_rows"],
)
def test_a_refused_call_ends_in_the_users_line(refused):
    frames = _frames(refused)
    mine = [f for f in frames if f.filename == __file__]
    assert mine and frames[: len(mine)] == mine, frames  # the user's frames come first
    theirs = frames[len(mine) :]
    assert len(theirs) <= 1 and all("synk" in f.filename for f in theirs), frames


def test_an_error_in_the_users_function_keeps_its_frames():
    def loss(x):
        return x.sum() + undefined_name  # noqa: F821

    frames = _frames(lambda: synk.function(loss)(np.ones(8)))
    assert frames[-1].name == "loss" and frames[-1].filename == __file__
    assert not any("/synk/_src/" in f.filename for f in frames), frames
