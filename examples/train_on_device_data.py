"""Train on data that lives on the devices: ``synk.data`` and index batches.

The quickstart sends every batch from the host. Here the training set is put
on the devices ONCE with ``synk.data``, and each step passes a batch as
indices: ``step(params, X[idx], Y[idx])``. Only ``idx`` (int32, 4 bytes a
row) travels from host to device per call; each device gathers its own rows
of the batch on the device. It shows:

* ``X, Y = synk.data(x_train), synk.data(y_train)``: replicated, every device
  holds all rows (fastest indexing);
* shuffled index batches ``idx = perm[i:i + batch]`` each epoch, with a batch
  the device count need not divide (default 100 rows over 8 devices);
* one step on ``X[idx]`` equals ``step.serial`` on the numpy rows
  ``x_train[idx]`` (checked before training);
* ``synk.data(x_test, sharded=True)``: the test set split across the devices
  (each holds about 1/8 of the rows), evaluated with a ``reduce="sum"``
  counting function over ``Xtest[:]``.

It uses scikit-learn's bundled digits data set (no download) and runs on every
device synk sees: the GPUs where present, else 8 simulated CPU devices.

Run it with::

    python examples/train_on_device_data.py             # default: 20 epochs
    python examples/train_on_device_data.py --epochs 5 --batch-size 64 --seed 1
    python examples/train_on_device_data.py --quiet     # no progress bar (CI, logs)

It exits with a non-zero status if the test accuracy is below 90%.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import synk

synk.init(cpu_devices=8)  # before anything uses JAX's devices; a no-op on GPUs

MIN_ACCURACY = 0.9


def init_params(key, sizes=(64, 128, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def predict(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(predict(params, x), y).mean()


# x and y are sliced over the devices: arrays, or batches X[idx] of a synk.Data.
@synk.function(in_axes=(None, 0, 0))
def step(params, x, y):
    return jax.value_and_grad(loss)(params, x, y)


@synk.function(in_axes=(None, 0, 0), reduce="sum")
def n_correct(params, x, y):
    return jnp.sum(jnp.argmax(predict(params, x), axis=-1) == y, dtype=jnp.int32)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per step (any size)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init and shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (CI, logs)")
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.batch_size < 1:
        parser.error("--epochs must be >= 0 and --batch-size >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    print(f"synk: {synk.device_count()} {synk.devices()[0].platform} device(s)")

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=args.seed, stratify=y
    )
    n_train, batch = len(x_train), min(args.batch_size, len(x_train))

    # Put the data on the devices once. From here on, a batch is a list of rows.
    X, Y = synk.data(x_train), synk.data(y_train)
    Xtest, Ytest = synk.data(x_test, sharded=True), synk.data(y_test, sharded=True)
    print(X)
    print(Xtest)

    params = init_params(jax.random.key(args.seed))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(args.seed)

    # One step on device rows X[idx] equals the serial step on the host rows.
    idx = rng.permutation(n_train)[:batch]
    value, grads = step(params, X[idx], Y[idx])
    ref_value, ref_grads = step.serial(params, x_train[idx], y_train[idx])
    for got, want in zip(jax.tree.leaves((value, grads)), jax.tree.leaves((ref_value, ref_grads))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    print(f"check: step(params, X[idx], Y[idx]) matches step.serial on {batch} host rows")

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    start = time.perf_counter()
    epochs = tqdm(range(args.epochs), desc="train", unit="epoch", disable=args.quiet)
    train_loss = float("nan")
    for _ in epochs:
        perm = rng.permutation(n_train)
        sums = []
        for i in range(0, n_train, batch):
            idx = perm[i : i + batch]  # only these indices go to the devices
            value, grads = step(params, X[idx], Y[idx])
            params, opt_state = update(params, opt_state, grads)
            sums.append(value * len(idx))
        train_loss = float(sum(sums)) / n_train
        epochs.set_postfix(loss=f"{train_loss:.4f}")
    elapsed = time.perf_counter() - start

    # The sharded test set: each device counts the rows it is given; "sum" adds them.
    accuracy = int(n_correct(params, Xtest[:], Ytest[:])) / len(Xtest)
    print(f"trained {args.epochs} epochs in {elapsed:.1f} s; final train loss {train_loss:.4f}")
    print(f"test accuracy: {accuracy:.2%} ({len(Xtest)} rows)")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"test accuracy {accuracy:.2%} is below {MIN_ACCURACY:.0%}")


if __name__ == "__main__":
    main()
