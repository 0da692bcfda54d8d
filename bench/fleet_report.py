"""The fleet part's section of docs/benchmarks.md, from target/bench/fleet.tsv (written by
bench/run.sh's fleet()):

    python3 bench/fleet_report.py target/bench SECONDS NPROC

writes target/bench/fleet.md, which bench/report.py includes."""

import csv
import sys

out, seconds, nproc = sys.argv[1], sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(f"{out}/fleet.tsv"), delimiter="\t"))
direct = next(r for r in rows if r["setup"] == "direct")


def run_cpu(r):
    """CPU seconds this run used: the hosts, nginx and wrk."""
    return float(r["hosts_cpu_s"]) + float(r["nginx_cpu_s"]) + float(r["wrk_cpu_s"])


def others(r):
    """CPU the machine spent on anything else meanwhile: other work on a shared machine."""
    return max(0.0, float(r["machine_cpu_s"]) - run_cpu(r))


def cpu_per_request_us(r):
    return run_cpu(r) / int(r["requests"]) * 1e6


def nginx_per_request_us(r):
    return float(r["nginx_cpu_s"]) / int(r["requests"]) * 1e6


lines = [
    "## A fleet behind nginx (issue 13)",
    "",
    f"`BENCH_ONLY=fleet bench/run.sh`: N wasm-hosts (`--instances 2` each, the digits model) behind "
    "Debian's nginx 1.22 with `deploy/nginx.conf` (keep-alive to the hosts, `worker_processes auto`), and "
    f"wrk through nginx with 2 threads and 64 connections for {seconds} s; *direct* is one host with wrk "
    "straight at it. CPU seconds are what each part used during the run (nginx: master and workers); "
    "*CPU per request* is the hosts', nginx's and wrk's together over the requests served; *others* is "
    "what the machine spent on anything else meanwhile.",
    "",
    "| setup | req/s | vs direct | p50 | p99 | errors | hosts CPU | nginx CPU | wrk CPU | CPU per request | others | load average (1, 5, 15 min) |",
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
]
for r in rows:
    hosts = int(r["hosts"])
    name = "1 host, no nginx" if r["setup"] == "direct" else f"{hosts} host{'s' if hosts > 1 else ''} behind nginx"
    lines.append(
        f"| {name} | {float(r['rps']):,.0f} | {float(r['rps']) / float(direct['rps']):.2f}× | "
        f"{int(r['p50_us'])} µs | {int(r['p99_us'])} µs | {r['errors']} | {r['hosts_cpu_s']} s | "
        f"{r['nginx_cpu_s']} s | {r['wrk_cpu_s']} s | {cpu_per_request_us(r):.1f} µs | {others(r):.2f} s | "
        f"{r['loadavg']} |"
    )
behind = [r for r in rows if r["setup"] != "direct"]
lines += [
    "",
    f"The bound: this machine has {nproc} cores ({nproc} × {seconds} s of CPU per run), and the hosts, "
    "nginx's workers, wrk and any other work on the machine share them; the cores are full in every row. "
    "More hosts bring no more CPU here, so the fleet's throughput cannot grow with them: it is the "
    "cores divided by the CPU a request costs. The figure that does not depend on what else ran is "
    f"that cost: {cpu_per_request_us(direct):.0f} µs per request straight to a host, "
    f"{min(map(cpu_per_request_us, behind)):.0f}–{max(map(cpu_per_request_us, behind)):.0f} µs through "
    "nginx, whatever the number of hosts behind it (nginx's second HTTP hop, in and out, is the "
    "difference). On a fleet of machines each host brings its own cores: expect one host's throughput "
    "(the *direct* row, or the throughput table above) times the hosts, until nginx's own cores run out "
    f"(nginx alone used {min(map(nginx_per_request_us, behind)):.0f}–{max(map(nginx_per_request_us, behind)):.0f} "
    f"µs of CPU per request here: one core of it carries about "
    f"{1e6 / max(map(nginx_per_request_us, behind)) / 1000:.0f}k req/s).",
    "",
    "The machine is shared and noisy: *others* and the load averages (taken just before each run) show "
    "how much other work (builds, other benchmarks) took from each run; `bench/run.sh` waits up to "
    "`BENCH_QUIET_WAIT` seconds for quiet first, then measures anyway. Req/s moves with that; CPU per "
    "request much less.",
    "",
]
open(f"{out}/fleet.md", "w").write("\n".join(lines))
