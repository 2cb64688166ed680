"""Command line: ``python -m synk info | bench`` (also the ``synk`` console script)."""

from __future__ import annotations

import argparse
import os
import sys

from synk._src.bench import SUBCOMMANDS


def info() -> str:
    """The process layout synk sees, as printable text (run on every rank)."""
    import jax

    import synk

    synk.init()
    devs = synk.devices()
    local = jax.local_devices()
    backend = jax.default_backend()
    lines = [
        f"synk {synk.__version__}, jax {jax.__version__}, python {sys.version.split()[0]}",
        f"process {synk.process_index()} of {synk.process_count()}",
        f"backend: {backend} ({devs[0].device_kind})",
        f"devices: {len(devs)} in all, {len(local)} in this process",
    ]
    lines += [f"  {d.id:>5}  {d.platform}  {d.device_kind}" for d in local]
    if synk.process_count() > 1:
        from synk._src import compat

        lines.append(f"coordinator: {compat.coordinator_address()}")
        lines.append(f"collectives: {_collectives(backend)}")
    for var in ("SYNK_CPU_DEVICES", "SYNK_TIMEOUT", "SYNK_CHECK", "SYNK_LOCAL_DEVICES"):
        if os.environ.get(var):
            lines.append(f"{var}={os.environ[var]}")
    return "\n".join(lines)


def _collectives(backend: str) -> str:
    if backend == "gpu":
        return "nccl"
    if backend == "cpu":
        import jax

        # A flag that jax.config holds as a dynamic attribute, which its types do not list.
        return getattr(jax.config, "jax_cpu_collectives_implementation", None) or "gloo"
    return backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="synk",
        description=__doc__,
        epilog=_benchmarks_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the devices and processes synk runs on")
    # bench has its own parser (synk/_src/bench/cli.py), imported only when it runs.
    sub.add_parser("bench", add_help=False, help="benchmarks of synk on this machine (below)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from synk._src.bench import cli

        return cli.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        print(info(), flush=True)  # on every rank under mpiexec
    return 0


def _benchmarks_help() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(["synk bench subcommands (synk bench NAME -h for their flags):", *lines])


if __name__ == "__main__":
    sys.exit(main())
