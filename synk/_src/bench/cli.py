"""``synk bench``'s command line: the flags, the checks on them, and the output files.

Called by ``synk/__main__.py`` (``synk bench ...``) and ``benchmarks/*.py``
(`main`). Makes each subcommand's flags with its module's ``add_arguments``, then
calls the chosen one's ``run``, then
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
from synk._src.bench.flags import CPU_MAX_CALLS, positive_int
from synk._src.bench.report import plot
from synk._src.commands import BENCHMARKS

MULTI_PROCESS = ("overhead", "collectives")  # the others time 1..n devices of one process
COMMANDS = {
    "overhead": overhead,
    "dispatch": dispatch,
    "collectives": collectives,
    "scaling": scaling,
    "predict": predict,
    "indexing": indexing,
    "fused": fused,
    "memory": memory,
    "buckets": buckets,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``synk bench ...``: print the table, write ``--json`` / ``--plot``."""
    p = parser()
    args = p.parse_args(argv)
    module = COMMANDS[args.bench]
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    check = getattr(module, "check_arguments", None)
    if check is not None and (error := check(args)):
        p.error(error)
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
            module.run(args)
        return 0
    result = module.run(args)
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
    """The ``synk bench`` argument parser: one subcommand per module, with its own flags."""
    p = argparse.ArgumentParser(
        prog="synk bench",
        description="Benchmarks of synk on this machine's devices. Simulate CPU devices "
        "with SYNK_CPU_DEVICES=N or --cpu-devices N.",
    )
    names = "{" + ",".join(BENCHMARKS) + "}"
    sub = p.add_subparsers(dest="bench", required=True, metavar=names)
    for name, text in BENCHMARKS.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--json", metavar="PATH", help="write the figures as JSON")
        s.add_argument("--plot", metavar="PATH.png", help="draw the figures (needs matplotlib)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.add_argument("--cpu-devices", type=positive_int, help="simulate N CPU devices")
        COMMANDS[name].add_arguments(s)
    return p
