"""An Equinox MLP on every device: the model passed whole to a ``@synk.function``.

This trains ``equinox.nn.MLP`` on scikit-learn's bundled digits (8x8 images,
1,797 rows, no download) with optax. An Equinox model is a pytree whose
leaves are its arrays and also its activation functions; synk treats the
non-array leaves as static, as ``equinox.filter_jit`` does, so the model goes
to the function as it is:

* ``step(model, x, y)`` with ``in_axes=(None, 0, 0)``: the model broadcast,
  the batch sliced over the devices; ``eqx.filter_value_and_grad`` takes the
  gradient inside and synk averages it, exactly, for any batch size (the
  default batch of 100 rows does not divide over 8 devices);
* the optimiser runs outside, under ``eqx.filter_jit``, on the averaged
  gradients;
* one step is checked against the same step on one device: the loss and
  its gradients.

It runs on every device synk sees: the GPUs where present, else 8 simulated
CPU devices.

Run it with::

    python examples/equinox_mlp.py                  # default: 20 epochs
    python examples/equinox_mlp.py --epochs 5 --batch-size 64 --seed 1
    python examples/equinox_mlp.py --quiet          # no progress bar (CI, logs)
    SYNK_CPU_DEVICES=4 mpiexec -n 2 python examples/equinox_mlp.py   # 2 processes x 4 devices

Under ``mpiexec`` every process makes the same shuffles and passes its own
share of each batch (a multiple of the process count); the result is the same
as in one process. It exits with a non-zero status if the test accuracy is
below 95%.
"""

from __future__ import annotations

import argparse
import os
import time

import equinox as eqx
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
MIN_ACCURACY = 0.95


# --------------------------------------------------------------------------
# The synk functions: plain Equinox code for one device and a whole batch.


def loss(model, x, y):
    """Softmax cross-entropy, averaged over the rows (an Equinox model maps one row)."""
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# The model (arrays and activation functions) broadcast, x and y sliced. The
# loss and its gradient are means over rows: reduce="avg", the default.
@synk.function(in_axes=(None, 0, 0))
def step(model, x, y):
    return eqx.filter_value_and_grad(loss)(model, x, y)


# A count: summed over devices, int32 to stay exact.
@synk.function(in_axes=(None, 0, 0), reduce="sum")
def n_correct(model, x, y):
    return jnp.sum(jnp.argmax(jax.vmap(model)(x), axis=-1) == y, dtype=jnp.int32)


# --------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="rows per step; need not be a multiple of the device count",
    )
    parser.add_argument("--width", type=int, default=128, help="hidden units per layer")
    parser.add_argument("--seed", type=int, default=0, help="seed for init and shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (CI, logs)")
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.batch_size < 1 or args.width < 1:
        parser.error("--epochs must be >= 0, --batch-size and --width >= 1")
    if args.batch_size % PROCESSES:
        parser.error(f"--batch-size must be a multiple of the process count ({PROCESSES})")
    return args


def load_data(seed):
    """Digits scaled to [0, 1], split 75/25 into train and test sets."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


# The reference: the same step on one device, under eqx.filter_jit. (step.serial
# is that step too, but under jax.jit, which refuses the activation functions.)
serial_step = eqx.filter_jit(eqx.filter_value_and_grad(loss))


def check_against_serial(model, x, y):
    """One synk step equals the same step on one device."""
    value, grads = step(model, *synk.process_share((x, y)))
    want_value, want_grads = serial_step(model, x, y)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-6)
    # The gradients' leaves are arrays (and None where the model holds functions).
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def main(argv=None):
    args = parse_args(argv)
    say = print if RANK == 0 else (lambda *a, **k: None)
    n_dev = synk.device_count()
    say(f"synk: {n_dev} {synk.devices()[0].platform} device(s), {PROCESSES} process(es)")

    x_train, x_test, y_train, y_test = load_data(args.seed)
    n_train = len(x_train)
    batch = min(args.batch_size, n_train - n_train % PROCESSES)
    say(f"digits: {n_train} train rows, {len(x_test)} test rows, batch {batch}", end="")
    if batch % n_dev:
        # Uneven: some devices get one row more than others; the result is still exact.
        say(f" ({batch} = {batch // n_dev} x {n_dev} devices + {batch % n_dev} rows)")
    else:
        say()

    # Two hidden layers with ReLU; `activation` and `final_activation` are
    # functions, leaves of the model's pytree like its weights.
    model = eqx.nn.MLP(64, 10, args.width, depth=2, key=jax.random.key(args.seed))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def update(model, opt_state, grads):
        # The optimiser runs outside the synk function, on the averaged gradients.
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    try:
        check_against_serial(model, x_train[:batch], y_train[:batch])
    except AssertionError as e:
        raise SystemExit(f"the step on {n_dev} devices differs from serial:\n{e}") from None
    say(
        f"check: synk step on {n_dev} devices matches the serial step on one device "
        "(loss and gradients)",
        flush=True,
    )

    rng = np.random.default_rng(args.seed)  # the same shuffles on every process
    start = time.perf_counter()
    bar = tqdm(range(args.epochs), desc="train", unit="epoch", disable=args.quiet or RANK != 0)
    train_loss = float("nan")
    for _ in bar:
        order = rng.permutation(n_train)
        sums = []
        # Full batches only (the rows left over wait for the next shuffle): one
        # batch length, one executable.
        for i in range(0, n_train - batch + 1, batch):
            idx = order[i : i + batch]
            value, grads = step(model, *synk.process_share((x_train[idx], y_train[idx])))
            model, opt_state = update(model, opt_state, grads)
            sums.append(value)  # stays on the device: no sync per step
        train_loss = float(jnp.mean(jnp.stack(sums))) if sums else float("nan")
        bar.set_postfix(loss=f"{train_loss:.4f}")
    elapsed = time.perf_counter() - start

    x_mine, y_mine = synk.process_share((x_test, y_test))
    accuracy = int(n_correct(model, x_mine, y_mine)) / len(x_test)
    say(f"trained {args.epochs} epochs in {elapsed:.1f} s; final train loss {train_loss:.4f}")
    say(f"test accuracy: {accuracy:.2%} ({len(x_test)} rows)")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"test accuracy {accuracy:.2%} is below {MIN_ACCURACY:.0%}")


if __name__ == "__main__":
    main()
