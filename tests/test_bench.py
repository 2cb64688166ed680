"""`python -m synk bench ...`: every subcommand runs, and its JSON holds sane figures.

Each subcommand runs once, in a subprocess (it must choose its own device
count before JAX starts), with tiny sizes. Timings are never assertions: only
the structure of the output, positivity, and the relations that hold by
definition (busbw from algbw, the 1-device prediction).
"""

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, run_python, single_process

from synk._src.bench import SUBCOMMANDS

DEVICES = 8
pytestmark = single_process("each test launches its own one-process benchmark")


def run_bench(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synk", "bench", *args],
        env=clean_env(SYNK_CPU_DEVICES=str(DEVICES)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_json(tmp_path_factory, name: str, *args: str) -> dict:
    path = tmp_path_factory.mktemp(name) / "out.json"
    res = run_bench(name, *args, "--quiet", "--json", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sample/s" not in res.stderr  # --quiet: no progress bar
    out = json.loads(path.read_text())
    out["stdout"] = res.stdout
    return out


def positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def device_check(tmp_path_factory) -> Path:
    """One smoke run of benchmarks/device_check.sh (as on a GPU machine, but small).

    Its overhead, indexing and memory steps are the runs that this file checks,
    so the script cannot rot and nothing runs twice.
    """
    out = tmp_path_factory.mktemp("device-check")
    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh")],
        env=clean_env(SMOKE="1", PYTHON=sys.executable, OUT=str(out)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def smoke_json(device_check: Path, name: str) -> dict:
    out = json.loads((device_check / f"{name}.json").read_text())
    out["stdout"] = (device_check / f"{name}.log").read_text()
    assert "sample/s" not in out["stdout"]  # --quiet: no progress bar
    return out


@pytest.fixture(scope="module")
def overhead(device_check):
    return smoke_json(device_check, "overhead")


@pytest.fixture(scope="module")
def collectives(tmp_path_factory):
    return run_json(
        tmp_path_factory, "collectives", "--max-bytes", "4096", "--rounds", "3", "--calls", "2"
    )


@pytest.fixture(scope="module")
def predict(tmp_path_factory):
    # Runs scaling too (its measured figures sit beside the prediction).
    return run_json(
        tmp_path_factory,
        "predict",
        *("--batch", "64", "--hidden", "16", "--rounds", "3", "--calls", "2"),
        *("--compute-ms", "5", "--link-gbps", "10", "--latency-us", "20", "--max-devices", "32"),
    )


def test_overhead(overhead):
    assert overhead["machine"]["devices"] == DEVICES
    stats = overhead["stats_us"]
    for name in (
        "synk, numpy",
        "hand-written, numpy",
        "pmap, numpy",
        "synk, device-resident",
        "hand-written, device-resident",
        "synk, synk.data X[idx]",
        "hand-written, indices into resident data",
        "synk, numpy, uneven (+3)",
        "hand-written, numpy, uneven (+3)",
        "synk reduce='avg', numpy",
        "hand-written shard_map, numpy",
        "synk reduce='avg', numpy, uneven (+3)",
        "compute-bound: synk reduce='avg', num_slices=1",
        "compute-bound: synk reduce='avg', num_slices=4",
        "conv net: hand-written, numpy",
        "conv net: synk, numpy",
    ):
        s = stats[name]
        assert all(positive(s[k]) for k in ("median_us", "q1_us", "q3_us")), name
        assert s["q1_us"] <= s["median_us"] <= s["q3_us"], name
        assert len(overhead["samples_us"][name]) == 3
    assert all(positive(v) for v in overhead["ratios"].values())
    ratio = stats["synk, numpy"]["median_us"] / stats["hand-written, numpy"]["median_us"]
    assert overhead["ratios"]["synk / hand-written, numpy"] == pytest.approx(ratio)
    assert "synk / pmap, numpy" in overhead["targets"]
    assert overhead["targets"]["synk / hand-written, uneven"]["limit"] == 1.03
    assert "synk / hand-written, conv net" in overhead["ratios"]
    assert overhead["config"]["conv_batch"] == 16
    assert all(positive(v) for v in overhead["paired_ratios"].values())
    assert "Ratios (of the medians" in overhead["stdout"]


# What the dispatch profile counts per call.
PROFILED = (
    "synk plans built",
    "argument descriptions (in_axes trees)",
    "batch lengths checked",
    "jaxprs traced",
    "PartitionSpecs constructed",
    "tree_flatten calls",
    "tree_unflatten calls",
    "tree_structure calls",
)


def test_dispatch_profile_shows_nothing_redone_per_call(tmp_path_factory):
    out = run_json(tmp_path_factory, "dispatch", "--total", "400", "--rounds", "2")
    host = out["host_us"]
    for name in ("synk, numpy", "hand-written, numpy", "synk, device-resident"):
        assert positive(host[name]["median_us"]), name
    per_call, first = out["per_call"], out["first_call"]
    assert set(per_call) == set(first) == set(PROFILED)  # the same counters, later and first
    for label in (
        "synk plans built",
        "argument descriptions (in_axes trees)",
        "batch lengths checked",
        "jaxprs traced",
        "PartitionSpecs constructed",
        "tree_structure calls",
    ):
        assert per_call[label] == 0, label
    # The counters do see these functions: the first call of a new function runs them.
    for label, count in first.items():
        assert count >= 1, label
    # One flatten of the arguments and one unflatten of the outputs per call.
    assert per_call["tree_flatten calls"] == 1
    assert per_call["tree_unflatten calls"] == 1
    assert "Profile of 400 calls" in out["stdout"]


def test_collectives(collectives):
    n = collectives["machine"]["devices"]
    results = collectives["results"]
    ops = {r["op"] for r in results}
    assert ops == {"all-reduce", "all-gather", "reduce-scatter", "broadcast"}
    assert sorted({r["size"] for r in results}) == [1024, 2048, 4096]
    for r in results:
        assert all(positive(r[k]) for k in ("median_us", "algbw_gbs", "busbw_gbs", "bytes"))
        assert r["algbw_gbs"] == pytest.approx(r["bytes"] / (r["median_us"] * 1e-6) / 1e9)
    for r in results:
        factor = {"all-reduce": 2 * (n - 1) / n, "broadcast": 1.0}.get(r["op"], (n - 1) / n)
        assert r["busbw_gbs"] == pytest.approx(r["algbw_gbs"] * factor), r["op"]
    assert collectives["bus_factors"]["all-reduce"] == pytest.approx(2 * (n - 1) / n)


def test_predict_and_scaling(predict):
    cfg, results = predict["config"], predict["results"]
    assert cfg["compute_ms"] == 5 and cfg["compute_from"] == "--compute-ms"
    assert [r["devices"] for r in results] == [1, 2, 4, 8, 16, 32]
    one = results[0]
    assert one["predicted_ms"] == pytest.approx(5.0) and one["allreduce_ms"] == 0
    assert one["predicted_speedup"] == pytest.approx(1.0)
    link = 10e9 / 8
    for r in results[1:]:
        n = r["devices"]
        comm = 2 * (n - 1) / n * cfg["grad_bytes"] / link + 20e-6
        assert r["predicted_ms"] == pytest.approx(5.0 / n + comm * 1e3)
        assert positive(r["predicted_speedup"])
    measured = [r for r in results if "measured_ms" in r]
    assert [r["devices"] for r in measured] == [1, 2, 4, 8]
    assert all(positive(r["measured_ms"]) and positive(r["measured_speedup"]) for r in measured)
    assert measured[0]["measured_speedup"] == pytest.approx(1.0)


def test_scaling_alone_and_plot(tmp_path):
    path, png = tmp_path / "s.json", tmp_path / "s.png"
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []
    res = run_bench(
        *("scaling", "--batch", "32", "--hidden", "8", "--rounds", "3", "--calls", "2"),
        *("--quiet", "--json", str(path), *plot),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(path.read_text())["results"]
    assert [r["devices"] for r in results] == [1, 2, 4, 8]
    for r in results:
        assert positive(r["median_us"]) and positive(r["speedup"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["devices"])
    if plot:
        assert png.stat().st_size > 0


@pytest.fixture(scope="module")
def indexing(device_check):
    return smoke_json(device_check, "indexing")


def test_indexing(indexing):
    out = indexing
    cfg = out["config"]
    assert cfg["batches"] == [16, 60] and cfg["devices"] == DEVICES
    assert cfg["data_bytes"] == 500 * 4 * 4
    assert set(out["labels"]) == {"a", "b", "c", "r", "h", "d"}
    timed = ["16/a", "16/b", "16/c", "16/h", "16/r", "60/a", "60/b", "60/c", "60/h", "d"]
    assert sorted(out["stats_us"]) == sorted(timed)
    for key, s in out["stats_us"].items():
        assert all(positive(s[k]) for k in ("median_us", "q1_us", "q3_us")), key
        assert s["q1_us"] <= s["median_us"] <= s["q3_us"], key
        assert len(out["samples_us"][key]) == 3, key
    assert out["device_put_us"] == out["stats_us"]["d"]
    even, uneven = out["table"]
    assert [even["batch"], uneven["batch"]] == [16, 60]
    for row in (even, uneven):
        b = row["batch"]
        for v in ("a", "b", "c", "h"):
            assert row[v] == out["stats_us"][f"{b}/{v}"]["median_us"], (b, v)
        assert row["a_over_c"] == pytest.approx(row["a"] / row["c"])
        assert row["h2d_bytes_c"] == b * (4 * 4 + 4)  # a float32 row of x and its int32 label
    assert even["r"] == out["stats_us"]["16/r"]["median_us"] and math.isnan(uneven["r"])
    # One int32 index per row; uneven: each device also gets one extra-row index.
    assert even["h2d_bytes_a"] == 4 * 16 and uneven["h2d_bytes_a"] == 4 * (56 + 8)
    assert "(d) device_put of x" in out["stdout"]


def test_buckets_and_plot(tmp_path_factory):
    png = tmp_path_factory.mktemp("buckets-plot") / "b.png"
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []
    out = run_json(
        tmp_path_factory,
        "buckets",
        *("--lengths", "6", "--shortest", "20", "--longest", "120", "--hidden", "8"),
        *("--rounds", "3", "--calls", "2", "--first-calls", "2", *plot),
    )
    lengths = out["config"]["lengths"]
    assert len(set(lengths)) == 6 and all(20 <= n <= 120 for n in lengths)
    sweep = out["sweep_seconds"]
    assert set(sweep) == {
        "sweep: synk, buckets",
        "sweep: synk, exact shapes",
        "sweep: hand-written, a jit per length",
    } and all(positive(v) for v in sweep.values())
    # Each call of the sweep, one per length, within its variant's total.
    calls = out["sweep_call_s"]
    assert {f"sweep: {k}" for k in calls} == set(sweep)
    for name, seconds in calls.items():
        assert len(seconds) == len(lengths) and all(positive(t) for t in seconds)
        assert sum(seconds) <= sweep[f"sweep: {name}"]
    if plot:
        assert png.stat().st_size > 0
    # Capacities of a power of two rows per device: as many executables as capacities met.
    capacities = {1 << (-(-n // DEVICES) - 1).bit_length() for n in lengths}
    assert out["executables"] == len(capacities)
    rows = out["config"]["rows"]
    assert (
        rows["at a capacity"] % DEVICES == 0
        and rows["just above a boundary"] < rows["at a capacity"]
    )
    assert len(out["first_in_bucket_s"]) == 5 and len(out["first_calls_s"]["synk"]) == 2
    ratios = out["ratios"]
    assert set(ratios) == set(out["targets"]) and all(positive(v) for v in ratios.values())
    assert len(out["stats"]) == 4 and all(positive(s["median_us"]) for s in out["stats"].values())


def test_fused(tmp_path_factory):
    out = run_json(
        tmp_path_factory,
        "fused",
        *("--batch", "16", "--hidden", "8", "--rounds", "3", "--calls", "2"),
    )
    cfg = out["config"]
    assert cfg["batch"] == 16 and cfg["uneven_batch"] == 19 and cfg["optimizer"] == "adam"
    variants = [
        "fused, even",
        "two calls, even",
        "fused, uneven",
        "two calls, uneven",
        "hand-written fused, even",
    ]
    assert list(out["stats_us"]) == variants
    for name in variants:
        s = out["stats_us"][name]
        assert all(positive(s[k]) for k in ("median_us", "q1_us", "q3_us")), name
        assert s["q1_us"] <= s["median_us"] <= s["q3_us"], name
        assert len(out["samples_us"][name]) == 3, name
    # Both forms were checked against the serial step; they agree with each other too.
    gaps = out["fused_vs_two_calls_max_abs_diff"]
    assert set(gaps) == {"even", "uneven"} and all(0 <= g < 1e-5 for g in gaps.values())
    runs = out["executables"]
    for kind in ("even", "uneven"):
        assert runs[f"fused, {kind}"]["executables"] == 1
        assert runs[f"two calls, {kind}"]["executables"] == 2
        assert runs[f"two calls, {kind}"]["all_reduces"] >= 1
        assert runs[f"fused, {kind}"]["all_reduces"] >= 1
    assert set(out["targets"]) == {"fused / two calls, even", "fused / two calls, uneven"}
    stats = out["stats_us"]
    for kind in ("even", "uneven"):
        target = out["targets"][f"fused / two calls, {kind}"]
        ratio = stats[f"fused, {kind}"]["median_us"] / stats[f"two calls, {kind}"]["median_us"]
        assert target["value"] == pytest.approx(ratio) and target["limit"] == 0.85
        assert target["met"] == (ratio <= 0.85)
    assert all(positive(v) for v in out["paired_ratios"].values())
    assert "What one step runs" in out["stdout"]


@pytest.fixture(scope="module")
def memory(device_check):
    out = smoke_json(device_check, "memory")
    out["png"] = device_check / "memory.png"
    return out


def test_memory_falls_with_num_slices(memory):
    out = memory
    cfg = out["config"]
    assert cfg["devices"] == DEVICES and cfg["rows"] == 16 * DEVICES
    hand, *synk_rows = out["rows"]
    assert hand["variant"].startswith("hand-written") and hand["num_slices"] is None
    assert [r["num_slices"] for r in synk_rows] == [1, 2, 4, 8]
    assert all(r["variant"] == "synk" for r in synk_rows)
    for r in out["rows"]:
        for key in ("temp_bytes", "argument_bytes", "output_bytes"):
            assert isinstance(r[key], int) and r[key] > 0, (r, key)
        # Arguments (params and this device's rows) and outputs do not depend on num_slices.
        assert r["argument_bytes"] == hand["argument_bytes"] >= cfg["share_bytes"]
        assert r["output_bytes"] == hand["output_bytes"]
    temps = [r["temp_bytes"] for r in synk_rows]
    assert temps == sorted(temps, reverse=True) and len(set(temps)) == len(temps), temps
    one = synk_rows[0]["temp_bytes"]
    assert [r["temp_vs_slices_1"] for r in synk_rows] == pytest.approx([t / one for t in temps])
    target = out["target"]
    assert target["limit"] == 0.4 and target["value"] == pytest.approx(temps[2] / one)
    assert "temp / num_slices=1" in out["stdout"]
    assert out["png"].stat().st_size > 0


def test_device_check_script_parses():
    res = subprocess.run(
        ["bash", "-n", str(ROOT / "benchmarks" / "device_check.sh")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr


def device_check_table(out: Path) -> subprocess.CompletedProcess:
    report = ROOT / "benchmarks" / "device_check_report.py"
    return subprocess.run(
        [sys.executable, str(report), str(out), "--seconds", "42"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_device_check_smoke_run_prints_its_table(device_check):
    """The table of the smoke run: every step completed, every figure read."""
    table = (device_check / "table.txt").read_text()
    assert f"{DEVICES} x cpu (cpu)" in table and "(no result)" not in table
    assert re.search(r"synk / hand-written, conv net +\d", table)
    assert re.search(r"X\[idx\] / host batch, 16 rows +\d", table)
    assert re.search(r"temp, num_slices=4 / num_slices=1 +0\.\d+ +<= 0\.4 +yes", table)
    assert re.search(r"test_errors +\d+ passed, 0 failed, 0 errors", table)
    assert "not completed" not in table
    # comm_dtype=bfloat16: synk's all-reduce travels in bf16 as XLA partitions it
    # (the CPU compiler then promotes it to f32: GPUs run it as partitioned).
    bf16 = json.loads((device_check / "bf16.json").read_text())
    assert bf16["partitioned"] == [["bf16"]] and bf16["bf16_partitioned"] == 1, bf16
    assert "1 of 1 partitioned" in table


def test_device_check_table_reads_what_the_benchmarks_write(tmp_path, device_check):
    """The table from this version's JSON and a GPU's bf16 figures; a failed step fails it."""
    for name in ("overhead", "indexing", "memory"):
        (tmp_path / f"{name}.json").write_text((device_check / f"{name}.json").read_text())
    bf16 = {"devices": 1, "platform": "gpu", "partitioned": [["bf16"]], "compiled": [["bf16"]]}
    bf16.update(bf16_partitioned=1, bf16_compiled=1, max_rel_error=0.004)
    (tmp_path / "bf16.json").write_text(json.dumps(bf16))
    (tmp_path / "tests-test_errors.xml").write_text(
        '<testsuites><testsuite tests="5" failures="0" errors="0" skipped="1"/></testsuites>'
    )
    steps = ["overhead\tok\t3", "indexing\tok\t4", "bf16\tok\t1", "memory\tok\t2"]
    (tmp_path / "steps.tsv").write_text("\n".join([*steps, "tests\tok\t5"]) + "\n")
    res = device_check_table(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    table = res.stdout
    assert "1 of 1 partitioned, 1 of 1 compiled" in table
    assert re.search(r"test_errors +4 passed, 0 failed, 0 errors, 1 skipped +all pass +yes", table)
    # A step that did not complete makes the check fail; a missed target does not.
    (tmp_path / "steps.tsv").write_text("\n".join([*steps, "tests\ttimed out in x.py\t9"]))
    res = device_check_table(tmp_path)
    assert res.returncode == 1 and "not completed: tests" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["overhead", "--rounds", "0"], "--rounds: expected a positive number"),
        (["overhead", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["scaling", "--calls", "50"], "at most 20 on the CPU backend"),
        (["predict", "--latency-us", "-1"], "--latency-us must be >= 0"),
        (["indexing", "--batches", "8,x"], "--batches: expected comma-separated integers"),
        (["indexing", "--rows", "10", "--batches", "8,64"], "every batch must be at most --rows"),
        (["fused", "--optimizer", "lamb"], "--optimizer: invalid choice: 'lamb'"),
        (["dispatch", "--plot", "d.png"], "--plot: synk bench dispatch draws no plot"),
        (["memory", "--channels", "4"], "--channels: expected 2 integers"),
        (["memory", "--slices", "1,0"], "--slices: expected positive integers"),
        (
            ["memory", "--rows-per-device", "4", "--slices", "1,8"],
            "every num_slices must be at most --rows-per-device (4)",
        ),
    ],
)
def test_bad_flags_give_a_clear_error(args, message, capsys):
    # In this process (the suite's devices are already set up): argparse's
    # exit, before anything is measured.
    from synk.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: synk bench")


def test_two_processes(tmp_path):
    """overhead and collectives under mpiexec -n 2; overhead with the per-call check off."""
    mpiexec = Path(sys.executable).with_name("mpiexec")
    paths = {name: tmp_path / f"{name}.json" for name in ("overhead", "collectives")}
    sizes = {
        "overhead": ["--batch", "16", "--hidden", "8", "--compute-batch", "32"],
        "collectives": ["--max-bytes", "2048"],
    }
    # The check's cost is a launch with it against one without: here, the one without.
    check = {"overhead": {"SYNK_CHECK": "0"}, "collectives": {}}
    for name, path in paths.items():
        flags = [*sizes[name], "--rounds", "2", "--calls", "2", "--quiet", "--json", str(path)]
        res = subprocess.run(
            [str(mpiexec), "-n", "2", sys.executable, "-m", "synk", "bench", name, *flags],
            env=clean_env(SYNK_CPU_DEVICES="2", SYNK_TIMEOUT="60", **check[name]),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert res.stdout.count("in 2 process(es)") == 1  # the first process reports
    over = json.loads(paths["overhead"].read_text())
    assert over["machine"]["processes"] == 2 and over["machine"]["devices"] == 4
    assert over["config"]["synk_check"] == "0"
    stats = over["stats_us"]
    assert "pmap, numpy" not in stats  # one process only
    for name in ("synk, numpy", "hand-written, numpy", "synk, device-resident"):
        assert positive(stats[name]["median_us"]), name
    coll = json.loads(paths["collectives"].read_text())
    assert {r["op"] for r in coll["results"]} == set(coll["bus_factors"])
    assert coll["bus_factors"]["all-reduce"] == pytest.approx(2 * 3 / 4)


def test_scaling_refuses_several_processes(tmp_path):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    res = subprocess.run(
        [str(mpiexec), "-n", "2", sys.executable, "-m", "synk", "bench", "scaling"],
        env=clean_env(SYNK_CPU_DEVICES="2", SYNK_TIMEOUT="60"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert "synk bench scaling runs in one process" in res.stderr


@pytest.mark.parametrize("command", [["--help"], ["bench", "--help"]])
def test_help_lists_every_subcommand_with_a_description(command):
    res = subprocess.run(
        [sys.executable, "-m", "synk", *command],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    for name in SUBCOMMANDS:
        # "  name   what it measures": the name, then its one-line description.
        assert re.search(rf"^ +{name} +\w", res.stdout, re.MULTILINE), (name, res.stdout)


def test_import_synk_does_not_import_the_benchmarks():
    code = "import sys, synk; print(sorted(m for m in sys.modules if 'bench' in m))"
    res = run_python(code)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr  # no benchmark code on import
