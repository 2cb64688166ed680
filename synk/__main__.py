"""Command line: ``python -m synk info`` (also the ``synk`` console script)."""

from __future__ import annotations

import argparse
import os
import sys


def info() -> str:
    """The devices and processes synk sees, as printable text."""
    import jax

    import synk

    synk.init()
    devs = synk.devices()
    local = jax.local_devices()
    lines = [
        f"synk {synk.__version__}, jax {jax.__version__}, python {sys.version.split()[0]}",
        f"process {synk.process_index()} of {synk.process_count()}",
        f"backend: {jax.default_backend()} ({devs[0].device_kind})",
        f"devices: {len(devs)} in all, {len(local)} in this process",
    ]
    for d in local:
        lines.append(f"  {d.id:>3}  {d.platform}  {d.device_kind}")
    if os.environ.get("SYNK_CPU_DEVICES"):
        lines.append(f"SYNK_CPU_DEVICES={os.environ['SYNK_CPU_DEVICES']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the devices and processes synk runs on")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
