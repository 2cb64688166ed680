"""Per-device values, collectives on them, and synk.lax inside a function."""

import os
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import compilations, run_python

import synk

N = synk.device_count()
OPS = {"avg": np.mean, "sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}


def per_device_values(shape=(2,)):
    """Device i holds 4i + 3 (plus a ramp), so every device's entry differs."""
    base = (4.0 * np.arange(N) + 3.0).reshape(N, *([1] * len(shape)))
    return (base + np.arange(np.prod(shape)).reshape(shape) / 10).astype(np.float32)


# ------------------------------------------------------- moving values


def test_broadcast_gives_every_device_a_copy():
    tree = {"w": np.arange(3.0, dtype=np.float32), "b": np.float32(2)}
    out = synk.broadcast(tree)
    assert out["w"].shape == (N, 3) and out["b"].shape == (N,)
    assert out["w"].sharding.spec == jax.sharding.PartitionSpec("synk")
    np.testing.assert_array_equal(synk.gather(out)["w"], np.tile(tree["w"], (N, 1)))
    again = synk.broadcast(jnp.arange(3.0))  # from a device array too
    np.testing.assert_array_equal(synk.gather(again), np.tile(np.arange(3.0), (N, 1)))


def test_scatter_splits_axis_zero_and_refuses_uneven():
    x = np.arange(3.0 * N * 2).reshape(3 * N, 2)
    out = synk.scatter({"x": x})
    assert out["x"].shape == (N, 3, 2)
    for i in range(N):
        np.testing.assert_array_equal(synk.get_value(out, i)["x"], x[3 * i : 3 * i + 3])
    np.testing.assert_array_equal(synk.gather(synk.scatter(jnp.asarray(x)), concat=True), x)
    with pytest.raises(ValueError, match=rf"x\['x'\] has {3 * N + 1} rows .* into {N} equal"):
        synk.scatter({"x": np.ones(3 * N + 1)})


@pytest.mark.parametrize("collective", ["broadcast", "scatter"])
def test_broadcast_and_scatter_take_an_array_committed_to_one_device(collective):
    x = np.arange(4.0 * N, dtype=np.float32).reshape(2 * N, 2)
    # On one of this process's own devices (the value is equal on every process).
    one = jax.device_put(x, jax.local_devices()[-1])
    assert one.committed
    got = synk.gather(getattr(synk, collective)(one))
    want = np.broadcast_to(x, (N, *x.shape)) if collective == "broadcast" else x.reshape(N, 2, 2)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("concat", [False, True])
def test_gather_and_all_gather(concat):
    x = per_device_values((2,))
    got = synk.gather({"a": x}, concat=concat)["a"]
    want = x.reshape(-1) if concat else x
    np.testing.assert_array_equal(got, want)
    every = synk.all_gather({"a": x}, concat=concat)["a"]
    assert every.shape == (N, *want.shape)
    for i in range(N):
        np.testing.assert_array_equal(synk.get_value(every, i), want)


@pytest.mark.parametrize("op", OPS)
def test_reduce_and_all_reduce_compare_with_numpy(op):
    x = per_device_values((3,))
    tree = {"x": x, "y": [x[:, :1] * 2]}
    want = {"x": OPS[op](x, axis=0), "y": [OPS[op](x[:, :1] * 2, axis=0)]}
    one = synk.reduce(tree, op)
    every = synk.all_reduce(tree, op)
    for got, w in zip(jax.tree.leaves(one), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(got), w, rtol=1e-5)
        assert got.sharding.is_fully_replicated
    for got, w in zip(jax.tree.leaves(synk.gather(every)), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, np.broadcast_to(w, (N, *w.shape)), rtol=1e-5)


def test_get_value_and_set_value():
    x = {"a": per_device_values((2,)), "b": np.arange(N, dtype=np.int32)}
    np.testing.assert_array_equal(synk.get_value(x, 2 % N)["a"], x["a"][2 % N])
    new = synk.set_value(x, N - 1, {"a": np.zeros(2, np.float32), "b": np.int32(-1)})
    assert synk.get_value(new, N - 1)["b"] == -1
    np.testing.assert_array_equal(synk.get_value(new, N - 1)["a"], [0, 0])
    np.testing.assert_array_equal(synk.gather(new)["a"][:-1], x["a"][:-1])  # others kept
    with pytest.raises(IndexError, match=rf"device index {N} is out of range"):
        synk.get_value(x, N)
    with pytest.raises(ValueError, match=r"new entry has shape \(3,\)"):
        synk.set_value(x["a"], 0, np.zeros(3))


def test_collectives_compile_once_per_shape(caplog):
    x = per_device_values((4, 7))
    with compilations(caplog) as first:
        synk.all_reduce(x, "sum")
    assert first  # a new shape compiles
    with compilations(caplog) as again:
        for _ in range(3):
            synk.all_reduce(x + 1, "sum")
    assert again == []
    with compilations(caplog) as other:
        synk.all_reduce(per_device_values((4, 8)), "sum")
    assert other  # and another shape compiles anew


def test_a_value_without_one_entry_per_device_is_refused():
    with pytest.raises(ValueError, match=rf"x\['w'\] is not a per-device value.*\({N}\)"):
        synk.all_reduce({"w": np.ones((N + 1, 2))}, "avg")
    with pytest.raises(ValueError, match=r"unknown reduce op 'mean'"):
        synk.reduce(per_device_values(), "mean")
    with pytest.raises(TypeError, match=r"dtype int32, with reduce 'avg'"):
        synk.reduce(np.arange(N, dtype=np.int32), "avg")


# ------------------------------------------------------- per-device functions


def test_per_device_in_and_out_local_sgd():
    """Each device trains its own replica on its own share; averaging brings them together."""

    def sgd_step(w, x, y):
        grad = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        return w - 0.1 * grad

    local_step = synk.function(sgd_step, in_axes=("per_device", 0, 0), reduce="per_device")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * N, 3)).astype(np.float32)
    y = rng.normal(size=4 * N).astype(np.float32)
    w = synk.broadcast(np.zeros(3, np.float32))
    w = local_step(w, synk.process_share(x), synk.process_share(y))
    replicas = synk.gather(w)
    for i in range(N):  # replica i took one step on rows 4i .. 4i+3 only
        want = sgd_step(np.zeros(3, np.float32), x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4])
        np.testing.assert_allclose(replicas[i], want, rtol=1e-5, atol=1e-7)
    averaged = synk.all_reduce(w, "avg")
    np.testing.assert_allclose(synk.gather(averaged)[0], replicas.mean(0), rtol=1e-5)
    w = local_step(averaged, synk.process_share(x), synk.process_share(y))  # feeds straight back in
    assert w.shape == (N, 3)


def test_per_device_input_of_the_wrong_length_names_it():
    f = synk.function(lambda w, x: (x * w).sum(), in_axes=("per_device", 0), reduce="sum")
    with pytest.raises(ValueError, match=rf"`w` has in_axes 'per_device'.*\({N}\); found shape"):
        f(np.ones((N + 2, 3)), np.ones((4 * N, 3)))


def test_per_device_output_needs_an_even_batch():
    f = synk.function(lambda x: x.sum(), reduce="per_device")
    with pytest.raises(ValueError, match=r"has 'per_device' outputs.*does not divide"):
        f(np.ones(4 * N + 1))


# ------------------------------------------------------- synk.lax


def kmeans_step(x, centers):
    """One Lloyd iteration with sums and counts combined over devices."""
    d = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    onehot = jax.nn.one_hot(jnp.argmin(d, 1), centers.shape[0])
    sums = synk.lax.psum(onehot.T @ x)
    counts = synk.lax.psum(onehot.sum(0))
    return sums / jnp.maximum(counts, 1)[:, None]


def test_psum_inside_a_function_equals_serial():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16 * N, 2)).astype(np.float32)
    centers = x[:3].copy()
    f = synk.function(kmeans_step, in_axes=(0, None), reduce="avg")  # equal on every device
    got = f(synk.process_share(x), centers)
    np.testing.assert_allclose(got, f.serial(x, centers), rtol=1e-5, atol=1e-6)


def test_every_in_function_collective_and_serial_behaviour():
    def f(x):
        s = x.sum()
        return (
            synk.lax.psum(s),
            synk.lax.pmean(s),
            synk.lax.pmax(s),
            synk.lax.pmin(s),
            synk.lax.all_gather(s),
            synk.lax.device_index(),
        )

    g = synk.function(f, reduce="per_device")
    x = np.arange(2.0 * N, dtype=np.float32)
    psum, pmean, pmax, pmin, gathered, index = (synk.gather(o) for o in g(synk.process_share(x)))
    local = x.reshape(N, 2).sum(1)  # device i's sum
    np.testing.assert_allclose(psum, np.full(N, local.sum()))
    np.testing.assert_allclose(pmean, np.full(N, local.mean()))
    np.testing.assert_allclose(pmax, np.full(N, local.max()))
    np.testing.assert_allclose(pmin, np.full(N, local.min()))
    np.testing.assert_allclose(gathered, np.tile(local, (N, 1)))
    np.testing.assert_array_equal(index, np.arange(N))
    serial = g.serial(x)  # one device: the collectives see one entry
    total = x.sum()
    assert [float(v) for v in serial[:4]] == [total] * 4
    assert np.asarray(serial[4]).tolist() == [total] and int(serial[5]) == 0


def test_in_function_collectives_need_an_even_batch_and_one_slice():
    f = synk.function(lambda x: synk.lax.psum(x.sum()), reduce="per_device")
    with pytest.raises(ValueError, match=r"calls synk.lax collectives.*does not divide"):
        f(np.ones(4 * N + 1))
    g = synk.function(lambda x: synk.lax.psum(x.sum()), reduce="max", num_slices=2)
    with pytest.raises(ValueError, match=r"calls synk.lax collectives.*num_slices=2"):
        g(np.ones(4 * N))


# ------------------------------------------------------- what is compiled


def compiled_modules(code: str) -> list[tuple[str, str]]:
    """Run `code` in a fresh Python on 4 CPU devices and read what XLA compiled.

    XLA dumps each module it compiles. Returns, for each module with an
    all-reduce, its HLO text after XLA's partitioner (which makes the
    all-reduces, as GPUs run them) and after every optimisation (where the CPU
    compiler has promoted bf16 all-reduces to f32: it has no bf16 reduction),
    in compile order.
    """
    with tempfile.TemporaryDirectory() as dump:
        flags = f"--xla_dump_to={dump} --xla_dump_hlo_pass_re=spmd-partitioning"
        res = run_python(
            "import numpy as np, jax.numpy as jnp, synk\n" + code,
            SYNK_CPU_DEVICES="4",
            XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(),
        )
        assert res.returncode == 0, res.stderr[-3000:]
        modules = []
        for after in sorted(Path(dump).glob("*after_optimizations.txt")):
            stem = after.name.split(".")[:2]  # module_NNNN.name
            (partitioned,) = Path(dump).glob(".".join(stem) + ".*after_spmd-partitioning*")
            if "all-reduce" in after.read_text():
                modules.append((partitioned.read_text(), after.read_text()))
        return modules


def all_reduces(hlo: str) -> list[str]:
    """The result type of each all-reduce in HLO text, without its layout."""
    types = re.findall(r"= (\(.*?\)|\S+) all-reduce(?:-start)?\(", hlo)
    return [re.sub(r"\{[\d,]*\}", "", t) for t in types]


def test_comm_dtype_on_a_function_travels_in_bfloat16():
    f = synk.function(lambda x: (x.mean(0), x.sum(0)), reduce=("avg", "sum"), comm_dtype="bfloat16")
    x = 1 + np.random.default_rng(2).random((8 * N + 2, 4)).astype(np.float32)
    mean, total = f(synk.process_share(x))
    assert mean.dtype == np.float32 and total.dtype == np.float32
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-2)
    np.testing.assert_allclose(total, x.sum(0), rtol=1e-2)
    # The program as XLA's partitioner makes it (before the CPU compiler
    # promotes bf16 all-reduces to f32): the values travel in bfloat16.
    modules = compiled_modules("""
f = synk.function(lambda x: (x.mean(0), x.sum(0)), reduce=("avg", "sum"), comm_dtype="bfloat16")
f(synk.process_share(1 + np.arange(72, dtype=np.float32).reshape(18, 4)))
""")
    assert [all_reduces(partitioned) for partitioned, _ in modules] == [["bf16[4]"] * 2]


def test_comm_dtype_on_reduce_and_all_reduce():
    x = per_device_values((5,)) * 1.001
    for fn in (synk.reduce, synk.all_reduce):
        got = fn(x, "avg", comm_dtype=jnp.bfloat16)
        assert got.dtype == np.float32
        value = np.asarray(got if fn is synk.reduce else synk.gather(got)[0])
        np.testing.assert_allclose(value, x.mean(0), rtol=1e-2)
    modules = compiled_modules("""
x = np.arange(20, dtype=np.float32).reshape(4, 5)
synk.reduce(x, "avg", comm_dtype=jnp.bfloat16)
synk.all_reduce(x, "avg", comm_dtype=jnp.bfloat16)
""")
    assert [all_reduces(partitioned) for partitioned, _ in modules] == [["bf16[5]"], ["bf16[5]"]]


def test_k_outputs_of_one_op_are_one_all_reduce():
    modules = compiled_modules("""
x = np.arange(8, dtype=np.float32).reshape(4, 2)
synk.all_reduce([x * i for i in range(5)], "sum")
synk.reduce([x * i for i in range(5)], "max")
""")
    five = lambda t: f"({', '.join([t] * 5)})"  # noqa: E731
    # max travels as integers in float order (NaN kept): one all-reduce all the same.
    assert [all_reduces(after) for _, after in modules] == [[five("f32[2]")], [five("s32[2]")]]
