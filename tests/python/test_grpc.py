"""The Open Inference Protocol over gRPC (`--grpc-bind`), driven by the clients Triton and KServe
users have: `tritonclient.grpc`, kserve's `InferenceGRPCClient` and `perf_analyzer -i grpc`.

Metadata, readiness and inference on all 200 digits reference rows in raw and typed contents,
checked against scikit-learn; each failure with its gRPC status code and the message HTTP sends;
Triton's classification extension; the parameters Triton gives meaning to; the instance in
`x-instance-id` response metadata.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import conftest
from conftest import ADMIN_TOKEN, FAULT, MODEL, PROCESSES, REFERENCE, ROOT, running_host

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def hosts():
    """The digits model over HTTP and gRPC: (HTTP address, gRPC address)."""
    with running_host(["--instances", "2", str(MODEL)], grpc=True) as addrs:
        yield addrs


@pytest.fixture(scope="module")
def triton(hosts):
    c = grpcclient.InferenceServerClient(url=hosts[1])
    yield c
    c.close()


def kserve(grpc_addr, *args):
    """kserve's InferenceGRPCClient, run by kserve_grpc_client.py in a process of its own (its
    protobuf messages and tritonclient.grpc's cannot share one)."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "python" / "kserve_grpc_client.py"), grpc_addr,
         *map(str, args)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


# ---- metadata and readiness ----------------------------------------------------------------------


def test_tritonclient_grpc_reads_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("digits")
    server = triton.get_server_metadata()
    assert server.name == "wasm-host"
    assert "binary_tensor_data" in server.extensions and "classification" in server.extensions
    model = triton.get_model_metadata("digits")
    assert model.name == "digits" and list(model.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 64])]
    assert {t.name for t in model.outputs} == {"label", "probabilities"}


def test_tritonclient_grpc_reads_config_and_statistics(triton):
    config = triton.get_model_config("digits").config
    assert config.name == "digits" and config.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [-1, 64])]
    assert config.instance_group[0].count == 2
    assert "timeout_ms" in config.parameters
    stats = triton.get_inference_statistics("digits").model_stats
    assert stats[0].name == "digits" and stats[0].version == "1"


def test_kserve_grpc_client_reads_health(hosts):
    assert kserve(hosts[1], "health") == {"live": True, "ready": True, "model_ready": True}


# ---- inference on the reference rows -------------------------------------------------------------


def check_rows(labels, probabilities, reference, rows):
    np.testing.assert_array_equal(labels, reference["labels"][rows])
    np.testing.assert_allclose(probabilities, reference["probabilities"][rows], atol=TOLERANCE,
                               rtol=0)


def test_tritonclient_grpc_infers_all_200_rows_raw(triton, reference):
    """tritonclient.grpc always sends raw_input_contents: one request per row, then all 200 at
    once."""
    x = reference["inputs"]
    for row in range(len(x)):
        inp = grpcclient.InferInput("x", [1, 64], "FP32")
        inp.set_data_from_numpy(x[row:row + 1])
        result = triton.infer("digits", [inp], request_id=f"row-{row}")
        assert result.get_response().id == f"row-{row}"
        check_rows(result.as_numpy("label"), result.as_numpy("probabilities"), reference,
                   slice(row, row + 1))
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = triton.infer("digits", [inp])
    check_rows(result.as_numpy("label"), result.as_numpy("probabilities"), reference, slice(None))


def test_kserve_grpc_client_infers_all_200_rows_typed_and_raw(hosts, reference):
    result = kserve(hosts[1], "rows", REFERENCE)
    for form in ("typed", "raw"):
        labels = np.asarray(result[form]["labels"])
        probabilities = np.asarray(result[form]["probabilities"], dtype=np.float32)
        check_rows(labels, probabilities, reference, slice(None))


def test_typed_requests_get_typed_outputs_and_raw_requests_raw(hosts, reference):
    channel = grpc.insecure_channel(hosts[1])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    row = reference["inputs"][:2]
    typed = service_pb2.ModelInferRequest(model_name="digits")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(row.flatten().tolist())
    response, call = stub.ModelInfer.with_call(typed)
    assert not response.raw_output_contents
    by_name = {o.name: o for o in response.outputs}
    assert list(by_name["label"].contents.int64_contents) == list(reference["labels"][:2])
    np.testing.assert_allclose(by_name["probabilities"].contents.fp32_contents,
                               reference["probabilities"][:2].flatten(), atol=TOLERANCE)
    # The instance that served the call, as HTTP's x-instance-id header.
    metadata = dict(call.initial_metadata())
    assert metadata["x-instance-id"].isdigit(), metadata

    raw = service_pb2.ModelInferRequest(model_name="digits")
    raw.inputs.add(name="x", datatype="FP32", shape=[2, 64])
    raw.raw_input_contents.append(row.tobytes())
    response = stub.ModelInfer(raw)
    assert len(response.raw_output_contents) == 2
    assert not response.outputs[0].HasField("contents")
    channel.close()


# ---- errors: codes and messages ------------------------------------------------------------------


def grpc_error(call):
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value.status(), raised.value.message()


def http_error(call):
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value.message()


def test_a_wrong_shape_is_invalid_argument_with_the_http_message(hosts, triton):
    wrong = np.zeros((1, 63), dtype=np.float32)
    g = grpcclient.InferInput("x", [1, 63], "FP32")
    g.set_data_from_numpy(wrong)
    status, message = grpc_error(lambda: triton.infer("digits", [g]))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "expects [-1, 64]" in message, message
    http = httpclient.InferenceServerClient(url=hosts[0])
    h = httpclient.InferInput("x", [1, 63], "FP32")
    h.set_data_from_numpy(wrong)
    assert http_error(lambda: http.infer("digits", [h])) == message
    http.close()


def test_an_unknown_model_is_not_found(triton):
    x = grpcclient.InferInput("x", [1, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    status, message = grpc_error(lambda: triton.infer("nope", [x]))
    assert status == "StatusCode.NOT_FOUND"
    assert 'unknown model "nope"; this host serves digits' in message, message
    status, _ = grpc_error(lambda: triton.get_model_metadata("nope"))
    assert status == "StatusCode.NOT_FOUND"


@pytest.fixture(scope="module")
def fault_hosts():
    """The fault model, one instance, no queue, a 1 s deadline, a 32 MiB memory cap and 64 KiB
    messages."""
    args = ["--instances", "1", "--max-queue", "0", "--timeout", "1s", "--memory-limit", "32MiB",
            "--max-body", "64KiB", str(FAULT)]
    with running_host(args, grpc=True) as addrs:
        yield addrs


def fault_input(kind, arg):
    action = grpcclient.InferInput("action", [2], "INT64")
    action.set_data_from_numpy(np.array([kind, arg], dtype=np.int64))
    return action


def wait_for_an_idle_instance(http):
    """After a deadline the instance is replaced just after the answer: with one instance and
    `--max-queue 0`, a request sent before its replacement is in would get UNAVAILABLE."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{http}/health") as health:
            if json.load(health)["models"]["fault"]["instances"]["idle"] == 1:
                return
        time.sleep(0.01)
    pytest.fail("the fault model's instance did not come back within 10 s")


def test_the_models_deadline_is_deadline_exceeded(fault_hosts):
    client = grpcclient.InferenceServerClient(url=fault_hosts[1])
    status, message = grpc_error(lambda: client.infer("fault", [fault_input(4, 5_000)]))
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    assert "ran past its deadline of 1s" in message, message
    # Triton's `timeout` parameter (µs) tightens it.
    wait_for_an_idle_instance(fault_hosts[0])
    status, message = grpc_error(
        lambda: client.infer("fault", [fault_input(4, 5_000)], timeout=200_000))
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    assert "deadline of 200ms (set by the client)" in message, message
    # So does the client's gRPC deadline (grpc-timeout); the client may see its own first.
    wait_for_an_idle_instance(fault_hosts[0])
    status, _ = grpc_error(lambda: client.infer("fault", [fault_input(4, 5_000)],
                                                client_timeout=0.3))
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    client.close()


def test_the_memory_cap_is_resource_exhausted(fault_hosts):
    client = grpcclient.InferenceServerClient(url=fault_hosts[1])
    status, message = grpc_error(lambda: client.infer("fault", [fault_input(3, 64)]))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert "memory cap of 32 MiB" in message, message
    client.close()


def test_a_message_past_max_body_is_refused(fault_hosts):
    client = grpcclient.InferenceServerClient(url=fault_hosts[1])
    big = grpcclient.InferInput("action", [16_384], "INT64")
    big.set_data_from_numpy(np.zeros(16_384, dtype=np.int64))
    status, message = grpc_error(lambda: client.infer("fault", [big]))
    assert status == "StatusCode.OUT_OF_RANGE", message
    assert "65536" in message, message
    client.close()


def test_overload_is_unavailable(fault_hosts):
    client = grpcclient.InferenceServerClient(url=fault_hosts[1])
    other = grpcclient.InferenceServerClient(url=fault_hosts[1])
    # Both channels connected first, so the sleeper's call goes out at once on a busy machine.
    assert client.is_model_ready("fault") and other.is_model_ready("fault")
    # The one instance sleeps 800 ms (within its 1 s deadline); with no queue, others are refused.
    busy = threading.Thread(target=lambda: client.infer("fault", [fault_input(4, 800)]))
    busy.start()
    try:
        status, message = None, ""
        while busy.is_alive():  # until the sleeper holds the instance
            try:
                other.infer("fault", [fault_input(0, 1)])
            except InferenceServerException as err:
                status, message = err.status(), err.message()
                break
    finally:
        busy.join()
        other.close()
    assert status == "StatusCode.UNAVAILABLE", message
    assert "all 1 instances are busy" in message, message
    client.close()


def held_body_bytes(http):
    with urllib.request.urlopen(f"http://{http}/health") as health:
        return json.load(health)["bodies"]["held_bytes"]


def test_stalled_messages_share_the_body_budget_and_are_cut_off_by_the_body_timeout():
    """gRPC bodies are bounded as HTTP's are: a message sent whole on a stream that never ends
    holds its bytes of --body-budget; a call the budget has no room for is UNAVAILABLE with HTTP's
    message; the stalled one is DEADLINE_EXCEEDED once --body-timeout has passed; the budget comes
    back and the next call is served."""
    args = ["--max-body", "2MiB", "--body-budget", "3MiB", "--body-timeout", "3s", str(MODEL)]
    with running_host(args, grpc=True) as (http, addr):
        channel = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 8 << 20)])
        method = "/inference.GRPCInferenceService/ModelInfer"
        decode = service_pb2.ModelInferResponse.FromString
        message = lambda size: service_pb2.ModelInferRequest(
            model_name="digits", raw_input_contents=[bytes(size)]).SerializeToString()
        release = threading.Event()

        def stalled():
            yield message(1900 << 10)
            release.wait(30)  # the request stream stays open: its body never ends

        held = {}

        def hold():
            try:
                channel.stream_unary(method, response_deserializer=decode)(stalled(), timeout=60)
                held["code"] = grpc.StatusCode.OK
            except grpc.RpcError as err:
                held["code"], held["details"] = err.code(), err.details()

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            deadline = time.monotonic() + 10
            while held_body_bytes(http) < 1900 << 10:
                assert time.monotonic() < deadline, "the stalled message never held the budget"
                time.sleep(0.02)
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(method, response_deserializer=decode)(
                    message(1500 << 10), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
            assert "--body-budget" in refused.value.details(), refused.value.details()
            holder.join(30)
            assert held.get("code") == grpc.StatusCode.DEADLINE_EXCEEDED, held
            assert "--body-timeout" in held["details"], held
        finally:
            release.set()
            holder.join(30)
        deadline = time.monotonic() + 5
        while held_body_bytes(http) != 0:
            assert time.monotonic() < deadline, "the budget was not given back"
            time.sleep(0.02)
        with urllib.request.urlopen(f"http://{http}/metrics") as metrics:
            assert "wasm_host_request_body_timeouts_total 1" in metrics.read().decode()
        client = grpcclient.InferenceServerClient(url=addr)
        x = grpcclient.InferInput("x", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        assert client.infer("digits", [x]).as_numpy("label").shape == (1,)
        client.close()
        channel.close()


def test_the_access_log_has_a_line_per_grpc_call_with_its_grpc_status():
    """`--access-log` logs gRPC calls as it logs HTTP requests: method, path, latency and the
    instance, with the call's gRPC status beside the HTTP status (200 for every gRPC answer)."""
    first = len(conftest._host_log)
    args = ["--instances", "1", "--access-log", "--log-format", "json", str(MODEL)]
    with running_host(args, grpc=True) as (_, addr):
        client = grpcclient.InferenceServerClient(url=addr)
        x = grpcclient.InferInput("x", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        client.infer("digits", [x])
        status, _ = grpc_error(lambda: client.infer("nobody", [x]))
        assert status == "StatusCode.NOT_FOUND"
        client.close()
        deadline = time.monotonic() + 5
        while True:
            lines = [json.loads(line) for line in conftest._host_log[first:]
                     if line.startswith("{")]
            access = [line for line in lines if line.get("target") == "access"]
            if len(access) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    path = "/inference.GRPCInferenceService/ModelInfer"
    served, missing = access[-2], access[-1]
    assert (served["method"], served["path"], served["status"]) == ("POST", path, 200), served
    assert served["grpc_status"] == 0, served
    assert served["instance"] != "-" and served["latency_us"] >= 0, served
    assert (missing["path"], missing["grpc_status"], missing["instance"]) == (path, 5, "-"), missing


def test_sequence_and_priority_are_invalid_argument(triton):
    x = grpcclient.InferInput("x", [1, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    for kwargs, name in [({"sequence_id": 7}, "sequence_id"), ({"priority": 1}, "priority")]:
        status, message = grpc_error(lambda: triton.infer("digits", [x], **kwargs))
        assert status == "StatusCode.INVALID_ARGUMENT"
        assert name in message and "not supported" in message, message


def test_term_lets_an_in_flight_grpc_call_finish_then_exits():
    with running_host(["--instances", "1", str(FAULT)], grpc=True) as (http, grpc_addr):
        client = grpcclient.InferenceServerClient(url=grpc_addr)
        answer = {}

        def slow_call():
            answer["result"] = client.infer("fault", [fault_input(4, 1_000)]).as_numpy("result")

        call = threading.Thread(target=slow_call)
        call.start()
        for _ in range(100):  # until the call holds the instance
            with urllib.request.urlopen(f"http://{http}/health") as health:
                if json.load(health)["instances"]["busy"] == 1:
                    break
            time.sleep(0.01)
        os.kill(PROCESSES[http].pid, signal.SIGTERM)
        call.join(timeout=10)
        assert list(answer["result"]) == [1_000]
        assert PROCESSES[http].wait(timeout=10) == 0
        client.close()


def test_the_repository_calls_over_grpc_need_the_token(tmp_path):
    (tmp_path / "digits").mkdir()
    shutil.copy(MODEL, tmp_path / "digits" / "model.wasm")
    args = ["--instances", "1", "--model-repository", str(tmp_path), "--model-control", "explicit"]
    with running_host(args, {"WASM_HOST_ADMIN_TOKEN": ADMIN_TOKEN}, grpc=True) as (_, grpc_addr):
        client = grpcclient.InferenceServerClient(url=grpc_addr)
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        status, message = grpc_error(lambda: client.get_model_repository_index())
        assert status == "StatusCode.UNAUTHENTICATED", message
        index = client.get_model_repository_index(headers=auth, as_json=True)
        assert [(m["name"], m["state"]) for m in index["models"]] == [("digits", "READY")]
        client.unload_model("digits", headers=auth)
        status, message = grpc_error(lambda: client.get_model_metadata("digits"))
        assert status == "StatusCode.NOT_FOUND" and "unloaded" in message, message
        with open(MODEL, "rb") as f:
            client.load_model("digits", headers=auth, files={"file:1/model.wasm": f.read()})
        assert client.is_model_ready("digits")
        client.close()


# ---- classification ------------------------------------------------------------------------------


def top3(probabilities):
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :3]


def parse(entries):
    """"score:index" strings (bytes) → (scores, indices)."""
    pairs = [e.decode().split(":") for e in np.asarray(entries).flatten()]
    return (np.array([float(s) for s, _ in pairs]).reshape(-1, 3),
            np.array([int(i) for _, i in pairs]).reshape(-1, 3))


def test_class_count_through_tritonclient_grpc_returns_the_top_3(triton, reference):
    x = grpcclient.InferInput("x", list(reference["inputs"].shape), "FP32")
    x.set_data_from_numpy(reference["inputs"])
    out = grpcclient.InferRequestedOutput("probabilities", class_count=3)
    result = triton.infer("digits", [x], outputs=[out])
    classes = result.as_numpy("probabilities")
    assert classes.shape == (200, 3)
    scores, indices = parse(classes)
    np.testing.assert_array_equal(indices, top3(reference["probabilities"]))
    np.testing.assert_array_equal(indices[:, 0], reference["labels"])
    np.testing.assert_allclose(scores, np.sort(reference["probabilities"], axis=1)[:, ::-1][:, :3],
                               atol=1e-5)


def test_class_count_through_kserve_grpc_client_returns_the_top_3(hosts, reference):
    output = kserve(hosts[1], "classify", REFERENCE, 3)
    assert output["datatype"] == "BYTES" and output["shape"] == [200, 3]
    _, indices = parse([e.encode() for e in output["entries"]])
    np.testing.assert_array_equal(indices, top3(reference["probabilities"]))


def test_class_count_over_http_matches_grpc(hosts, triton, reference):
    rows = reference["inputs"][:20]
    http = httpclient.InferenceServerClient(url=hosts[0])
    h = httpclient.InferInput("x", list(rows.shape), "FP32")
    h.set_data_from_numpy(rows)
    over_http = http.infer("digits", [h], outputs=[
        httpclient.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")
    http.close()
    g = grpcclient.InferInput("x", list(rows.shape), "FP32")
    g.set_data_from_numpy(rows)
    over_grpc = triton.infer("digits", [g], outputs=[
        grpcclient.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")
    np.testing.assert_array_equal(over_http, over_grpc)
    np.testing.assert_array_equal(parse(over_http)[1], top3(reference["probabilities"][:20]))


# ---- perf_analyzer -------------------------------------------------------------------------------


def test_perf_analyzer_runs_over_grpc(hosts):
    command = [
        "bash", str(ROOT / "tests" / "python" / "perf_analyzer.sh"),
        "-i", "grpc", "-u", hosts[1], "-m", "digits", "--shape", "x:1,64",
        "--input-data", "zero", "--concurrency-range", "1:2", "--measurement-interval", "1000",
        # Up to 10 windows: on a busy machine three in a row may take a few tries to agree.
        "--stability-percentage", "100", "--max-trials", "10",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    for concurrency in (1, 2):
        assert f"Concurrency: {concurrency}, throughput:" in run.stdout, run.stdout
    # Server-side figures come from the statistics call.
    assert "Server:" in run.stdout and "Inference count:" in run.stdout, run.stdout


def test_a_draining_host_refuses_new_grpc_inferences_and_waits_for_those_in_flight():
    """gRPC inference passes the same admission gate as HTTP: calls in flight are counted from
    their first byte and finish, also while a new version of their model is loaded (a host's
    upgrade, as deploy/rolling-upgrade.sh does it); once the drain refuses, a new call gets
    UNAVAILABLE (which clients and balancers retry elsewhere) and is counted as refused."""
    args = ["--instances", "2", "--model-control", "explicit", str(FAULT)]
    env = {"WASM_HOST_ADMIN_TOKEN": ADMIN_TOKEN}
    with conftest.host_process(args, env, grpc=True) as ((http, grpc_addr), _proc):
        client = grpcclient.InferenceServerClient(url=grpc_addr)
        answers = []

        def slow_call():
            answer = client.infer("fault", [fault_input(4, 3_000)])
            answers.append((int(answer.as_numpy("result")[0]), answer.get_response().model_version))

        calls = [threading.Thread(target=slow_call) for _ in range(2)]
        for call in calls:
            call.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until both calls hold an instance
            with urllib.request.urlopen(f"http://{http}/health") as health:
                if json.load(health)["models"]["fault"]["instances"]["busy"] == 2:
                    break
            time.sleep(0.01)

        def admin(path, body):
            request = urllib.request.Request(
                f"http://{http}/v2/repository/{path}", data=json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                         "Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request) as response:
                text = response.read()
                return json.loads(text) if text else None

        traffic = admin("drain", {"refuse": True})
        assert traffic["refusing"] and traffic["in_flight"] == 2, traffic
        status, message = grpc_error(lambda: client.infer("fault", [fault_input(4, 1)]))
        assert status == "StatusCode.UNAVAILABLE", (status, message)
        assert "draining" in message, message
        # The upgrade: version 2 loads beside version 1 while both calls still run on it.
        component = base64.b64encode(FAULT.read_bytes()).decode()
        admin("models/fault/load", {"parameters": {"file:2/model.wasm": component}})
        assert admin("drain", {"refuse": True})["in_flight"] == 2, "the calls outlived the load"
        for call in calls:
            call.join(timeout=10)
        assert answers == [(3_000, "1"), (3_000, "1")], "both calls finish on the old version"
        traffic = admin("drain", {"refuse": True})
        assert traffic["in_flight"] == 0 and traffic["refused"] >= 1, traffic
        # Undrained, gRPC inference is served again, by the new version.
        admin("undrain", {})
        answer = client.infer("fault", [fault_input(4, 1)])
        assert (answer.as_numpy("result")[0], answer.get_response().model_version) == (1, "2")
        client.close()
