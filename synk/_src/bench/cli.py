"""``synk bench``'s command line: the flags, the checks on them, and the output files.

Called by ``synk/__main__.py`` (``synk bench ...``) and ``benchmarks/*.py``
(`main`). Calls the ``run`` of the chosen subcommand's module, then
``report.plot`` for ``--plot``; synk to set up the devices. The subcommands
and their one-line descriptions come from ``synk._src.commands``, which
``synk --help`` lists too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys

import jax

import synk
from synk._src.bench import (
    buckets,
    collectives,
    dispatch,
    fused,
    indexing,
    memory,
    overhead,
    predict,
    scaling,
)
from synk._src.bench.report import plot
from synk._src.commands import BENCHMARKS

CPU_MAX_CALLS = 20  # XLA's CPU collectives abort past ~50 un-blocked calls in flight
MULTI_PROCESS = ("overhead", "collectives")  # the others time 1..n devices of one process
COMMANDS = {
    "overhead": overhead.run,
    "dispatch": dispatch.run,
    "collectives": collectives.run,
    "scaling": scaling.run,
    "predict": predict.run,
    "indexing": indexing.run,
    "fused": fused.run,
    "memory": memory.run,
    "buckets": buckets.run,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``synk bench ...``: print the table, write ``--json`` / ``--plot``."""
    p = parser()
    args = p.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    if getattr(args, "latency_us", 0) < 0:
        p.error(f"--latency-us must be >= 0, got {args.latency_us}")
    if args.bench == "indexing" and max(args.batches) > args.rows:
        p.error(f"--batches: every batch must be at most --rows ({args.rows}), got {args.batches}")
    if args.bench == "memory" and max(args.slices) > args.rows_per_device:
        p.error(
            f"--slices: every num_slices must be at most --rows-per-device "
            f"({args.rows_per_device}), got {args.slices}"
        )
    if args.cpu_devices is not None:  # else synk configures itself (SYNK_CPU_DEVICES)
        synk.init(cpu_devices=args.cpu_devices)
    if synk.process_count() > 1 and args.bench not in MULTI_PROCESS:
        p.error(f"synk bench {args.bench} runs in one process; launch it without mpiexec")
    if jax.default_backend() == "cpu" and getattr(args, "calls", 0) > CPU_MAX_CALLS:
        p.error(
            f"--calls {args.calls}: at most {CPU_MAX_CALLS} on the CPU backend (XLA's CPU "
            "collectives abort when ~50 un-blocked calls are in flight)"
        )
    # Every check that can refuse the flags is above: all processes refuse alike.
    if synk.process_index() > 0:  # every process runs; the first one reports
        args.quiet, args.json, args.plot = True, None, None
        with contextlib.redirect_stdout(io.StringIO()):
            COMMANDS[args.bench](args)
        return 0
    result = COMMANDS[args.bench](args)
    result["argv"] = list(sys.argv[1:] if argv is None else argv)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``synk bench`` argument parser."""
    p = argparse.ArgumentParser(
        prog="synk bench",
        description="Benchmarks of synk on this machine's devices. Simulate CPU devices "
        "with SYNK_CPU_DEVICES=N or --cpu-devices N.",
    )
    names = "{" + ",".join(BENCHMARKS) + "}"
    sub = p.add_subparsers(dest="bench", required=True, metavar=names)
    pos_int, pos_float = _positive(int), _positive(float)

    def untimed(name: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=BENCHMARKS[name], description=BENCHMARKS[name])
        s.add_argument("--json", metavar="PATH", help="write the figures as JSON")
        s.add_argument("--plot", metavar="PATH.png", help="draw the figures (needs matplotlib)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.add_argument("--cpu-devices", type=pos_int, help="simulate N CPU devices")
        return s

    def common(name: str, rounds: int, calls: int) -> argparse.ArgumentParser:
        s = untimed(name)
        s.add_argument("--rounds", type=pos_int, default=rounds, help="samples per variant")
        s.add_argument(
            "--calls",
            type=pos_int,
            default=calls,
            help=f"calls per sample, then one block (<= {CPU_MAX_CALLS} on CPU)",
        )
        return s

    s = common("overhead", 20, 10)
    s.add_argument("--batch", type=pos_int, help="rows of the even batch (default 32/device)")
    s.add_argument("--hidden", type=pos_int, default=64, help="hidden width of the small MLP")
    s.add_argument(
        "--compute-batch", type=pos_int, help="rows, compute-bound case (default 256/device)"
    )
    s.add_argument(
        "--compute-hidden", type=pos_int, default=128, help="hidden width, compute-bound case"
    )
    s.add_argument(
        "--conv", action="store_true", help="also time a conv-net step, synk vs hand-written"
    )
    s.add_argument("--conv-batch", type=pos_int, help="rows of the conv net (default 32/device)")
    s.add_argument("--conv-image", type=pos_int, default=28, help="image side of the conv net")
    s.add_argument(
        "--conv-channels", type=_sizes(2), default="32,64", help="conv net channels, e.g. 32,64"
    )

    s = common("dispatch", 5, 10)
    s.add_argument(
        "--total", type=pos_int, default=10_000, help="calls profiled (and timed per variant)"
    )

    s = common("collectives", 5, 10)
    s.add_argument(
        "--max-bytes", type=pos_int, help="largest message (default 16 MiB on CPU, 256 MiB else)"
    )

    def model(s) -> None:
        s.add_argument("--batch", type=pos_int, default=2048, help="rows per step")
        s.add_argument("--hidden", type=pos_int, default=256, help="width of the 2 hidden layers")

    model(common("scaling", 8, 5))
    s = common("predict", 8, 5)
    model(s)
    s.add_argument("--compute-ms", type=pos_float, help="one-device step time (default: measure)")
    s.add_argument("--link-gbps", type=pos_float, default=100.0, help="link bandwidth, Gbit/s")
    s.add_argument("--latency-us", type=float, default=10.0, help="per all-reduce latency, us")
    s.add_argument("--max-devices", type=pos_int, help="predict up to N (default 64)")
    s.add_argument("--no-measure", action="store_true", help="do not run scaling beside it")

    s = common("indexing", 40, 10)
    s.add_argument("--rows", type=pos_int, default=200_000, help="rows of the data set")
    s.add_argument("--features", type=pos_int, default=64, help="float32 columns of x")
    s.add_argument("--hidden", type=pos_int, default=64, help="hidden width of the MLP")
    s.add_argument(
        "--batches",
        type=_sizes(),
        default="64,256,1024,4096",
        help="comma-separated batch sizes (rows)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed for data, params, indices")

    s = common("fused", 20, 10)
    s.add_argument("--batch", type=pos_int, help="rows of the even batch (default 32/device)")
    s.add_argument("--hidden", type=pos_int, default=64, help="hidden width of the MLP")
    s.add_argument(
        "--optimizer",
        choices=("adam", "momentum"),
        default="adam",
        help="optax adam or sgd+momentum",
    )

    s = common("buckets", 20, 10)
    s.add_argument("--lengths", type=pos_int, default=30, help="distinct batch lengths swept")
    s.add_argument("--shortest", type=pos_int, default=200, help="shortest batch of the sweep")
    s.add_argument("--longest", type=pos_int, default=2000, help="longest batch of the sweep")
    s.add_argument("--hidden", type=pos_int, default=64, help="hidden width of the MLP")
    s.add_argument("--first-calls", type=pos_int, default=6, help="lengths of first calls timed")
    s.add_argument("--seed", type=int, default=0, help="seed of the lengths")

    s = untimed("memory")
    s.add_argument(
        "--rows-per-device", type=pos_int, default=256, help="rows of the batch per device"
    )
    s.add_argument("--image", type=pos_int, default=28, help="side of the square 1-channel images")
    s.add_argument(
        "--channels",
        type=_sizes(2),
        default="32,64",
        help="output channels of the two convolutions, e.g. 32,64",
    )
    s.add_argument(
        "--slices", type=_sizes(), default="1,2,4,8", help="comma-separated num_slices values"
    )
    s.add_argument("--seed", type=int, default=0, help="seed for data and params")
    return p


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _sizes(count: int | None = None):
    """A parser of comma-separated positive integers (exactly ``count`` of them, if given)."""

    def parse(text: str) -> list[int]:
        try:
            sizes = [int(b) for b in text.split(",") if b.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, got {text!r}"
            ) from None
        if not sizes or min(sizes) < 1:
            raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
        if count is not None and len(sizes) != count:
            raise argparse.ArgumentTypeError(f"expected {count} integers, got {text!r}")
        return sizes

    return parse
