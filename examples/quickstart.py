"""Quickstart: train an MLP on every device with one ``@synk.function``.

This trains a small multilayer perceptron on scikit-learn's bundled digits
data set (8x8 images of handwritten digits, 1,797 rows, no download) and shows
the core idea of synk:

* the loss and its gradient are written for ONE device and a whole batch;
* ``@synk.function`` slices the batch across every device and runs the whole
  function under XLA's partitioner, so the answer equals the single-device
  (serial) answer, even when the device count does not divide the batch size
  (the default batch of 100 rows over 8 devices is uneven);
* the optimiser (optax's adam) runs outside, on the replicated gradients.

It runs on every device synk sees: the GPUs where present, else 8 simulated
CPU devices.

Run it with::

    make demo                                   # sets up .venv, then runs this
    python examples/quickstart.py               # default: 30 epochs
    python examples/quickstart.py --epochs 5 --batch-size 64 --seed 1
    python examples/quickstart.py --quiet       # no progress bar (CI, logs)

It exits with a non-zero status if the test accuracy is below 90%.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import synk

# First, before anything uses JAX's devices (importing it is fine): simulate 8
# CPU devices. Where a GPU backend is present, the GPUs are used and this only
# affects the CPU backend.
synk.init(cpu_devices=8)

MIN_ACCURACY = 0.9


# --------------------------------------------------------------------------
# The model: plain JAX, nothing synk-specific.


def init_params(key, sizes):
    """Weights and biases of an MLP with layer widths ``sizes``."""
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (n_in, n_out), jnp.float32) * jnp.sqrt(2.0 / n_in)
        params.append({"w": w, "b": jnp.zeros(n_out, jnp.float32)})
    return params


def predict(params, x):
    """Logits for a batch of rows ``x``."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss(params, x, y):
    """Softmax cross-entropy, averaged over the rows of the batch."""
    logits = predict(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# --------------------------------------------------------------------------
# The synk functions: single-device code, run on every device.


# in_axes: the parameters are broadcast (None: every device sees all of them),
# x and y are sliced along axis 0 (each device gets its share of the rows).
# Without a reduce, the whole step runs under XLA's partitioner: the loss and
# the gradients are those of the whole batch, as on one device.
@synk.function(in_axes=(None, 0, 0))
def step(params, x, y):
    return jax.value_and_grad(loss)(params, x, y)


# A count is a sum over rows: reduce="sum" says so, and each device counts its
# own rows; int32 keeps it exact. Dividing by the number of rows happens on the host.
@synk.function(in_axes=(None, 0, 0), reduce="sum")
def n_correct(params, x, y):
    return jnp.sum(jnp.argmax(predict(params, x), axis=-1) == y, dtype=jnp.int32)


# --------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="rows per step; need not be a multiple of the device count",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for init and shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (CI, logs)")
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.batch_size < 1:
        parser.error("--epochs must be >= 0 and --batch-size >= 1")
    return args


def load_data(seed):
    """Digits scaled to [0, 1], split 75/25 into train and test sets."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def check_against_serial(params, x, y):
    """One synk step equals the same step run on one device (step.serial)."""
    value, grads = step(params, x, y)
    ref_value, ref_grads = step.serial(params, x, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def main(argv=None):
    args = parse_args(argv)
    n_dev = synk.device_count()
    print(f"synk: {n_dev} {synk.devices()[0].platform} device(s)")

    x_train, x_test, y_train, y_test = load_data(args.seed)
    n_train = len(x_train)
    batch = min(args.batch_size, n_train)
    print(f"digits: {n_train} train rows, {len(x_test)} test rows, batch {batch}", end="")
    if batch % n_dev:
        # Uneven: some devices get one row more than others; the result is still exact.
        print(f" ({batch} = {batch // n_dev} x {n_dev} devices + {batch % n_dev} rows)")
    else:
        print()

    params = init_params(jax.random.key(args.seed), [64, 128, 10])
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    # The parallel step gives the serial answer, uneven batch included.
    check_against_serial(params, x_train[:batch], y_train[:batch])
    print(f"check: synk step on {n_dev} devices matches step.serial on one device", flush=True)

    @jax.jit
    def update(params, opt_state, grads):
        # The optimiser runs outside the synk function, on the replicated grads.
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    epochs = tqdm(range(args.epochs), desc="train", unit="epoch", disable=args.quiet)
    train_loss = float("nan")
    for _ in epochs:
        order = rng.permutation(n_train)  # a fresh shuffle each epoch
        sums = []
        for i in range(0, n_train, batch):
            idx = order[i : i + batch]  # the last batch of an epoch may be shorter
            value, grads = step(params, x_train[idx], y_train[idx])
            params, opt_state = update(params, opt_state, grads)
            sums.append(value * len(idx))  # stays on the device: no sync per step
        train_loss = float(sum(sums)) / n_train  # the epoch's mean loss over rows
        epochs.set_postfix(loss=f"{train_loss:.4f}")
    elapsed = time.perf_counter() - start

    accuracy = int(n_correct(params, x_test, y_test)) / len(x_test)
    print(f"trained {args.epochs} epochs in {elapsed:.1f} s; final train loss {train_loss:.4f}")
    print(f"test accuracy: {accuracy:.2%} ({len(x_test)} rows)")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"test accuracy {accuracy:.2%} is below {MIN_ACCURACY:.0%}")


if __name__ == "__main__":
    main()
