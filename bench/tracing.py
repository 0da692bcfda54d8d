#!/usr/bin/env python3
"""Benchmark: what tracing costs (bench/run.sh, BENCH_ONLY=tracing; Python stdlib and wrk only).

The digits model at 64 connections, four hosts in interleaved rounds: tracing off; on, exporting
to an OTLP/HTTP sink with OTEL_TRACES_SAMPLER=traceidratio at 1 %; on at 100 % (always_on); and,
with --before, a host built before tracing existed (what "off" costs against no tracing code at
all). The figure is the server's CPU per request (utime + stime from /proc over the requests wrk
counted), as a ratio against "off" in the same run; req/s and p99 beside it. The server is pinned
to one core, wrk and the sink to the other.

    python3 bench/tracing.py --host target/release/wasm-host --digits .../guest_model.wasm \\
        --wrk-script bench/wrk/post.lua --workdir target/bench/tracing \\
        --out-md target/bench/tracing.md --out-json target/bench/tracing.json

The sink accepts OTLP/HTTP exports (POST /v1/traces) and answers an empty, valid
ExportTraceServiceResponse without decoding: it counts bytes, so its own cost stays small. Every
host is started on 127.0.0.1 and stopped by its PID.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import process

LISTENING = re.compile(r"listening on http://(\S+)")
ROW = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8,
       8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10,
       0, 0, 0]
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ROW}]})


class Sink:
    """An OTLP/HTTP endpoint that counts what it is sent."""

    def __init__(self):
        self.bytes = 0
        self.exports = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                sink.bytes += len(body)
                sink.exports += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wrk(port, seconds, connections):
    env = dict(os.environ, WRK_BODY=ARGS.body_file)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", ARGS.wrk_script,
               f"http://127.0.0.1:{port}/v2/models/digits/infer"]
    if ARGS.wrk_cpu is not None:
        command = ["taskset", "-c", str(ARGS.wrk_cpu), *command]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"bench: no result from wrk:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[len("BENCH "):])


def run_round(name, host, extra_args, env_extra, log):
    command = [host, "--bind", "127.0.0.1:0", "--instances", "2", *extra_args, ARGS.digits]
    if ARGS.server_cpu is not None:
        command = ["taskset", "-c", str(ARGS.server_cpu), *command]
    env = dict(os.environ, **env_extra)
    env.pop("RUST_LOG", None)
    server = process.Server(command, log, mode="w", env=env)
    try:
        found = server.wait_for_log(LISTENING, 120, f"wasm-host ({name})")
        port = int(found.group(1).rsplit(":", 1)[1])
        wrk(port, 1, ARGS.connections)  # warm-up
        before = cpu_seconds(server.pid)
        result = wrk(port, ARGS.seconds, ARGS.connections)
        cpu = cpu_seconds(server.pid) - before
        exported = metric(port, "wasm_host_trace_spans_exported_total")
        dropped = metric(port, "wasm_host_trace_spans_dropped_total")
    finally:
        server.stop()
    requests = max(result["requests"], 1)
    row = {"contender": name, "requests": result["requests"], "rps": result["rps"],
           "p99_us": result["p99_us"], "errors": result["errors"],
           "cpu_us_per_request": cpu / requests * 1e6, "spans_exported": exported,
           "spans_dropped": dropped}
    print(f"    {name:<12} {row['rps']:>9.0f} req/s  cpu/req {row['cpu_us_per_request']:5.1f} µs  "
          f"p99 {row['p99_us']:>6} µs  errors {row['errors']}  spans {exported} (dropped {dropped})",
          flush=True)
    return row


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--before", help="a wasm-host built before tracing, for the 'off' cost")
    parser.add_argument("--digits", required=True)
    parser.add_argument("--wrk-script", default="bench/wrk/post.lua")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_TRACING_ROUNDS", "3")))
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_TRACING_SECONDS", "5")))
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", help="comma-separated contenders to run (e.g. before,off)")
    parser.add_argument("--server-cpu", type=int, default=1 if os.cpu_count() >= 2 else None)
    parser.add_argument("--wrk-cpu", type=int, default=0 if os.cpu_count() >= 2 else None)
    ARGS = parser.parse_args()
    os.makedirs(ARGS.workdir, exist_ok=True)
    ARGS.body_file = os.path.join(ARGS.workdir, "infer.json")
    with open(ARGS.body_file, "w") as f:
        f.write(BODY)
    if ARGS.wrk_cpu is not None:
        os.sched_setaffinity(0, {ARGS.wrk_cpu})  # the sink's threads run beside wrk
    sink = Sink()
    otlp = ["--otlp-endpoint", sink.url, "--otlp-protocol", "http/protobuf"]
    contenders = [("off", ARGS.host, [], {})]
    if ARGS.before:
        contenders.insert(0, ("before", ARGS.before, [], {}))
    contenders += [
        ("on, 1 %", ARGS.host, otlp, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}),
        ("on, 100 %", ARGS.host, otlp, {"OTEL_TRACES_SAMPLER": "always_on"}),
    ]
    if ARGS.only:
        contenders = [c for c in contenders if c[0] in ARGS.only.split(",")]
    rows = []
    for rnd in range(1, ARGS.rounds + 1):
        order = contenders if rnd % 2 else list(reversed(contenders))
        for name, host, args, env in order:
            log = os.path.join(ARGS.workdir, f"{name.replace(' ', '').replace(',', '-').replace('%', 'pct')}.log")
            row = run_round(name, host, args, env, log)
            row["round"] = rnd
            rows.append(row)
    summary = []
    off = statistics.median(r["cpu_us_per_request"] for r in rows if r["contender"] == "off")
    for name, *_ in contenders:
        mine = [r for r in rows if r["contender"] == name]
        cpu = statistics.median(r["cpu_us_per_request"] for r in mine)
        summary.append({
            "contender": name, "cpu_us_per_request": cpu, "ratio": cpu / off,
            "rps": statistics.median(r["rps"] for r in mine),
            "p99_us": statistics.median(r["p99_us"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
            "spans_per_request": (statistics.median((r["spans_exported"] or 0) / max(r["requests"], 1)
                                                    for r in mine)),
        })
    with open(ARGS.out_json, "w") as f:
        json.dump({"rounds": rows, "summary": summary, "sink_bytes": sink.bytes}, f, indent=1)
    lines = [
        "## Tracing: what it costs",
        "",
        f"The digits model, 2 instances, wrk at {ARGS.connections} connections; "
        f"{ARGS.rounds} interleaved rounds of {ARGS.seconds} s, medians; the server pinned to one core, "
        "wrk and the OTLP/HTTP sink to the other. CPU per request is the server's (user + system) "
        "over the requests wrk counted; the ratio is against tracing off in the same run. "
        "Spans per request counts what reached the collector (the warm-up's too).",
        "",
        "| tracing | CPU per request | ratio to off | req/s | p99 | spans exported per request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(f"| {s['contender']} | {s['cpu_us_per_request']:.1f} µs | {s['ratio']:.2f}× | "
                     f"{s['rps']:.0f} | {s['p99_us']} µs | {s['spans_per_request']:.2f} | {s['errors']} |")
    with open(ARGS.out_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
