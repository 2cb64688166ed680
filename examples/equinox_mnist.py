"""Equinox's "Convolutional Neural Network on MNIST" example, on every device.

This is the example from Equinox's documentation (docs/examples/mnist.ipynb)
as published: the same CNN (a 4x4 convolution, ``MaxPool2d``, three linear
layers), the same loss, ``compute_accuracy``, ``evaluate`` and ``train``
loop, the same hyperparameters. What synk changes is four lines, each marked
``# synk``: ``synk.init``, and ``eqx.filter_jit`` replaced by
``synk.function`` for the loss, the accuracy and the training step. The
model is passed whole (its activation functions, ``jnp.ravel`` and
MaxPool2d's ``init=-inf`` are static fields, as under ``eqx.filter_jit``),
and every batch is split over the devices.

The data are scikit-learn's digits (1,797 images of 8x8, no download),
scaled up to 28x28 so that the model is the published one, in a small numpy
loader that keeps a partial last batch as PyTorch's ``DataLoader`` does: an
epoch of 1,347 training images ends in a batch of 3 rows, fewer than the
devices, and the 450 test images in one of 2. Results equal the
single-device run of the same code (``SYNK_CPU_DEVICES=1``), up to float
rounding amplified by training.

Run it with::

    python examples/equinox_mnist.py                        # 300 steps on 8 devices
    STEPS=30 PRINT_EVERY=10 python examples/equinox_mnist.py  # a quick run
    SYNK_CPU_DEVICES=1 python examples/equinox_mnist.py     # the single-device run

It exits with a non-zero status if the final test accuracy is below 85%.
"""

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax  # https://github.com/deepmind/optax
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import synk

synk.init(cpu_devices=int(os.environ.get("SYNK_CPU_DEVICES", 8)))  # synk

# Hyperparameters (as published; STEPS and PRINT_EVERY may come from the environment)

BATCH_SIZE = 64
LEARNING_RATE = 3e-4
STEPS = int(os.environ.get("STEPS", 300))
PRINT_EVERY = int(os.environ.get("PRINT_EVERY", 30))
SEED = 5678

key = jax.random.PRNGKey(SEED)

# --------------------------------------------------------------------------
# The data: the digits instead of MNIST, normalised as the example does
# (ToTensor, then Normalize((0.5,), (0.5,))), in (rows, 1, 28, 28).


def _images(pixels):
    images = zoom(pixels.reshape(-1, 8, 8) / 16.0, (1, 3.5, 3.5), order=1)
    return ((images - 0.5) / 0.5).astype(np.float32)[:, None]


class DataLoader:
    """Shuffled batches of (x, y); the last one partial, as PyTorch's DataLoader."""

    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        order = self.rng.permutation(len(self.x))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x[rows], self.y[rows]

    def __len__(self):
        return -(-len(self.x) // self.batch_size)


digits = load_digits()
x_train, x_test, y_train, y_test = train_test_split(
    _images(digits.data), digits.target.astype(np.int32), test_size=0.25, random_state=0
)
trainloader = DataLoader(x_train, y_train, BATCH_SIZE, seed=0)
testloader = DataLoader(x_test, y_test, BATCH_SIZE, seed=1)

# --------------------------------------------------------------------------
# The model, the loss and the training loop, as published.


class CNN(eqx.Module):
    layers: list

    def __init__(self, key):
        key1, key2, key3, key4 = jax.random.split(key, 4)
        # Standard CNN setup: convolutional layer, followed by flattening,
        # with a small MLP on top.
        self.layers = [
            eqx.nn.Conv2d(1, 3, kernel_size=4, key=key1),
            eqx.nn.MaxPool2d(kernel_size=2),
            jax.nn.relu,
            jnp.ravel,
            eqx.nn.Linear(1728, 512, key=key2),
            jax.nn.sigmoid,
            eqx.nn.Linear(512, 64, key=key3),
            jax.nn.relu,
            eqx.nn.Linear(64, 10, key=key4),
            jax.nn.log_softmax,
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


key, subkey = jax.random.split(key, 2)
model = CNN(subkey)


def loss(model, x, y):
    # Our input has the shape (BATCH_SIZE, 1, 28, 28), but our model operations on
    # a single input input image of shape (1, 28, 28).
    #
    # Therefore, we have to use jax.vmap, which in this case maps our model over the
    # leading (batch) axis.
    pred_y = jax.vmap(model)(x)
    return cross_entropy(y, pred_y)


def cross_entropy(y, pred_y):
    # y are the true targets, and should be integers 0-9.
    # pred_y are the log-softmax'd predictions.
    pred_y = jnp.take_along_axis(pred_y, jnp.expand_dims(y, 1), axis=1)
    return -jnp.mean(pred_y)


loss = synk.function(loss, in_axes=(None, 0, 0))  # synk: was eqx.filter_jit(loss)


@synk.function(in_axes=(None, 0, 0))  # synk: was @eqx.filter_jit
def compute_accuracy(model, x, y):
    """This function takes as input the current model
    and computes the average accuracy on a batch.
    """
    pred_y = jax.vmap(model)(x)
    pred_y = jnp.argmax(pred_y, axis=1)
    return jnp.mean(y == pred_y)


def evaluate(model, testloader):
    """This function evaluates the model on the test dataset,
    computing both the average loss and the average accuracy.
    """
    avg_loss = 0
    avg_acc = 0
    for x, y in testloader:
        # Note that all the JAX operations happen inside `loss` and `compute_accuracy`,
        # and both have JIT wrappers, so this is fast.
        avg_loss += loss(model, x, y)
        avg_acc += compute_accuracy(model, x, y)
    return avg_loss / len(testloader), avg_acc / len(testloader)


optim = optax.adamw(LEARNING_RATE)


def train(model, trainloader, testloader, optim, steps, print_every):
    # Just like earlier: It only makes sense to train the arrays in our model,
    # so filter out everything else.
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    # Always wrap everything -- computing gradients, running the optimiser, updating
    # the model -- into a single JIT region. This ensures things run as fast as
    # possible.
    @synk.function(in_axes=(None, None, 0, 0))  # synk: was @eqx.filter_jit
    def make_step(model, opt_state, x, y):
        loss_value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss_value

    # Loop over our training dataset as many times as we need.
    def infinite_trainloader():
        while True:
            yield from trainloader

    for step, (x, y) in zip(range(steps), infinite_trainloader()):
        model, opt_state, train_loss = make_step(model, opt_state, x, y)
        if (step % print_every) == 0 or (step == steps - 1):
            test_loss, test_accuracy = evaluate(model, testloader)
            print(
                f"{step=}, train_loss={train_loss.item()}, "
                f"test_loss={test_loss.item()}, test_accuracy={test_accuracy.item()}"
            )
    return model


if __name__ == "__main__":
    print(f"synk: {synk.device_count()} {jax.devices()[0].platform} device(s)")
    model = train(model, trainloader, testloader, optim, STEPS, PRINT_EVERY)
    accuracy = float(evaluate(model, testloader)[1])
    if STEPS >= 300 and accuracy < 0.85:
        sys.exit(f"test accuracy {accuracy:.2%} is below 85%")
