"""``synk bench``'s command line: the parser, the checks on the flags, and the output files.

Called by ``synk/__main__.py`` (``synk bench ...``) and ``benchmarks/*.py``
(`main`). Makes one subcommand of each name in `SUBCOMMANDS` from the module
of that name, which declares:

- ``add_arguments(parser)``: its flags (the output flags below are added to
  every subcommand);
- ``run(args) -> dict``: prints its tables and returns its figures;
- ``check_arguments(args) -> str | None`` (optional): why its flags do not go
  together, before anything runs;
- ``SEVERAL_PROCESSES = True`` (optional): it also runs under mpiexec;
- ``PLOT`` (optional): the ``report`` drawing of its figures, for ``--plot``.

Calls synk to set up the devices, and ``report.plot`` for ``--plot``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import sys
from types import ModuleType

import jax

import synk
from synk._src.bench import SUBCOMMANDS
from synk._src.bench.flags import CPU_MAX_CALLS, positive_int
from synk._src.bench.report import plot


def main(argv: list[str] | None = None) -> int:
    """Run ``synk bench ...``: print the table, write ``--json`` / ``--plot``."""
    p = parser()
    args = p.parse_args(argv)
    module = _module(args.bench)
    if args.plot and not hasattr(module, "PLOT"):
        p.error(f"--plot: synk bench {args.bench} draws no plot")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib, which is not installed: pip install matplotlib")
    check = getattr(module, "check_arguments", None)
    if check is not None and (error := check(args)):
        p.error(error)
    if args.cpu_devices is not None:  # else synk configures itself (SYNK_CPU_DEVICES)
        synk.init(cpu_devices=args.cpu_devices)
    if synk.process_count() > 1 and not getattr(module, "SEVERAL_PROCESSES", False):
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
    result = {"command": args.bench, **module.run(args)}
    result["argv"] = list(sys.argv[1:] if argv is None else argv)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot, module.PLOT)
        print(f"wrote {args.plot}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``synk bench`` argument parser: one subcommand per module, with its own flags."""
    p = argparse.ArgumentParser(
        prog="synk bench",
        description="Benchmarks of synk on this machine's devices. Simulate CPU devices "
        "with SYNK_CPU_DEVICES=N or --cpu-devices N.",
    )
    names = "{" + ",".join(SUBCOMMANDS) + "}"
    sub = p.add_subparsers(dest="bench", required=True, metavar=names)
    for name, text in SUBCOMMANDS.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--json", metavar="PATH", help="write the figures as JSON")
        s.add_argument("--plot", metavar="PATH.png", help="draw the figures (needs matplotlib)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.add_argument("--cpu-devices", type=positive_int, help="simulate N CPU devices")
        _module(name).add_arguments(s)
    return p


def _module(name: str) -> ModuleType:
    """The module of subcommand ``name``: ``synk._src.bench.<name>``."""
    return importlib.import_module(f"{__package__}.{name}")
