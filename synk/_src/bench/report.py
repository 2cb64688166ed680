"""How the benchmarks show their figures: plain-text tables, the machine, a plot.

Called by every subcommand module (`print_table`, `print_stats`, `machine`,
`fmt_bytes`, `shared_cores_note`, and its ``PLOT``, one of the drawings below)
and by ``cli`` (`plot`, for ``--plot``).
Calls synk for the device and process counts, and matplotlib, imported only
to plot.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax

import synk

if TYPE_CHECKING:  # matplotlib is imported only to plot
    from matplotlib.axes import Axes

    from synk._src.bench.harness import Ratio


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        return "  ".join([first, *(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:]))])

    print(f"\n{title}")
    print(line(headers))
    print("-" * len(line(headers)))
    for r in rows:
        print(line(r))


def print_stats(title: str, stats: dict[str, dict], digits: int) -> None:
    """A table of variants: median and quartiles (microseconds), ``digits`` after the point."""
    print_table(
        title,
        ["variant", "median us", "q1 us", "q3 us"],
        [
            [name, *(f"{s[c]:.{digits}f}" for c in ("median_us", "q1_us", "q3_us"))]
            for name, s in stats.items()
        ],
    )


def print_ratios(ratios: list[Ratio]) -> None:
    """The ratios' table: value, paired value, target and whether it is met."""

    def verdict(r: Ratio) -> list[str]:
        if r.target is None:
            return ["", ""]
        return [f"{r.target[0]} {r.target[1]}", "yes" if r.met else "no"]

    print_table(
        "Ratios (of the medians; paired: median of the per-round ratios)",
        ["ratio", "value", "paired", "target", "met"],
        [[r.name, f"{r.value:.3f}", f"{r.paired:.3f}", *verdict(r)] for r in ratios],
    )


def ratio_fields(ratios: list[Ratio]) -> dict:
    """The ratios as a result's JSON fields: values, paired values, and the targets."""
    return {
        "ratios": {r.name: r.value for r in ratios},
        "paired_ratios": {r.name: r.paired for r in ratios},
        "targets": {
            r.name: {"op": r.target[0], "limit": r.target[1], "value": r.value, "met": r.met}
            for r in ratios
            if r.target
        },
    }


def fmt_bytes(n: float) -> str:
    """Bytes as synk.data's reprs show them: whole bytes, else KB, MB or GB (1024 apart)."""
    units = ("B", "KB", "MB", "GB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {units[k]}"


def machine() -> dict:
    devs = synk.devices()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "devices": len(devs),
        "processes": synk.process_count(),
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "synk": synk.__version__,
    }


def heading(args: argparse.Namespace, **config: object) -> dict:
    """What a timing subcommand's result starts with: the machine, and its settings
    (the timing flags ``--rounds`` and ``--calls``, then `config`)."""
    return {"machine": machine(), "config": {"rounds": args.rounds, "calls": args.calls, **config}}


def shared_cores_note(devices: Sequence[jax.Device]) -> str:
    """On simulated CPU devices, why measured speedups stay near 1 (empty elsewhere)."""
    if devices[0].platform != "cpu" or len(devices) == 1:
        return ""
    return (
        f"note: these {len(devices)} CPU devices are simulated on {os.cpu_count()} cores "
        "and share them: the measured speedup is bounded by the cores, not by synk"
    )


# --------------------------------------------------------------------------
# Plots (matplotlib, imported only when asked for)


def plot(result: dict, path: str, draw: Callable[[Axes, dict], None]) -> None:
    """Write one figure of the result to ``path``: ``draw(ax, result)``, the module's ``PLOT``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    draw(ax, result)
    ax.set_title(f"synk bench {result['command']} ({result['machine']['devices']} devices)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_per_call(ax: Axes, result: dict) -> None:
    names = list(result["stats_us"])
    med = [result["stats_us"][k]["median_us"] for k in names]
    ax.barh(names, med)
    ax.invert_yaxis()
    ax.set_xlabel("median time per call (us)")


def draw_bandwidth(ax: Axes, result: dict) -> None:
    for op in dict.fromkeys(r["op"] for r in result["results"]):
        rs = [r for r in result["results"] if r["op"] == op]
        ax.loglog([r["size"] for r in rs], [r["busbw_gbs"] for r in rs], "o-", label=op)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("busbw (GB/s)")
    ax.legend()


def draw_memory(ax: Axes, result: dict) -> None:
    """Temp, argument and output bytes per device, one group of bars per variant."""
    rows = [r for r in result["rows"] if r["temp_bytes"] is not None]
    names = [
        r["variant"] if r["num_slices"] is None else f"num_slices={r['num_slices']}" for r in rows
    ]
    left = [0.0] * len(rows)
    for key in ("temp_bytes", "argument_bytes", "output_bytes"):
        mib = [r[key] / 2**20 for r in rows]
        ax.barh(names, mib, left=left, label=key.removesuffix("_bytes"))
        left = [a + b for a, b in zip(left, mib)]
    ax.invert_yaxis()
    ax.set_xlabel("MiB per device")
    ax.legend()


def draw_per_batch(ax: Axes, result: dict) -> None:
    """Time per call over batch size, one line per way of feeding the batch."""
    for v in ("a", "b", "c", "r", "h"):
        rows = [r for r in result["table"] if r[v] == r[v]]  # nan: not measured
        if rows:
            label = result["labels"][v]
            ax.loglog([r["batch"] for r in rows], [r[v] for r in rows], "o-", label=label)
    ax.set_xlabel("batch (rows)")
    ax.set_ylabel("median time per call (us)")
    ax.legend()


def draw_speedup(ax: Axes, result: dict) -> None:
    """Speedup over devices: measured (scaling), or predicted beside measured (predict)."""
    rs = result["results"]
    ks = [r["devices"] for r in rs]
    ax.plot(ks, ks, "k:", label="ideal")
    if "predicted_speedup" not in rs[0]:  # scaling's rows
        ax.plot(ks, [r["speedup"] for r in rs], "o-", label="measured")
    else:
        ax.plot(ks, [r["predicted_speedup"] for r in rs], "o-", label="predicted")
        meas = [r for r in rs if "measured_speedup" in r]
        if meas:
            ax.plot(
                [r["devices"] for r in meas],
                [r["measured_speedup"] for r in meas],
                "s--",
                label="measured",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("devices")
    ax.set_ylabel("speedup over 1 device")
    ax.legend()


def draw_sweep(ax: Axes, result: dict) -> None:
    """Each call of the buckets sweep (compile included) over its batch length, per variant."""
    lengths = result["config"]["lengths"]
    for (name, seconds), marker in zip(result["sweep_call_s"].items(), "o^s", strict=False):
        if name == "synk, buckets":
            name += f" ({result['executables']} executables)"
        ax.scatter(lengths, [t * 1e3 for t in seconds], marker=marker, s=16, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("batch (rows)")
    ax.set_ylabel("time of the call (ms)")
    ax.legend()
