#!/usr/bin/env bash
# The benchmark behind docs/benchmarks.md: `make bench` (or bench/run.sh).
#
# From a clean checkout it installs what it needs (wrk, a Python venv with the
# tutorial's gunicorn stack), builds the host, the guests and the native
# ceiling, then runs one after the other, on 127.0.0.1 only:
#   1. throughput and latency: wrk against wasm-host, the native ceiling,
#      `wasmtime serve` (the peer: wasmtime-cli 48.0.8 serving the digits
#      model as a wasi:http/proxy component, bench/wasi-http-digits) and
#      gunicorn + uvicorn + numpy, at each concurrency; on a machine with 2
#      or more cores each server is pinned alone to core 1 and wrk (one
#      thread) to core 0, so req/s is the inverse of the server's CPU per
#      request; then interleaved rounds of wasm-host, the ceiling and the
#      peer at 64 connections, for issue 15's ratios (rounds(), below);
#   2. density: wasm-host's memory with 1, 8 and 64 instances of a model with
#      16 MiB of weights;
#   3. start-up to ready, with and without the compiled-artifact cache;
#   4. micro-benchmarks (cargo bench -p wasm-host --bench micro);
#   5. ONNX models packed with `wasm-host pack`: memory of N instances of a
#      16 MiB Gemm, first request after boot, predict time against
#      onnxruntime on one thread (bench/onnx_bench.py);
#   5b. more models than memory: 10,000 registered copies of the digits model,
#      --load on-demand with a budget holding 1 %, Zipf traffic from 16
#      clients: req/s, warm and cold latency, load time, peak RSS, start-up
#      (bench/on_demand.py);
#   6. a fleet: 1, 2 and 3 hosts behind Debian's nginx (deploy/nginx.conf),
#      and one host without nginx, with wrk through the balancer;
#   7. gRPC against HTTP: perf_analyzer -i grpc and -i http against one host
#      serving both, at 1 and 64 concurrent requests (bench/grpc_bench.py);
#   8. dynamic batching: req/s and latency at 64 connections with and without
#      --max-batch-size, for digits, the packed CNN and a model with a fixed
#      cost per call (bench/batching.py);
#   9. the edge: the release binary's size (as built and stripped), for this
#      machine and, if `make arm-test` built it, for aarch64; the idle RSS of
#      the host serving the digits model; scale to zero (cold against warm),
#      memory after the idle timeout, 10,000 idle instances, 1,000 models at
#      zero (bench/edge.py);
#  10. instructions per request, counted under valgrind's callgrind for
#      wasm-host and the native ceiling, grouped by where they go: a figure
#      the machine's load does not move (bench/instructions.py);
#  11. tracing: CPU per request with OpenTelemetry export off, on at 1 % and
#      at 100 % sampling, to an OTLP/HTTP sink, in interleaved rounds
#      (bench/tracing.py);
# and finally prints the table and writes docs/benchmarks.md
# (bench/report.py). Every server is started, measured and stopped by its PID.
#
# Knobs (environment), for a quick smoke run or a bigger machine:
#   BENCH_SECONDS=5          seconds per wrk run
#   BENCH_CONNECTIONS="1 16 64"
#   BENCH_INSTANCES="2 N"    wasm-host --instances values (default 2, and nproc if different)
#   BENCH_DENSITY="1 8 64"   instance counts for the memory runs
#   BENCH_STARTUP_RUNS=5     runs per start-up figure (the median is reported)
#   BENCH_MICRO_SAMPLES=201  samples per micro-benchmark
#   BENCH_SCALAR=1           also time the guests built without WebAssembly SIMD (0: skip)
#   BENCH_GUNICORN=1         0: skip gunicorn
#   BENCH_WASMTIME=1         0: skip the `wasmtime serve` peer (1 installs wasmtime-cli 48.0.8 into
#                            target/bench/wasmtime-cli with `cargo install` when it is missing)
#   BENCH_WASMTIME_REUSE=1000000  `wasmtime serve --max-instance-reuse-count`: requests per instance
#   BENCH_PIN=auto           pin the throughput runs: the server to core BENCH_SERVER_CPU, wrk (-t1) to
#                            BENCH_WRK_CPU; auto = when nproc >= 2; 0: unpinned, wrk -t2 on every core
#   BENCH_SERVER_CPU=1, BENCH_WRK_CPU=0
#   BENCH_ROUNDS=7           interleaved rounds of wasm-host, the native ceiling and `wasmtime serve` at
#                            the top connection count, whose median ratios issue 15's targets read (0: skip)
#   BENCH_ROUND_SECONDS=3    seconds per server per round
#   BENCH_BEFORE=PATH        a wasm-host binary built from an earlier commit (e.g. before a refactor): the
#                            rounds run it too, as "before", and the report gives wasm-host ÷ before
#   BENCH_BEFORE_LABEL=TEXT  what that binary is, for the report (e.g. its commit)
#   BENCH_BUILD=1            0: use what is already built (target/release)
#   BENCH_FLEET="1 2 3"      host counts behind nginx for the fleet part
#   BENCH_ONDEMAND_MODELS=10000  registered models for the on-demand part (its budget holds 1 %)
#   BENCH_ONDEMAND_SECONDS=20    seconds of Zipf traffic for the on-demand part
#   BENCH_ONLY="throughput rounds density startup micro onnx models ondemand coldbig fleet grpc batching edge instructions tracing"   run only some parts (the report
#                            then uses the last results of the others, in target/bench/)
#   BENCH_QUIET_WAIT=300     seconds to wait for other work on the machine to stop
#                            before each measurement (0: do not wait)
#   BENCH_PORT=18080         first of the ports used
#   BENCH_DOC=docs/benchmarks.md  where the report goes
# Raw results and every server's log land in target/bench/.

set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${BENCH_SECONDS:-5}
CONNECTIONS=${BENCH_CONNECTIONS:-"1 16 64"}
NPROC=$(nproc)
if [[ -z ${BENCH_INSTANCES:-} ]]; then
    BENCH_INSTANCES=2
    [[ $NPROC != 2 ]] && BENCH_INSTANCES="2 $NPROC"
fi
DENSITY=${BENCH_DENSITY:-"1 8 64"}
STARTUP_RUNS=${BENCH_STARTUP_RUNS:-5}
MICRO_SAMPLES=${BENCH_MICRO_SAMPLES:-201}
SCALAR=${BENCH_SCALAR:-1}
ROUNDS=${BENCH_ROUNDS:-7}
ROUND_SECONDS=${BENCH_ROUND_SECONDS:-3}
GUNICORN=${BENCH_GUNICORN:-1}
WASMTIME=${BENCH_WASMTIME:-1}
WASMTIME_REUSE=${BENCH_WASMTIME_REUSE:-1000000}
PIN=${BENCH_PIN:-auto}
if [[ $PIN == auto ]]; then
    PIN=0
    ((NPROC >= 2)) && command -v taskset >/dev/null && PIN=1
fi
SERVER_CPU=${BENCH_SERVER_CPU:-1}
WRK_CPU=${BENCH_WRK_CPU:-0}
# The commands the throughput runs put in front of a server and of wrk.
SERVER_PIN=() WRK_PIN=()
if [[ $PIN == 1 ]]; then
    SERVER_PIN=(taskset -c "$SERVER_CPU")
    WRK_PIN=(taskset -c "$WRK_CPU")
fi
BUILD=${BENCH_BUILD:-1}
BEFORE=${BENCH_BEFORE:-}
[[ -z $BEFORE || -x $BEFORE ]] || { echo "BENCH_BEFORE=$BEFORE is not an executable" >&2; exit 2; }
ONLY=${BENCH_ONLY:-"throughput rounds density startup micro onnx models ondemand coldbig fleet grpc batching edge instructions tracing"}
FLEET=${BENCH_FLEET:-"1 2 3"}
PORT=${BENCH_PORT:-18080}
QUIET_WAIT=${BENCH_QUIET_WAIT:-300}
DOC=${BENCH_DOC:-docs/benchmarks.md}

OUT=target/bench
WASM=target/wasm32-wasip2/release
HOST=target/release/wasm-host
CEILING=target/release/native-ceiling
WASMTIME_VERSION=48.0.8
WASMTIME_ROOT=$OUT/wasmtime-cli
WASMTIME_BIN=$WASMTIME_ROOT/bin/wasmtime
PEER=$WASM/wasi_http_digits.wasm
VENV=bench/.venv
LUA=bench/wrk/post.lua

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- what the run needs -----------------------------------------------------

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    [[ " $ONLY " == *" fleet "* ]] && ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]] && missing+=(nginx)
    [[ " $ONLY " == *" instructions "* ]] && ! command -v valgrind >/dev/null && missing+=(valgrind)
    if ! command -v python3 >/dev/null; then
        missing+=(python3 python3-venv)
    elif [[ $GUNICORN == 1 ]] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        missing+=(python3-venv) # Debian's python3 comes without ensurepip
    fi
    [[ ${#missing[@]} == 0 ]] && return
    say "installing ${missing[*]} (Debian packages)"
    if [[ $(id -u) != 0 ]]; then
        die "missing ${missing[*]}: run 'sudo apt-get install ${missing[*]}' and try again"
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
    say "building the guests, the host, the native ceiling and the micro-benchmarks"
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
    # The guests as `make guests` builds them (fat LTO, one codegen unit),
    # the `wasmtime serve` peer's component too; the ONNX runner as `make` does.
    local guest=(env CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
        cargo build --release --target wasm32-wasip2)
    "${guest[@]}" -p guest-model -p fault-model -p echo-model -p big-model
    cargo build --release --target wasm32-wasip2 -p onnx-runner
    [[ $WASMTIME == 1 ]] && "${guest[@]}" -p wasi-http-digits
    cargo build --release -p wasm-host -p native-ceiling
    cargo bench -p wasm-host --bench micro --no-run
    if [[ $SCALAR == 1 ]]; then
        # The same guests without WebAssembly SIMD (.cargo/config.toml turns
        # it on; a later -simd128 turns it off), in a target dir of their own.
        CARGO_TARGET_DIR=$OUT/scalar-target \
            CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-C target-feature=-simd128" \
            "${guest[@]}" -p guest-model -p fault-model -p echo-model -p big-model
    fi
}

# wasmtime-cli for the `wasmtime serve` peer, bench only (never part of
# `make test`): built once into target/bench/wasmtime-cli with only the
# features `serve` needs (15–20 min on a busy 2-core machine; `wasmtime --help`
# needs clap's default features, which this build leaves out).
install_wasmtime() {
    if [[ -x $WASMTIME_BIN ]] && "$WASMTIME_BIN" --version | grep -q " $WASMTIME_VERSION "; then
        return
    fi
    say "installing wasmtime-cli $WASMTIME_VERSION into $WASMTIME_ROOT (cargo install, once)"
    CARGO_TARGET_DIR=$OUT/wasmtime-cli-build cargo install wasmtime-cli --version "$WASMTIME_VERSION" \
        --locked --root "$WASMTIME_ROOT" --no-default-features \
        --features run,serve,cranelift,pooling-allocator,parallel-compilation,cache,component-model,component-model-async
}

setup_venv() {
    if [[ ! -x $VENV/bin/gunicorn ]] || ! $VENV/bin/python -c 'import fastapi, numpy, uvicorn' 2>/dev/null; then
        say "installing gunicorn, uvicorn, fastapi and numpy into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/gunicorn/requirements.txt
    fi
}

# Request bodies, all from row 0 of the reference inputs (64 floats, scaled).
write_bodies() {
    python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
row = json.load(open("guest-model/weights/digits_reference.json"))["inputs"][0]
json.dump({"inputs": [row]}, open(f"{out}/predict.json", "w"))
json.dump({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row}]},
          open(f"{out}/infer.json", "w"))
# The density runs' bodies: 1, 2, 4, 8 or 16 rows of 1024 floats for the big model.
for rows in (1, 2, 4, 8, 16):
    big = [[round(((i + k) % 97) / 97, 4) for i in range(1024)] for k in range(rows)]
    json.dump({"inputs": big}, open(f"{out}/big-{rows}.json", "w"))
PY
}

# --- processes ----------------------------------------------------------------

# The PID and its descendants (gunicorn's workers are children of its master).
tree() {
    local pid=$1 child
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        tree "$child"
    done
}

# utime + stime of the whole tree, in clock ticks.
cpu_ticks() {
    local total=0 pid stat fields
    for pid in $(tree "$1"); do
        stat=$(cat /proc/"$pid"/stat 2>/dev/null) || continue
        # Fields after the command name, which may hold spaces: utime and
        # stime are the 14th and 15th fields of the line, so the 12th and 13th here.
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# A /proc/PID/status field (kB), summed over the tree.
status_kb() {
    local field=$1 total=0 pid value
    for pid in $(tree "$2"); do
        value=$(awk -v f="$field:" '$1 == f { print $2 }' /proc/"$pid"/status 2>/dev/null || true)
        total=$((total + ${value:-0}))
    done
    echo "$total"
}

SERVER=""
start() { # start LOG COMMAND...: runs a server in the background; its PID in SERVER
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    SERVER=$!
}

wait_ready() { # wait_ready URL LOG [BODY]: until URL answers 2xx (a POST of BODY when given)
    local deadline=$((SECONDS + 60)) ask=(curl -fsS -o /dev/null "$1")
    [[ -n ${3:-} ]] && ask+=(-H 'Content-Type: application/json' --data-binary @"$3")
    until "${ask[@]}" 2>/dev/null; do
        kill -0 "$SERVER" 2>/dev/null || die "the server exited before it was ready; see $2"
        ((SECONDS < deadline)) || die "the server was not ready within 60 s; see $2"
        sleep 0.05
    done
}

stop() { # stop: TERM the server started last, KILL it after 15 s
    [[ -n $SERVER ]] || return 0
    kill -TERM "$SERVER" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$SERVER" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
}
# The fleet part's hosts and nginx, stopped by PID if the run ends half-way.
FLEET_PIDS=()
stop_fleet() {
    local pid
    for pid in "${FLEET_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    FLEET_PIDS=()
}
trap 'stop; stop_fleet' EXIT

# Checks a server's answer for row 0 against scikit-learn's reference.
check_answer() { # check_answer NAME URL BODY
    local answer
    answer=$(curl -fsS "$2" -H 'Content-Type: application/json' --data-binary @"$3") \
        || die "$1: request to $2 failed"
    python3 - "$1" "$answer" <<'PY' || die "$1 does not answer what the reference says"
import json, sys
name, answer = sys.argv[1], json.loads(sys.argv[2])
reference = json.load(open("guest-model/weights/digits_reference.json"))
want_p, want_label = reference["probabilities"][0], reference["predicted_labels"][0]
if "model_name" in answer:  # Open Inference Protocol
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    probabilities, label = outputs["probabilities"], outputs["label"][0]
elif "outputs" in answer:  # wasm-host's /predict
    probabilities, label = answer["outputs"]["probabilities"][0], answer["prediction"]
else:  # the gunicorn app
    probabilities, label = answer["probabilities"][0], answer["prediction"][0]
error = max(abs(a - b) for a, b in zip(probabilities, want_p))
assert label == want_label and error < 1e-5, (label, want_label, error)
print(f"    {name}: label {label}, max |p - reference| = {error:.1e}", file=sys.stderr)
PY
}

# --- 1. throughput and latency ------------------------------------------------

# One wrk run per concurrency against the server started last; appends rows
# to throughput.tsv.
load() { # load CONTENDER ENDPOINT URL BODY
    local contender=$1 endpoint=$2 url=$3 body=$4 c threads before after machine_before machine_after line log
    WRK_BODY=$body "${WRK_PIN[@]}" wrk -t1 -c1 -d1s -s "$LUA" "$url" >/dev/null # warm-up
    for c in $CONNECTIONS; do
        threads=2
        ((c < 2 || PIN == 1)) && threads=1
        log="$OUT/wrk-${contender// /_}-${endpoint//\//_}-c$c.txt"
        wait_quiet
        before=$(cpu_ticks "$SERVER")
        machine_before=$(machine_busy_ticks)
        # bash's `time` gives wrk's own CPU (user and system seconds).
        { TIMEFORMAT='%U %S' && time WRK_BODY=$body "${WRK_PIN[@]}" wrk -t"$threads" -c"$c" -d"${SECONDS_PER_RUN}s" \
            --latency -s "$LUA" "$url" >"$log"; } 2>"$log.time"
        after=$(cpu_ticks "$SERVER")
        machine_after=$(machine_busy_ticks)
        line=$(grep '^BENCH ' "$log") || die "no result from wrk; see $log"
        python3 - "$contender" "$endpoint" "$c" "$threads" "$((after - before))" \
            "$((machine_after - machine_before))" "$(cat "$log.time")" \
            "$(status_kb VmHWM "$SERVER")" "${line#BENCH }" >>"$OUT/throughput.tsv" <<'PY'
import json, os, sys
contender, endpoint, c, t, ticks, machine_ticks, wrk_times, hwm, result = sys.argv[1:]
r = json.loads(result)
tick = os.sysconf("SC_CLK_TCK")
cpu, machine = int(ticks) / tick, int(machine_ticks) / tick
wrk = sum(float(x) for x in wrk_times.split())
# What neither the server nor wrk used: other work on the machine (the
# kernel's network processing is mostly charged to the two of them).
others = max(0.0, machine - cpu - wrk)
print("\t".join(map(str, [contender, endpoint, c, t, r["requests"], r["seconds"], r["rps"],
                          r["p50_us"], r["p99_us"], r["errors"], f"{cpu:.2f}", hwm,
                          f"{wrk:.2f}", f"{others:.2f}"])))
print(f"    {contender:<22} {endpoint:<24} c={c:<3} {r['rps']:>9.0f} req/s  p50 {r['p50_us']:>6} µs"
      f"  p99 {r['p99_us']:>6} µs  cpu {cpu:5.2f} s  wrk {wrk:5.2f} s  others {others:5.2f} s"
      f"  errors {r['errors']}", file=sys.stderr)
PY
    done
}

# Busy clock ticks of the whole machine so far (user, nice, system, irq,
# softirq, steal), from /proc/stat.
machine_busy_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# Waits until the machine is quiet (other work below 15% of its CPUs over a
# second), for at most BENCH_QUIET_WAIT seconds: a compile running next to
# the benchmark takes cores from both the server and wrk.
wait_quiet() {
    local waited=0 busy1 idle1 busy2 idle2 busy
    while :; do
        read -r busy1 idle1 < <(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
        sleep 1
        read -r busy2 idle2 < <(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
        busy=$((100 * (busy2 - busy1) / (busy2 - busy1 + idle2 - idle1 + 1)))
        ((busy <= 15)) && return
        if ((waited >= QUIET_WAIT)); then
            say "warning: the machine is still ${busy}% busy with other work; measuring anyway"
            return
        fi
        ((waited == 0)) && say "waiting for the machine to be quiet (${busy}% busy with other work)"
        sleep 4
        waited=$((waited + 5))
    done
}

throughput() {
    local n port=$PORT
    printf 'contender\tendpoint\tconnections\tthreads\trequests\tseconds\trps\tp50_us\tp99_us\terrors\tcpu_s\thwm_kb\twrk_cpu_s\tother_cpu_s\n' \
        >"$OUT/throughput.tsv"
    for n in $BENCH_INSTANCES; do
        say "wasm-host, $n instances"
        port=$((port + 1))
        start "$OUT/wasm-host-$n.log" "${SERVER_PIN[@]}" "$HOST" "${CACHE_FLAGS[@]}" --instances "$n" --bind "127.0.0.1:$port" "$WASM/guest_model.wasm"
        wait_ready "http://127.0.0.1:$port/v2/health/ready" "$OUT/wasm-host-$n.log"
        check_answer "wasm-host /predict" "http://127.0.0.1:$port/predict" "$OUT/predict.json"
        check_answer "wasm-host /v2 infer" "http://127.0.0.1:$port/v2/models/digits/infer" "$OUT/infer.json"
        load "wasm-host ($n inst.)" /v2/models/digits/infer "http://127.0.0.1:$port/v2/models/digits/infer" "$OUT/infer.json"
        load "wasm-host ($n inst.)" /predict "http://127.0.0.1:$port/predict" "$OUT/predict.json"
        stop
    done

    say "native ceiling"
    port=$((port + 1))
    start "$OUT/native-ceiling.log" "${SERVER_PIN[@]}" "$CEILING" --bind "127.0.0.1:$port"
    wait_ready "http://127.0.0.1:$port/predict" "$OUT/native-ceiling.log" "$OUT/predict.json"
    check_answer "native-ceiling /predict" "http://127.0.0.1:$port/predict" "$OUT/predict.json"
    check_answer "native-ceiling /v2 infer" "http://127.0.0.1:$port/v2/models/digits/infer" "$OUT/infer.json"
    load "native ceiling" /v2/models/digits/infer "http://127.0.0.1:$port/v2/models/digits/infer" "$OUT/infer.json"
    load "native ceiling" /predict "http://127.0.0.1:$port/predict" "$OUT/predict.json"
    stop

    if [[ $WASMTIME == 1 ]]; then
        say "wasmtime serve $WASMTIME_VERSION, the digits model as a wasi:http/proxy component"
        port=$((port + 1))
        # -S cli: Rust's std in the component imports wasi:cli (stdio,
        # environment); the proxy world alone does not link it.
        start "$OUT/wasmtime-serve.log" "${SERVER_PIN[@]}" "$WASMTIME_BIN" serve \
            --addr "127.0.0.1:$port" -S cli --max-instance-reuse-count "$WASMTIME_REUSE" "$PEER"
        wait_ready "http://127.0.0.1:$port/v2/models/digits/infer" "$OUT/wasmtime-serve.log" "$OUT/infer.json"
        check_answer "wasmtime serve /v2 infer" "http://127.0.0.1:$port/v2/models/digits/infer" "$OUT/infer.json"
        load "wasmtime serve" /v2/models/digits/infer "http://127.0.0.1:$port/v2/models/digits/infer" "$OUT/infer.json"
        stop
    fi

    if [[ $GUNICORN == 1 ]]; then
        say "gunicorn -w 4 + uvicorn workers + numpy"
        port=$((port + 1))
        # The machine may tune OpenBLAS for its CPU; the baseline runs numpy
        # as shipped, so both variables go, together, for this command only.
        start "$OUT/gunicorn.log" "${SERVER_PIN[@]}" env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE -C bench/gunicorn \
            "$PWD/$VENV/bin/gunicorn" -w 4 -k uvicorn.workers.UvicornWorker \
            --bind "127.0.0.1:$port" app:app
        wait_ready "http://127.0.0.1:$port/predict" "$OUT/gunicorn.log" "$OUT/predict.json"
        sleep 2 # gunicorn boots its workers one after the other: let all four come up
        check_answer "gunicorn /predict" "http://127.0.0.1:$port/predict" "$OUT/predict.json"
        load "gunicorn (4 workers)" /predict "http://127.0.0.1:$port/predict" "$OUT/predict.json"
        stop
    fi
}

# Issue 15's ratios, interleaved. One window per server is at the mercy of
# the minute it ran in: this machine moves by ±20 % from one minute to the
# next, and two `make bench` runs of the same code read wasm-host at 0.99×
# and 1.4× the native ceiling's CPU per request. So ROUNDS rounds run
# wasm-host, the ceiling and `wasmtime serve` in turn, ROUND_SECONDS each at
# the top connection count, and the report reads the median of the
# per-round ratios: a round's servers share that round's minute.
rounds() {
    local round contender port=$((PORT + 100)) top=${CONNECTIONS##* } url
    local contenders="wasm-host native"
    [[ $WASMTIME == 1 ]] && contenders+=" wasmtime"
    [[ -n $BEFORE ]] && contenders+=" before"
    # Written afresh, or not at all: the report must not read an earlier run's rounds.
    rm -f "$OUT/rounds.tsv"
    ((ROUNDS > 0)) || return 0
    say "interleaved rounds: $contenders, $ROUNDS × ${ROUND_SECONDS} s each at $top connections"
    printf 'round\tcontender\trequests\tseconds\trps\tp50_us\tp99_us\terrors\tcpu_s\n' >"$OUT/rounds.tsv"
    local order reversed
    reversed=$(printf '%s\n' $contenders | tac | tr '\n' ' ')
    for ((round = 1; round <= ROUNDS; round++)); do
        # Every other round in the opposite order, so that no server always
        # runs first (or last) in its minute.
        order=$contenders
        ((round % 2 == 0)) && order=$reversed
        for contender in $order; do
            port=$((port + 1))
            url=http://127.0.0.1:$port/v2/models/digits/infer
            case $contender in
            wasm-host | before)
                local binary=$HOST
                [[ $contender == before ]] && binary=$BEFORE
                start "$OUT/rounds-$contender.log" "${SERVER_PIN[@]}" "$binary" "${CACHE_FLAGS[@]}" \
                    --instances 2 --bind "127.0.0.1:$port" "$WASM/guest_model.wasm"
                wait_ready "http://127.0.0.1:$port/v2/health/ready" "$OUT/rounds-$contender.log"
                ;;
            native)
                start "$OUT/rounds-$contender.log" "${SERVER_PIN[@]}" "$CEILING" --bind "127.0.0.1:$port"
                wait_ready "$url" "$OUT/rounds-$contender.log" "$OUT/infer.json"
                ;;
            wasmtime)
                start "$OUT/rounds-$contender.log" "${SERVER_PIN[@]}" "$WASMTIME_BIN" serve \
                    --addr "127.0.0.1:$port" -S cli --max-instance-reuse-count "$WASMTIME_REUSE" "$PEER"
                wait_ready "$url" "$OUT/rounds-$contender.log" "$OUT/infer.json"
                ;;
            esac
            round_load "$round" "$contender" "$url" "$top"
            stop
        done
    done
}

round_load() { # round_load ROUND CONTENDER URL CONNECTIONS
    local log="$OUT/wrk-round-$1-$2.txt" before after line
    WRK_BODY=$OUT/infer.json "${WRK_PIN[@]}" wrk -t1 -c"$4" -d1s -s "$LUA" "$3" >/dev/null # warm-up
    before=$(cpu_ticks "$SERVER")
    WRK_BODY=$OUT/infer.json "${WRK_PIN[@]}" wrk -t1 -c"$4" -d"${ROUND_SECONDS}s" --latency -s "$LUA" "$3" >"$log"
    after=$(cpu_ticks "$SERVER")
    line=$(grep '^BENCH ' "$log") || die "no result from wrk; see $log"
    python3 - "$1" "$2" "$((after - before))" "${line#BENCH }" >>"$OUT/rounds.tsv" <<'PY'
import json, os, sys
rnd, contender, ticks, result = sys.argv[1:]
r = json.loads(result)
cpu = int(ticks) / os.sysconf("SC_CLK_TCK")
print("\t".join(map(str, [rnd, contender, r["requests"], r["seconds"], r["rps"], r["p50_us"],
                          r["p99_us"], r["errors"], f"{cpu:.2f}"])))
print(f"    round {rnd} {contender:<10} {r['rps']:>9.0f} req/s  cpu/req "
      f"{cpu / max(r['requests'], 1) * 1e6:5.1f} µs  p99 {r['p99_us']:>6} µs  errors {r['errors']}",
      file=sys.stderr)
PY
}

# --- 2. density -----------------------------------------------------------------

# Memory figures of one process, as TSV: VmRSS, VmHWM, Pss and their parts.
memory_tsv() { # memory_tsv PID
    local pid=$1 field
    for field in VmRSS VmHWM RssAnon RssFile RssShmem; do
        printf '\t%s' "$(status_kb "$field" "$pid")"
    done
    for field in Pss Pss_Anon Pss_File Pss_Shmem; do
        printf '\t%s' "$(awk -v f="$field:" '$1 == f { print $2 }' /proc/"$pid"/smaps_rollup)"
    done
}

density() {
    local n c port log wrk_pid served idle busy rows max_n=1
    for n in $DENSITY; do ((n > max_n)) && max_n=$n; done
    # The same load for every N, so that only the instances differ: 4
    # connections per instance of the largest N.
    c=$((4 * max_n))
    density_rows "$max_n" "$c"
    rows=$DENSITY_ROWS
    printf 'instances\tserved_by\tstate\trows\tconnections\tvmrss_kb\tvmhwm_kb\trss_anon_kb\trss_file_kb\trss_shmem_kb\tpss_kb\tpss_anon_kb\tpss_file_kb\tpss_shmem_kb\n' \
        >"$OUT/density.tsv"
    for n in $DENSITY; do
        say "density: big model (16 MiB of weights), $n instances, $rows row(s) per request"
        wait_quiet
        port=$((PORT + 50 + n))
        log="$OUT/density-$n.log"
        start "$log" "$HOST" "${CACHE_FLAGS[@]}" --instances "$n" --memory-limit 64MiB \
            --bind "127.0.0.1:$port" "$WASM/big_model.wasm"
        wait_ready "http://127.0.0.1:$port/v2/health/ready" "$log"
        idle=$(memory_tsv "$SERVER")
        # Read 2 s into a 3 s run, under load, while every instance's pages are
        # in use (see DAMON in docs/benchmarks.md).
        WRK_IDS=1 WRK_BODY=$OUT/big-$rows.json wrk -t2 -c"$c" -d3s --timeout 30s -s "$LUA" \
            "http://127.0.0.1:$port/predict" >"$OUT/wrk-density-$n.txt" &
        wrk_pid=$!
        sleep 2
        busy=$(memory_tsv "$SERVER")
        wait "$wrk_pid"
        served=$(grep '^BENCH ' "$OUT/wrk-density-$n.txt" | sed 's/.*"ids":\([0-9]*\).*/\1/')
        printf '%s\t%s\tbooted\t%s\t%s%s\n%s\t%s\tunder load\t%s\t%s%s\n' \
            "$n" "$served" "$rows" "$c" "$idle" "$n" "$served" "$rows" "$c" "$busy" >>"$OUT/density.tsv"
        tail -2 "$OUT/density.tsv" | awk -F'\t' '{ printf "    %2d instances, %-10s (%s served): VmRSS %5.0f MiB, VmHWM %5.0f MiB, PSS %4.0f MiB\n", $1, $3, $2, $6/1024, $7/1024, $11/1024 }' >&2
        ((served >= n)) || say "warning: only $served of $n instances served a request"
        stop
    done
}

# The fewest rows per request with which every instance of the largest N
# serves a request. The pool hands out the instance returned last, and a
# call holds its thread until it yields at an epoch tick (5 ms), so calls
# that end sooner leave most instances idle however many connections wait.
# The start-up also fills the compile cache, so every run after it starts alike.
DENSITY_ROWS=1
density_rows() { # density_rows N CONNECTIONS: sets DENSITY_ROWS
    local n=$1 c=$2 rows served port=$((PORT + 49))
    start "$OUT/density-calibration.log" "$HOST" "${CACHE_FLAGS[@]}" --instances "$n" \
        --memory-limit 64MiB --bind "127.0.0.1:$port" "$WASM/big_model.wasm"
    wait_ready "http://127.0.0.1:$port/v2/health/ready" "$OUT/density-calibration.log"
    for rows in 1 2 4 8 16; do
        WRK_IDS=1 WRK_BODY=$OUT/big-$rows.json wrk -t2 -c"$c" -d2s --timeout 30s -s "$LUA" \
            "http://127.0.0.1:$port/predict" >"$OUT/wrk-density-calibration.txt"
        served=$(grep '^BENCH ' "$OUT/wrk-density-calibration.txt" | sed 's/.*"ids":\([0-9]*\).*/\1/')
        say "density: with $rows row(s) per request, $served of $n instances served"
        ((served >= n)) && break
    done
    stop
    DENSITY_ROWS=$rows
}

# --- 3. start-up ------------------------------------------------------------------

startup() {
    local cache=$OUT/cache model
    printf 'case\tmedian_ms\truns_ms\n' >"$OUT/startup.tsv"
    if "$HOST" --help | grep -q -- '--cache-dir'; then
        say "start-up to ready: with the compiled-artifact cache, then --no-cache"
        rm -rf "$cache"
        for model in guest_model big_model; do
            time_startup 1 --cache-dir "$cache" "$WASM/$model.wasm" >/dev/null # fills the cache
            record_startup "$model, cache warm (--cache-dir)" \
                "$(time_startup "$STARTUP_RUNS" --cache-dir "$cache" "$WASM/$model.wasm")"
            record_startup "$model, no cache (--no-cache)" \
                "$(time_startup "$STARTUP_RUNS" --no-cache "$WASM/$model.wasm")"
        done
    else
        say "start-up to ready (this wasm-host has no --cache-dir yet: it compiles every time)"
        for model in guest_model big_model; do
            record_startup "$model, cache warm (--cache-dir)" '{"median_ms": "", "runs": []}'
            record_startup "$model, no cache (no --cache-dir flag yet)" \
                "$(time_startup "$STARTUP_RUNS" "$WASM/$model.wasm")"
        done
    fi
}

# Median time from spawning wasm-host (2 instances) to its first ready answer.
time_startup() { # time_startup RUNS FLAGS... MODEL
    local runs=$1 port=$((PORT + 40))
    shift
    wait_quiet
    python3 bench/startup.py "$runs" "$port" "$OUT/startup.log" -- \
        "$HOST" --instances 2 --bind "127.0.0.1:$port" "$@"
}

record_startup() { # record_startup CASE JSON
    python3 - "$1" "$2" >>"$OUT/startup.tsv" <<'PY'
import json, sys
case, r = sys.argv[1], json.loads(sys.argv[2])
print(f"{case}\t{r['median_ms']}\t{' '.join(map(str, r['runs']))}")
if r["runs"]:
    print(f"    {case}: median {r['median_ms']} ms of {r['runs']}", file=sys.stderr)
else:
    print(f"    {case}: not measured", file=sys.stderr)
PY
}

# --- 4. micro-benchmarks -------------------------------------------------------------

micro() {
    say "micro-benchmarks: cargo bench -p wasm-host --bench micro"
    local bench=(cargo bench -q -p wasm-host --bench micro)
    if [[ $BUILD != 1 ]]; then
        # The newest micro-benchmark binary cargo built.
        bench=("$(find target/release/deps -maxdepth 1 -name 'micro-*' -type f -executable -printf '%T@ %p\n' \
            | sort -rn | head -1 | cut -d' ' -f2)")
    fi
    wait_quiet
    MICRO_SAMPLES=$MICRO_SAMPLES MICRO_TSV=$PWD/$OUT/micro.tsv \
        "${bench[@]}" 2>"$OUT/micro.log" | tee "$OUT/micro.txt" >&2
    if [[ $SCALAR == 1 && -d $OUT/scalar-target/wasm32-wasip2/release ]]; then
        say "micro-benchmarks again, guests built without SIMD"
        wait_quiet
        MICRO_SAMPLES=$MICRO_SAMPLES MICRO_TSV=$PWD/$OUT/micro-scalar.tsv \
            MICRO_WASM_DIR=$PWD/$OUT/scalar-target/wasm32-wasip2/release \
            "${bench[@]}" 2>>"$OUT/micro.log" | tee "$OUT/micro-scalar.txt" >&2
    else
        rm -f "$OUT/micro-scalar.tsv"
    fi
}

# --- 5. ONNX models ------------------------------------------------------------------

models() {
    say "many models in one host: 100 copies of digits and of echo, memory per model, load times"
    wait_quiet
    python3 bench/many_models.py --host "$HOST" --digits "$WASM/guest_model.wasm" \
        --echo "$WASM/echo_model.wasm" --workdir "$OUT/many-models" \
        --out-md "$OUT/many_models.md" --out-json "$OUT/many_models.json"
}

ondemand() {
    say "more models than memory: ${BENCH_ONDEMAND_MODELS:-10000} registered digits models, a budget of 1 %, Zipf traffic"
    wait_quiet
    python3 bench/on_demand.py --host "$HOST" --digits "$WASM/guest_model.wasm" \
        --models "${BENCH_ONDEMAND_MODELS:-10000}" --clients 16 --seconds "${BENCH_ONDEMAND_SECONDS:-20}" \
        --workdir "$OUT/on-demand" --out-md "$OUT/on_demand.md" --out-json "$OUT/on_demand.json"
}

# A big packed model's cold request: ResNet-50 with its 102 MB of weights (issue 29's 2 s target),
# with BENCH_BEFORE's host in the same rounds when it is set.
coldbig() {
    say "a big model's cold request: ResNet-50 packed, two copies, a budget that holds one"
    local dir=$OUT/cold-big venv=$OUT/onnx-venv
    onnx_venv
    mkdir -p "$dir"
    [[ -f $dir/resnet.onnx ]] || "$venv/bin/python" examples/onnx/make_networks.py "$dir" resnet
    [[ -f $dir/resnet.wasm ]] || "$HOST" pack "$dir/resnet.onnx" -o "$dir/resnet.wasm" \
        --memory-limit 1GiB --cache-dir "$OUT/cache"
    local hosts=(--host "now=$HOST")
    [[ -n $BEFORE ]] && hosts=(--host "before=$BEFORE" "${hosts[@]}")
    wait_quiet
    python3 bench/cold_big.py --model "$dir/resnet.wasm" "${hosts[@]}" --rounds 3 --requests 4 \
        --workdir "$dir/run" --out-json "$OUT/cold_big.json" --out-md "$OUT/cold_big.md"
}

# The virtualenv with onnx, onnxruntime and numpy, at the test suite's pinned versions.
onnx_venv() {
    local venv=$OUT/onnx-venv
    if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import onnx, onnxruntime, numpy' 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            $(grep -E '^(onnx|onnxruntime|numpy)==' tests/python/requirements.txt)
    fi
}

onnx() {
    say "ONNX models: pack digits, a CNN and a 16 MiB Gemm; memory, first request, predict vs onnxruntime"
    local venv=$OUT/onnx-venv
    onnx_venv
    wait_quiet
    BENCH_DENSITY="$DENSITY" "$venv/bin/python" bench/onnx_bench.py "$OUT" "$HOST" "$((PORT + 200))"
}

# --- dynamic batching ---------------------------------------------------------------------

batching() {
    say "dynamic batching: 64 connections with and without --max-batch-size, three models"
    onnx_venv
    wait_quiet
    "$OUT/onnx-venv/bin/python" bench/batching.py "$OUT" "$HOST" "$((PORT + 300))"
}

# --- instructions per request ------------------------------------------------------------

tracing() {
    say "tracing: CPU per request with OpenTelemetry export off, at 1 % and at 100 %"
    wait_quiet
    python3 bench/tracing.py --host "$HOST" --digits "$WASM/guest_model.wasm" \
        --wrk-script "$LUA" --workdir "$OUT/tracing" \
        --out-md "$OUT/tracing.md" --out-json "$OUT/tracing.json"
}

instructions() {
    say "instructions per request under callgrind: wasm-host and the native ceiling"
    wait_quiet
    python3 bench/instructions.py "$OUT" "$HOST" "$CEILING" "$((PORT + 400))"
}

# --- 6. a fleet behind nginx ------------------------------------------------------------

# N hosts (--instances 2 each) behind nginx with deploy/nginx.conf, wrk through the balancer at 64
# connections; and one host alone, wrk straight at it, for what nginx costs. Everything shares this
# machine's cores: hosts, nginx's workers and wrk. Rows go to fleet.tsv, the section to fleet.md.
fleet() {
    local n i port hosts=() pids=() prefix nginx_pid url before after machine_before machine_after
    local log line loadavg nginx_bin directives wrk_times
    nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    printf 'setup\thosts\trequests\tseconds\trps\tp50_us\tp99_us\terrors\thosts_cpu_s\tnginx_cpu_s\twrk_cpu_s\tmachine_cpu_s\tloadavg\n' >"$OUT/fleet.tsv"
    for n in direct $FLEET; do
        local count=$n
        [[ $n == direct ]] && count=1
        say "fleet: $n host(s)$([[ $n == direct ]] && echo ", no nginx")"
        hosts=() pids=()
        for ((i = 0; i < count; i++)); do
            port=$((PORT + 300 + i))
            start "$OUT/fleet-host-$n-$i.log" "$HOST" "${CACHE_FLAGS[@]}" --instances 2 --bind "127.0.0.1:$port" "$WASM/guest_model.wasm"
            pids+=("$SERVER")
            FLEET_PIDS+=("$SERVER")
            wait_ready "http://127.0.0.1:$port/v2/health/ready" "$OUT/fleet-host-$n-$i.log"
            hosts+=("127.0.0.1:$port")
        done
        nginx_pid=""
        if [[ $n == direct ]]; then
            url="http://${hosts[0]}/v2/models/digits/infer"
        else
            prefix="$PWD/$OUT/fleet-nginx-$n"
            rm -rf "$prefix" && mkdir -p "$prefix"
            printf 'server %s max_fails=1 fail_timeout=2s;\n' "${hosts[@]}" >"$prefix/upstreams.conf"
            sed -e "s|@PREFIX@|$prefix|g" -e "s|@LISTEN@|127.0.0.1:$((PORT + 299))|g" deploy/nginx.conf >"$prefix/nginx.conf"
            directives="daemon off;"
            [[ $(id -u) == 0 ]] && directives+=" user root;"
            start "$prefix/stderr.log" "$nginx_bin" -p "$prefix" -c "$prefix/nginx.conf" -g "$directives"
            nginx_pid=$SERVER
            FLEET_PIDS+=("$nginx_pid")
            url="http://127.0.0.1:$((PORT + 299))/v2/models/digits/infer"
            wait_ready "http://127.0.0.1:$((PORT + 299))/v2/health/ready" "$prefix/error.log"
        fi
        check_answer "fleet of $n" "$url" "$OUT/infer.json"
        WRK_BODY=$OUT/infer.json wrk -t1 -c8 -d1s -s "$LUA" "$url" >/dev/null # warm-up
        wait_quiet
        loadavg=$(cut -d" " -f1-3 /proc/loadavg)
        before=0 after=0
        for i in "${pids[@]}"; do before=$((before + $(cpu_ticks "$i"))); done
        local nginx_before=0 nginx_after=0
        [[ -n $nginx_pid ]] && nginx_before=$(cpu_ticks "$nginx_pid")
        machine_before=$(machine_busy_ticks)
        log="$OUT/wrk-fleet-$n.txt"
        { TIMEFORMAT='%U %S' && time WRK_BODY=$OUT/infer.json wrk -t2 -c64 -d"${SECONDS_PER_RUN}s" \
            --latency -s "$LUA" "$url" >"$log"; } 2>"$log.time"
        for i in "${pids[@]}"; do after=$((after + $(cpu_ticks "$i"))); done
        [[ -n $nginx_pid ]] && nginx_after=$(cpu_ticks "$nginx_pid")
        machine_after=$(machine_busy_ticks)
        line=$(grep '^BENCH ' "$log") || die "no result from wrk; see $log"
        wrk_times=$(cat "$log.time")
        python3 - "$n" "$count" "$((after - before))" "$((nginx_after - nginx_before))" "$wrk_times" \
            "$((machine_after - machine_before))" "$loadavg" "${line#BENCH }" >>"$OUT/fleet.tsv" <<'PY'
import json, os, sys
setup, count, host_ticks, nginx_ticks, wrk_times, machine_ticks, loadavg, result = sys.argv[1:]
r = json.loads(result)
tick = os.sysconf("SC_CLK_TCK")
wrk = sum(float(x) for x in wrk_times.split())
print("\t".join(map(str, [setup, count, r["requests"], r["seconds"], r["rps"], r["p50_us"], r["p99_us"],
                          r["errors"] + r.get("non2xx", 0), f"{int(host_ticks) / tick:.2f}",
                          f"{int(nginx_ticks) / tick:.2f}", f"{wrk:.2f}",
                          f"{int(machine_ticks) / tick:.2f}", loadavg])))
print(f"    {setup:>6} {r['rps']:>9.0f} req/s  p50 {r['p50_us']:>6} µs  p99 {r['p99_us']:>6} µs  "
      f"hosts {int(host_ticks) / tick:.2f} s  nginx {int(nginx_ticks) / tick:.2f} s  wrk {wrk:.2f} s  "
      f"load {loadavg}", file=sys.stderr)
PY
        if [[ -n $nginx_pid ]]; then
            kill -QUIT "$nginx_pid" 2>/dev/null || true
            wait "$nginx_pid" 2>/dev/null || true
        fi
        for i in "${pids[@]}"; do SERVER=$i stop; done
        SERVER=""
        FLEET_PIDS=()
    done
    python3 bench/fleet_report.py "$OUT" "$SECONDS_PER_RUN" "$NPROC"
}

# --- 7. gRPC against HTTP -------------------------------------------------------------

grpc() {
    say "gRPC against HTTP: perf_analyzer -i grpc / -i http at 1 and 64, one host serving both"
    wait_quiet
    python3 bench/grpc_bench.py --host "$HOST" --model "$WASM/guest_model.wasm" \
        --out-md "$OUT/grpc.md" --out-json "$OUT/grpc.json" --seconds "$SECONDS_PER_RUN"
}

# --- 8. the edge -------------------------------------------------------------------

edge() {
    say "edge builds: binary sizes, idle memory"
    local arm=target/aarch64-unknown-linux-gnu/release/wasm-host port=$((PORT + 50)) n kb
    local arch
    arch=$(uname -m)
    {
        printf 'what\tbytes\n'
        printf '%s binary\t%s\n' "$arch" "$(stat -c %s "$HOST")"
        strip -o "$OUT/wasm-host.stripped" "$HOST"
        printf '%s binary, stripped\t%s\n' "$arch" "$(stat -c %s "$OUT/wasm-host.stripped")"
        if [[ -x $arm ]] && command -v aarch64-linux-gnu-strip >/dev/null; then
            printf 'aarch64 binary\t%s\n' "$(stat -c %s "$arm")"
            aarch64-linux-gnu-strip -o "$OUT/wasm-host-aarch64.stripped" "$arm"
            printf 'aarch64 binary, stripped\t%s\n' "$(stat -c %s "$OUT/wasm-host-aarch64.stripped")"
        fi
        # Once to fill the compile cache: the figures are for a warm start.
        start "$OUT/edge-warm-up.log" "$HOST" "${CACHE_FLAGS[@]}" --instances 1 --bind "127.0.0.1:$port" "$WASM/guest_model.wasm"
        wait_ready "http://127.0.0.1:$port/v2/health/ready" "$OUT/edge-warm-up.log"
        stop
        for n in 1 8; do
            wait_quiet
            start "$OUT/edge-$n.log" "$HOST" "${CACHE_FLAGS[@]}" --instances "$n" --bind "127.0.0.1:$port" "$WASM/guest_model.wasm"
            wait_ready "http://127.0.0.1:$port/v2/health/ready" "$OUT/edge-$n.log"
            check_answer "wasm-host /predict" "http://127.0.0.1:$port/predict" "$OUT/predict.json"
            sleep 2
            kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER/status")
            printf 'idle RSS, %s instance(s), digits model from the cache\t%s\n' "$n" "$((kb * 1024))"
            stop
        done
    } >"$OUT/edge.tsv"
    rm -f "$OUT/wasm-host.stripped" "$OUT/wasm-host-aarch64.stripped"
    say "edge: scale to zero, memory after idle, ${BENCH_EDGE_INSTANCES:-10000} instances, ${BENCH_EDGE_MODELS:-1000} models at zero"
    wait_quiet
    python3 bench/edge.py --host "$HOST" --digits "$WASM/guest_model.wasm" --workdir "$OUT/edge" \
        --out-md "$OUT/edge.md" --out-json "$OUT/edge.json"
}

# --- the run ---------------------------------------------------------------------------

machine() {
    {
        echo "nproc=$NPROC"
        echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "kernel=$(uname -sr)"
        echo "memory_gib=$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)"
        echo "date=$(date -u +%Y-%m-%d)"
        echo "loadavg=$(cut -d" " -f1-3 /proc/loadavg)"
        local commit
        if commit=$(git rev-parse --short HEAD 2>/dev/null); then
            git diff --quiet HEAD 2>/dev/null || commit+=" (with local changes)"
        else
            commit="unknown (not a git checkout)"
        fi
        echo "commit=$commit"
        echo "rustc=$(rustc --version)"
        echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }')"
        echo "python=$(python3 --version 2>&1)"
        if [[ $GUNICORN == 1 ]]; then
            echo "python_packages=$("$VENV/bin/pip" list --format=freeze 2>/dev/null | grep -iE '^(gunicorn|uvicorn|fastapi|numpy)==' | tr '\n' ' ')"
        fi
        echo "build_seconds=$BUILD_SECONDS"
        echo "seconds=$SECONDS_PER_RUN"
        echo "rounds=$ROUNDS"
        echo "round_seconds=$ROUND_SECONDS"
        [[ -n $BEFORE ]] && echo "before=${BENCH_BEFORE_LABEL:-$BEFORE}"
        echo "connections=$CONNECTIONS"
        echo "instances=$BENCH_INSTANCES"
        echo "density=$DENSITY"
        echo "startup_runs=$STARTUP_RUNS"
        echo "micro_samples=$MICRO_SAMPLES"
        echo "pinned=$PIN"
        echo "server_cpu=$SERVER_CPU"
        echo "wrk_cpu=$WRK_CPU"
        if [[ $WASMTIME == 1 && -x $WASMTIME_BIN ]]; then
            echo "wasmtime=$("$WASMTIME_BIN" --version)"
            echo "wasmtime_reuse=$WASMTIME_REUSE"
        fi
    } >"$OUT/machine.txt"
}

main() {
    local started=$SECONDS
    mkdir -p "$OUT"
    install_tools
    BUILD_SECONDS=$SECONDS
    [[ $BUILD == 1 ]] && build
    BUILD_SECONDS=$((SECONDS - BUILD_SECONDS))
    [[ $GUNICORN == 1 ]] && setup_venv
    [[ $WASMTIME == 1 && ( " $ONLY " == *" throughput "* || " $ONLY " == *" rounds "* ) ]] && install_wasmtime
    write_bodies
    # Every wasm-host run keeps its compiled-artifact cache here, not in ~/.cache.
    CACHE_FLAGS=()
    "$HOST" --help | grep -q -- '--cache-dir' && CACHE_FLAGS=(--cache-dir "$OUT/cache")
    machine
    local part
    for part in throughput rounds density startup micro onnx models ondemand coldbig fleet grpc batching edge instructions tracing; do
        [[ " $ONLY " == *" $part "* ]] && "$part"
    done
    python3 bench/report.py "$OUT" "$DOC" "$((SECONDS - started))"
}

main "$@"
