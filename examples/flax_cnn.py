"""A Flax NNX CNN with explicit reductions: synchronised batch norm and per-row dropout.

This trains a small convolutional network (two 3x3 conv layers, each followed
by batch norm, then dropout and a linear classifier) on scikit-learn's bundled
digits (8x8 images, 1,797 rows, no download), written with Flax NNX and
optax. Without ``reduce`` a Flax model needs none of what follows (see
``flax_mnist_tutorial.py``); this example shows the per-device path, which
``reduce="avg"`` asks for (and which ``num_slices`` and in-function
collectives need), and how a Flax model fits it:

* the model travels as its ``nnx.split`` state (a pytree of arrays),
  broadcast with ``in_axes=None``, and is merged again inside the function;
* ``nnx.BatchNorm(..., axis_name=synk.lax.axis_name)`` computes its statistics
  over the whole batch, across every device, as one device would: the
  function's results do not depend on how the batch is split. Such a function
  needs a batch the device count divides (the default, 64, does for 1, 2, 4
  and 8 devices);
* dropout masks are drawn per row from ``synk.lax.row_keys``: row i of a
  batch always gets the same mask, on any device count and in ``f.serial``;
* gradients are taken inside the function and averaged over devices, which is
  exact (batch norm included); optax's adam runs outside on the result;
* evaluation uses the running statistics (no collective), so the test set
  (450 rows) need not divide over the devices.

One training step is checked against ``step.serial`` (the same step on one
device): loss, gradients and the updated batch statistics. It runs on every
device synk sees: the GPUs where present, else 8 simulated CPU devices.

Run it with::

    python examples/flax_cnn.py                   # default: 10 epochs, batch 64
    python examples/flax_cnn.py --epochs 5 --batch-size 128 --seed 1
    python examples/flax_cnn.py --quiet           # no progress bar (CI, logs)
    SYNK_CPU_DEVICES=4 mpiexec -n 2 python examples/flax_cnn.py   # 2 processes x 4 devices

Under ``mpiexec`` every process makes the same shuffles and passes its own
share of each batch; the result is the same as in one process. It exits with
a non-zero status if the test accuracy is below 95%.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import synk

# Before anything uses JAX's devices. SYNK_CPU_DEVICES (if set) wins, so that
# `SYNK_CPU_DEVICES=4 mpiexec -n 2 ...` gives each process 4 devices.
synk.init(cpu_devices=int(os.environ.get("SYNK_CPU_DEVICES", 8)))

RANK, PROCESSES = synk.process_index(), synk.process_count()
MIN_ACCURACY = 0.95


# --------------------------------------------------------------------------
# The model: Flax NNX. The only synk-specific parts are the batch norm's
# axis_name and the per-row dropout keys.


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dropout_rate: float = 0.25):
        # No conv bias: the batch norm after it would cancel it (its gradient is
        # zero, and adam would turn float rounding noise into full steps).
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), use_bias=False, rngs=rngs)
        self.norm1 = nnx.BatchNorm(16, axis_name=synk.lax.axis_name, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), use_bias=False, rngs=rngs)
        self.norm2 = nnx.BatchNorm(32, axis_name=synk.lax.axis_name, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)
        self.out = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

    def __call__(self, x, row_keys=None):
        """Logits for images ``x`` (rows, 8, 8, 1).

        Training mode when ``row_keys`` (one dropout key per row) is given:
        batch statistics, updated running averages, dropout. Otherwise
        inference: running averages, no dropout.
        """
        train = row_keys is not None
        x = jax.nn.relu(self.norm1(self.conv1(x), use_running_average=not train))
        x = jax.nn.relu(self.norm2(self.conv2(x), use_running_average=not train))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2)).reshape(len(x), -1)
        if train:
            # One mask per row, from that row's key: the same on any device count.
            x = jax.vmap(lambda key, row: self.dropout(row, rngs=key))(row_keys, x)
        return self.out(x)


# --------------------------------------------------------------------------
# The synk functions. The model travels as nnx.split gives it: `graphdef`, its
# structure (a pytree without array leaves: part of the cache key, as under
# jax.jit), and its arrays, the trained parameters and the batch statistics.


def loss(graphdef, params, batch_stats, key, t, x, y):
    """Mean cross-entropy over the rows, and the updated batch statistics.

    ``key`` and the step number ``t`` give this step's dropout keys, one per row.
    """
    # copy=True: fresh Variables, made in the trace that updates them (batch
    # norm's running averages). f.serial needs it: flax refuses to update a
    # Variable made in another trace.
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = model(x, row_keys=synk.lax.row_keys(jax.random.fold_in(key, t)))
    value = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return value, nnx.state(model, nnx.BatchStat)


# The model, the dropout key and the step number broadcast; images and labels
# sliced. Every output is averaged over devices: the loss and its gradients
# (w.r.t. params) are means over rows, and the batch statistics are the same on
# every device already.
step = synk.function(
    jax.value_and_grad(loss, argnums=1, has_aux=True),
    in_axes=(None, None, None, None, None, 0, 0),
    reduce="avg",
)


# Inference: running averages only, so no collective and any batch length.
@synk.function(in_axes=(None, None, None, 0, 0), reduce="sum")
def n_correct(graphdef, params, batch_stats, x, y):
    model = nnx.merge(graphdef, params, batch_stats)
    return jnp.sum(jnp.argmax(model(x), axis=-1) == y, dtype=jnp.int32)


# --------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="rows per step, a multiple of the device count (batch norm talks across devices)",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="adam's learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, dropout, shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (CI, logs)")
    args = parser.parse_args(argv)
    n = synk.device_count()
    if args.batch_size < n or args.batch_size % n:
        parser.error(f"--batch-size must be a positive multiple of the device count ({n})")
    if args.epochs < 0:
        parser.error("--epochs must be >= 0")
    return args


def load_data(seed):
    """Digits as 8x8x1 images scaled to [0, 1], split 75/25 into train and test sets."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def check_against_serial(model, key, x, y):
    """One synk step equals the same step on one device (step.serial)."""
    got = step(*model, key, 0, *synk.process_share((x, y)))
    want = step.serial(*model, key, 0, x, y)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def main(argv=None):
    args = parse_args(argv)
    say = print if RANK == 0 else (lambda *a, **k: None)
    n_dev = synk.device_count()
    say(f"synk: {n_dev} {synk.devices()[0].platform} device(s), {PROCESSES} process(es)")

    x_train, x_test, y_train, y_test = load_data(args.seed)
    n_train, batch = len(x_train), args.batch_size
    steps = n_train // batch  # the rows left over from each shuffle wait for the next epoch
    say(
        f"digits: {n_train} train rows, {len(x_test)} test rows; batch {batch} "
        f"({batch // n_dev} rows per device), {steps} steps per epoch"
    )

    key = jax.random.key(args.seed)  # dropout: folded with the step number, then each row
    graphdef, params, batch_stats = nnx.split(CNN(nnx.Rngs(args.seed)), nnx.Param, nnx.BatchStat)
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, grads):
        # The optimiser runs outside the synk function, on the averaged gradients.
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    try:
        model = (graphdef, params, batch_stats)
        check_against_serial(model, key, x_train[:batch], y_train[:batch])
    except AssertionError as e:
        raise SystemExit(f"the step on {n_dev} devices differs from step.serial:\n{e}") from None
    say(
        f"check: synk step on {n_dev} devices matches step.serial on one device "
        "(loss, gradients, batch statistics)",
        flush=True,
    )

    rng = np.random.default_rng(args.seed)  # the same shuffles on every process
    start = time.perf_counter()
    bar = tqdm(range(args.epochs), desc="train", unit="epoch", disable=args.quiet or RANK != 0)
    train_loss, t = float("nan"), 0
    for _ in bar:
        order = rng.permutation(n_train)
        losses = []
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = synk.process_share((x_train[idx], y_train[idx]))
            (value, batch_stats), grads = step(graphdef, params, batch_stats, key, t, xb, yb)
            params, opt_state = update(params, opt_state, grads)
            losses.append(value)  # stays on the device: no sync per step
            t += 1
        train_loss = float(jnp.mean(jnp.stack(losses))) if losses else float("nan")
        bar.set_postfix(loss=f"{train_loss:.4f}")
    elapsed = time.perf_counter() - start

    x_mine, y_mine = synk.process_share((x_test, y_test))
    accuracy = int(n_correct(graphdef, params, batch_stats, x_mine, y_mine)) / len(x_test)
    say(f"trained {args.epochs} epochs in {elapsed:.1f} s; final train loss {train_loss:.4f}")
    say(f"test accuracy: {accuracy:.2%} ({len(x_test)} rows)")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"test accuracy {accuracy:.2%} is below {MIN_ACCURACY:.0%}")


if __name__ == "__main__":
    main()
