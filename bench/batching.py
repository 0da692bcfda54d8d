#!/usr/bin/env python3
"""Dynamic batching (issue 11): req/s and latency with and without `--max-batch-size`.

    python bench/batching.py OUT_DIR HOST PORT   (bench/run.sh's `batching` part)

Three models, whose costs sit in different places:
  digits  the digits MLP: about 4 µs of guest math per row; HTTP and JSON dominate a request
  cnn     the CNN packed from examples/onnx/make_models.py: about 0.6 ms of math per row, nearly
          all of it per row (packed here unless the onnx part left OUT/onnx/cnn.wasm)
  fixed   examples/batch-model with the parameter work_us=1000: 1 ms per call whatever its rows,
          the shape of a model whose cost is per call (a set-up, a kernel launch, a lookup)
Each runs under wrk at 64 connections three ways: unbatched, batched with no queue delay
(`--max-batch-size 32`: only requests already waiting are joined), and batched with
`--max-queue-delay 500us`; then digits at 1 connection unbatched and with the delay, for what
the delay costs a lone client. Where the machine has two cores or more the server is pinned to
core 1 and wrk to core 0 (design.md §8). Writes OUT/batching.json and OUT/batching.md.
"""

import http.client
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import process

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(sys.argv[1])
HOST = sys.argv[2]
PORT = int(sys.argv[3])
WORK = OUT / "batching"
CACHE = ["--cache-dir", str(OUT / "cache")]
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
WASM = ROOT / "target/wasm32-wasip2/release"
PINNED = (os.cpu_count() or 1) >= 2
SERVER_CPU = ["taskset", "-c", "1"] if PINNED else []
WRK_CPU = ["taskset", "-c", "0"] if PINNED else []

VARIANTS = [
    ("unbatched", []),
    ("batched, no delay", ["--max-batch-size", "32"]),
    ("batched, 500 µs delay", ["--max-batch-size", "32", "--max-queue-delay", "500us"]),
]


def say(text):
    print(f"    {text}", file=sys.stderr, flush=True)


def cnn_model():
    packed = OUT / "onnx" / "cnn.wasm"
    if packed.exists():
        return packed
    spec = importlib.util.spec_from_file_location("make_models", ROOT / "examples/onnx/make_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["make_models.py", str(WORK), "cnn"])
    packed = WORK / "cnn.wasm"
    subprocess.run([HOST, "pack", str(WORK / "cnn.onnx"), "-o", str(packed), *CACHE], check=True,
                   stdout=subprocess.DEVNULL)
    return packed


def body(name, rows, parameters=None):
    request = {"inputs": [{"name": name, "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                           "data": [v for row in rows for v in row]}]}
    if parameters:
        request["parameters"] = parameters
    return json.dumps(request).encode()


class Server(process.Server):
    def __init__(self, model, args, tag):
        super().__init__([*SERVER_CPU, HOST, "--bind", f"127.0.0.1:{PORT}", "--instances", "2", *CACHE,
                          *args, str(model)], WORK / f"server-{tag}.log")
        self.wait_until(process.health_ready(PORT), 120, str(model))

    def stats(self, model):
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        c.request("GET", f"/v2/models/{model}/stats")
        return json.loads(c.getresponse().read())["model_stats"][0]


def wrk(model, request, connections):
    path = WORK / f"{model}.json"
    path.write_bytes(request)
    done = subprocess.run(
        [*WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{SECONDS}s", "--latency",
         "-s", str(ROOT / "bench/wrk/post.lua"), f"http://127.0.0.1:{PORT}/v2/models/{model}/infer"],
        env=dict(os.environ, WRK_BODY=str(path)), capture_output=True, text=True, check=True)
    line = next(l for l in done.stdout.splitlines() if l.startswith("BENCH "))
    result = json.loads(line[len("BENCH "):])
    if result["errors"]:
        raise SystemExit(f"bench: {result['errors']} errors from {model}: {done.stdout}")
    return result


def measure(model_file, model, request, args, tag, connections=64):
    server = Server(model_file, args, tag)
    try:
        wrk(model, request, connections)  # warm-up, not counted
        before_stats, before_cpu = server.stats(model), server.cpu_seconds()
        result = wrk(model, request, connections)
        after_stats, after_cpu = server.stats(model), server.cpu_seconds()
    finally:
        server.stop()
    requests = int(after_stats["inference_count"]) - int(before_stats["inference_count"])
    success = [int(s["inference_stats"]["success"]["ns"]) for s in (before_stats, after_stats)]
    calls = int(after_stats["execution_count"]) - int(before_stats["execution_count"])
    result.update(calls=calls, counted=requests, rows_per_call=requests / max(calls, 1),
                  host_us=(success[1] - success[0]) / max(requests, 1) / 1000,
                  cpu_us=(after_cpu - before_cpu) / max(requests, 1) * 1e6)
    say(f"{tag}: {result['rps']:,.0f} req/s, p50 {result['p50_us']:.0f} µs, p99 "
        f"{result['p99_us']:.0f} µs, {result['rows_per_call']:.1f} requests per call")
    return result


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    reference = json.loads((ROOT / "guest-model/weights/digits_reference.json").read_text())
    image = [[round((i * 37 % 101) / 101, 3) for i in range(28 * 28)]]
    models = [
        ("digits", WASM / "guest_model.wasm", "digits", body("x", reference["inputs"][:1])),
        ("cnn", cnn_model(), "cnn", None),
        ("fixed", WASM / "batch_model.wasm", "batch", body("x", [[1.0, 2.0, 3.0, 4.0]], {"work_us": 1000})),
    ]
    rows = []
    for tag, model_file, model, request in models:
        if request is None:  # the CNN: one 1x28x28 image
            request = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28],
                                              "datatype": "FP32", "data": image[0]}]}).encode()
        for variant, args in VARIANTS:
            result = measure(model_file, model, request, args, f"{tag}, {variant}")
            rows.append({"model": tag, "variant": variant, "connections": 64, **result})
    for variant, args in (VARIANTS[0], VARIANTS[2]):
        result = measure(WASM / "guest_model.wasm", "digits", models[0][3], args,
                         f"digits, {variant}, 1 connection", connections=1)
        rows.append({"model": "digits", "variant": variant, "connections": 1, **result})
    (OUT / "batching.json").write_text(json.dumps({"pinned": PINNED, "rows": rows}, indent=1))
    (OUT / "batching.md").write_text(markdown(rows))


def markdown(rows):
    base = {(r["model"], r["connections"]): r for r in rows if r["variant"] == "unbatched"}
    lines = [
        "## Dynamic batching (issue 11)",
        "",
        "`bench/batching.py`: wrk at 64 connections against `--instances 2`, unbatched and with "
        "`--max-batch-size 32`, without and with a 500 µs queue delay"
        + (", the server pinned to core 1 and wrk to core 0" if PINNED else "")
        + ". *digits*: the MLP, about 4 µs of math per row. *cnn*: the CNN packed from ONNX, about "
        "0.6 ms per row. *fixed*: the batch fixture with `work_us=1000`, 1 ms per call whatever "
        "its rows. *requests per call*: inference_count / execution_count from Triton's statistics; "
        "*in the host*: the mean time from a request's arrival to its response inside the host "
        "(Triton's `success` statistics), which leaves out the client and the kernel: at one "
        "connection the delay lets both cores idle between requests, and waking them again adds "
        "tens of µs to what wrk sees that the host does not spend.",
        "",
        "| model | conns | variant | req/s | vs unbatched | p50 | p99 | in the host | requests per call | server CPU/req |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = base[(r["model"], r["connections"])]
        lines.append(
            f"| {r['model']} | {r['connections']} | {r['variant']} | {r['rps']:,.0f} | "
            f"{r['rps'] / b['rps']:.2f}× | {us(r['p50_us'])} | {us(r['p99_us'])} | "
            f"{us(r['host_us'])} | {r['rows_per_call']:.1f} | {r['cpu_us']:.0f} µs |")
    return "\n".join(lines) + "\n"


def us(value):
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"


if __name__ == "__main__":
    main()
