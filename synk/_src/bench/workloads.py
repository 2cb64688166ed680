"""What the benchmarks run: training steps, their batches, and the same steps by hand.

Called by the subcommand modules: an MLP, a classifier and a conv net, their
batches, the meshes, and the hand-written forms of the steps. Calls JAX and
numpy only: the hand-written variants are what synk is compared with, so they
use no synk at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

AXIS = "d"  # the hand-written variants' mesh axis
D_IN, D_OUT = 16, 4
CLASSES = 10  # of the classifier

# A step's parameters by name, as the step sees them: traced.
Params = Mapping[str, jax.Array]
# ... as a benchmark holds them: numpy arrays on the host, or jax.Arrays on the devices.
HeldParams = Mapping[str, ArrayLike]
# What a step returns: (the mean loss, its gradient by parameter name).
LossAndGrads = tuple[jax.Array, dict[str, jax.Array]]


# --------------------------------------------------------------------------
# The computation: value_and_grad of an MLP's mean squared error


def init_mlp(sizes: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """MLP parameters ``w0, b0, w1, b1, ...`` as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        params[f"w{i}"] = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        params[f"b{i}"] = np.zeros(b, np.float32)
    return params


def make_batch(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, D_IN), dtype=np.float32)
    return x, rng.standard_normal((rows, D_OUT), dtype=np.float32)


def train_step(params: Params, x: jax.Array, y: jax.Array) -> LossAndGrads:
    """The single-device step: (mean loss, its gradients) over the rows."""
    return jax.value_and_grad(mlp_loss)(params, x, y)


def mlp_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error of a tanh MLP over the rows of ``x``."""
    layers = len(params) // 2
    h = x
    for i in range(layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < layers - 1:
            h = jnp.tanh(h)
    return jnp.mean((h - y) ** 2)


# --------------------------------------------------------------------------
# A classifier: value_and_grad of a one-hidden-layer MLP's softmax cross-entropy


def init_classifier(key: jax.Array, features: int, hidden: int) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (features, hidden), jnp.float32) / np.sqrt(features),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jax.random.normal(k2, (hidden, CLASSES), jnp.float32) / np.sqrt(hidden),
        "b2": jnp.zeros((CLASSES,), jnp.float32),
    }


def classifier_step(params: Params, x: jax.Array, y: jax.Array) -> LossAndGrads:
    """The single-device step: (mean loss, its gradients) over the rows; y holds classes."""
    return jax.value_and_grad(classifier_loss)(params, x, y)


def classifier_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# --------------------------------------------------------------------------
# A conv net: value_and_grad of two strided convolutions and a dense layer


def init_cnn(image: int, channels: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Parameters of `cnn_loss` for ``image`` x ``image`` x 1 inputs, as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    c1, c2 = channels
    half = -(-image // 2)  # a stride-2 "SAME" convolution's output side: ceil(side / 2)
    side = -(-half // 2)

    def normal(*shape: int) -> np.ndarray:  # scaled by the fan-in
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)

    return {
        "k1": normal(3, 3, 1, c1),
        "b1": np.zeros(c1, np.float32),
        "k2": normal(3, 3, c1, c2),
        "b2": np.zeros(c2, np.float32),
        "w": normal(side * side * c2, CLASSES),
        "b": np.zeros(CLASSES, np.float32),
    }


def make_images(rows: int, image: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` random ``image`` x ``image`` x 1 float32 images and int32 class labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, image, image, 1), dtype=np.float32)
    return x, rng.integers(0, CLASSES, rows).astype(np.int32)


def cnn_step(params: Params, x: jax.Array, y: jax.Array) -> LossAndGrads:
    """The single-device step: (mean loss, its gradients) over the images; y holds classes."""
    return jax.value_and_grad(cnn_loss)(params, x, y)


def cnn_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy of conv(3x3, stride 2) -> relu -> conv -> relu -> dense."""
    dims = ("NHWC", "HWIO", "NHWC")
    h = x
    for k, b in (("k1", "b1"), ("k2", "b2")):
        h = lax.conv_general_dilated(h, params[k], (2, 2), "SAME", dimension_numbers=dims)
        h = jax.nn.relu(h + params[b])
    logits = h.reshape(h.shape[0], -1) @ params["w"] + params["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# --------------------------------------------------------------------------
# Meshes and global arrays, as hand-written JAX builds them


def mesh_of(devices: Sequence[jax.Device]) -> Mesh:
    return Mesh(np.array(devices, dtype=object), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def by_rows(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def global_arrays(tree: Any, sharding: NamedSharding) -> Any:
    """Global arrays of host values that every process holds whole (any process count)."""
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(a.shape, sharding, lambda i: a[i]), tree
    )


# --------------------------------------------------------------------------
# The same step written by hand


def hand_written(mesh: Mesh, step: Callable = train_step) -> jax.stages.Wrapped:
    """The whole step under XLA's partitioner: jit with in_shardings (jit places numpy)."""
    return jax.jit(step, in_shardings=(replicated(mesh), by_rows(mesh), by_rows(mesh)))


def hand_written_padded(
    mesh: Mesh, rows: int, groups: int
) -> tuple[jax.stages.Wrapped, Callable[[np.ndarray], np.ndarray]]:
    """`hand_written` for a batch the devices do not divide: each process pads its
    share (host rows) with zeros to an even split, and the jit cuts the real rows back."""
    local, per_group = rows // groups, mesh.size // groups
    padded = -(-local // per_group) * per_group  # rows of each process's padded share

    def cut(x: jax.Array) -> jax.Array:
        parts = [x[g * padded : g * padded + local] for g in range(groups)]
        return parts[0] if groups == 1 else jnp.concatenate(parts)

    jitted = jax.jit(
        lambda p, x, y: train_step(p, cut(x), cut(y)),
        in_shardings=(replicated(mesh), by_rows(mesh), by_rows(mesh)),
    )

    def pad(x: np.ndarray) -> np.ndarray:
        extra = np.zeros((padded - x.shape[0], *x.shape[1:]), x.dtype)
        return np.concatenate([x, extra])

    return jitted, pad


def hand_written_shard_map(mesh: Mesh, step: Callable = train_step) -> jax.stages.Wrapped:
    """The per-device form: jit(shard_map) with in_shardings (jit places numpy)."""
    return jax.jit(
        sharded(mesh, step), in_shardings=(replicated(mesh), by_rows(mesh), by_rows(mesh))
    )


def sharded(mesh: Mesh, step: Callable) -> Callable:
    """``step(params, x, y)`` under shard_map: rows split, outputs ``pmean``'d; not jitted."""

    def body(params: Params, x: jax.Array, y: jax.Array) -> Any:
        # Without the cast, the gradient w.r.t. the replicated params would be
        # psum'd implicitly by shard_map's transpose: n times too large.
        params = jax.tree_util.tree_map(lambda p: lax.pcast(p, AXIS, to="varying"), params)
        return lax.pmean(step(params, x, y), AXIS)

    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P())


def hand_written_indexed(mesh: Mesh) -> jax.stages.Wrapped:
    """The hand-written step on rows picked by index from data already on every device."""
    everywhere, rows = replicated(mesh), by_rows(mesh)

    def picked(
        params: Params, data_x: jax.Array, data_y: jax.Array, idx: jax.Array
    ) -> LossAndGrads:  # idx sharded: each device its rows
        x, y = (jnp.take(d, idx, axis=0, mode="clip") for d in (data_x, data_y))
        return train_step(params, x, y)

    return jax.jit(picked, in_shardings=(everywhere, everywhere, everywhere, rows))


def pmapped(devices: Sequence[jax.Device]) -> Callable:
    """The step under ``jax.pmap``: a global batch, split into one block of rows per device.

    Its outputs are one identical copy per device.
    """
    n = len(devices)
    mapped = jax.pmap(
        lambda p, xs, ys: lax.pmean(train_step(p, xs, ys), AXIS),
        axis_name=AXIS,
        in_axes=(None, 0, 0),
        devices=devices,
    )

    def call(p: HeldParams, x: np.ndarray, y: np.ndarray) -> Any:
        return mapped(p, x.reshape(n, -1, *x.shape[1:]), y.reshape(n, -1, *y.shape[1:]))

    return call
