#!/usr/bin/env python3
"""Benchmark: more models than memory (issue 29, docs/on-demand.md). Python stdlib only.

A repository of N copies of the digits model under their own names (hard links: one file on
disk), served with `--load on-demand` and a --memory-budget that holds B of them (1 instance
each), and Zipf traffic (s = 1: a few hot models, a long cold tail) from C client threads for
D seconds. Reports:
  - start-up: spawn to "listening" (every model registered, none loaded);
  - req/s over the run, errors;
  - latency p50/p99, split into resident (warm) requests and cold ones, which waited for
    their model's load (the host marks those with `x-model-load: demand`);
  - the load time as the host measures it (wasm_host_model_load_duration_seconds), loads and
    evictions counted by /metrics;
  - peak RSS (VmHWM) against the budget, and the resident bytes gauge's peak.
The first load compiles the model into the compile cache (--cache-dir in the workdir); it is
made before the run and reported apart, so the run sees what a host with a warm cache sees.

Usage:
  python3 on_demand.py --host target/release/wasm-host --digits .../guest_model.wasm
                       [--models 10000] [--budget-models 100] [--clients 16] [--seconds 20]
                       [--workdir DIR] [--out-md on_demand.md] [--out-json on_demand.json]
Every host process started is stopped by its PID (TERM, then KILL after a timeout).
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time

MEMORY_LIMIT_MIB = 32
RE_LISTEN = re.compile(r"listening on http://([0-9.]+):(\d+) .*; ready in ([0-9.]+)(ns|µs|us|ms|s)")
_UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}


def pctl(xs, p):
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))]


def payload(row):
    data = [((i * 37 + row) % 17) / 16.0 for i in range(64)]
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": data}],
                       "outputs": [{"name": "label"}]}).encode()


def repository(workdir, digits, count):
    """N folders m00000.. each with model.wasm hard-linked to one file (copied if links fail)."""
    repo = os.path.join(workdir, "repository")
    if os.path.isdir(repo) and len(os.listdir(repo)) == count:
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(repo)
    source = os.path.join(workdir, "digits.wasm")
    shutil.copyfile(digits, source)
    for i in range(count):
        folder = os.path.join(repo, f"m{i:05d}")
        os.mkdir(folder)
        try:
            os.link(source, os.path.join(folder, "model.wasm"))
        except OSError:
            shutil.copyfile(source, os.path.join(folder, "model.wasm"))
    return repo


class Host:
    def __init__(self, binary, args, logpath):
        env = {k: v for k, v in os.environ.items() if not k.startswith("WASM_HOST_")}
        env.update(NO_COLOR="1", RUST_LOG="info")
        self.logpath = logpath
        self.log_file = open(logpath, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([binary] + args, stdout=subprocess.DEVNULL, stderr=self.log_file,
                                     stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid

    def log(self):
        with open(self.logpath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_listening(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = RE_LISTEN.search(self.log())
            if m:
                self.port = int(m.group(2))
                return (time.monotonic() - self.t0) * 1000.0, float(m.group(3)) * _UNITS[m.group(4)]
            if self.proc.poll() is not None:
                raise RuntimeError("host exited before listening:\n" + self.log()[-4000:])
            time.sleep(0.005)
        raise RuntimeError("host not listening:\n" + self.log()[-4000:])

    def status_kb(self, key):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log_file.close()


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def metrics(port):
    return get(port, "/metrics")[1].decode()


def metric(text, name, *labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " ") or not all(l in line for l in labels):
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


def histogram_quantile(text, name, q):
    """A quantile from a Prometheus histogram's cumulative buckets (upper bound of the bucket)."""
    buckets = []
    for line in text.splitlines():
        m = re.match(name + r'_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return None
    want = q * buckets[-1][1]
    for le, count in buckets:
        if count >= want:
            return le
    return None


def zipf_sampler(n, s, seed):
    weights = [1.0 / (k + 1) ** s for k in range(n)]
    total = sum(weights)
    cumulative, acc = [], 0.0
    for w in weights:
        acc += w / total
        cumulative.append(acc)
    rng = random.Random(seed)
    import bisect

    def draw():
        return min(bisect.bisect_left(cumulative, rng.random()), n - 1)
    return draw


def client(port, models, s, seed, until, results, errors):
    draw = zipf_sampler(models, s, seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    row = seed
    while time.monotonic() < until:
        model = f"m{draw():05d}"
        row += 1
        t = time.monotonic()
        try:
            conn.request("POST", f"/v2/models/{model}/infer", body=payload(row),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
        except (http.client.HTTPException, OSError) as err:
            errors.append(f"{model}: {err}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            continue
        took = (time.monotonic() - t) * 1000.0
        if r.status != 200:
            errors.append(f"{model}: {r.status}")
            continue
        results.append((took, r.getheader("x-model-load") == "demand"))
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default=os.environ.get("WASM_HOST_BIN", "target/release/wasm-host"))
    ap.add_argument("--digits", default="target/wasm32-wasip2/release/guest_model.wasm")
    ap.add_argument("--models", type=int, default=10000)
    ap.add_argument("--budget-models", type=int, default=0, help="default: 1 %% of --models")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--alone", type=int, default=200, help="cold requests from one client after the run")
    ap.add_argument("--workdir", default="target/bench/on-demand")
    ap.add_argument("--out-md", default="target/bench/on_demand.md")
    ap.add_argument("--out-json", default="target/bench/on_demand.json")
    a = ap.parse_args()
    budget_models = a.budget_models or max(1, a.models // 100)
    os.makedirs(a.workdir, exist_ok=True)
    t = time.monotonic()
    repo = repository(a.workdir, a.digits, a.models)
    repo_s = time.monotonic() - t
    budget_mib = budget_models * MEMORY_LIMIT_MIB
    # An empty compile cache: the first load is a compile, every later one a cache hit.
    shutil.rmtree(os.path.join(a.workdir, "cache"), ignore_errors=True)
    args = ["--model-repository", repo, "--load", "on-demand", "--instances", "1",
            "--memory-limit", f"{MEMORY_LIMIT_MIB}MiB", "--memory-budget", f"{budget_mib}MiB",
            "--cache-dir", os.path.join(a.workdir, "cache"), "--bind", "127.0.0.1:0"]
    host = Host(a.host, args, os.path.join(a.workdir, "host.log"))
    try:
        startup_ms, host_ready_ms = host.wait_listening()
        rss_start_kb = host.status_kb("VmRSS")
        # The first load: a compile (or a compile-cache hit if a previous run filled it).
        t = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=120)
        conn.request("POST", "/v2/models/m00000/infer", body=payload(0),
                     headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        first.read()
        conn.close()
        first_ms = (time.monotonic() - t) * 1000.0
        assert first.status == 200, first.status
        before = metrics(host.port)

        results, errors = [], []
        peak = {"resident": 0.0}
        until = time.monotonic() + a.seconds
        threads = [threading.Thread(target=client, args=(host.port, a.models, a.zipf, 1000 + i, until,
                                                         results, errors)) for i in range(a.clients)]
        started = time.monotonic()
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            peak["resident"] = max(peak["resident"], metric(metrics(host.port), "wasm_host_resident_memory_bytes"))
            time.sleep(0.25)
        for th in threads:
            th.join()
        elapsed = time.monotonic() - started
        after = metrics(host.port)
        # Cold requests alone: one client, models from the tail that the run is unlikely to
        # have left resident (each answer says whether it waited for a load).
        alone = []
        conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=120)
        for i in range(a.alone):
            model = f"m{a.models - 1 - i:05d}"
            t = time.monotonic()
            conn.request("POST", f"/v2/models/{model}/infer", body=payload(i),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status == 200 and r.getheader("x-model-load") == "demand":
                alone.append((time.monotonic() - t) * 1000.0)
        conn.close()
        peak_rss_kb = host.status_kb("VmHWM")
        rss_end_kb = host.status_kb("VmRSS")
    finally:
        host.stop()

    warm = [ms for ms, cold in results if not cold]
    cold = [ms for ms, cold in results if cold]
    loads = metric(after, "wasm_host_model_loads_total") - metric(before, "wasm_host_model_loads_total")
    evictions = metric(after, "wasm_host_model_evictions_total")
    load_sum = metric(after, "wasm_host_model_load_duration_seconds_sum") - metric(before, "wasm_host_model_load_duration_seconds_sum")
    load_count = metric(after, "wasm_host_model_load_duration_seconds_count") - metric(before, "wasm_host_model_load_duration_seconds_count")
    r = {
        "models": a.models, "budget_models": budget_models, "budget_mib": budget_mib,
        "memory_limit_mib": MEMORY_LIMIT_MIB, "clients": a.clients, "seconds": round(elapsed, 1),
        "zipf_s": a.zipf, "cpus": os.cpu_count(),
        "repository_build_s": round(repo_s, 2),
        "startup_ms": round(startup_ms, 1), "host_ready_ms": round(host_ready_ms, 1),
        "first_load_ms": round(first_ms, 1),
        "requests": len(results), "errors": len(errors), "error_samples": errors[:5],
        "req_per_s": round(len(results) / elapsed, 1),
        "cold_share": round(len(cold) / max(1, len(results)), 3),
        "warm_p50_ms": pctl(warm, 50), "warm_p99_ms": pctl(warm, 99),
        "cold_p50_ms": pctl(cold, 50), "cold_p99_ms": pctl(cold, 99),
        "all_p50_ms": pctl([m for m, _ in results], 50), "all_p99_ms": pctl([m for m, _ in results], 99),
        "cold_alone": len(alone), "cold_alone_p50_ms": pctl(alone, 50), "cold_alone_p99_ms": pctl(alone, 99),
        "loads": loads, "evictions": evictions,
        "load_mean_ms": round(load_sum / load_count * 1000.0, 2) if load_count else None,
        "load_p50_ms_bucket": (histogram_quantile(after, "wasm_host_model_load_duration_seconds", 0.5) or 0) * 1000.0,
        "load_p99_ms_bucket": (histogram_quantile(after, "wasm_host_model_load_duration_seconds", 0.99) or 0) * 1000.0,
        "rss_start_mib": round(rss_start_kb / 1024, 1), "rss_end_mib": round(rss_end_kb / 1024, 1),
        "peak_rss_mib": round(peak_rss_kb / 1024, 1),
        "peak_resident_reserved_mib": round(peak["resident"] / 1048576, 1),
    }
    for k in ("warm_p50_ms", "warm_p99_ms", "cold_p50_ms", "cold_p99_ms", "all_p50_ms", "all_p99_ms",
              "cold_alone_p50_ms", "cold_alone_p99_ms"):
        if r[k] is not None:
            r[k] = round(r[k], 2)
    os.makedirs(os.path.dirname(a.out_json) or ".", exist_ok=True)
    with open(a.out_json, "w") as f:
        json.dump(r, f, indent=2)
    fmt = lambda v, unit="": "n/a" if v is None else f"{v}{unit}"
    md = [
        "## More models than memory (`--load on-demand`)",
        "",
        f"`bench/on_demand.py`: {r['models']:,} copies of the digits model under their own names, "
        f"registered with `--load on-demand`; `--memory-budget {budget_mib}MiB` holds {budget_models} of them "
        f"(1 instance × {MEMORY_LIMIT_MIB} MiB each); Zipf traffic (s = {a.zipf}) over all of them from "
        f"{a.clients} Python client threads for {r['seconds']} s, on {r['cpus']} CPUs shared with the clients.",
        "",
        "| figure | value |",
        "|---|--:|",
        f"| start-up: spawn to listening, {r['models']:,} models registered | {r['startup_ms']} ms |",
        f"| first load (compiles the model into the compile cache) | {r['first_load_ms']} ms |",
        f"| requests per second (errors) | {r['req_per_s']} ({r['errors']}) |",
        f"| cold requests (waited for their model's load) | {round(100 * r['cold_share'], 1)} % |",
        f"| resident requests p50 / p99 | {fmt(r['warm_p50_ms'], ' ms')} / {fmt(r['warm_p99_ms'], ' ms')} |",
        f"| cold requests p50 / p99 | {fmt(r['cold_p50_ms'], ' ms')} / {fmt(r['cold_p99_ms'], ' ms')} |",
        f"| cold requests one at a time, after the run ({r['cold_alone']}), p50 / p99 | "
        f"{fmt(r['cold_alone_p50_ms'], ' ms')} / {fmt(r['cold_alone_p99_ms'], ' ms')} |",
        f"| load time, host-measured: mean (p50 / p99 bucket bound) | {fmt(r['load_mean_ms'], ' ms')} "
        f"({r['load_p50_ms_bucket']:.1f} / {r['load_p99_ms_bucket']:.1f} ms) |",
        f"| loads / evictions in the run | {int(r['loads'])} / {int(r['evictions'])} |",
        f"| peak RSS (VmHWM) against the budget | {r['peak_rss_mib']} MiB of {budget_mib} MiB |",
        f"| peak resident reservation (instances × limit) | {r['peak_resident_reserved_mib']} MiB |",
        f"| RSS after start-up / at the end | {r['rss_start_mib']} / {r['rss_end_mib']} MiB |",
        "",
        "Loads of different models run side by side (only the budget decision and the swap are one at "
        "a time host-wide), so under the Zipf run loads share the cores with each other and with the "
        "warm requests and the clients: the host-measured load time is wall time, which includes that "
        "sharing. The one-at-a-time row is a cold request with no other traffic: "
        "the file read, a compile-cache hit, `metadata()`, one instance booted, and the inference. "
        "Peak RSS is the process's high-water mark; the budget bounds what the resident instances may "
        "reserve (instances × memory limit), which a digits instance barely touches.",
        "",
    ]
    with open(a.out_md, "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
