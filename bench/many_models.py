#!/usr/bin/env python3
"""Benchmark: many models in one wasm-host process (Python stdlib only).

For each guest kind (digits, echo) and each repetition:
  (a) baseline    repository with 1 model: PSS after start, after one inference
  (b) many        repository with N copies (NAME-000..), 1 instance each: wall time to
                  "listening", host-reported per-model "ready in" (first = compiled,
                  rest = compile-cache hits), PSS after start / after one inference
                  to every model; PSS per extra model = (PSS_N - PSS_1)/(N-1)
  (c) api         --model-control explicit, repository with 1 model; copy N folders in,
                  time each POST .../load from the client, infer each, unload all,
                  PSS before / loaded / inferred / after unload (+settle samples);
                  then a second load+unload cycle to see whether memory keeps growing
  (d) nocache     --no-cache with a repository of D copies: compile cost per model

Usage:
  python3 many_models.py [--host bin/wasm-host] [--digits bin/guest_model.wasm]
                         [--echo bin/echo_model.wasm] [--n 100] [--reps 3]
                         [--nocache-n 10] [--out-md many_models.md] [--out-json many_models.json]
Env: WASM_HOST_BIN, DIGITS_WASM, ECHO_WASM override the default paths.
Every host process started is stopped by PID (TERM, then KILL after a timeout).
"""
import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time

import process

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEMORY_LIMIT = "32MiB"
MEMORY_BUDGET = "16GiB"
START_TIMEOUT = 120.0
SETTLE = 0.5  # seconds to wait before a PSS sample after an event
UNLOAD_SAMPLES = (0.5, 2.0, 5.0)  # seconds after the last unload

_UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}
_DUR = r"([0-9.]+)(ns|µs|us|ms|s)"
RE_LOADED = re.compile(
    r"loaded model (\S+) v(\d+) from (\S+) \(([^)]*)\), "
    r"(?:compiled in " + _DUR + r"|loaded from the compile cache in " + _DUR + r")"
    r".*?; (\d+) instances?,.*; ready in " + _DUR)
RE_LISTEN = re.compile(r"listening on http://([0-9.]+):(\d+) (.*?); ready in " + _DUR)
RE_TS = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z")


def ms(num, unit):
    return float(num) * _UNITS[unit]


def pctl(xs, p):
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def smaps(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return {"pss_kb": out.get("Pss"), "rss_kb": out.get("Rss"),
            "pss_anon_kb": out.get("Pss_Anon"), "pss_file_kb": out.get("Pss_File")}


def smaps_breakdown(pid):
    """PSS (kB) grouped by mapping kind, from /proc/PID/smaps."""
    groups = {}
    cur = None
    hdr = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$")
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = hdr.match(line)
            if m:
                size = int(m.group(2), 16) - int(m.group(1), 16)
                perm = m.group(3)
                path = m.group(4).strip()
                if path == "[heap]":
                    cur = "[heap]"
                elif path.startswith("[stack") or path in ("[vvar]", "[vdso]", "[vsyscall]"):
                    cur = "[stack]/[vdso]"
                elif "wasm-memory-image" in path:
                    cur = "memfd wasm-memory-image (data segments, CoW)"
                elif path.endswith(".cwasm"):
                    cur = "mapped .cwasm files"
                elif path.endswith("wasm-host"):
                    cur = "host binary"
                elif path:
                    cur = "other files (libs)"
                elif "x" in perm:
                    cur = "anon r-x (compiled guest code)"
                elif perm.startswith("r--"):
                    cur = "anon r-- (compiled module read-only data)"
                elif size >= (64 << 20):
                    cur = "anon rw >=64MiB (instance-pool region, other large anon maps)"
                else:
                    cur = "anon rw <64MiB (malloc arenas, stacks, instance state)"
                continue
            if line.startswith("Pss:") and cur is not None:
                groups[cur] = groups.get(cur, 0) + int(line.split()[1])
    return groups


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def vmsize_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1])
    return None


def payload(kind):
    data = [((i * 37) % 17) / 16.0 for i in range(64)]
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                   "data": data}]}).encode()


class Client:
    def __init__(self, port):
        self.port = port
        self.conn = None

    def post(self, path, body=b"{}", timeout=60):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self.conn.request("POST", path, body=body,
                                  headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, data
            except (http.client.HTTPException, ConnectionError, OSError):
                self.close()
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Host(process.Server):
    """One wasm-host process (bench/process.py's Server), stderr and stdout to files, stopped by
    PID."""

    def __init__(self, binary, args, logdir, tag):
        self.argv = [binary] + args
        self.errpath = os.path.join(logdir, f"{tag}.stderr.log")
        self.outpath = os.path.join(logdir, f"{tag}.stdout.log")
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        for k in list(env):
            if k.startswith("WASM_HOST_"):
                del env[k]
        super().__init__(self.argv, self.errpath, mode="w", env=env, stdout=self.outpath)
        self.port = None
        self.listen_line = None
        self.wall_to_listen_ms = None

    def log(self):
        return self.text()

    def wait_listening(self, timeout=START_TIMEOUT):
        m = self.wait_for_log(RE_LISTEN, timeout, "wasm-host", interval=0.005)
        self.wall_to_listen_ms = (time.monotonic() - self.started) * 1000.0
        text = self.log()
        self.port = int(m.group(2))
        self.listen_line = text[text.rfind("\n", 0, m.start()) + 1:].split("\n", 1)[0]
        self.host_ready_ms = ms(m.group(4), m.group(5))

    def mem(self):
        d = smaps(self.pid)
        d["threads"] = threads(self.pid)
        d["vmsize_kb"] = vmsize_kb(self.pid)
        try:
            d["by_mapping"] = smaps_breakdown(self.pid)
        except OSError:
            d["by_mapping"] = None
        return d

    def stop(self, timeout=40):
        return super().stop(timeout=timeout)


def parse_loads(text):
    rows = []
    for line in text.splitlines():
        m = RE_LOADED.search(line)
        if not m:
            continue
        ts = RE_TS.match(line)
        compiled = m.group(5) is not None
        rows.append({
            "name": m.group(1), "size": m.group(4), "compiled": compiled,
            "compile_or_cache_ms": ms(m.group(5), m.group(6)) if compiled
            else ms(m.group(7), m.group(8)),
            "instances": int(m.group(9)),
            "ready_ms": ms(m.group(10), m.group(11)),
            "ts": ts.group(1) if ts else None,
        })
    return rows


def problem_lines(text):
    return [l for l in text.splitlines()
            if (" WARN " in l or " ERROR " in l or "panic" in l.lower())]


def make_repo(root, kind, wasm, names, instances=1):
    os.makedirs(root, exist_ok=True)
    for n in names:
        add_model(root, n, wasm, instances)


def add_model(root, name, wasm, instances=1):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(wasm, os.path.join(d, "model.wasm"))
    with open(os.path.join(d, "model.toml"), "w") as f:
        f.write(f"instances = {instances}\n")


def base_args(repo, cache, extra=()):
    args = ["--bind", "127.0.0.1:0", "--model-repository", repo, "--instances", "1",
            "--memory-limit", MEMORY_LIMIT, "--memory-budget", MEMORY_BUDGET]
    if cache == "none":
        args.append("--no-cache")
    else:
        args += ["--cache-dir", cache]
    return args + list(extra)


def infer(client, name, body):
    t = time.perf_counter()
    st, data = client.post(f"/v2/models/{name}/infer", body)
    dt = (time.perf_counter() - t) * 1000
    if st != 200:
        raise RuntimeError(f"infer {name}: HTTP {st}: {data[:300]!r}")
    return dt


def summarize(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {}
    return {"n": len(xs), "median": statistics.median(xs), "p90": pctl(xs, 90),
            "max": max(xs), "min": min(xs), "mean": statistics.fmean(xs)}


# ---------------------------------------------------------------- scenarios

def scen_baseline(cfg, kind, wasm, work, rep):
    repo = os.path.join(work, "repo")
    cache = tempfile.mkdtemp(prefix="cache-", dir=work)
    name = f"{kind}-000"
    make_repo(repo, kind, wasm, [name])
    h = Host(cfg.host, base_args(repo, cache), work, f"{kind}-baseline-{rep}")
    try:
        h.wait_listening()
        time.sleep(SETTLE)
        m0 = h.mem()
        c = Client(h.port)
        lat = infer(c, name, payload(kind))
        c.close()
        time.sleep(SETTLE)
        m1 = h.mem()
        text = h.log()
    finally:
        rc = h.stop()
    loads = parse_loads(text)
    return {"argv": h.argv, "wall_to_listen_ms": h.wall_to_listen_ms,
            "host_ready_ms": h.host_ready_ms, "listen_line": h.listen_line,
            "mem_start": m0, "mem_after_infer": m1, "infer_ms": lat,
            "loads": loads, "problems": problem_lines(text), "exit_code": rc}


def scen_many(cfg, kind, wasm, work, rep):
    repo = os.path.join(work, "repo")
    cache = tempfile.mkdtemp(prefix="cache-", dir=work)
    names = [f"{kind}-{i:03d}" for i in range(cfg.n)]
    make_repo(repo, kind, wasm, names)
    h = Host(cfg.host, base_args(repo, cache), work, f"{kind}-many-{rep}")
    try:
        h.wait_listening()
        time.sleep(SETTLE)
        m0 = h.mem()
        c = Client(h.port)
        body = payload(kind)
        lats = [infer(c, n, body) for n in names]
        c.close()
        time.sleep(SETTLE)
        m1 = h.mem()
        text = h.log()
    finally:
        rc = h.stop()
    loads = parse_loads(text)
    return {"argv": h.argv, "wall_to_listen_ms": h.wall_to_listen_ms,
            "host_ready_ms": h.host_ready_ms, "listen_line": h.listen_line,
            "mem_start": m0, "mem_after_infer": m1, "infer_ms": summarize(lats),
            "loads": loads, "n_loaded": len(loads),
            "problems": problem_lines(text), "exit_code": rc}


def scen_api(cfg, kind, wasm, work, rep):
    repo = os.path.join(work, "repo")
    cache = tempfile.mkdtemp(prefix="cache-", dir=work)
    first = f"{kind}-base"
    make_repo(repo, kind, wasm, [first])
    names = [f"{kind}-{i:03d}" for i in range(cfg.n)]
    h = Host(cfg.host, base_args(repo, cache, ["--model-control", "explicit"]), work,
             f"{kind}-api-{rep}")
    res = {"argv": h.argv}
    try:
        h.wait_listening()
        res["listen_line"] = h.listen_line
        time.sleep(SETTLE)
        res["mem_before"] = h.mem()
        for n in names:  # copy the folders in while the host runs
            add_model(repo, n, wasm)
        c = Client(h.port)
        body = payload(kind)
        cycles = []
        for cycle in range(cfg.api_cycles):
            load_ms, unload_ms, fails = [], [], []
            for n in names:
                t = time.perf_counter()
                st, data = c.post(f"/v2/repository/models/{n}/load", b"{}")
                load_ms.append((time.perf_counter() - t) * 1000)
                if st != 200:
                    fails.append({"op": "load", "name": n, "status": st,
                                  "body": data[:300].decode("utf-8", "replace")})
            st, idx = c.post("/v2/repository/index", b"{}")
            try:
                index = json.loads(idx)
                ready = sum(1 for e in index if str(e.get("state", "")).upper() == "READY")
            except Exception:
                index, ready = idx[:300].decode("utf-8", "replace"), None
            time.sleep(SETTLE)
            m_loaded = h.mem()
            lats = [infer(c, n, body) for n in names]
            time.sleep(SETTLE)
            m_inferred = h.mem()
            for n in names:
                t = time.perf_counter()
                st, data = c.post(f"/v2/repository/models/{n}/unload", b"{}")
                unload_ms.append((time.perf_counter() - t) * 1000)
                if st != 200:
                    fails.append({"op": "unload", "name": n, "status": st,
                                  "body": data[:300].decode("utf-8", "replace")})
            t_unl = time.monotonic()
            samples = []
            for s in UNLOAD_SAMPLES:
                time.sleep(max(0.0, t_unl + s - time.monotonic()))
                samples.append({"after_s": s, **h.mem()})
            st, idx = c.post("/v2/repository/index", b"{}")
            try:
                index2 = json.loads(idx)
                states = {}
                for e in index2:
                    states[str(e.get("state"))] = states.get(str(e.get("state")), 0) + 1
            except Exception:
                states = idx[:300].decode("utf-8", "replace")
            # the base model must still serve
            base_ok = infer(c, first, body) is not None
            cycles.append({"load_ms": summarize(load_ms), "unload_ms": summarize(unload_ms),
                           "load_ms_raw": load_ms, "ready_after_load": ready,
                           "mem_loaded": m_loaded, "mem_inferred": m_inferred,
                           "mem_after_unload": samples, "states_after_unload": states,
                           "infer_ms": summarize(lats), "failures": fails,
                           "base_still_serves": base_ok})
        c.close()
        res["cycles"] = cycles
        text = h.log()
    finally:
        res["exit_code"] = h.stop()
    loads = parse_loads(text)
    res["loads"] = loads
    res["problems"] = problem_lines(text)
    return res


def scen_nocache(cfg, kind, wasm, work, rep):
    repo = os.path.join(work, "repo")
    names = [f"{kind}-{i:03d}" for i in range(cfg.nocache_n)]
    make_repo(repo, kind, wasm, names)
    h = Host(cfg.host, base_args(repo, "none"), work, f"{kind}-nocache-{rep}")
    try:
        h.wait_listening()
        time.sleep(SETTLE)
        m0 = h.mem()
        text = h.log()
    finally:
        rc = h.stop()
    loads = parse_loads(text)
    return {"argv": h.argv, "wall_to_listen_ms": h.wall_to_listen_ms,
            "host_ready_ms": h.host_ready_ms, "listen_line": h.listen_line,
            "mem_start": m0, "loads": loads, "problems": problem_lines(text),
            "exit_code": rc}


# ---------------------------------------------------------------- report

def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memtotal = int(f.readline().split()[1])
    osr = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osr = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "mem_total_gib": round(memtotal / 1048576, 1), "kernel": platform.release(),
            "os": osr, "python": platform.python_version()}


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def mib(kb):
    return None if kb is None else kb / 1024.0


def analyse(kind, runs):
    A = {}
    base, many, api, noc = runs["baseline"], runs["many"], runs["api"], runs.get("nocache", [])
    n = None
    A["pss1_start"] = med([r["mem_start"]["pss_kb"] for r in base])
    A["pss1_infer"] = med([r["mem_after_infer"]["pss_kb"] for r in base])
    A["pssN_start"] = med([r["mem_start"]["pss_kb"] for r in many])
    A["pssN_infer"] = med([r["mem_after_infer"]["pss_kb"] for r in many])
    A["rssN_infer"] = med([r["mem_after_infer"]["rss_kb"] for r in many])
    A["anonN_infer"] = med([r["mem_after_infer"]["pss_anon_kb"] for r in many])
    A["vmsizeN_kb"] = med([r["mem_after_infer"]["vmsize_kb"] for r in many])
    A["threadsN"] = med([r["mem_after_infer"]["threads"] for r in many])
    A["threads1"] = med([r["mem_after_infer"]["threads"] for r in base])
    n = med([r["n_loaded"] for r in many])
    A["n"] = n
    # per-extra-model in each run, pairing baseline rep i with many rep i
    per_start = [(m["mem_start"]["pss_kb"] - b["mem_start"]["pss_kb"]) / (m["n_loaded"] - 1)
                 for b, m in zip(base, many)]
    per_inf = [(m["mem_after_infer"]["pss_kb"] - b["mem_after_infer"]["pss_kb"])
               / (m["n_loaded"] - 1) for b, m in zip(base, many)]
    A["per_model_start_kb"] = med(per_start)
    A["per_model_infer_kb"] = med(per_inf)
    A["per_model_start_kb_runs"] = per_start
    A["per_model_infer_kb_runs"] = per_inf
    A["wall1"] = med([r["wall_to_listen_ms"] for r in base])
    A["host1"] = med([r["host_ready_ms"] for r in base])
    A["wallN"] = med([r["wall_to_listen_ms"] for r in many])
    A["hostN"] = med([r["host_ready_ms"] for r in many])
    A["wallN_runs"] = [r["wall_to_listen_ms"] for r in many]
    first, hits, hits_c = [], [], []
    per_run_hits = []
    for r in many:
        comp = [l for l in r["loads"] if l["compiled"]]
        cached = [l for l in r["loads"] if not l["compiled"]]
        first += [l["ready_ms"] for l in comp]
        hits += [l["ready_ms"] for l in cached]
        hits_c += [l["compile_or_cache_ms"] for l in cached]
        per_run_hits.append(summarize([l["ready_ms"] for l in cached]))
        A.setdefault("n_compiled_runs", []).append(len(comp))
    A["first_ready"] = summarize(first)
    A["hit_ready_runs"] = per_run_hits
    A["hit_ready_median"] = med([s.get("median") for s in per_run_hits])
    A["hit_ready_p90"] = med([s.get("p90") for s in per_run_hits])
    A["hit_ready_max"] = med([s.get("max") for s in per_run_hits])
    A["hit_cache_ms"] = summarize(hits_c)
    A["infer_all_median_ms"] = med([r["infer_ms"]["median"] for r in many])
    # API
    ncyc = max(len(r.get("cycles", [])) for r in api)
    A["api_cycles"] = ncyc

    def bym(mems):
        keys = set()
        for m in mems:
            keys |= set((m or {}).get("by_mapping") or {})
        return {k: med([((m or {}).get("by_mapping") or {}).get(k, 0) for m in mems])
                for k in sorted(keys)}
    A["bymap_1_infer"] = bym([r["mem_after_infer"] for r in base])
    A["bymap_N_infer"] = bym([r["mem_after_infer"] for r in many])
    A["bymap_api_before"] = bym([r["mem_before"] for r in api])
    for cyc in range(ncyc):
        cs = [r["cycles"][cyc] for r in api if len(r.get("cycles", [])) > cyc]
        A[f"bymap_api{cyc + 1}_inferred"] = bym([c["mem_inferred"] for c in cs])
        A[f"bymap_api{cyc + 1}_unloaded"] = bym([c["mem_after_unload"][-1] for c in cs])
        p = f"api{cyc + 1}_"
        A[p + "load_median"] = med([c["load_ms"]["median"] for c in cs])
        A[p + "load_p90"] = med([c["load_ms"]["p90"] for c in cs])
        A[p + "load_max"] = med([c["load_ms"]["max"] for c in cs])
        A[p + "load_first"] = med([c["load_ms_raw"][0] for c in cs])
        A[p + "unload_median"] = med([c["unload_ms"]["median"] for c in cs])
        A[p + "pss_loaded"] = med([c["mem_loaded"]["pss_kb"] for c in cs])
        A[p + "pss_inferred"] = med([c["mem_inferred"]["pss_kb"] for c in cs])
        for i, s in enumerate(UNLOAD_SAMPLES):
            A[p + f"pss_unl_{s}"] = med([c["mem_after_unload"][i]["pss_kb"] for c in cs])
        A[p + "anon_inferred"] = med([c["mem_inferred"]["pss_anon_kb"] for c in cs])
        A[p + "anon_unl"] = med([c["mem_after_unload"][-1]["pss_anon_kb"] for c in cs])
        A[p + "failures"] = sum(len(c["failures"]) for c in cs)
        A[p + "ready"] = [c["ready_after_load"] for c in cs]
        A[p + "states_after"] = [c["states_after_unload"] for c in cs]
    A["api_pss_before"] = med([r["mem_before"]["pss_kb"] for r in api])
    # server-side ready for API loads (log lines after the first)
    srv = []
    for r in api:
        ls = [l for l in r["loads"] if l["name"] != f"{kind}-base"]
        srv.append(summarize([l["ready_ms"] for l in ls if not l["compiled"]]))
    A["api_server_ready_median"] = med([s.get("median") for s in srv])
    # no cache
    if noc:
        comp = []
        for r in noc:
            comp += [l["compile_or_cache_ms"] for l in r["loads"]]
        A["nocache_n"] = med([len(r["loads"]) for r in noc])
        A["nocache_compile"] = summarize(comp)
        A["nocache_ready_median"] = med([statistics.median([l["ready_ms"] for l in r["loads"]])
                                         for r in noc if r["loads"]])
        A["nocache_wall"] = med([r["wall_to_listen_ms"] for r in noc])
        A["nocache_pss"] = med([r["mem_start"]["pss_kb"] for r in noc])
        A["nocache_n_compiled"] = [sum(1 for l in r["loads"] if l["compiled"]) for r in noc]
    return A


def concurrency_note(many_runs):
    """Are loads sequential? Compare summed ready-in with wall time."""
    out = []
    for r in many_runs:
        s = sum(l["ready_ms"] for l in r["loads"])
        out.append((s, r["host_ready_ms"]))
    return out


def render(cfg, mach, results, analyses, t_total, loadavg):
    L = []
    w = L.append
    n = cfg.n
    w(f"## Many models in one host: {n} copies of a small model\n")
    w(f"Measured by `many_models.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
      f"{cfg.reps} repetitions of each scenario, medians shown (per-run values in "
      f"`many_models.json`). Whole run: {t_total:.0f} s.\n")
    w("**Machine.** "
      f"`nproc` = {mach['nproc']} ({mach['cpu']}), {mach['mem_total_gib']} GiB RAM, "
      f"{mach['os']}, kernel {mach['kernel']}, Python {mach['python']}. The 2 cores are shared "
      f"with other engineers' builds: load average {loadavg[0]} at the start, {loadavg[1]} at "
      "the end; time figures are therefore noisy, memory figures are not.\n")
    w(f"**Setup.** Each model folder is `REPO/<name>/model.wasm` (a byte-identical copy) plus "
      f"`model.toml` with `instances = 1`; `--memory-limit {MEMORY_LIMIT}`, "
      f"`--memory-budget {MEMORY_BUDGET}`, a fresh private `--cache-dir` per run. Because the "
      f"copies have the same bytes, only the first model is compiled; the other {n - 1} are "
      "compile-cache hits. That is realistic for copies, and it is the best case: "
      f"{n} *distinct* models would each pay the compile cost (row \"--no-cache\" below). "
      "PSS is the `Pss:` line of `/proc/PID/smaps_rollup`, read 0.5 s after the event. "
      "\"One inference to every model\" sends one `POST /v2/models/<name>/infer` to each, "
      "which touches each instance's linear memory.\n")
    kinds = list(analyses)
    hdr = "| | " + " | ".join(kinds) + " |"
    w(hdr)
    w("|---|" + "---|" * len(kinds))

    def row(label, f):
        w(f"| {label} | " + " | ".join(f(analyses[k]) for k in kinds) + " |")

    def mibf(key, nd=1):
        return lambda A: fmt(mib(A.get(key)), nd) + " MiB" if A.get(key) is not None else "–"

    row("guest file size", lambda A: A["size"])
    w(f"| **(a) 1 model** | |" + " |" * (len(kinds) - 1))
    row("PSS after start", mibf("pss1_start"))
    row("PSS after one inference", mibf("pss1_infer"))
    row("time to \"listening\" (client wall / host `ready in`)",
        lambda A: f"{fmt(A['wall1'], 0)} ms / {fmt(A['host1'], 0)} ms")
    w(f"| **(b) {n} models, 1 instance each** | |" + " |" * (len(kinds) - 1))
    row("models loaded (per run)", lambda A: str(int(A["n"])))
    row("time to \"listening\" (client wall / host `ready in`)",
        lambda A: f"{fmt(A['wallN'], 0)} ms / {fmt(A['hostN'], 0)} ms")
    row("first model `ready in` (compiled)", lambda A: f"{fmt(A['first_ready']['median'])} ms")
    row(f"other {n - 1} `ready in` (cache hits): median / p90 / max",
        lambda A: f"{fmt(A['hit_ready_median'], 2)} / {fmt(A['hit_ready_p90'], 2)} / "
                  f"{fmt(A['hit_ready_max'], 2)} ms")
    row("  of which \"loaded from the compile cache in\" (median)",
        lambda A: f"{fmt(A['hit_cache_ms'].get('median'), 2)} ms")
    row("PSS after start", mibf("pssN_start"))
    row("PSS after one inference to every model", mibf("pssN_infer"))
    row("  (Pss_Anon of that / RSS)",
        lambda A: f"{fmt(mib(A['anonN_infer']))} / {fmt(mib(A['rssN_infer']))} MiB")
    row(f"**PSS per extra model** = (PSS_{n} − PSS_1)/{n - 1}, after start",
        lambda A: f"**{fmt(A['per_model_start_kb'], 0)} KiB**")
    row(f"**PSS per extra model**, after one inference to each",
        lambda A: f"**{fmt(A['per_model_infer_kb'], 0)} KiB**")
    row("virtual size (VmSize), after inference",
        lambda A: f"{fmt(A['vmsizeN_kb'] / 1073741824, 1)} TiB")
    row("threads (1 model → N models)", lambda A: f"{A['threads1']} → {A['threadsN']}")
    row("inference latency, one request per model (median)",
        lambda A: f"{fmt(A['infer_all_median_ms'], 2)} ms")
    w(f"| **(c) load over the API** (`--model-control explicit`) | |" + " |" * (len(kinds) - 1))
    row(f"`load` call, client side: first / median / p90 / max (cycle 1)",
        lambda A: f"{fmt(A['api1_load_first'], 0)} / {fmt(A['api1_load_median'], 2)} / "
                  f"{fmt(A['api1_load_p90'], 2)} / {fmt(A['api1_load_max'], 2)} ms")
    row("  host `ready in` for those loads (median, cache hits)",
        lambda A: f"{fmt(A['api_server_ready_median'], 2)} ms")
    for c in range(2, max(A["api_cycles"] for A in analyses.values()) + 1):
        row(f"`load` call, cycle {c} (same names again): median / p90",
            lambda A, c=c: f"{fmt(A.get(f'api{c}_load_median'), 2)} / "
                           f"{fmt(A.get(f'api{c}_load_p90'), 2)} ms")
    row("`unload` call median (cycle 1)", lambda A: f"{fmt(A['api1_unload_median'], 2)} ms")
    row("PSS before loading (1 model)", mibf("api_pss_before"))
    row(f"PSS after {n} loaded", mibf("api1_pss_loaded"))
    row(f"PSS after one inference to each", mibf("api1_pss_inferred"))
    for s in UNLOAD_SAMPLES:
        row(f"PSS {s:g} s after unloading all {n}", mibf(f"api1_pss_unl_{s}"))
    for c in range(2, max(A["api_cycles"] for A in analyses.values()) + 1):
        row(f"cycle {c}: PSS loaded+inferred → {UNLOAD_SAMPLES[-1]:g} s after unload",
            lambda A, c=c: f"{fmt(mib(A.get(f'api{c}_pss_inferred')))} → "
                           f"{fmt(mib(A.get(f'api{c}_pss_unl_{UNLOAD_SAMPLES[-1]}')))} MiB")
    row("failed load/unload calls (all runs)",
        lambda A: str(sum(A[f"api{c + 1}_failures"] for c in range(A["api_cycles"]))))
    if any("nocache_compile" in A for A in analyses.values()):
        w(f"| **(d) `--no-cache`, {cfg.nocache_n} models** | |" + " |" * (len(kinds) - 1))
        row("compile per model: median / p90 / max",
            lambda A: f"{fmt(A['nocache_compile']['median'])} / "
                      f"{fmt(A['nocache_compile']['p90'])} / {fmt(A['nocache_compile']['max'])} ms"
            if "nocache_compile" in A else "–")
        row("`ready in` per model (median)", lambda A: f"{fmt(A.get('nocache_ready_median'))} ms")
        row("time to \"listening\" (client wall)", lambda A: f"{fmt(A.get('nocache_wall'), 0)} ms")
        row("ratio: compiled load / cache-hit load (`ready in` medians, same run)",
            lambda A: f"{A['nocache_ready_median'] / A['hit_ready_median']:.0f}×"
            if A.get("nocache_ready_median") and A.get("hit_ready_median") else "–")
        row(f"projected start for {n} *distinct* models (≈ {n} × compile median)",
            lambda A: f"≈ {A['nocache_compile']['median'] * n / 1000:.1f} s")
    w("")
    # PSS by mapping kind
    w("PSS by mapping kind (MiB, medians; from `/proc/PID/smaps`):\n")
    cols = [("1 model, inferred", "bymap_1_infer"), (f"{n} models, inferred", "bymap_N_infer"),
            ("(c) before load", "bymap_api_before"), (f"(c) {n} loaded+inferred", "bymap_api1_inferred"),
            ("(c) after unload", "bymap_api1_unloaded")]
    last = max(A["api_cycles"] for A in analyses.values())
    if last > 1:
        cols.append((f"(c) after unload, cycle {last}", f"bymap_api{last}_unloaded"))
    for k in kinds:
        A = analyses[k]
        cats = sorted({c for _, key in cols for c in (A.get(key) or {})})
        w(f"| {k} | " + " | ".join(t for t, _ in cols) + " |")
        w("|---|" + "---|" * len(cols))
        for cat in cats:
            w(f"| {cat} | " + " | ".join(fmt(mib((A.get(key) or {}).get(cat)), 2)
                                        for _, key in cols) + " |")
        w("")
    # where the per-model PSS goes
    w(f"Where the PSS per extra model goes ((b): {n} models minus 1 model, after inference, "
      f"/ {n - 1}; KiB):\n")
    w("| mapping kind | " + " | ".join(kinds) + " |")
    w("|---|" + "---|" * len(kinds))
    cats = sorted({c for k in kinds for c in list(analyses[k]["bymap_N_infer"])
                   + list(analyses[k]["bymap_1_infer"])})
    for cat in cats:
        vals = []
        for k in kinds:
            A = analyses[k]
            d = (A["bymap_N_infer"].get(cat, 0) - A["bymap_1_infer"].get(cat, 0)) / (n - 1)
            vals.append(f"{d:.0f}")
        w(f"| {cat} | " + " | ".join(vals) + " |")
    w("| **total** | " + " | ".join(
        f"**{(sum(analyses[k]['bymap_N_infer'].values()) - sum(analyses[k]['bymap_1_infer'].values())) / (n - 1):.0f}**"
        for k in kinds) + " |")
    w("")
    last_s = UNLOAD_SAMPLES[-1]
    parts = []
    for k in kinds:
        A = analyses[k]
        nc = A["api_cycles"]
        r1 = (A[f"api1_pss_unl_{last_s}"] - A["api_pss_before"]) / n
        rl = (A[f"api{nc}_pss_unl_{last_s}"] - A["api_pss_before"]) / n
        parts.append(f"{k}: {r1:.0f} KiB per unloaded model after cycle 1, "
                     f"{rl:.0f} KiB after cycle {nc}")
    w(f"Residual after unloading all models in (c), (PSS {last_s:g} s after unload − PSS "
      f"before load) / {n}: " + "; ".join(parts) + ".\n")
    # notes
    notes = []
    for k, A in analyses.items():
        cs = concurrency_note(results[k]["many"])
        s = [f"{a:.0f} ms summed vs {b:.0f} ms to listening" for a, b in cs]
        notes.append(f"- {k}: sum of the {int(A['n'])} per-model `ready in` = " + "; ".join(s)
                     + " (per run).")
        notes.append(f"- {k}: PSS per extra model per run (after start / after inference): "
                     + ", ".join(f"{a:.0f}" for a in A["per_model_start_kb_runs"]) + " / "
                     + ", ".join(f"{a:.0f}" for a in A["per_model_infer_kb_runs"]) + " KiB.")
        notes.append(f"- {k}: index after load: READY = "
                     + ", ".join(f"{A[f'api{c + 1}_ready']} (cycle {c + 1})"
                                 for c in range(A["api_cycles"]))
                     + f"; states after unloading (cycle 1): {A['api1_states_after']}.")
        api_runs = results[k]["api"]
        notes.append(f"- {k}: (c) PSS per run, before → after unload of each cycle: "
                     + "; ".join(f"{mib(r['mem_before']['pss_kb']):.1f} → "
                                 + " → ".join(f"{mib(c['mem_after_unload'][-1]['pss_kb']):.1f}"
                                              for c in r["cycles"]) + " MiB"
                                 for r in api_runs) + ".")
    w("Per-run detail:\n")
    L += notes
    w("")
    w("**Commands** (REPO and CACHE are fresh temporary folders; every process is started with "
      "`NO_COLOR=1 RUST_LOG=info` and stopped by PID with TERM):\n")
    w("```sh")
    w(f"python3 many_models.py --host {cfg.host} --digits {cfg.digits} --echo {cfg.echo} "
      f"--n {cfg.n} --reps {cfg.reps} --nocache-n {cfg.nocache_n}")
    k0 = kinds[0]
    r = results[k0]

    def show(argv):
        out = []
        for a in argv:
            a = re.sub(r"^.*/repo$", "REPO", a)
            a = re.sub(r"^.*/cache-[^/]+$", "CACHE", a)
            out.append(a)
        return " ".join(out)
    w("# (a) and (b): the same command; REPO holds 1 or " + str(n) + " folders")
    w(show(r["many"][0]["argv"]))
    w("# (c): REPO holds 1 folder at start; " + str(n) + " are copied in, then for each:")
    w(show(r["api"][0]["argv"]))
    w("#   POST /v2/repository/models/<name>/load   {}   (then infer each, then .../unload)")
    if r.get("nocache"):
        w("# (d)")
        w(show(r["nocache"][0]["argv"]))
    w("```")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("WASM_HOST_BIN",
                                                     os.path.join(ROOT, "target/release/wasm-host")))
    ap.add_argument("--digits", default=os.environ.get("DIGITS_WASM",
                                                       os.path.join(ROOT, "target/wasm32-wasip2/release/guest_model.wasm")))
    ap.add_argument("--echo", default=os.environ.get("ECHO_WASM",
                                                     os.path.join(ROOT, "target/wasm32-wasip2/release/echo_model.wasm")))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nocache-n", type=int, default=10, help="0 skips scenario (d)")
    ap.add_argument("--api-cycles", type=int, default=3,
                    help="load+infer+unload cycles of all N models in scenario (c)")
    ap.add_argument("--kinds", default="digits,echo")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "target/bench/many-models"))
    ap.add_argument("--keep", action="store_true", help="keep repositories, caches and logs")
    ap.add_argument("--out-md", default=os.path.join(ROOT, "target/bench/many_models.md"))
    ap.add_argument("--out-json", default=os.path.join(ROOT, "target/bench/many_models.json"))
    cfg = ap.parse_args()
    for p in (cfg.host, cfg.digits, cfg.echo):
        if not os.path.exists(p):
            sys.exit(f"missing: {p}")
    guests = {"digits": cfg.digits, "echo": cfg.echo}
    kinds = [k for k in cfg.kinds.split(",") if k]
    os.makedirs(cfg.workdir, exist_ok=True)
    top = tempfile.mkdtemp(prefix="run-", dir=cfg.workdir)
    t_start = time.monotonic()
    la0 = open("/proc/loadavg").read().split()[0]
    mach = machine()
    results = {k: {"baseline": [], "many": [], "api": [], "nocache": []} for k in kinds}
    scen = [("baseline", scen_baseline), ("many", scen_many), ("api", scen_api)]
    if cfg.nocache_n > 0:
        scen.append(("nocache", scen_nocache))
    # interleave: rep-major, so slow periods of the shared machine spread over all scenarios
    for rep in range(cfg.reps):
        for kind in kinds:
            for sname, fn in scen:
                work = tempfile.mkdtemp(prefix=f"{kind}-{sname}-{rep}-", dir=top)
                t = time.monotonic()
                r = fn(cfg, kind, guests[kind], work, rep)
                r["elapsed_s"] = time.monotonic() - t
                r["rep"] = rep
                results[kind][sname].append(r)
                print(f"[{time.monotonic() - t_start:6.1f}s] {kind:6s} {sname:8s} rep {rep}: "
                      f"{r['elapsed_s']:.1f}s, problems: {len(r.get('problems', []))}",
                      file=sys.stderr, flush=True)
                if not cfg.keep:
                    for sub in ("repo",):
                        shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
                    for d in os.listdir(work):
                        if d.startswith("cache-"):
                            shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    la1 = open("/proc/loadavg").read().split()[0]
    analyses = {}
    for k in kinds:
        A = analyse(k, results[k])
        sizes = {l["size"] for l in results[k]["baseline"][0]["loads"]}
        A["size"] = ", ".join(sorted(sizes)) + f" ({os.path.getsize(guests[k]) / 1024:.0f} KiB file)"
        analyses[k] = A
    t_total = time.monotonic() - t_start
    md = render(cfg, mach, results, analyses, t_total, (la0, la1))
    problems = {k: {s: [p for r in v for p in r.get("problems", [])] for s, v in results[k].items()}
                for k in kinds}
    with open(cfg.out_md, "w") as f:
        f.write(md)
    with open(cfg.out_json, "w") as f:
        json.dump({"config": vars(cfg), "machine": mach, "loadavg": [la0, la1],
                   "total_s": t_total, "analysis": analyses, "problems": problems,
                   "results": results, "logs_dir": top}, f, indent=1, default=str)
    print(md)
    n_prob = sum(len(x) for d in problems.values() for x in d.values())
    if n_prob:
        print(f"\n{n_prob} WARN/ERROR log lines; see \"problems\" in {cfg.out_json} and logs in "
              f"{top}", file=sys.stderr)


if __name__ == "__main__":
    main()
