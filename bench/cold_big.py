#!/usr/bin/env python3
"""Benchmark: a cold request to a big packed model (issue 29's second target: a cold request to a
packed ONNX model with 100 MB of weights under 2 s). Python stdlib only.

Two hard-linked copies of one packed model (`a` and `b`) in a repository, served with
`--load on-demand --instances 1` and a --memory-budget that holds one of them, so a request to the
other evicts the resident one and loads its own from the compile cache: a cold request. Each
host named with --host runs in turn, in --rounds interleaved rounds (noise on a shared machine
hits every host alike):
  - one warm-up request (the first one ever compiles into the cache, reported apart);
  - --requests cold requests, alternating a and b;
  - as many warm requests to the model just loaded (the inference alone, for the difference).
Reports client latency (min, p50, max) of cold and warm requests, and the load time as the host
measures it (wasm_host_model_load_duration_seconds: from the read file to the booted pool).

Usage:
  python3 cold_big.py --model resnet.wasm --host now=target/release/wasm-host \
      [--host before=/path/to/older/wasm-host] [--rounds 2] [--requests 4] \
      [--memory-limit 1GiB] [--workdir DIR] [--out-json cold_big.json] [--out-md cold_big.md]
Every host started is stopped by its PID (process.Server).
"""
import argparse
import http.client
import json
import os
import random
import re
import statistics
import time

from process import Server

RE_LISTEN = re.compile(r"listening on http://[0-9.]+:(\d+) ")


def request(port, method, path, body=None, timeout=300):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def metric_sum(text, name):
    """The sum of every series of `name` (no labels filtered)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def infer_body(metadata):
    """One request of random FP32 data shaped as the model's first input (batch 1)."""
    first = metadata["inputs"][0]
    shape = [1 if d < 0 else d for d in first["shape"]]
    count = 1
    for d in shape:
        count *= d
    rng = random.Random(7)
    data = [round(rng.uniform(-1, 1), 4) for _ in range(count)]
    return json.dumps({"inputs": [{"name": first["name"], "shape": shape,
                                   "datatype": first["datatype"], "data": data}]}).encode()


def repository(workdir, model):
    repo = os.path.join(workdir, "repository")
    for name in ("a", "b"):
        folder = os.path.join(repo, name)
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, "model.wasm")
        if os.path.exists(target):
            os.unlink(target)
        os.link(model, target)
    return repo


def timed(port, name, body):
    started = time.monotonic()
    status, data = request(port, "POST", f"/v2/models/{name}/infer", body)
    took = time.monotonic() - started
    if status != 200:
        raise SystemExit(f"bench: {name} answered {status}: {data[:300]!r}")
    return took


def one_host(binary, args, workdir, label, round_no, requests, body_cache):
    log = os.path.join(workdir, f"{label}-{round_no}.log")
    server = Server([binary, "serve"] + args, log, mode="w",
                    env={**{k: v for k, v in os.environ.items() if not k.startswith("WASM_HOST_")},
                         "NO_COLOR": "1", "RUST_LOG": "info"})
    port = int(server.wait_for_log(RE_LISTEN, 120, f"{label} host").group(1))
    try:
        # Metadata first, untimed: for a host whose cache has no entry yet, this is the
        # compile (minutes for a big model, past a request's queue timeout).
        status, data = request(port, "GET", "/v2/models/a", timeout=1800)
        if status != 200:
            raise SystemExit(f"bench: metadata answered {status}: {data[:300]!r}")
        if "body" not in body_cache:
            body_cache["body"] = infer_body(json.loads(data))
        body = body_cache["body"]
        warmup = timed(port, "a", body)
        loads_before = request(port, "GET", "/metrics")[1].decode()
        cold = [timed(port, "b" if i % 2 == 0 else "a", body) for i in range(requests)]
        loads_after = request(port, "GET", "/metrics")[1].decode()
        last = "b" if requests % 2 == 1 else "a"
        warm = [timed(port, last, body) for _ in range(requests)]
        name = "wasm_host_model_load_duration_seconds"
        count = metric_sum(loads_after, name + "_count") - metric_sum(loads_before, name + "_count")
        seconds = metric_sum(loads_after, name + "_sum") - metric_sum(loads_before, name + "_sum")
        return {"warmup_s": warmup, "cold_s": cold, "warm_s": warm,
                "loads": count, "load_s_mean": seconds / count if count else None}
    finally:
        server.stop()


def summary(xs):
    return {"min": min(xs), "p50": statistics.median(xs), "max": max(xs), "n": len(xs)}


def markdown(opts, report):
    """The report's section: one row per host, and each host's ratio to `before` if it ran."""
    mib = os.path.getsize(opts.model) / 1e6
    lines = [
        "### A big model's cold request (`bench/cold_big.py`)",
        "",
        f"`{os.path.basename(opts.model)}` ({mib:.0f} MB, packed), two hard-linked copies under "
        f"`--load on-demand --instances 1 --memory-limit {opts.memory_limit}` and a budget that holds "
        f"one: each cold request evicts the other copy and loads its own from the compile cache. "
        f"{opts.rounds} interleaved rounds of a fresh host each: a warm-up, {opts.requests} cold "
        f"requests, {opts.requests} warm ones (the inference alone). Seconds, client side; the load "
        "is the host's own measure (`wasm_host_model_load_duration_seconds`).",
        "",
        "| host | cold: min / p50 / max | warm p50 | load, mean |",
        "|---|---:|---:|---:|",
    ]
    for label, r in report.items():
        c, w = r["cold_s"], r["warm_s"]
        lines.append(f"| {label} | {c['min']:.2f} / {c['p50']:.2f} / {c['max']:.2f} | "
                     f"{w['p50']:.2f} | {r['host_load_s_mean']:.2f} |")
    base = report.get("before")
    if base:
        for label, r in report.items():
            if label != "before":
                lines += ["", f"{label} ÷ before: cold p50 "
                          f"{r['cold_s']['p50'] / base['cold_s']['p50']:.2f}×, load "
                          f"{r['host_load_s_mean'] / base['host_load_s_mean']:.2f}×."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a packed model component (.wasm)")
    parser.add_argument("--host", action="append", required=True, help="LABEL=PATH, repeatable")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--workdir", default="target/bench/cold_big")
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None, help="a Markdown section for the report")
    opts = parser.parse_args()
    os.makedirs(opts.workdir, exist_ok=True)
    repo = repository(opts.workdir, os.path.abspath(opts.model))
    cache = os.path.join(opts.workdir, "cache")
    args = ["--model-repository", repo, "--model-control", "explicit", "--load", "on-demand",
            "--instances", "1", "--memory-limit", opts.memory_limit,
            "--memory-budget", opts.memory_limit, "--cache-dir", cache, "--bind", "127.0.0.1:0"]
    hosts = [h.split("=", 1) for h in opts.host]
    results = {label: [] for label, _ in hosts}
    body_cache = {}
    for round_no in range(opts.rounds):
        for label, binary in hosts:
            result = one_host(binary, args, opts.workdir, label, round_no, opts.requests,
                              body_cache)
            results[label].append(result)
            print(f"round {round_no} {label}: warm-up {result['warmup_s']:.2f} s, cold "
                  f"{' '.join(f'{c:.2f}' for c in result['cold_s'])} s, warm p50 "
                  f"{statistics.median(result['warm_s']):.2f} s, host load mean "
                  f"{result['load_s_mean']:.2f} s over {result['loads']:.0f}", flush=True)
    report = {}
    for label, rounds in results.items():
        cold = [c for r in rounds for c in r["cold_s"]]
        warm = [w for r in rounds for w in r["warm_s"]]
        loads = [r["load_s_mean"] for r in rounds if r["load_s_mean"] is not None]
        report[label] = {"cold_s": summary(cold), "warm_s": summary(warm),
                         "host_load_s_mean": statistics.mean(loads) if loads else None}
        c, w = report[label]["cold_s"], report[label]["warm_s"]
        print(f"{label}: cold min/p50/max {c['min']:.2f}/{c['p50']:.2f}/{c['max']:.2f} s; "
              f"warm p50 {w['p50']:.2f} s; host-measured load mean "
              f"{report[label]['host_load_s_mean']:.2f} s")
    if opts.out_md:
        with open(opts.out_md, "w") as f:
            f.write(markdown(opts, report))
    if opts.out_json:
        with open(opts.out_json, "w") as f:
            json.dump({"model": opts.model, "model_bytes": os.path.getsize(opts.model),
                       "report": report, "rounds": results}, f, indent=1)


if __name__ == "__main__":
    main()
