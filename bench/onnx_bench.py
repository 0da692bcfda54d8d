"""The ONNX part of the benchmark (bench/run.sh, BENCH_ONLY=onnx): packed models' memory, first
request and predict time, with onnxruntime on one thread as the yardstick.

    python bench/onnx_bench.py OUT_DIR HOST PORT

Runs in a venv with onnx, onnxruntime and numpy (tests/python/requirements.txt). Writes
OUT_DIR/onnx.json, which bench/report.py turns into the "ONNX models" section. Every server is
started on 127.0.0.1, measured, and stopped by its PID.
"""

import http.client
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import process

OUT, HOST, PORT = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ROOT = Path(__file__).resolve().parents[1]
WORK = OUT / "onnx"
CACHE = ["--cache-dir", str(OUT / "cache")]
DENSITY = [int(n) for n in os.environ.get("BENCH_DENSITY", "1 8 64").split()]


def say(text):
    print(f"    {text}", file=sys.stderr, flush=True)


def make_models():
    spec = importlib.util.spec_from_file_location("make_models", ROOT / "examples/onnx/make_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["make_models.py", str(WORK), "cnn", "big"])
    return {"digits": ROOT / "guest-model/weights/digits_mlp.onnx", "cnn": WORK / "cnn.onnx", "big": WORK / "big.onnx"}


def pack(name, onnx):
    out = WORK / f"{name}.wasm"
    started = time.perf_counter()
    subprocess.run([HOST, "pack", str(onnx), "-o", str(out), "--name", name, *CACHE], check=True,
                   stdout=subprocess.DEVNULL)
    took = time.perf_counter() - started
    say(f"packed {name}: {onnx.stat().st_size} bytes of ONNX -> {out.stat().st_size} bytes in {took:.1f} s")
    return out, took


class Server(process.Server):
    def __init__(self, model, *args):
        self.port = PORT
        super().__init__([HOST, "--bind", f"127.0.0.1:{self.port}", *CACHE, *args, str(model)],
                         WORK / f"server-{model.stem}.log")
        self.wait_until(process.health_ready(self.port), 120, str(model))


def infer_body(model, name, array):
    return json.dumps({"inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32",
                                   "data": array.ravel().tolist()}]}).encode()


def post(conn, model, body):
    started = time.perf_counter()
    conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    took = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"bench: {model} answered {response.status}: {data[:200]!r}")
    return took, response.getheader("x-instance-id")


def density(packed):
    """PSS of N instances of the 16 MiB-weights model, booted and while every instance serves.

    Every N gets the same load: 2×(largest N) connections, each sending requests with the fewest
    rows (1, 2, 4, 8 or 16) with which every instance of the largest N serves one (a short call
    returns its instance before another request arrives, so with one row most instances of 64 sit
    idle). The same load matters: every connection holds its request body, its parsed tensors and
    hyper's buffers in the host's heap whether an instance serves it or it waits in the queue, so
    comparing 128 connections on 64 instances with 2 on one would charge the connections to the
    instances. Each row adds its own working memory (input, output, tract's scratch) to every
    instance that serves it."""
    largest = max(DENSITY)
    for count in (1, 2, 4, 8, 16):
        result = density_run(packed, largest, count, clients=2 * largest, seconds=2)
        say(f"calibration: {count} row(s) per request, {result['served_by']} of {largest} instances served")
        if result["served_by"] >= largest:
            break
    return [density_run(packed, n, count, clients=2 * largest) for n in DENSITY]


def density_run(packed, n, count, clients, seconds=3):
    rows = np.random.default_rng(0).random((count, 1024), dtype=np.float32)
    body = infer_body("big", "x", rows)
    server = Server(packed, "--instances", str(n))
    booted = server.pss_kib()
    served, stop = set(), threading.Event()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while not stop.is_set():
            served.add(post(conn, "big", body)[1])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds - 1)
    busy = server.pss_kib()
    stop.set()
    for t in threads:
        t.join()
    server.stop()
    say(f"big model, {n} instances, {count} row(s): PSS {booted / 1024:.0f} MiB booted, "
        f"{busy / 1024:.0f} MiB under load ({len(served)} instances served)")
    return {"instances": n, "rows": count, "connections": clients, "pss_booted_kib": booted,
            "pss_busy_kib": busy, "served_by": len(served)}


def first_and_warm(name, packed, input_name, array, starts=7, warm=20, gap=0.1):
    """Latency of the first request to a freshly booted instance against warm ones (loopback HTTP).

    Each request, first or warm, follows a pause of `gap` seconds: on a shared machine a pause
    evicts the runner's code and data from the CPU caches (tract is ~19 MB of code), and a warm
    request after the same pause pays that too; back-to-back warm requests, reported beside, find
    the caches hot. The pause-matched ratio is what a fresh instance costs over a used one; the
    back-to-back one adds what cold caches cost any request. Times are client-side."""
    body = infer_body(name, input_name, array)
    firsts, warms, hot = [], [], []
    for _ in range(starts):
        server = Server(packed, "--instances", "1")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        # Warm the connection and the host's routes without touching the instance (metadata is
        # the host's copy), so that the first infer measures what a fresh instance costs.
        conn.request("GET", f"/v2/models/{name}")
        conn.getresponse().read()
        time.sleep(gap)
        firsts.append(post(conn, name, body)[0])
        for _ in range(warm):
            time.sleep(gap)
            warms.append(post(conn, name, body)[0])
        hot += [post(conn, name, body)[0] for _ in range(warm)]
        server.stop()
    first, steady, back_to_back = (statistics.median(x) for x in (firsts, warms, hot))
    say(f"{name}: first request after boot {first * 1e6:.0f} µs, warm after the same pause "
        f"{steady * 1e6:.0f} µs ({first / steady:.2f}x), warm back to back {back_to_back * 1e6:.0f} µs "
        f"({first / back_to_back:.2f}x)")
    return {"first_us": first * 1e6, "warm_us": steady * 1e6, "hot_us": back_to_back * 1e6,
            "gap_s": gap, "firsts_us": [f * 1e6 for f in firsts]}


UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def guest_predict_us(packed, input_name, array, samples=200):
    """Median time of the guest's predict alone, as `wasm-host plan` measures it (no HTTP)."""
    nested = json.dumps({"inputs": {input_name: array.tolist()}})
    done = subprocess.run([HOST, "plan", str(packed), "--rate", "1", "--input", nested,
                           "--samples", str(samples)], check=True, capture_output=True, text=True)
    m = re.search(r"latency:\s+([\d.]+)(ns|µs|us|ms|s) median", done.stdout)
    if not m:
        raise SystemExit(f"bench: cannot read `wasm-host plan`'s latency from:\n{done.stdout}")
    return float(m.group(1)) * UNITS[m.group(2)]


def onnxruntime_us(onnx, input_name, array, samples=200):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    feed = {input_name: array}
    for _ in range(20):
        session.run(None, feed)
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    onnx = make_models()
    packed, pack_seconds = {}, {}
    for name, path in onnx.items():
        packed[name], pack_seconds[name] = pack(name, path)
    # One start to fill the compile cache, so the starts below load it.
    for name in packed:
        Server(packed[name], "--instances", "1").stop()

    reference = json.loads((ROOT / "guest-model/weights/digits_reference.json").read_text())
    digit = np.asarray(reference["inputs"][:1], dtype=np.float32)
    rng = np.random.default_rng(7)
    # Three decimals: `wasm-host plan --input` takes the batch on the command line, which caps its
    # size (128 KiB per argument); onnxruntime gets the very same values.
    images = {b: np.round(rng.random((b, 1, 28, 28), dtype=np.float32), 3) for b in (1, 8)}

    # BENCH_ONNX_PARTS="first" re-measures only the first requests (say, on a quieter machine);
    # the other parts keep their figures from the previous run's onnx.json.
    parts = os.environ.get("BENCH_ONNX_PARTS", "density first predict").split()
    previous = json.loads((OUT / "onnx.json").read_text()) if (OUT / "onnx.json").exists() else {}
    result = {
        "onnxruntime": ort.__version__,
        "pack_seconds": pack_seconds,
        "sizes": {name: {"onnx": onnx[name].stat().st_size, "wasm": packed[name].stat().st_size} for name in onnx},
    }
    result["density"] = density(packed["big"]) if "density" in parts else previous["density"]
    if "first" not in parts:
        result["first_request"] = previous["first_request"]
    else:
        result["first_request"] = {
            "digits": first_and_warm("digits", packed["digits"], "input", digit),
            "cnn": first_and_warm("cnn", packed["cnn"], "image", images[1]),
            "big": first_and_warm("big", packed["big"], "x", np.full((1, 1024), 0.5, dtype=np.float32)),
            # The same digits model written in Rust (guest-model), measured the same way: what a
            # first request costs in any freshly booted instance, ONNX or not.
            "digits (Rust guest-model)": first_and_warm(
                "digits", ROOT / "target/wasm32-wasip2/release/guest_model.wasm", "x", digit),
        }
    result["predict"] = [] if "predict" in parts else previous["predict"]
    for label, name, input_name, array in [] if "predict" not in parts else [
        ("digits, 1 row", "digits", "input", digit),
        ("digits, 200 rows", "digits", "input", np.asarray(reference["inputs"], dtype=np.float32)),
        ("cnn, 1 image", "cnn", "image", images[1]),
        ("cnn, 8 images", "cnn", "image", images[8]),
    ]:
        wasm = guest_predict_us(packed[name], input_name, array)
        native = onnxruntime_us(onnx[name], input_name, array)
        say(f"predict {label}: wasm-host {wasm:.1f} µs, onnxruntime (1 thread) {native:.1f} µs ({wasm / native:.2f}x)")
        result["predict"].append({"case": label, "wasm_us": wasm, "onnxruntime_us": native})
    (OUT / "onnx.json").write_text(json.dumps(result, indent=1))


main()
