"""ONNX models served by wasm-host, checked against their own references.

- scikit-learn's export of the digits MLP (`guest-model/weights/digits_mlp.onnx`), packed with
  `wasm-host pack`, through the official Triton client in both encodings: all 200 reference rows
  match scikit-learn within 1e-5, labels exactly.
- A convolutional network made by `examples/onnx/make_models.py` (conv, pools, gemm, softmax,
  symbolic batch), served straight from its `.onnx` file (packed on the fly): outputs match
  onnxruntime's on the same inputs within 1e-4.
- The same network with dynamic batching (`--max-batch-size`): 32 concurrent requests through
  tritonclient's HTTP and gRPC clients get the answers the unbatched host gives (to within a few
  units in the last place: tract's kernels round a batch of rows a little differently from one
  row), in fewer calls than requests.
- A model whose 16 MiB of weights do not fit `--memory-limit 32MiB` is refused at pack time.
- On a terminal, `pack` shows each step as it runs and its time; piped, it shows none of them.

Each test's host uses one compile cache for the session, so the ONNX runner compiles once.
"""

import importlib.util
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from conftest import HOST, LISTENING, ANSI, ROOT, STARTUP_TIMEOUT, running_host

DIGITS_ONNX = ROOT / "guest-model" / "weights" / "digits_mlp.onnx"
MAKE_MODELS = ROOT / "examples" / "onnx" / "make_models.py"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def env(workdir):
    return dict(os.environ, NO_COLOR="1", WASM_HOST_CACHE_DIR=str(workdir / "cache"))


@pytest.fixture(scope="module")
def models(workdir):
    """The generated models, by name: {"cnn": Path, "big": Path, ...}."""
    spec = importlib.util.spec_from_file_location("make_models", MAKE_MODELS)
    make_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_models)
    out = workdir / "models"
    make_models.main(["make_models.py", str(out), "cnn", "big"])
    return {p.stem: p for p in out.glob("*.onnx")}


class Served:
    """A `wasm-host` serving one model on an ephemeral loopback port, stopped by PID."""

    def __init__(self, model, env, *extra):
        self.log = []
        self.proc = subprocess.Popen(
            [str(HOST), "--instances", "2", "--bind", "127.0.0.1:0", *extra, str(model)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env,
        )
        ready, found = threading.Event(), []

        def drain():
            for raw in self.proc.stderr:
                line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
                self.log.append(line)
                m = LISTENING.search(line)
                if m and not ready.is_set():
                    found.append(m.group(1))
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        # Packing on the fly compiles the runner the first time: allow for it.
        if not ready.wait(STARTUP_TIMEOUT * 6) or not found:
            self.stop()
            pytest.fail(f"wasm-host did not start on {model}; its log:\n" + "\n".join(self.log))
        self.addr = found[0]

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.reader.join(timeout=5)


def pack(model, out, env, *extra):
    return subprocess.run(
        [str(HOST), "pack", str(model), "-o", str(out), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def packed_digits(workdir, env):
    out = workdir / "digits.wasm"
    done = pack(DIGITS_ONNX, out, env, "--name", "digits-onnx", "--version", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    served = Served(out, env)
    yield served
    served.stop()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_packed_scikit_learn_export_matches_scikit_learn_through_tritonclient(
    packed_digits, reference, binary
):
    client = httpclient.InferenceServerClient(url=packed_digits.addr)
    meta = client.get_model_metadata("digits-onnx")
    assert meta["versions"] == ["3"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("input", "FP32", [-1, 64])
    ]
    x = httpclient.InferInput("input", list(reference["inputs"].shape), "FP32")
    x.set_data_from_numpy(reference["inputs"], binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer("digits-onnx", [x], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("label"), reference["labels"])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), reference["probabilities"], rtol=0, atol=1e-5
    )
    client.close()


@pytest.fixture(scope="module")
def served_cnn(models, env):
    served = Served(models["cnn"], env)  # the .onnx itself: packed on the fly
    yield served
    served.stop()


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_convolutional_network_matches_onnxruntime(served_cnn, models, batch):
    images = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    session = ort.InferenceSession(str(models["cnn"]), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"image": images})

    client = httpclient.InferenceServerClient(url=served_cnn.addr)
    meta = client.get_model_metadata("cnn")
    assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [("image", [-1, 1, 28, 28])]
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("probabilities", [-1, 10])]
    x = httpclient.InferInput("image", list(images.shape), "FP32")
    x.set_data_from_numpy(images, binary_data=True)
    got = client.infer("cnn", [x]).as_numpy("probabilities")
    client.close()
    assert got.shape == expected.shape == (batch, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # Not a constant answer: the network tells these inputs apart.
    assert batch == 1 or np.ptp(expected, axis=0).max() > 1e-3


def test_batched_cnn_answers_are_the_unbatched_answers_through_http_and_grpc(
    served_cnn, models, workdir
):
    import tritonclient.grpc as grpcclient
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    requests = [rng.random((1 + i % 2, 1, 28, 28), dtype=np.float32) for i in range(32)]

    def infer(client_module, addr, images):
        client = client_module.InferenceServerClient(url=addr)
        x = client_module.InferInput("image", list(images.shape), "FP32")
        x.set_data_from_numpy(images)
        result = client.infer("cnn", [x]).as_numpy("probabilities")
        client.close()
        return result

    # One instance and a short queue delay, so that concurrent requests batch.
    args = ["--instances", "1", "--max-batch-size", "16", "--max-queue-delay", "5ms",
            str(models["cnn"])]
    env = {"WASM_HOST_CACHE_DIR": str(workdir / "cache")}
    with running_host(args, env, grpc=True) as (http_addr, grpc_addr):
        def batched(i):
            if i % 2:
                return infer(grpcclient, grpc_addr, requests[i])
            return infer(httpclient, http_addr, requests[i])

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(batched, range(len(requests))))
        # tract's kernels tile a batch of N rows differently from one row, which can move a
        # float's last bits (the same rows sent unbatched as one 16-row request do too); the
        # digits model, plain Rust, is compared bit for bit in tests/batching.rs.
        for images, answer in zip(requests, got):
            alone = infer(httpclient, served_cnn.addr, images)
            assert answer.shape == alone.shape
            np.testing.assert_array_max_ulp(answer, alone, maxulp=8)

        client = httpclient.InferenceServerClient(url=http_addr)
        (stats,) = client.get_inference_statistics("cnn")["model_stats"]
        assert int(stats["inference_count"]) == 32
        assert int(stats["execution_count"]) < 32, stats
        assert any(int(b["batch_size"]) > 2 for b in stats["batch_stats"]), stats
        client.close()
        # Triton's view of a batching model, over gRPC: dims without the batch dimension.
        client = grpcclient.InferenceServerClient(url=grpc_addr)
        config = client.get_model_config("cnn").config
        assert config.max_batch_size == 16
        assert list(config.input[0].dims) == [1, 28, 28]
        assert config.dynamic_batching.max_queue_delay_microseconds == 5000
        (stats,) = client.get_inference_statistics("cnn").model_stats
        assert stats.execution_count < stats.inference_count == 32
        client.close()


def test_weights_larger_than_the_memory_limit_are_refused_at_pack_time(models, workdir, env):
    out = workdir / "big.wasm"
    done = pack(models["big"], out, env, "--memory-limit", "32MiB")
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "needs more than the memory limit of 32 MiB" in lines[0], lines[0]
    assert not out.exists()


def pack_on_a_terminal(model, out, env, *extra):
    """`wasm-host pack` with its standard error on a pseudo-terminal, as a person runs it:
    (exit code, standard output, each line the terminal ends up showing)."""
    primary, replica = pty.openpty()
    try:
        proc = subprocess.Popen([str(HOST), "pack", str(model), "-o", str(out), *extra], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=replica)
    finally:
        os.close(replica)
    shown, deadline = bytearray(), time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if not select.select([primary], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the pack exited and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    stdout, _ = proc.communicate(timeout=60)
    # A finished step rewrites its line after a carriage return: keep what is left visible.
    shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", shown.decode())
    lines = [line.split("\r")[-1] for line in shown.split("\r\n")]
    return proc.returncode, stdout.decode(), [line for line in lines if line.strip()]


STEP_DONE = re.compile(r"^  (reading|preparing the ONNX runner|loading the graph|taking the snapshot"
                       r"|checking the result)\b.*: (.*, )?\d+\.\d s$")


def test_a_pack_on_a_terminal_shows_each_step_and_its_time(packed_digits, workdir, env):
    """Piped, a pack shows no step: the refusal tests here and in test_sklearn see one line."""
    code, stdout, lines = pack_on_a_terminal(DIGITS_ONNX, workdir / "digits-tty.wasm", env,
                                             "--name", "digits-onnx", "--version", "3")
    assert code == 0, lines
    steps = [STEP_DONE.match(line) for line in lines]
    assert [m.group(1) for m in steps if m] == [
        "reading", "preparing the ONNX runner", "loading the graph", "taking the snapshot",
        "checking the result"], lines
    assert re.search(r"digits_mlp\.onnx: \d+ KB, ", lines[0]), lines
    assert stdout.startswith("packed "), stdout


def test_a_refused_pack_on_a_terminal_ends_its_step_and_prints_the_error_on_its_own_line(
    models, workdir, env
):
    code, _, lines = pack_on_a_terminal(models["big"], workdir / "big-tty.wasm", env,
                                        "--memory-limit", "32MiB")
    assert code == 3, lines
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "needs more than the memory limit of 32 MiB" in errors[0], lines
    # The step that failed was left without a time, and nothing follows the error.
    assert lines[-1] == errors[0], lines
    assert lines[-2].startswith("  loading the graph") and not STEP_DONE.match(lines[-2]), lines


def test_a_model_with_160_mib_of_weights_packs_and_matches_onnxruntime(workdir, env):
    """Packing copies the loaded model's memory out of the runner in one call; past wasmtime's
    default of 128 MiB per call that once panicked `pack` for any real network (ResNet-50)."""
    spec = importlib.util.spec_from_file_location("make_models", MAKE_MODELS)
    make_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_models)
    make_models.main(["make_models.py", str(workdir / "large"), "large"])
    model = workdir / "large" / "large.onnx"
    out = workdir / "large.wasm"
    done = pack(model, out, env, "--memory-limit", "1GiB")
    assert done.returncode == 0, done.stdout + done.stderr
    served = Served(out, env, "--memory-limit", "1GiB", "--memory-budget", "4GiB")
    try:
        x = np.random.default_rng(7).uniform(-1, 1, (2, 4096)).astype(np.float32)
        expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
        client = httpclient.InferenceServerClient(served.addr)
        given = httpclient.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=True)
        got = client.infer("large", [given]).as_numpy("y")
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        client.close()
    finally:
        served.stop()
