"""Fixtures: one real `wasm-host` serving the digits model for the whole session.

The host and the guest are built by `make test` (or `cargo build --release -p wasm-host` and
`make guests`); these tests never build anything. The host binds an ephemeral port on loopback
and announces it on stderr; it is stopped by PID when the session ends, and its log is printed
after the test summary whenever something failed.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "target" / "release" / "wasm-host"
MODEL = ROOT / "target" / "wasm32-wasip2" / "release" / "guest_model.wasm"
ECHO = ROOT / "target" / "wasm32-wasip2" / "release" / "echo_model.wasm"
FAULT = ROOT / "target" / "wasm32-wasip2" / "release" / "fault_model.wasm"
REFERENCE = ROOT / "guest-model" / "weights" / "digits_reference.json"

STARTUP_TIMEOUT = 30.0  # seconds to wait for "listening on http://..."
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"listening on http://(\S+)")
# Logged before the HTTP line when the host serves gRPC (--grpc-bind).
GRPC_LISTENING = re.compile(r"grpc listening on (\S+)")

# Every line the host wrote to stderr, for the report on failure.
_host_log: list[str] = []

# The process serving each HTTP address, for tests that signal it.
PROCESSES: dict = {}


def _drain(stream, ready: threading.Event, found: list, grpc_found: list):
    """Read the host's stderr line by line for its whole life (so it never blocks on a full pipe),
    and report the address from the first `listening on http://ADDR` line (and the gRPC address
    from a `grpc listening on ADDR` line, which comes before it)."""
    for raw in stream:
        line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
        _host_log.append(line)
        if not ready.is_set():
            m = GRPC_LISTENING.search(line)
            if m:
                grpc_found.append(m.group(1))
                continue
            m = LISTENING.search(line)
            if m:
                found.append(m.group(1))
                ready.set()
    ready.set()  # EOF: the host exited (before or after it listened)


@contextlib.contextmanager
def running_host(args, extra_env=None, grpc=False, startup_timeout=STARTUP_TIMEOUT):
    """Start `wasm-host ARGS --bind 127.0.0.1:0`; yield "127.0.0.1:PORT"; stop it by PID.
    With `grpc`, also `--grpc-bind 127.0.0.1:0`, and yield (HTTP address, gRPC address).
    A host that packs an ONNX model on the fly needs a longer `startup_timeout`."""
    with host_process(args, extra_env, grpc, startup_timeout) as (addr, _proc):
        yield addr


@contextlib.contextmanager
def host_process(args, extra_env=None, grpc=False, startup_timeout=STARTUP_TIMEOUT):
    """As `running_host`, yielding (its address or addresses, the Popen) for tests that signal
    the host."""
    for path, what in ((HOST, "the host"), (MODEL, "the digits model")):
        if not path.is_file():
            pytest.exit(
                f"{what} is not built: {path.relative_to(ROOT)} is missing; run `make test` "
                "(or `make guests host`) first",
                returncode=2,
            )

    env = dict(os.environ, NO_COLOR="1", **(extra_env or {}))
    env.pop("RUST_LOG", None)
    grpc_args = ["--grpc-bind", "127.0.0.1:0"] if grpc else []
    proc = subprocess.Popen(
        [str(HOST), "--bind", "127.0.0.1:0", *grpc_args, *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    ready, found, grpc_found = threading.Event(), [], []
    reader = threading.Thread(
        target=_drain, args=(proc.stderr, ready, found, grpc_found), daemon=True
    )
    reader.start()

    try:
        if not ready.wait(startup_timeout) or not found:
            code = proc.poll()
            state = f"exited with code {code}" if code is not None else "is still silent"
            pytest.fail(
                f"wasm-host did not announce `listening on http://...` within {startup_timeout}s "
                f"(it {state}); its log:\n" + "\n".join(_host_log),
                pytrace=False,
            )
        if grpc and not grpc_found:
            pytest.fail("wasm-host did not announce `grpc listening on ...`; its log:\n"
                        + "\n".join(_host_log), pytrace=False)
        PROCESSES[found[0]] = proc
        yield ((found[0], grpc_found[0]) if grpc else found[0]), proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # graceful: drain, then exit 0
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=5)
        _host_log.append(f"(wasm-host pid {proc.pid} exited with code {proc.returncode})")


@pytest.fixture(scope="session")
def server_addr():
    """`wasm-host --instances 2 guest_model.wasm`: the digits model alone."""
    with running_host(["--instances", "2", str(MODEL)]) as addr:
        yield addr


ADMIN_TOKEN = "python-suite-token"


@pytest.fixture(scope="session")
def repository_addr(tmp_path_factory):
    """A host serving a model repository (digits) with the repository API on, behind a token."""
    repo = tmp_path_factory.mktemp("repository")
    (repo / "digits").mkdir()
    shutil.copy(MODEL, repo / "digits" / "model.wasm")
    args = ["--instances", "2", "--model-repository", str(repo), "--model-control", "explicit"]
    with running_host(args, {"WASM_HOST_ADMIN_TOKEN": ADMIN_TOKEN}) as addr:
        yield addr


@pytest.fixture(scope="session")
def client(server_addr):
    c = httpclient.InferenceServerClient(url=server_addr, concurrency=4)
    yield c
    c.close()


@pytest.fixture(scope="session")
def reference():
    """The 200 reference rows: inputs (float32 [200, 64]), labels (int64 [200]),
    probabilities (float32 [200, 10])."""
    with open(REFERENCE) as f:
        ref = json.load(f)
    return {
        "inputs": np.asarray(ref["inputs"], dtype=np.float32),
        "labels": np.asarray(ref["predicted_labels"], dtype=np.int64),
        "probabilities": np.asarray(ref["probabilities"], dtype=np.float32),
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After a failed run, show what the host logged (it has exited by now)."""
    if exitstatus != 0 and _host_log:
        terminalreporter.write_sep("=", "wasm-host log")
        for line in _host_log:
            terminalreporter.write_line(line)



@dataclasses.dataclass
class Zoo:
    """The ONNX zoo served (onnx_zoo.py): its address, its members, and the host's answers to
    one request carrying every member's inputs, by (member, output)."""

    addr: str
    members: dict
    answers: dict
    cache: Path  # the compile cache that holds the ONNX runner


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """scikit-learn exports and whole networks merged into one model, `zoo`, served from a
    model repository (packed on the fly: one compile of the ONNX runner for all of them)."""
    import onnx_zoo

    out = tmp_path_factory.mktemp("zoo")
    # `make networks` sets "real": the networks at their real size (245 MB of weights).
    size = os.environ.get("WASM_HOST_NETWORK_SIZE", "small")
    repository, members = onnx_zoo.build(out, size)
    args = ["--instances", "1", "--model-repository", str(repository),
            "--memory-limit", "2GiB" if size == "real" else "256MiB"]
    # Packing compiles the runner: minutes on a loaded 2-core machine.
    with running_host(args, {"WASM_HOST_CACHE_DIR": str(out / "cache")},
                      startup_timeout=600.0) as addr:
        client = httpclient.InferenceServerClient(url=addr)
        ready = client.is_model_ready("zoo")
        client.close()
        if not ready:
            pytest.fail("the zoo model is not ready; the host's log:\n" + "\n".join(_host_log),
                        pytrace=False)
        yield Zoo(addr, members, onnx_zoo.ask(addr, members), out / "cache")
