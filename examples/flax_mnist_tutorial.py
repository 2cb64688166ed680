"""Flax NNX's MNIST tutorial, on every device.

This is the tutorial from Flax's documentation (docs_nnx/mnist_tutorial) as
published: the same CNN (convolutions with bias, ``nnx.BatchNorm``,
``nnx.Dropout``), ``nnx.Optimizer`` with adamw, ``nnx.MultiMetric``, the
train, eval and predict steps, ``nnx.view`` for the training and evaluation
modes, the same hyperparameters. What synk changes is four lines, each marked
``# synk``: ``synk.init``, and ``@nnx.jit`` replaced by ``@synk.function``
for the three steps. The model, the optimiser, the metrics and the Rngs are
passed whole: what the steps write into them (parameters, batch statistics,
optimiser state, metric totals, the dropout stream) reaches them after each
call, as under ``nnx.jit``, and every batch is split over the devices. Batch
norm needs no axis name and dropout no per-row keys: the whole step runs
under XLA's partitioner, so its statistics and masks are one device's.

The data are scikit-learn's digits (1,797 images of 8x8, no download),
scaled up to 28x28 so that the model is the published one, as (rows, 28, 28,
1) images in [0, 1]; the training images are reshuffled after each pass, as
many passes as ``train_steps`` needs. TensorBoard logging is replaced by
printing. Results equal the single-device run of the same code
(``SYNK_CPU_DEVICES=1``), up to float rounding amplified by training.

Run it with::

    python examples/flax_mnist_tutorial.py                     # 300 steps on 8 devices
    TRAIN_STEPS=20 EVAL_EVERY=5 python examples/flax_mnist_tutorial.py   # a quick run
    SYNK_CPU_DEVICES=1 python examples/flax_mnist_tutorial.py  # the single-device run

It exits with a non-zero status if the final test accuracy is below 85%.
"""

import os
import sys
from functools import partial

import numpy as np
import optax
from flax import nnx  # The Flax NNX API.
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import synk

synk.init(cpu_devices=int(os.environ.get("SYNK_CPU_DEVICES", 8)))  # synk

train_steps = int(os.environ.get("TRAIN_STEPS", 300))
eval_every = int(os.environ.get("EVAL_EVERY", 100))
batch_size = 32

# --------------------------------------------------------------------------
# The data: the digits instead of MNIST.

digits = load_digits()
images = zoom(digits.data.reshape(-1, 8, 8) / 16.0, (1, 3.5, 3.5), order=1)
images = images.astype(np.float32)[..., None]
x_train, x_test, y_train, y_test = train_test_split(
    images, digits.target.astype(np.int32), test_size=0.25, random_state=0
)


def shuffled_passes(x, y, rows, seed=0):
    """At least `rows` training rows: whole passes over (x, y), each reshuffled."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-rows // len(x)))])
    return {"image": x[order], "label": y[order]}


train_ds = shuffled_passes(x_train, y_train, train_steps * batch_size)
test_ds = {"image": x_test, "label": y_test}


def make_batches(ds, batch_size):
    """Yield batches of normalized (image, label) numpy arrays."""
    for i in range(0, len(ds["label"]), batch_size):
        batch = {k: v[i : i + batch_size] for k, v in ds.items()}
        if len(batch["label"]) < batch_size:  # drop incomplete final batch
            break
        yield batch


# --------------------------------------------------------------------------
# The model, the steps and the training loop, as published.


class CNN(nnx.Module):
    """A simple CNN model."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        x = self.linear2(x)
        return x


# Instantiate the model.
model = CNN(rngs=nnx.Rngs(0))

learning_rate = 0.005
momentum = 0.9

optimizer = nnx.Optimizer(model, optax.adamw(learning_rate, momentum), wrt=nnx.Param)
metrics = nnx.MultiMetric(
    accuracy=nnx.metrics.Accuracy(),
    loss=nnx.metrics.Average("loss"),
)


def loss_fn(model: CNN, batch, rngs: nnx.Rngs | None = None):
    logits = model(batch["image"], rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits=logits, labels=batch["label"]
    ).mean()
    return loss, logits


@synk.function(in_axes=(None, None, None, None, 0))  # synk: was @nnx.jit
def train_step(
    model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, rngs: nnx.Rngs, batch
):
    """Train for a single step."""
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, batch, rngs)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.
    optimizer.update(model, grads)  # In-place updates.


@synk.function(in_axes=(None, None, 0))  # synk: was @nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, batch):
    loss, logits = loss_fn(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.


train_model = nnx.view(model, deterministic=False, use_running_average=False)
eval_model = nnx.view(model, deterministic=True, use_running_average=True)


@synk.function(in_axes=(None, 0))  # synk: was @nnx.jit
def pred_step(model: CNN, batch):
    logits = model(batch["image"], None)
    return logits.argmax(axis=1)


if __name__ == "__main__":
    print(f"synk: {synk.device_count()} {synk.devices()[0].platform} device(s)")
    rngs = nnx.Rngs(0)
    history = {}

    for step, batch in enumerate(make_batches(train_ds, batch_size)):
        if step >= train_steps:
            break
        # Run the optimization for one step and make a stateful update to the following:
        # - The train state's model parameters
        # - The optimizer state
        # - The training loss and accuracy batch metrics
        train_step(train_model, optimizer, metrics, rngs, batch)

        if step > 0 and (step % eval_every == 0 or step == train_steps - 1):
            # Log the training metrics.
            for metric, value in metrics.compute().items():  # Compute the metrics.
                history[f"train_{metric}"] = float(value)
            metrics.reset()  # Reset the metrics for the test set.

            # Compute the metrics on the test set after each training epoch.
            for test_batch in make_batches(test_ds, batch_size):
                eval_step(eval_model, metrics, test_batch)

            # Predicted labels on a single test batch
            pred = pred_step(eval_model, test_batch)
            history["batch_correct"] = int((np.asarray(pred) == test_batch["label"]).sum())

            # Log the test metrics.
            for metric, value in metrics.compute().items():
                history[f"test_{metric}"] = float(value)
            metrics.reset()  # Reset the metrics for the next training epoch.
            print(f"{step=}, " + ", ".join(f"{k}={v}" for k, v in history.items()))

    if train_steps >= 300 and history["test_accuracy"] < 0.85:
        sys.exit(f"test accuracy {history['test_accuracy']:.2%} is below 85%")
