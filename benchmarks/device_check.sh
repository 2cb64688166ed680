#!/usr/bin/env bash
# One prepared check of synk on a machine with a GPU, in at most 8 minutes.
#
#   bash benchmarks/device_check.sh            # on a GPU machine
#   SMOKE=1 bash benchmarks/device_check.sh    # the same steps, small, on 8 simulated
#                                              # CPU devices (under 3 minutes; make test
#                                              # runs it in tests/test_bench.py)
#
# Steps, each under its own time limit (a failed or late step is reported, and
# the others still run):
#   1. overhead  synk bench overhead --conv: per-call time of synk's default path
#                against the hand-written jit(in_shardings), even and uneven
#                (target 1.03), and of reduce='avg' against jit(shard_map), for
#                the bench MLP and a conv net
#   2. indexing  synk bench indexing: X[idx] on device data against shipping each
#                batch over the host-to-device link (target: X[idx] costs less)
#   3. bf16      comm_dtype=jnp.bfloat16: the all-reduces of a small function,
#                counted by dtype in its HLO after XLA's partitioner and compiled
#   4. memory    synk bench memory: temp bytes per device at num_slices 1, 2, 4, 8
#                (target: num_slices=4 at most 0.4x num_slices=1)
#   5. tests     the single-process tests that pass on one device (see TESTS)
# Then one table of every figure and target (benchmarks/device_check_report.py).
#
# Environment:
#   PYTHON=path  the interpreter; by default the first of $VENV/bin/python,
#                .venv/bin/python and python3 whose JAX sees a GPU (any JAX
#                with SMOKE=1); if none, $VENV is made and synk installed in it
#   VENV=dir     the virtualenv made when needed (default .venv-device)
#   OUT=dir      JSON and logs (default /tmp/synk-device-check)
#   SMOKE=1      small sizes, 8 simulated CPU devices
#   MATMUL_PRECISION  JAX's default f32 matmul/conv precision (default highest:
#                the checks compare synk with the serial step, and TF32 rounding
#                differs with the rows per call; set it empty for JAX's default)
#
# The tests: a one-GPU machine has synk.device_count() == 1. The files that
# launch their own processes with N simulated CPU devices or under mpiexec
# (bench, cli, runtime, launch, multiprocess) are left out, and so is docs (its
# examples print what 8 simulated devices give). The files in TESTS
# run in this process on whatever devices JAX has, each file on its own; with
# one device (checked with SYNK_CPU_DEVICES=1 on CPU) they pass but for the
# tests in NEEDS_DEVICES, which need several devices. SYNK_CPU_DEVICES stays unset.
# With SMOKE=1 two short files run on the 8 simulated devices.

set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/synk-device-check}
VENV=${VENV:-.venv-device}
SMOKE=${SMOKE:-0}
MATMUL_PRECISION=${MATMUL_PRECISION-highest}
START=$(date +%s)
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.xml "$OUT"/steps.tsv
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # synk from this tree, installed or not
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then
    BUDGET=600  # a guard against hangs only: shared CI machines can be slow
    export SYNK_CPU_DEVICES=8 JAX_PLATFORMS=cpu
    OVERHEAD=(--batch 16 --hidden 8 --compute-batch 32 --compute-hidden 8
              --conv --conv-batch 16 --conv-image 8 --conv-channels 4,8 --rounds 3 --calls 2)
    # 60 rows do not split evenly over 8 devices.
    INDEXING=(--rows 500 --features 4 --hidden 4 --batches 16,60 --rounds 3 --calls 2)
    MEMORY=(--rows-per-device 16 --image 8 --channels 4,8 --slices 1,2,4,8)
    TESTS=(tests/test_errors.py)  # the step runs; the suite itself runs them all
    DESELECT=""
else
    BUDGET=450  # seconds for all steps: with set-up and the table, within 8 minutes
    unset SYNK_CPU_DEVICES
    OVERHEAD=(--conv --conv-batch 256 --rounds 20 --calls 10)
    INDEXING=(--rows 200000 --batches 256,1024,4096 --rounds 20 --calls 10)
    MEMORY=()
    # Quick and telling first, the slow property tests last: a file that does
    # not start in time is reported as such.
    TESTS=(tests/test_whole.py tests/test_modules.py
           tests/test_arguments.py tests/test_errors.py tests/test_function.py
           tests/test_data.py tests/test_collectives.py tests/test_inside_function.py
           tests/test_dispatch.py tests/test_row_keys.py tests/test_numerics.py
           tests/test_equivalence.py)
    # Tests of these files that need several devices (an uneven split, a
    # collective that one device leaves out, a second device to move data to):
    # deselected with -k.
    NEEDS_DEVICES=(test_an_output_tree_that_changes_with_the_rows_is_refused
        test_num_slices_larger_than_the_rows_a_device_gets
        test_batch_smaller_than_the_device_count_needs_one_slice
        test_a_view_keeps_its_own_copy_of_the_indices
        test_only_the_indices_cross_from_host_to_device
        test_views_share_equal_indices_and_only_equal_ones
        test_local_view_errors test_a_view_on_other_devices_than_the_function
        test_scatter_splits_axis_zero_and_refuses_uneven
        test_per_device_output_needs_an_even_batch
        test_in_function_collectives_need_an_even_batch_and_one_slice
        test_k_outputs_of_one_op_are_one_all_reduce
        test_collectives_in_a_jitted_helper_are_found_even_when_its_trace_is_cached)
    DESELECT="not (${NEEDS_DEVICES[0]}$(printf ' or %s' "${NEEDS_DEVICES[@]:1}"))"
fi
if [ -n "$MATMUL_PRECISION" ]; then export JAX_DEFAULT_MATMUL_PRECISION=$MATMUL_PRECISION; fi

say() { echo "[device_check $(($(date +%s) - START))s] $*" >&2; }

left() { echo $((BUDGET - ($(date +%s) - START))); }

# ---------------------------------------------------------------- the interpreter

backend_of() {  # the JAX backend an interpreter sees, or nothing
    "$1" -c "import jax; print(jax.default_backend())" 2>/dev/null | tail -n 1
}

usable() {
    [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
    local backend
    backend=$(backend_of "$1")
    if [ "$SMOKE" = 1 ]; then [ -n "$backend" ]; else [ "$backend" = gpu ]; fi
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return 0; fi
    local cand
    for cand in "$VENV/bin/python" .venv/bin/python python3; do
        if usable "$cand"; then echo "$cand"; return 0; fi
    done
    return 1
}

make_venv() {  # a virtualenv with synk installed, as robustly as this machine allows
    local extra=test pip
    [ "$SMOKE" = 1 ] || extra=test,cuda
    # System packages stay visible: a machine without network may carry JAX already.
    python3 -m venv --system-site-packages "$VENV" || return 1
    # Bounded: without network pip would retry for minutes.
    pip=(timeout 240 "$VENV/bin/python" -m pip install --quiet --retries 1 --timeout 20
         --disable-pip-version-check)
    "${pip[@]}" -c constraints.txt -e ".[$extra]" || "${pip[@]}" -e ".[$extra]" \
        || true  # PYTHONPATH has synk anyway; what JAX is there decides below
}

if ! PY=$(pick_python); then
    say "no interpreter with a usable JAX: making $VENV (log: $OUT/setup.log)"
    make_venv >>"$OUT/setup.log" 2>&1
    if usable "$VENV/bin/python"; then
        PY=$VENV/bin/python
    else
        echo "device_check: no Python with a JAX that sees a GPU (see $OUT/setup.log)." >&2
        echo "Set PYTHON=..., or run SMOKE=1 for the CPU smoke run." >&2
        exit 2
    fi
fi
say "python: $PY ($("$PY" --version 2>&1)); output: $OUT"
if [ "$SMOKE" != 1 ] && [ "$(backend_of "$PY")" != gpu ]; then
    say "warning: JAX in $PY sees no GPU; the figures are for $(backend_of "$PY")"
fi
"$PY" -m synk info >"$OUT/info.log" 2>&1 || { cat "$OUT/info.log" >&2; exit 2; }
cat "$OUT/info.log" >&2
# The smoke run also draws the memory plot (so that tests/test_bench.py checks
# it) where matplotlib is installed.
if [ "$SMOKE" = 1 ] && "$PY" -c "import matplotlib" 2>/dev/null; then
    MEMORY+=(--plot "$OUT/memory.png")
fi

# ---------------------------------------------------------------- the steps

step() {  # step NAME CAP COMMAND...: run it under min(CAP, time left), log and record it
    local name=$1 cap=$2 limit rc t0
    shift 2
    limit=$(left)
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 5 ]; then
        say "$name: skipped, no time left"
        printf '%s\t%s\t%s\n' "$name" "no time" 0 >>"$OUT/steps.tsv"
        return
    fi
    say "$name (at most ${limit}s, log: $OUT/$name.log)"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local status=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out"; elif [ "$rc" != 0 ]; then
        status="failed ($rc)"
        tail -n 20 "$OUT/$name.log" >&2
    fi
    printf '%s\t%s\t%s\n' "$name" "$status" $(($(date +%s) - t0)) >>"$OUT/steps.tsv"
}

# timeout runs programs, not shell functions: the bf16 check goes to a file first.
cat >"$OUT/bf16_check.py" <<'EOF'
"""comm_dtype=bfloat16: count the all-reduces of a small function by dtype, in its HLO."""
import glob, json, os, re, sys, tempfile
DUMP = tempfile.mkdtemp()  # XLA writes the program after its partitioner here
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP} --xla_dump_hlo_pass_re=spmd-partitioning"
)
import jax, jax.numpy as jnp, numpy as np
import synk

def all_reduces(hlo):  # the dtypes of each all-reduce's result, one entry per instruction
    found = re.findall(r"=\s*(\(?[^=\n]*?)\s+all-reduce(?:-start)?\(", hlo)
    return [sorted(set(re.findall(r"([a-z]+\d*)\[", lhs))) for lhs in found]

n = synk.device_count()
f = synk.function(lambda x: (x * x).sum(0), reduce="sum", comm_dtype=jnp.bfloat16)
x = np.linspace(-1, 1, 8 * n * 256, dtype=np.float32).reshape(8 * n, 256)
compiled = f.lower(x).compile().as_text()
after = all_reduces(compiled)
# synk reduces over the device axis after the per-device body; XLA's partitioner
# makes that reduction an all-reduce: the program as partitioned is what synk asks for.
partitioned = [open(p).read() for p in glob.glob(f"{DUMP}/*after_spmd-partitioning*")]
before = [d for text in partitioned if " all-reduce(" in text for d in all_reduces(text)]
got, want = np.asarray(f(x)), (x * x).sum(0)
result = {
    "devices": n,
    "platform": jax.default_backend(),
    "partitioned": before,  # what synk asks for
    "compiled": after,  # what XLA runs
    "bf16_partitioned": sum("bf16" in d for d in before),
    "bf16_compiled": sum("bf16" in d for d in after),
    "max_rel_error": float(np.max(np.abs(got - want) / np.abs(want))),
}
json.dump(result, open(sys.argv[1], "w"), indent=1)
print(json.dumps(result))
EOF

SYNK=("$PY" -m synk bench)
if [ "$SMOKE" = 1 ]; then CAPS=(200 200 100 100); else CAPS=(100 100 60 60); fi
step overhead "${CAPS[0]}" "${SYNK[@]}" overhead "${OVERHEAD[@]}" --quiet --json "$OUT/overhead.json"
step indexing "${CAPS[1]}" "${SYNK[@]}" indexing "${INDEXING[@]}" --quiet --json "$OUT/indexing.json"
step bf16 "${CAPS[2]}" "$PY" "$OUT/bf16_check.py" "$OUT/bf16.json"
step memory "${CAPS[3]}" "${SYNK[@]}" memory ${MEMORY[@]+"${MEMORY[@]}"} --quiet --json "$OUT/memory.json"
# The tests, one file at a time, so that a slow machine still reports the files
# it got through: each writes its own tests-NAME.xml.
run_tests() {
    local f limit rc status=ok t0
    t0=$(date +%s)
    if ! "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
        say "tests: skipped, pytest or hypothesis is not installed for $PY"
        printf '%s\t%s\t%s\n' tests "skipped: no pytest" 0 >>"$OUT/steps.tsv"
        return
    fi
    say "tests: ${TESTS[*]} (log: $OUT/tests.log)"
    for f in "${TESTS[@]}"; do
        limit=$(left)
        if [ "$limit" -lt 10 ]; then status="no time for $(basename "$f") on"; break; fi
        timeout --kill-after=10 "$limit" "$PY" -m pytest -q -p no:cacheprovider \
            ${DESELECT:+-k "$DESELECT"} --junitxml="$OUT/tests-$(basename "$f" .py).xml" \
            "$f" >>"$OUT/tests.log" 2>&1
        rc=$?
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out in $(basename "$f")"; break; fi
        if [ "$rc" != 0 ]; then status="failed ($rc)"; fi
    done
    [ "$status" = ok ] || tail -n 30 "$OUT/tests.log" >&2
    printf '%s\t%s\t%s\n' tests "$status" $(($(date +%s) - t0)) >>"$OUT/steps.tsv"
}
run_tests

# ---------------------------------------------------------------- the table

"$PY" benchmarks/device_check_report.py "$OUT" --seconds $(($(date +%s) - START)) \
    | tee "$OUT/table.txt"
