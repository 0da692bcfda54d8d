"""OpenTelemetry traces: the host exports, to a real OTLP receiver (otlp_receiver.py, the official
opentelemetry-proto service), one server span per inference request joined to the caller's W3C
`traceparent`, with the queue, batch and guest-call spans under or linked to it; over gRPC and
HTTP/protobuf; and a collector that is down changes nothing for clients.
"""

import json
import os
import socket
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import conftest
from conftest import MODEL, running_host
from otlp_receiver import Receiver

BATCHING = ["--instances", "1", "--max-batch-size", "8", "--max-queue-delay", "100ms"]
RESOURCE = {"OTEL_SERVICE_NAME": "wasm-host-test", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"}


def traceparent(i, sampled=True):
    """A caller's W3C trace context: trace i, caller span i."""
    trace_id, span_id = f"{0xA000 + i:032x}", f"{0xB000 + i:016x}"
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def rows(reference, n=1):
    return np.asarray(reference["inputs"][:n], dtype=np.float32)


def infer_with(client_module, addr, reference, header):
    """One row through tritonclient's HTTP or gRPC client, with the caller's `traceparent`."""
    client = client_module.InferenceServerClient(addr)
    x = rows(reference)
    inp = client_module.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("digits", [inp], headers={"traceparent": header})


def http_infer(addr, reference, header):
    return infer_with(httpclient, addr, reference, header)


def grpc_infer(addr, reference, header):
    return infer_with(grpcclient, addr, reference, header)


def concurrently(calls):
    errors = []

    def run(call):
        try:
            call()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


def by_trace(spans, trace_id):
    return [s for s in spans if s.trace_id == trace_id]


def server_span(spans, trace_id, caller):
    found = [s for s in by_trace(spans, trace_id) if s.is_server]
    assert len(found) == 1, f"one server span in trace {trace_id}: {found}"
    span = found[0]
    assert span.parent_span_id == caller, "the request span's parent is the caller's span"
    return span


def test_http_and_grpc_requests_are_traced_into_the_queue_the_batch_and_the_guest(reference):
    n_http, n_grpc = 8, 4
    with Receiver() as receiver, running_host(
        [*BATCHING, "--otlp-endpoint", receiver.grpc_url, "--otlp-protocol", "grpc", str(MODEL)],
        extra_env=RESOURCE, grpc=True,
    ) as (addr, grpc_addr):
        http_calls = [traceparent(i) for i in range(n_http)]
        grpc_calls = [traceparent(100 + i) for i in range(n_grpc)]
        unsampled = traceparent(200, sampled=False)
        concurrently(
            [lambda h=h: http_infer(addr, reference, h) for _, _, h in http_calls]
            + [lambda h=h: grpc_infer(grpc_addr, reference, h) for _, _, h in grpc_calls]
        )
        http_infer(addr, reference, unsampled[2])
        wanted = {t for t, _, _ in http_calls + grpc_calls}
        spans = receiver.wait_for(
            lambda spans: wanted <= {s.trace_id for s in spans if s.is_server}
        )

    ids = {s.span_id: s for s in spans}
    assert all(s.transport == "grpc" for s in spans)
    assert spans[0].resource["service.name"] == "wasm-host-test"
    assert spans[0].resource["deployment.environment"] == "ci"
    # The caller said "not sampled": parent-based sampling exports nothing of its trace.
    assert not by_trace(spans, unsampled[0])

    batched = 0
    for trace_id, caller, _ in http_calls:
        request = server_span(spans, trace_id, caller)
        assert request.name == "POST /v2/models/{model}/infer"
        a = request.attributes
        assert a["http.request.method"] == "POST"
        assert a["http.route"] == "/v2/models/{model}/infer"
        assert a["url.path"] == "/v2/models/digits/infer"
        assert a["http.response.status_code"] == 200
        assert a["model.name"] == "digits" and a["model.version"] == "1"
        instance = a["wasm_host.instance"]
        children = [s for s in spans if s.parent_span_id == request.span_id]
        calls = [s for s in children if s.name == "guest call"]
        batches = [ids[span_id] for _, span_id in request.links if span_id in ids]
        # Either it ran alone (a guest call under it) or rode in a batch (linked).
        assert len(calls) + len(batches) == 1, (calls, batches)
        if calls:
            call = calls[0]
        else:
            batch = batches[0]
            batched += 1
            assert batch.name == "batch" and batch.parent_span_id == ""
            assert (request.trace_id, request.span_id) in batch.links
            assert batch.attributes["wasm_host.batch.requests"] == len(batch.links) >= 2
            call = next(s for s in spans if s.parent_span_id == batch.span_id)
            assert call.name == "guest call"
        assert call.attributes["wasm_host.instance"] == instance
        assert call.attributes["wasm_host.outcome"] == "ok"
    assert batched >= 2, "some requests were batched (one instance, 100 ms queue delay)"
    queues = [s for s in spans if s.name == "queue"]
    assert queues, "requests that waited for the instance have a queue span"
    assert all(ids[q.parent_span_id].is_server for q in queues if q.parent_span_id in ids)

    for trace_id, caller, _ in grpc_calls:
        request = server_span(spans, trace_id, caller)
        assert request.name == "inference.GRPCInferenceService/ModelInfer"
        a = request.attributes
        assert a["rpc.system"] == "grpc" and a["rpc.method"] == "ModelInfer"
        assert a["rpc.service"] == "inference.GRPCInferenceService"
        assert a["rpc.grpc.status_code"] == 0
        assert a["model.name"] == "digits" and isinstance(a["wasm_host.instance"], int)


def test_spans_go_over_http_protobuf_too(reference):
    with Receiver() as receiver, running_host(
        ["--otlp-endpoint", receiver.http_url, "--otlp-protocol", "http/protobuf", str(MODEL)],
    ) as addr:
        trace_id, caller, header = traceparent(300)
        http_infer(addr, reference, header)
        spans = receiver.wait_for(lambda spans: any(s.is_server for s in spans))
    assert spans and all(s.transport == "http" for s in spans)
    request = server_span(spans, trace_id, caller)
    assert any(s.name == "guest call" and s.parent_span_id == request.span_id for s in spans)
    # The model's load and its instance's boot, at start, are traced too.
    assert {"model load", "instance boot"} <= {s.name for s in spans}


def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_a_dead_collector_changes_nothing_for_clients(reference):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    first = len(conftest._host_log)
    with running_host(
        ["--otlp-endpoint", f"http://127.0.0.1:{dead}", "--otlp-protocol", "grpc", str(MODEL)],
    ) as addr:
        for i in range(20):
            result = http_infer(addr, reference, traceparent(400 + i)[2])
            assert result.as_numpy("probabilities").shape == (1, 10)
        deadline = __import__("time").monotonic() + 15
        while (metric(addr, "wasm_host_trace_spans_dropped_total") or 0) == 0:
            assert __import__("time").monotonic() < deadline, "dropped spans are counted"
            __import__("time").sleep(0.2)
        for i in range(20):
            http_infer(addr, reference, traceparent(500 + i)[2])
        assert metric(addr, "wasm_host_trace_spans_exported_total") == 0
    log = conftest._host_log[first:]
    failed = [line for line in log if "trace export to" in line and "failed" in line]
    assert len(failed) == 1, f"the outage is logged once: {failed}"


def test_json_logs_carry_the_callers_trace_id_on_a_requests_lines(reference):
    first = len(conftest._host_log)
    trace_id, _, header = traceparent(600)
    with running_host(["--log-format", "json", "--access-log", str(MODEL)]) as addr:
        http_infer(addr, reference, header)
    lines = [json.loads(line) for line in conftest._host_log[first:] if line.startswith("{")]
    access = [line for line in lines if line.get("target") == "access"]
    assert access, "the access log line is there"
    assert access[-1]["span"]["trace_id"] == trace_id, access[-1]


def test_tritons_trace_settings_choose_which_requests_are_traced(reference):
    auth = {"Authorization": f"Bearer {conftest.ADMIN_TOKEN}"}
    with Receiver() as receiver, running_host(
        ["--otlp-endpoint", receiver.grpc_url, "--otlp-protocol", "grpc", str(MODEL)],
        {"WASM_HOST_ADMIN_TOKEN": conftest.ADMIN_TOKEN},
    ) as addr:
        client = httpclient.InferenceServerClient(addr)
        # With an exporter, every request is offered to the sampler.
        assert client.get_trace_settings(headers=auth)["trace_level"] == ["TIMESTAMPS"]
        client.update_trace_settings(model_name="digits", settings={"trace_rate": "4"}, headers=auth)
        rate = [traceparent(700 + i) for i in range(12)]
        for _, _, header in rate:
            http_infer(addr, reference, header)
        client.update_trace_settings(model_name="digits", settings={"trace_rate": None,
                                                                    "trace_count": "2"}, headers=auth)
        count = [traceparent(800 + i) for i in range(5)]
        for _, _, header in count:
            http_infer(addr, reference, header)
        client.update_trace_settings(settings={"trace_level": ["OFF"]}, headers=auth)
        client.update_trace_settings(model_name="digits", settings={"trace_count": None}, headers=auth)
        off = traceparent(900)
        http_infer(addr, reference, off[2])
        servers = lambda spans, calls: [t for t, _, _ in calls
                                        if any(s.is_server and s.trace_id == t for s in spans)]
        spans = receiver.wait_for(lambda spans: len(servers(spans, count)) >= 2)
        __import__("time").sleep(0.5)  # the rest, had any been sent
        spans = receiver.snapshot()
    assert len(servers(spans, rate)) == 3, "trace_rate 4: one request in four"
    assert len(servers(spans, count)) == 2, "trace_count 2: two more, then none"
    assert not by_trace(spans, off[0]), "trace_level OFF: none"
