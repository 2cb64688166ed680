"""Top-k eigenvectors of a covariance matrix, with the data spread over the devices.

Orthogonal (subspace) iteration: start from k random orthonormal columns V,
then repeat ``V <- qr(C V)``, where C = X^T X / rows is the covariance of the
(centered) data X. C is never formed: each step computes ``C V`` as
``X^T (X V) / rows`` with a ``synk.function`` whose rows are sliced over the
devices and whose per-device results are combined with ``reduce="avg"``; the
small QR runs in a jitted function. It shows:

* an algorithm that needs no in-function collective: ``"avg"`` of
  per-device means is the mean over all rows;
* uneven splits are exact: the default 1,002 rows do not divide over 8
  devices (2 devices get one row more), and the result still matches;
* the eigenvalues (Rayleigh quotients) and eigenvectors equal those of
  ``numpy.linalg.eigh`` of the covariance (eigenvalues rtol 1e-3, each
  eigenvector's |dot product| with numpy's within 1e-3 of 1).

The data have a known spectrum (16, 8, 4, then 1 and below) in a random basis.
It runs on every device synk sees: the GPUs where present, else 8 simulated
CPU devices.

Run it with::

    python examples/power_iteration.py            # 1,002 rows, 32 dims, top 3, 60 iterations
    python examples/power_iteration.py --rows 5001 --dim 64 --k 3 --iters 80 --seed 1
    python examples/power_iteration.py --quiet    # no progress bar or convergence lines
    SYNK_CPU_DEVICES=4 mpiexec -n 2 python examples/power_iteration.py   # 2 processes x 4 devices

Under ``mpiexec`` every process makes the same data and passes its own share of
the rows (so --rows must be a multiple of the process count); the result is
the same as in one process. It exits with a non-zero status if the result
differs from numpy's.
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
TOP_EIGENVALUES = (16.0, 8.0, 4.0)  # then a tail of eigenvalues <= 1


# x is sliced over the devices, v broadcast. Each device returns the mean over
# ITS rows of x_r (x_r . v); reduce="avg" weights each device by the rows it
# really processed, so the result is the mean over all rows, for any split.
@synk.function(in_axes=(0, None), reduce="avg")
def covariance_times(x, v):
    return x.T @ (x @ v) / x.shape[0]


@jax.jit
def orthonormalize(w):
    return jnp.linalg.qr(w)[0]


@jax.jit
def rayleigh(v, cv):
    """Eigenvalue estimates v_i . C v_i and the residual max_i |C v_i - lambda_i v_i|."""
    lam = jnp.sum(v * cv, axis=0)
    return lam, jnp.max(jnp.linalg.norm(cv - v * lam, axis=0))


def make_data(rows, dim, seed):
    """Centered Gaussian rows whose covariance has a known spectrum in a random basis."""
    rng = np.random.default_rng(seed)
    tail = np.linspace(1.0, 0.1, dim - len(TOP_EIGENVALUES))
    spectrum = np.concatenate([TOP_EIGENVALUES, tail])
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    x = (rng.normal(size=(rows, dim)) * np.sqrt(spectrum)) @ basis.T
    x -= x.mean(axis=0)  # center on the host: C = X^T X / rows is the covariance
    v0, _ = np.linalg.qr(rng.normal(size=(dim, len(TOP_EIGENVALUES))))
    return x.astype(np.float32), v0.astype(np.float32)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=1002, help="need not be a multiple of the device count"
    )
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--k", type=int, default=3, help=f"at most {len(TOP_EIGENVALUES)}")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--print-every", type=int, default=10, help="iterations per line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or lines")
    args = parser.parse_args(argv)
    if args.rows < PROCESSES or args.rows % PROCESSES:
        parser.error(f"--rows must be a positive multiple of the process count ({PROCESSES})")
    if not 1 <= args.k <= len(TOP_EIGENVALUES) or args.dim <= len(TOP_EIGENVALUES):
        parser.error(f"need 1 <= --k <= {len(TOP_EIGENVALUES)} < --dim")
    if args.iters < 1 or args.print_every < 1:
        parser.error("--iters and --print-every must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    say = print if RANK == 0 else (lambda *a, **k: None)
    n_dev = synk.device_count()
    say(f"synk: {n_dev} {synk.devices()[0].platform} device(s), {PROCESSES} process(es)")
    split = f"{args.rows // n_dev} x {n_dev} devices + {args.rows % n_dev} rows"
    say(f"data: {args.rows} rows ({split}), {args.dim} dims; top {args.k} eigenvectors")

    x, v0 = make_data(args.rows, args.dim, args.seed)
    x_mine = synk.process_share(x)  # every process passes its own share of the rows
    v = jnp.asarray(v0[:, : args.k])

    t0 = time.perf_counter()
    bar = tqdm(range(1, args.iters + 1), desc="iterate", unit="it", disable=args.quiet or RANK != 0)
    for it in bar:
        cv = covariance_times(x_mine, v)
        if it % args.print_every == 0 and not args.quiet:
            lam, residual = rayleigh(v, cv)  # on every process: it reads global arrays
            lam, residual = np.round(np.asarray(lam), 4), float(residual)
            if RANK == 0:
                bar.write(f"iter {it:4d}: eigenvalues {lam}, residual {residual:.2e}")
        v = orthonormalize(cv)
    lam, residual = rayleigh(v, covariance_times(x_mine, v))
    lam, v = np.asarray(lam), np.asarray(v)
    elapsed = time.perf_counter() - t0
    say(
        f"{args.iters} iterations in {elapsed:.2f} s; eigenvalues {np.round(lam, 4)}, "
        f"residual {float(residual):.2e}"
    )

    # The reference: numpy's eigh of the covariance, largest eigenvalues first.
    want_lam, want_v = np.linalg.eigh(x.astype(np.float64).T @ x / len(x))
    want_lam, want_v = want_lam[::-1][: args.k], want_v[:, ::-1][:, : args.k]
    alignment = np.abs(np.sum(v * want_v, axis=0))  # |cos| of the angle, per eigenvector
    say(
        f"numpy eigh: eigenvalues {np.round(want_lam, 4)}; "
        f"max_i 1 - |v_i . u_i| = {np.max(1 - alignment):.1e}"
    )
    try:
        np.testing.assert_allclose(lam, want_lam, rtol=1e-3)
        np.testing.assert_allclose(alignment, 1.0, atol=1e-3)
    except AssertionError as e:
        raise SystemExit(f"subspace iteration on {n_dev} devices differs from eigh:\n{e}") from None
    say("check: eigenvalues (rtol 1e-3) and eigenvectors (1e-3) equal numpy's eigh")


if __name__ == "__main__":
    main()
