"""k-means on every device: Lloyd's iterations with ``synk.lax.psum`` inside the function.

Each device assigns its share of the points to their nearest centers, then
the per-cluster sums and counts are added up over all devices with
``synk.lax.psum`` in the middle of the function. Every device ends up with the
same new centers, so ``reduce="avg"`` returns them unchanged. It shows:

* a collective inside a ``synk.function`` (``synk.lax.psum``), for an
  algorithm whose devices must talk before the function returns;
* a second function with ``reduce="sum"`` for the inertia (the sum of squared
  distances to the nearest center);
* the result after the same number of iterations equals a plain numpy k-means
  from the same start (checked, rtol 1e-4).

The data are a few Gaussian blobs from a fixed seed. It runs on every device
synk sees: the GPUs where present, else 8 simulated CPU devices.

Run it with::

    python examples/kmeans.py                    # 4,000 points, 5 clusters, 20 iterations
    python examples/kmeans.py --points 8000 --clusters 8 --iters 30 --seed 1
    python examples/kmeans.py --quiet            # no progress bar (CI, logs)
    SYNK_CPU_DEVICES=4 mpiexec -n 2 python examples/kmeans.py   # 2 processes x 4 devices

Under ``mpiexec`` every process makes the same points and passes its own share
of them; the result is the same as in one process. It exits with a non-zero
status if the centers differ from numpy's.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import synk

# Before anything uses JAX's devices. SYNK_CPU_DEVICES (if set) wins, so that
# `SYNK_CPU_DEVICES=4 mpiexec -n 2 ...` gives each process 4 devices.
synk.init(cpu_devices=int(os.environ.get("SYNK_CPU_DEVICES", 8)))

RANK, PROCESSES = synk.process_index(), synk.process_count()


# in_axes: the points are sliced over the devices, the centers broadcast.
# The psums make every device's output the global new centers, so reduce="avg"
# (a row-weighted mean of equal values) returns them as they are.
# A function that calls synk.lax collectives must run exactly once per device
# on its whole share: its batch length must be a multiple of the device count.
@synk.function(in_axes=(0, None), reduce="avg")
def lloyd_step(x, centers):
    d2 = jnp.sum((x[:, None, :] - centers[None, :, :]) ** 2, axis=-1)  # (rows, k)
    onehot = jax.nn.one_hot(jnp.argmin(d2, axis=1), centers.shape[0], dtype=x.dtype)
    sums = synk.lax.psum(onehot.T @ x)  # (k, dim): this device's sums, then all devices'
    counts = synk.lax.psum(onehot.sum(axis=0))  # (k,)
    # An empty cluster keeps its center.
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centers)


# No collective here: each device sums its own rows, reduce="sum" adds them up.
@synk.function(in_axes=(0, None), reduce="sum")
def inertia(x, centers):
    return jnp.min(jnp.sum((x[:, None, :] - centers[None, :, :]) ** 2, axis=-1), axis=1).sum()


def numpy_kmeans(x, centers, iters):
    """The reference: plain Lloyd's iterations in float64 numpy."""
    x, centers = x.astype(np.float64), centers.astype(np.float64)
    for _ in range(iters):
        labels = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        for j in range(len(centers)):
            if np.any(labels == j):
                centers[j] = x[labels == j].mean(axis=0)
    return centers


def make_blobs(points, clusters, dim, seed):
    """Gaussian blobs (unit spread) around random centers in [-10, 10]^dim."""
    rng = np.random.default_rng(seed)
    true_centers = rng.uniform(-10, 10, size=(clusters, dim))
    labels = rng.integers(clusters, size=points)
    x = true_centers[labels] + rng.normal(size=(points, dim))
    start = x[rng.choice(points, size=clusters, replace=False)]  # k distinct points
    return x.astype(np.float32), start.astype(np.float32)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=4000, help="a multiple of the device count")
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20, help="Lloyd iterations")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the start")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (CI, logs)")
    args = parser.parse_args(argv)
    n = synk.device_count()
    if args.points < n or args.points % n:
        parser.error(f"--points must be a positive multiple of the device count ({n})")
    if not 1 <= args.clusters <= args.points or args.dim < 1 or args.iters < 0:
        parser.error("need 1 <= --clusters <= --points, --dim >= 1 and --iters >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    say = print if RANK == 0 else (lambda *a, **k: None)
    n_dev = synk.device_count()
    say(f"synk: {n_dev} {synk.devices()[0].platform} device(s), {PROCESSES} process(es)")

    x, start = make_blobs(args.points, args.clusters, args.dim, args.seed)
    say(
        f"data: {args.points} points in {args.dim}-d, {args.clusters} blobs; "
        f"{args.points // n_dev} points per device"
    )
    x_mine = synk.process_share(x)  # every process passes its own share of the points

    t0 = time.perf_counter()
    centers = start
    bar = tqdm(range(args.iters), desc="lloyd", unit="it", disable=args.quiet or RANK != 0)
    for _ in bar:
        new = lloyd_step(x_mine, centers)  # replicated on every device; fed straight back
        if not args.quiet:
            bar.set_postfix(shift=f"{float(jnp.max(jnp.abs(new - centers))):.2e}")
        centers = new
    centers = np.asarray(centers)
    final_inertia = float(inertia(x_mine, centers))
    elapsed = time.perf_counter() - t0

    want = numpy_kmeans(x, start, args.iters)
    want_inertia = ((x[:, None, :] - want[None]) ** 2).sum(-1).min(1).sum()
    say(
        f"{args.iters} iterations in {elapsed:.2f} s; final inertia {final_inertia:.2f} "
        f"(numpy: {want_inertia:.2f})"
    )
    try:
        np.testing.assert_allclose(centers, want, rtol=1e-4, atol=1e-4)  # atol: coordinates near 0
        np.testing.assert_allclose(final_inertia, want_inertia, rtol=1e-4)
    except AssertionError as e:
        raise SystemExit(f"k-means on {n_dev} devices differs from numpy's:\n{e}") from None
    say("check: centers equal numpy's k-means from the same start (rtol 1e-4)")


if __name__ == "__main__":
    main()
