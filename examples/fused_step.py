"""A training step fused into one jax.jit: the gradient of a synk loss and the update.

The loss is a ``synk.function``; the step that differentiates it and applies
optax's adam is an ordinary ``jax.jit``, so each step is one executable with
one all-reduce (the gradients), where calling a synk step and then a jitted
update makes two. Inside ``jax.jit`` every value is global: in one process the
batch is simply passed, and under ``mpiexec`` each process turns its share of
the batch into the global batch with ``synk.global_batch``.

It trains the digits MLP of ``quickstart.py`` (scikit-learn's digits, no
download), checks the first fused step against the same step on one device,
and reports the test accuracy. It runs on every device synk sees: the GPUs
where present, else 8 simulated CPU devices.

Run it with::

    python examples/fused_step.py                  # default: 20 epochs, batch 100
    python examples/fused_step.py --epochs 5 --quiet
    SYNK_CPU_DEVICES=4 mpiexec -n 2 python examples/fused_step.py   # 2 processes x 4 devices

Under ``mpiexec`` every process makes the same shuffles and passes its own
share; the results equal one process's. It exits with a non-zero status if
the first step differs from the single-device step or if the test accuracy is
below 90%.
"""

from __future__ import annotations

import argparse
import itertools
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

synk.init(cpu_devices=int(os.environ.get("SYNK_CPU_DEVICES", 8)))

RANK, PROCESSES = synk.process_index(), synk.process_count()
MIN_ACCURACY = 0.9


def init_params(key, sizes):
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (n_in, n_out), jnp.float32) * jnp.sqrt(2.0 / n_in)
        params.append({"w": w, "b": jnp.zeros(n_out, jnp.float32)})
    return params


def predict(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(predict(params, x), y).mean()


# The loss over the whole batch, its rows split over every device.
synk_loss = synk.function(loss, in_axes=(None, 0, 0))
optimizer = optax.adam(1e-2)


def make_step(loss_fn):
    """One training step, the gradient of `loss_fn` and adam's update, as one jit."""

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


fused = make_step(synk_loss)  # every device, one all-reduce per step
single = make_step(loss)  # the same step on one device: the reference


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=100, help="rows per step (global)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init and shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (CI, logs)")
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.batch_size < 1 or args.batch_size % PROCESSES:
        parser.error(f"--epochs >= 0; --batch-size >= 1, a multiple of {PROCESSES} processes")
    return args


def say(*args, **kwargs):
    if RANK == 0:  # every process computes the same; one prints
        print(*args, **kwargs)


def main(argv=None):
    args = parse_args(argv)
    say(f"synk: {synk.device_count()} {synk.devices()[0].platform} device(s), "
        f"{PROCESSES} process(es)")  # fmt: skip
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=args.seed, stratify=y
    )
    n_train, batch = len(x_train), args.batch_size
    steps = n_train // batch  # whole batches only: one executable for every step

    params = init_params(jax.random.key(args.seed), [64, 128, 10])
    opt_state = optimizer.init(params)

    # The first fused step equals the same step on one device.
    xb, yb = synk.global_batch(synk.process_share((x_train[:batch], y_train[:batch])))
    got, want = fused(params, opt_state, xb, yb), single(params, opt_state, x_train[:batch],
                                                          y_train[:batch])  # fmt: skip
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    hlo = fused.lower(params, opt_state, xb, yb).compile().as_text()
    say(f"check: the fused step on {synk.device_count()} devices equals one device's step "
        f"({hlo.count(' all-reduce(')} all-reduce per step)")  # fmt: skip

    rng = np.random.default_rng(args.seed)  # the same shuffles on every process
    start = time.perf_counter()
    epochs = tqdm(range(args.epochs), desc="train", unit="epoch", disable=args.quiet or RANK > 0)
    for _ in epochs:
        order = rng.permutation(n_train)
        values = []
        for i in range(steps):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = synk.global_batch(synk.process_share((x_train[idx], y_train[idx])))
            params, opt_state, value = fused(params, opt_state, xb, yb)
            values.append(value)
            if i % 32 == 0:  # on CPUs under several processes, a loop must wait now and then
                jax.block_until_ready(params)
        epochs.set_postfix(loss=f"{float(np.mean(values)):.4f}")
    elapsed = time.perf_counter() - start

    correct = int(jnp.sum(jnp.argmax(predict(params, x_test), -1) == y_test))
    accuracy = correct / len(x_test)
    say(f"trained {args.epochs} epochs ({steps} fused steps each) in {elapsed:.1f} s")
    say(f"test accuracy: {accuracy:.2%} ({len(x_test)} rows)")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"test accuracy {accuracy:.2%} is below {MIN_ACCURACY:.0%}")


if __name__ == "__main__":
    main()
