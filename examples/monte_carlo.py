"""Monte Carlo estimate of pi with one PRNG key per sample: the same answer on any device count.

Each sample is a point drawn uniformly in the unit square from ITS OWN key;
f = 4 if the point falls inside the quarter circle, else 0, so E[f] = pi. The
keys are made on the host, ``keys = jax.random.split(key, n)``, and passed
sliced along the batch (``in_axes=0``): whichever device draws sample r, it
draws it from key r. So the estimate does not depend on the number of devices,
which a per-device RNG stream (device i seeds with i) could not give. It shows:

* a ``reduce="avg"`` function that maps each key to a sample and returns the
  batch means of f and f^2 (for the standard error);
* the estimate on every device equals the serial one (``f.serial``), and the
  same function restricted to 2 devices and to 1 device (``devices=`` when
  creating it), to rounding (rtol 1e-6);
* uneven splits are exact: the default batch of 25,002 keys does not divide
  over 8 devices.

It runs on every device synk sees: the GPUs where present, else 8 simulated
CPU devices.

Run it with::

    python examples/monte_carlo.py                # 8 batches of 25,002 samples
    python examples/monte_carlo.py --batches 40 --batch-size 50000 --seed 1
    python examples/monte_carlo.py --quiet        # no progress bar (CI, logs)
    SYNK_CPU_DEVICES=4 mpiexec -n 2 python examples/monte_carlo.py   # 2 processes x 4 devices

Under ``mpiexec`` every process makes the same keys and passes its own share of
each batch (so --batch-size must be a multiple of the process count), and the
"2 devices" and "1 device" runs use that many devices of each process. It
exits with a non-zero status if the estimates differ or are more than 5
standard errors from pi.
"""

from __future__ import annotations

import argparse
import functools
import math
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


def sample(key):
    """One sample of f from its own key: 4 if a uniform point lies in the quarter circle."""
    x, y = jax.random.uniform(key, (2,))
    return jnp.where(x * x + y * y <= 1.0, 4.0, 0.0)


def moments(keys):
    """The means of f and f^2 over a batch of keys (raw uint32 keys, shape (rows, 2))."""
    f = jax.vmap(sample)(keys)
    return f.mean(), (f * f).mean()


def first_devices(k):
    """The first k devices of each process: synk.devices()[:k] in a one-process run."""
    devices = synk.devices()
    return [d for p in range(PROCESSES) for d in [e for e in devices if e.process_index == p][:k]]


def estimate(fn, batches, progress=lambda it: it):
    """The means of f and f^2 from ``fn`` over a list of batches of keys of equal length."""
    out = [fn(batch) for batch in progress(batches)]  # stays on the devices until here
    return tuple(float(np.mean([float(o[j]) for o in out])) for j in (0, 1))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument(
        "--batch-size", type=int, default=25_002, help="need not divide by the device count"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (CI, logs)")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.batch_size < 2 or args.batch_size % PROCESSES:
        parser.error(
            f"need --batches >= 1 and --batch-size >= 2, a multiple of the process count "
            f"({PROCESSES})"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    say = print if RANK == 0 else (lambda *a, **k: None)
    n_dev = synk.device_count()
    say(f"synk: {n_dev} {synk.devices()[0].platform} device(s), {PROCESSES} process(es)")

    n = args.batches * args.batch_size
    # One raw key (2 x uint32) per sample, made on the host; the same on every process.
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(args.seed), n))
    say(
        f"samples: {n} ({args.batches} batches of {args.batch_size}), keys {keys.shape} "
        f"{keys.dtype}"
    )

    # Sliced keys (in_axes=0), means combined by reduce="avg" (row-weighted: exact).
    pi_moments = synk.function(moments, in_axes=0, reduce="avg")
    batches = [keys[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    mine = [synk.process_share(batch) for batch in batches]  # every process passes its own share

    t0 = time.perf_counter()
    bar = functools.partial(tqdm, desc="sample", unit="batch", disable=args.quiet or RANK != 0)
    mean_f, mean_f2 = estimate(pi_moments, mine, bar)
    elapsed = time.perf_counter() - t0
    pi_hat, stderr = mean_f, math.sqrt((mean_f2 - mean_f**2) / (n - 1))
    say(
        f"{n_dev} devices: pi ~ {pi_hat:.6f} +- {stderr:.6f} (standard error) in {elapsed:.2f} s; "
        f"error {pi_hat - math.pi:+.6f} = {abs(pi_hat - math.pi) / stderr:.2f} standard errors"
    )

    # The same samples serially on one device (whole batches), and on fewer devices.
    others = {"serial (f.serial)": estimate(pi_moments.serial, batches)[0]}
    for k in (2, 1):
        fewer = synk.function(moments, in_axes=0, reduce="avg", devices=first_devices(k))
        others[f"{k * PROCESSES} device(s)"] = estimate(fewer, mine)[0]
    for name, value in others.items():
        say(f"{name}: pi ~ {value:.6f} (relative difference {abs(value / pi_hat - 1):.1e})")
    try:
        for value in others.values():
            np.testing.assert_allclose(pi_hat, value, rtol=1e-6)
    except AssertionError as e:
        raise SystemExit(f"the estimate depends on the devices:\n{e}") from None
    if abs(pi_hat - math.pi) >= 5 * stderr:
        raise SystemExit(f"estimate {pi_hat} is 5 standard errors ({stderr:.2e}) or more from pi")
    say("check: the same on every device count and serially (rtol 1e-6), within 5 std. errors")


if __name__ == "__main__":
    main()
