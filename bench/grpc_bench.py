"""gRPC against HTTP on the same host, in the same run (the `grpc` part of bench/run.sh).

One wasm-host serves the digits model over HTTP and gRPC (`--grpc-bind`), pinned to core 1;
perf_analyzer (tests/python/perf_analyzer.sh), pinned to core 0, drives it at each concurrency
over HTTP (binary tensors) and over gRPC (raw contents), the two protocols alternating, and the
ratio gRPC / HTTP is taken within each round. Writes a Markdown section and the raw figures.

    python3 bench/grpc_bench.py --host target/release/wasm-host --model MODEL.wasm \
        --out-md target/bench/grpc.md --out-json target/bench/grpc.json

The host binds ephemeral ports (other work on the machine may hold any fixed one) and the
addresses are read from its log.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import process

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "tests" / "python" / "perf_analyzer.sh"
HTTP = re.compile(r"listening on http://(\S+)")
GRPC = re.compile(r"grpc listening on (\S+)")
RESULT = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec")


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def perf(protocol, url, concurrency, seconds):
    """One perf_analyzer run; returns (infer/s, average latency µs).

    perf_analyzer is not pinned, unlike the other load generators here: pinned to one core, its
    HTTP client at 64 connections never closed a measurement window (the server answered
    20k requests a second for minutes; its 64 request threads starve the one that measures),
    where unpinned it takes one window as at 1 and 16."""
    command = [
        "bash", str(PERF),
        "-i", protocol, "-u", url, "-m", "digits", "--shape", "x:1,64", "--input-data", "zero",
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(seconds * 1000), "--stability-percentage", "100",
        "--max-trials", "10",
    ]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT,
                             env=dict(os.environ, PA_QUIET="1"))
    except subprocess.TimeoutExpired:
        sys.exit(f"perf_analyzer -i {protocol} at {concurrency} did not finish in 240 s")
    found = RESULT.findall(run.stdout)
    if run.returncode != 0 or not found:
        sys.exit(f"perf_analyzer -i {protocol} at {concurrency} failed:\n{run.stdout}\n{run.stderr}")
    _, rate, latency = found[-1]
    return float(rate), int(latency)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--concurrency", default="1 64")
    p.add_argument("--instances", type=int, default=2)
    args = p.parse_args()

    server = process.Server(
        ["taskset", "-c", "1", args.host, "--instances", str(args.instances),
         "--bind", "127.0.0.1:0", "--grpc-bind", "127.0.0.1:0", args.model],
        Path(args.out_md).with_suffix(".log"), mode="w", cwd=ROOT, env=dict(os.environ, NO_COLOR="1"))
    try:
        http = server.wait_for_log(HTTP, 60, "wasm-host").group(1)
        grpc = server.wait_for_log(GRPC, 60, "wasm-host's gRPC listener").group(1)
        load_before = loadavg()
        rows = []
        for c in (int(c) for c in args.concurrency.split()):
            over_http = perf("http", http, c, args.seconds)
            over_grpc = perf("grpc", grpc, c, args.seconds)
            rows.append({"concurrency": c, "http_rps": over_http[0], "http_latency_us": over_http[1],
                         "grpc_rps": over_grpc[0], "grpc_latency_us": over_grpc[1]})
            print(f"    c={c:<3} HTTP {over_http[0]:>8.0f} infer/s ({over_http[1]} µs)   "
                  f"gRPC {over_grpc[0]:>8.0f} infer/s ({over_grpc[1]} µs)   "
                  f"gRPC/HTTP {over_grpc[0] / over_http[0]:.2f}", file=sys.stderr)
        load_after = loadavg()
    finally:
        server.stop(timeout=30)

    result = {"rows": rows, "loadavg_before": load_before, "loadavg_after": load_after,
              "instances": args.instances, "seconds": args.seconds, "nproc": os.cpu_count()}
    Path(args.out_json).write_text(json.dumps(result, indent=1))
    table = ["| connections / streams | HTTP infer/s | HTTP latency | gRPC infer/s | gRPC latency "
             "| gRPC / HTTP |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['concurrency']} | {r['http_rps']:,.0f} | {r['http_latency_us']} µs "
                     f"| {r['grpc_rps']:,.0f} | {r['grpc_latency_us']} µs "
                     f"| {r['grpc_rps'] / r['http_rps']:.2f} |")
    Path(args.out_md).write_text("\n".join([
        "## gRPC against HTTP (issue 14)",
        "",
        f"`bench/grpc_bench.py` (`BENCH_ONLY=grpc bench/run.sh`): one wasm-host, {args.instances} "
        "instances of the digits model, serving HTTP and gRPC (`--grpc-bind`) at once, pinned to "
        "core 1 (`taskset -c 1`); perf_analyzer 2.60, not pinned (pinned to one core, its HTTP "
        "client at 64 never ends a measurement window), drives it over HTTP "
        "(`-i http`, binary tensor data) and over gRPC (`-i grpc`, raw contents), one protocol "
        "after the other at each concurrency (perf_analyzer's concurrent requests: connections "
        f"for HTTP, streams on one channel for gRPC), {args.seconds} s windows (the figure is "
        "perf_analyzer's average of its last three, which must agree within 100%), a row of zeros "
        "as input. The ratio compares the two protocols within the same round.",
        "",
        *table,
        "",
        "perf_analyzer is the load generator for both protocols, and shares the server's core "
        "when it needs two, so at 64 it is as much the limit as the server: its HTTP client (a connection and a curl handle per "
        "concurrent request) costs it more per request than its gRPC client (streams on one "
        "channel). The server's own ceiling over HTTP is the wrk figures above.",
        "",
        f"Load average {load_before} before and {load_after} after. The machine is shared "
        f"({os.cpu_count()} cores, other builds may run beside the benchmark) and its figures are "
        "noisy from run to run; the ratio within a round is the figure to read, not the absolute "
        "rates.",
        "",
    ]))


if __name__ == "__main__":
    main()
