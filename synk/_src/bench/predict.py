"""``synk bench predict``: a planning guide, how many devices pay off for a step.

Step time on k devices = compute / k + one ring all-reduce of the gradients
over a link of the given bandwidth and latency; speedup and efficiency for
k = 1, 2, 4, ... up to ``--max-devices``, beside the measured figures of
``scaling`` where this machine has the devices.

Called by ``cli`` (`run`). Calls ``scaling`` (the measured figures),
``workloads`` for the step, ``harness`` to time its compute, and ``report``
for the table.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import synk
from synk._src.bench import scaling
from synk._src.bench.flags import positive_float, positive_int
from synk._src.bench.harness import measure, stats
from synk._src.bench.report import draw_speedup, fmt_bytes, heading, print_table
from synk._src.bench.workloads import D_IN, D_OUT, init_mlp, make_batch, train_step

PLOT = draw_speedup  # what --plot draws


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scaling.add_arguments(parser)
    parser.add_argument(
        "--compute-ms", type=positive_float, help="one-device step time (default: measure)"
    )
    parser.add_argument(
        "--link-gbps", type=positive_float, default=100.0, help="link bandwidth, Gbit/s"
    )
    parser.add_argument("--latency-us", type=float, default=10.0, help="per all-reduce latency, us")
    parser.add_argument("--max-devices", type=positive_int, help="predict up to N (default 64)")
    parser.add_argument("--no-measure", action="store_true", help="do not run scaling beside it")


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.latency_us < 0:
        return f"--latency-us must be >= 0, got {args.latency_us}"
    return None


def run(args: argparse.Namespace) -> dict:
    """Predicted step time and speedup for 1..N devices, beside measured figures."""
    devices = synk.devices()
    sizes = [D_IN, args.hidden, args.hidden, D_OUT]
    params = init_mlp(sizes)
    grad_bytes = sum(int(v.nbytes) for v in params.values())
    compute_s, compute_from = _compute_seconds(args, devices[0], params)
    measured_run = None if args.no_measure else scaling.run(args)
    measured = {r["devices"]: r for r in measured_run["results"]} if measured_run else {}
    max_n = args.max_devices or max(64, len(devices))
    results = [
        _prediction(args, k, compute_s, grad_bytes, measured.get(k))
        for k in scaling.device_counts(max_n)
        if k <= args.batch
    ]
    _print(args, sizes, compute_s, compute_from, grad_bytes, results)
    return {
        **heading(
            args,
            batch=args.batch,
            mlp=sizes,
            grad_bytes=grad_bytes,
            compute_ms=compute_s * 1e3,
            compute_from=compute_from,
            link_gbps=args.link_gbps,
            latency_us=args.latency_us,
        ),
        "results": results,
        "scaling": measured_run,
    }


def _compute_seconds(
    args: argparse.Namespace, device: jax.Device, params: dict[str, np.ndarray]
) -> tuple[float, str]:
    """The one-device step time, and where it comes from."""
    if args.compute_ms is not None:
        return args.compute_ms / 1e3, "--compute-ms"
    # The step alone on one device, inputs already there: pure compute.
    on_one = jax.device_put((params, *make_batch(args.batch)), device)
    step = jax.jit(train_step)
    samples = measure(
        {"compute": lambda: step(*on_one)},
        rounds=args.rounds,
        calls=args.calls,
        desc="compute",
        quiet=args.quiet,
    )
    return stats(samples["compute"])["median_us"] / 1e6, "measured"


def _prediction(
    args: argparse.Namespace, k: int, compute_s: float, grad_bytes: int, measured: dict | None
) -> dict:
    """One row: the predicted step on k devices, and the measured one if there is one."""
    link = args.link_gbps * 1e9 / 8  # Gbit/s -> bytes/s
    comm = allreduce_seconds(k, grad_bytes, link, args.latency_us * 1e-6)
    step_s = compute_s / k + comm
    row = {
        "devices": k,
        "compute_ms": compute_s / k * 1e3,
        "allreduce_ms": comm * 1e3,
        "predicted_ms": step_s * 1e3,
        "predicted_speedup": compute_s / step_s,
        "predicted_efficiency": compute_s / step_s / k,
    }
    if measured is not None:
        row["measured_ms"] = measured["median_us"] / 1e3
        row["measured_speedup"] = measured["speedup"]
    return row


def allreduce_seconds(n: int, nbytes: float, bytes_per_s: float, latency_s: float) -> float:
    """Ring all-reduce model: 2(n-1)/n * bytes / bandwidth + latency (0 on one device)."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bytes_per_s + latency_s


def _print(
    args: argparse.Namespace,
    sizes: list[int],
    compute_s: float,
    compute_from: str,
    grad_bytes: int,
    results: list[dict],
) -> None:
    print_table(
        f"Prediction: MLP {'-'.join(map(str, sizes))}, batch {args.batch}; compute "
        f"{compute_s * 1e3:.3f} ms on one device ({compute_from}); gradients "
        f"{fmt_bytes(grad_bytes)}; link {args.link_gbps:g} Gbit/s, latency "
        f"{args.latency_us:g} us",
        [
            "devices",
            "rows/dev",
            "compute ms",
            "all-reduce ms",
            "pred ms",
            "pred speedup",
            "pred eff",
            "meas ms",
            "meas speedup",
        ],
        [
            [
                str(r["devices"]),
                f"{args.batch / r['devices']:g}",
                f"{r['compute_ms']:.3f}",
                f"{r['allreduce_ms']:.3f}",
                f"{r['predicted_ms']:.3f}",
                f"{r['predicted_speedup']:.2f}x",
                f"{r['predicted_efficiency']:.0%}",
                f"{r['measured_ms']:.3f}" if "measured_ms" in r else "",
                f"{r['measured_speedup']:.2f}x" if "measured_speedup" in r else "",
            ]
            for r in results
        ],
    )
    best = min(results, key=lambda r: r["predicted_ms"])
    pays = [r["devices"] for r in results if r["predicted_efficiency"] >= 0.5]
    print(
        f"fastest predicted: {best['devices']} devices ({best['predicted_speedup']:.2f}x); "
        f"efficiency >= 50% up to {max(pays)} devices"
    )
