"""The one table at the end of ``benchmarks/device_check.sh``: every figure and target.

Reads what the script's steps left in its output folder (``steps.tsv``, the
``--json`` files of ``synk bench overhead``, ``indexing`` and ``memory``,
``bf16.json`` and pytest's ``tests-NAME.xml``, one per test file), prints the table, and exits
non-zero if a step failed, timed out or had no time left. A target that is not
met is a figure to read, not a failure of the check::

    python benchmarks/device_check_report.py /tmp/synk-device-check --seconds 312
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

INDEXING_TARGET = 1.0  # X[idx] should cost less than shipping the batch: (a) / (c) < 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the device check's output folder")
    p.add_argument("--seconds", type=int, help="wall time of the whole check")
    args = p.parse_args(argv)
    steps = _steps(args.out / "steps.tsv")
    rows = [
        *_overhead(_json(args.out / "overhead.json")),
        *_indexing(_json(args.out / "indexing.json")),
        *_bf16(_json(args.out / "bf16.json")),
        *_memory(_json(args.out / "memory.json")),
        *_tests(args.out),
        *(["step", name, f"{status}, {secs} s", "", ""] for name, status, secs in steps),
    ]
    if args.seconds is not None:
        rows.append(["step", "all steps", f"{args.seconds} s", "", ""])
    print(_title(args.out))
    _table(["check", "what", "figure", "target", "met"], rows)
    failed = [name for name, status, _ in steps if not status.startswith(("ok", "skipped"))]
    if failed:
        print(f"\nnot completed: {', '.join(failed)} (logs in {args.out})")
    return 1 if failed or not steps else 0


def _steps(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split("\t")) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _title(out: Path) -> str:
    for name in ("memory", "overhead", "indexing"):
        m = (_json(out / f"{name}.json") or {}).get("machine")
        if m:
            return (
                f"\nsynk device check: {m['devices']} x {m['device_kind']} ({m['platform']}), "
                f"jax {m['jax']}, python {m['python']}, synk {m['synk']}, {m['date']}"
            )
    return "\nsynk device check"


def _verdict(value: float | None, op: str, limit: float) -> str:
    if value is None:
        return "n/a"
    return "yes" if (value <= limit if op == "<=" else value < limit) else "no"


def _overhead(result: dict | None) -> list[list[str]]:
    if result is None:
        return [["overhead", "(no result)", "", "", ""]]
    med = {k: v["median_us"] for k, v in result["stats_us"].items()}
    rows = [
        ["overhead", name, f"{med[name]:.0f} us", "", ""]
        for name in med
        if name.startswith(("synk, numpy", "hand-written, numpy", "conv net"))
    ]
    for name, value in result["ratios"].items():
        target = result["targets"].get(name)
        if target is None:
            rows.append(["overhead", name, f"{value:.3f}", "", ""])
        else:
            op, limit = target["op"], target["limit"]
            rows.append(
                ["overhead", name, f"{value:.3f}", f"{op} {limit}", _verdict(value, op, limit)]
            )
    return rows


def _indexing(result: dict | None) -> list[list[str]]:
    if result is None:
        return [["indexing", "(no result)", "", "", ""]]
    return [
        [
            "indexing",
            f"X[idx] / host batch, {r['batch']} rows",
            f"{r['a_over_c']:.3f} ({r['a']:.0f} vs {r['c']:.0f} us)",
            f"< {INDEXING_TARGET}",
            _verdict(r["a_over_c"], "<", INDEXING_TARGET),
        ]
        for r in result["table"]
    ]


def _bf16(result: dict | None) -> list[list[str]]:
    if result is None:
        return [["bf16", "(no result)", "", "", ""]]
    partitioned, compiled = result["partitioned"], result["compiled"]
    figure = (
        f"{result['bf16_partitioned']} of {len(partitioned)} partitioned, "
        f"{result['bf16_compiled']} of {len(compiled)} compiled"
    )
    if result["platform"] == "cpu":
        met = "n/a: XLA's CPU compiler promotes bf16 all-reduces to f32"
    elif not compiled:
        met = f"n/a: no all-reduce left on {result['devices']} device(s)"
    else:
        met = "yes" if result["bf16_compiled"] == len(compiled) else "no"
    return [
        ["bf16", "bf16 all-reduces in the HLO", figure, "all compiled", met],
        ["bf16", "max relative error of the sum", f"{result['max_rel_error']:.1e}", "", ""],
    ]


def _memory(result: dict | None) -> list[list[str]]:
    if result is None:
        return [["memory", "(no result)", "", "", ""]]
    rows = []
    for r in result["rows"]:
        what = r["variant"] if r["num_slices"] is None else f"synk, num_slices={r['num_slices']}"
        temp = "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes']:,} B"
        rows.append(["memory", f"temp per device, {what}", temp, "", ""])
    t = result.get("target")
    if t:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        rows.append(
            [
                "memory",
                t["name"],
                value,
                f"{t['op']} {t['limit']}",
                _verdict(t["value"], t["op"], t["limit"]),
            ]
        )
    return rows


def _tests(out: Path) -> list[list[str]]:
    """One row per test file that ran (its ``tests-NAME.xml``), then the total."""
    rows, total = [], dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for path in sorted(out.glob("tests-*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            rows.append(["tests", path.stem.removeprefix("tests-"), "(unreadable)", "", ""])
            continue
        suites = [root] if root.tag == "testsuite" else list(root)
        count = {k: sum(int(s.get(k, 0)) for s in suites) for k in total}
        total = {k: total[k] + count[k] for k in total}
        rows.append(["tests", path.stem.removeprefix("tests-"), *_test_counts(count)])
    if not rows:
        return [["tests", "(no result)", "", "", ""]]
    return [*rows, ["tests", "all files that ran", *_test_counts(total)]]


def _test_counts(count: dict) -> list[str]:
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    figure = f"{passed} passed, {count['failures']} failed, {count['errors']} errors"
    if count["skipped"]:
        figure += f", {count['skipped']} skipped"
    ok = count["failures"] == count["errors"] == 0
    return [figure, "all pass", "yes" if ok else "no"]


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()

    print(line(headers))
    print("-" * len(line(headers)))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    sys.exit(main())
