"""Synchronous SGD, local SGD and elastic averaging (EASGD) with per-device replicas.

A linear softmax classifier on scikit-learn's bundled digits data (no
download), trained three ways on the same sequence of batches:

(a) synchronous SGD: one ``@synk.function(in_axes=(None, 0, 0))`` computes
    the gradient of the whole batch; every device applies the same update;
(b) local SGD: each device keeps its own replica of the weights
    (``w = synk.broadcast(w0)``, a per-device value), takes SGD steps on its
    own share of each batch with a function that has ``in_axes="per_device"``
    and ``reduce="per_device"``, and every H steps the replicas are averaged
    with ``synk.all_reduce(w, "avg")``;
(c) elastic averaging SGD (EASGD, Zhang, Choromanska and LeCun 2015): every
    tau steps each replica is pulled toward a center variable (passed
    broadcast into the per-device step), and the center moves toward the
    replicas' mean (``synk.reduce(w, "avg")``). The center is the model.

It first checks that one local step on every replica followed by averaging
is one synchronous step, then prints the test accuracy of each method. The
batch length must be a multiple of the device count (default 64). It runs
on every device synk sees: the GPUs where present, else 8 simulated CPU
devices.

Run it with::

    python examples/local_sgd.py                  # 10 epochs, batches of 64, H = tau = 4
    python examples/local_sgd.py --epochs 20 --every 8 --lr 0.3 --seed 1
    python examples/local_sgd.py --quiet          # no progress bars (CI, logs)
    SYNK_CPU_DEVICES=4 mpiexec -n 2 python examples/local_sgd.py   # 2 processes x 4 devices

Under ``mpiexec`` every process draws the same batches and passes its own
share of each. It exits with a non-zero status if a test accuracy is below
85%.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import synk

# Before anything uses JAX's devices. SYNK_CPU_DEVICES (if set) wins, so that
# `SYNK_CPU_DEVICES=4 mpiexec -n 2 ...` gives each process 4 devices.
synk.init(cpu_devices=int(os.environ.get("SYNK_CPU_DEVICES", 8)))

RANK, PROCESSES = synk.process_index(), synk.process_count()
MIN_ACCURACY = 0.85
BETA = 0.9  # EASGD: how far the center moves toward the replicas' mean
ALPHA = BETA / synk.device_count()  # EASGD: how far each replica moves toward the center


def loss(w, x, y):
    logits = x @ w["w"] + w["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def sgd_update(w, grads, lr):
    return jax.tree.map(lambda p, g: p - lr * g, w, grads)


def sgd_step(w, x, y, lr):
    return sgd_update(w, jax.grad(loss)(w, x, y), lr)


def elastic_sgd_step(w, center, x, y, lr):
    """EASGD's exchange for one replica: move toward the center, then an SGD step."""
    w = jax.tree.map(lambda p, c: p - ALPHA * (p - c), w, center)
    return sgd_step(w, x, y, lr)


# (a) The gradient of the whole batch: weights broadcast, rows sliced, "avg".
grad_step = synk.function(lambda w, x, y: jax.grad(loss)(w, x, y), in_axes=(None, 0, 0))

# (b, c) Per-device replicas in and out. A per-device output means that each
# device runs the function exactly once on an equal share of the rows, so
# these need a batch length that the device count divides. lr (a Python
# number) is broadcast.
local_step = synk.function(sgd_step, in_axes=("per_device", 0, 0, None), reduce="per_device")
elastic_step = synk.function(
    elastic_sgd_step, in_axes=("per_device", None, 0, 0, None), reduce="per_device"
)


@synk.function(in_axes=(None, 0, 0), reduce="sum")
def n_correct(w, x, y):
    return jnp.sum(jnp.argmax(x @ w["w"] + w["b"], axis=-1) == y, dtype=jnp.int32)


@jax.jit
def move_center(center, mean):
    return jax.tree.map(lambda c, m: c + BETA * (m - c), center, mean)


# --------------------------------------------------------------------------
# The three ways to train; each takes the same iterable of (x, y) batches.


def train_sync(w, batches, lr):
    for x, y in batches:
        w = sgd_update(w, grad_step(w, x, y), lr)  # the gradient is replicated
    return w


def train_local(w, batches, lr, every):
    w = synk.broadcast(w)  # one replica per device: leading axis device_count()
    for t, (x, y) in enumerate(batches, 1):
        w = local_step(w, x, y, lr)  # replica i: one SGD step on device i's rows
        if t % every == 0:
            w = synk.all_reduce(w, "avg")  # model averaging: every replica gets the mean
    return synk.reduce(w, "avg")


def train_easgd(w, batches, lr, every):
    center, w = w, synk.broadcast(w)
    for t, (x, y) in enumerate(batches, 1):
        if t % every:
            w = local_step(w, x, y, lr)
        else:  # the elastic exchange, from the replicas as they were before it
            mean = synk.reduce(w, "avg")
            w = elastic_step(w, center, x, y, lr)
            center = move_center(center, mean)
    return center


def check_one_step(w, x, y, lr):
    """One local step on every replica, then averaging, is one synchronous SGD step.

    Each device's share is the same size, so the mean of the devices' mean
    gradients is the whole batch's mean gradient.
    """
    sync = sgd_update(w, grad_step(w, x, y), lr)
    local = synk.reduce(local_step(synk.broadcast(w), x, y, lr), "avg")
    for a, b in zip(jax.tree.leaves(sync), jax.tree.leaves(local), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------


def batches(x, y, epochs, batch, seed):
    """Shuffled batches of exactly ``batch`` rows (the rest of each epoch is dropped)."""
    rng = np.random.default_rng(seed)  # the same batches for every method and process
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            yield (
                synk.process_share(x[idx]),
                synk.process_share(y[idx]),
            )  # every process passes its own share


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="a multiple of the device count")
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate")
    parser.add_argument("--every", type=int, default=4, help="H and tau: steps between exchanges")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars (CI, logs)")
    args = parser.parse_args(argv)
    n = synk.device_count()
    if args.batch_size < n or args.batch_size % n:
        parser.error(f"--batch-size must be a positive multiple of the device count ({n})")
    if args.epochs < 1 or args.every < 1 or args.lr <= 0:
        parser.error("need --epochs >= 1, --every >= 1 and --lr > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    say = print if RANK == 0 else (lambda *a, **k: None)
    n_dev = synk.device_count()
    say(f"synk: {n_dev} {synk.devices()[0].platform} device(s), {PROCESSES} process(es)")

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=args.seed, stratify=y
    )
    steps = args.epochs * (len(x_train) // args.batch_size)
    say(
        f"digits: {len(x_train)} train rows, {len(x_test)} test rows; {steps} steps of "
        f"{args.batch_size} rows ({args.batch_size // n_dev} per device), every={args.every}"
    )

    w0 = {"w": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)}
    methods = {
        "synchronous SGD": lambda data: train_sync(w0, data, args.lr),
        f"local SGD (H={args.every})": lambda data: train_local(w0, data, args.lr, args.every),
        f"EASGD (tau={args.every})": lambda data: train_easgd(w0, data, args.lr, args.every),
    }
    check_one_step(w0, *next(batches(x_train, y_train, 1, args.batch_size, args.seed)), args.lr)
    say("check: one local step + averaging equals one synchronous step")
    failed = []
    for name, train in methods.items():
        data = batches(x_train, y_train, args.epochs, args.batch_size, args.seed)
        bar = tqdm(data, desc=name, total=steps, unit="step", disable=args.quiet or RANK != 0)
        t0 = time.perf_counter()
        w = train(bar)
        accuracy = int(n_correct(w, synk.process_share(x_test), synk.process_share(y_test))) / len(
            x_test
        )
        say(f"{name}: test accuracy {accuracy:.2%} ({time.perf_counter() - t0:.2f} s)")
        if accuracy < MIN_ACCURACY:
            failed.append(f"{name}: {accuracy:.2%}")
    if failed:
        raise SystemExit(f"test accuracy below {MIN_ACCURACY:.0%}: " + ", ".join(failed))


if __name__ == "__main__":
    main()
