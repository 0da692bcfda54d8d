"""A real OTLP trace receiver for the tracing tests: the official opentelemetry-proto messages
and service, served over gRPC (grpcio) and HTTP/protobuf (POST /v1/traces, http.server), on
127.0.0.1 ports of its own. It keeps every span it is sent, flattened into `Span`s.

    with Receiver() as receiver:
        ... host started with --otlp-endpoint receiver.grpc_url (or receiver.http_url) ...
        spans = receiver.wait_for(lambda spans: ..., timeout=10)
"""

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

MAX_BODY = 16 << 20


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict
    links: list  # (trace_id, span_id)
    status: int
    resource: dict = field(default_factory=dict)
    transport: str = ""

    @property
    def is_server(self):
        return self.kind == trace_pb2.Span.SPAN_KIND_SERVER


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attrs(kvs):
    return {kv.key: _value(kv.value) for kv in kvs}


def flatten(request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> list[Span]:
    spans = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(Span(
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    name=s.name,
                    kind=s.kind,
                    attributes=_attrs(s.attributes),
                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    status=s.status.code,
                    resource=resource,
                    transport=transport,
                ))
    return spans


class Receiver:
    def __init__(self, grpc_port=0, http_port=0):
        self._lock = threading.Lock()
        self.spans: list[Span] = []
        self.exports = 0
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver._add(flatten(request, "grpc"))
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
        grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{grpc_port}")
        self.grpc_url = f"http://127.0.0.1:{grpc_port}"

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
                    self.send_response(404 if self.path != "/v1/traces" else 400)
                    self.end_headers()
                    return
                if self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(415)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(length))
                receiver._add(flatten(request, "http"))
                body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
        self.http_url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def _add(self, spans):
        with self._lock:
            self.spans.extend(spans)
            self.exports += 1

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, done, timeout=15.0) -> list[Span]:
        """The spans so far, once `done(spans)` holds (or the timeout passes: then as they are)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if done(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)

    def __enter__(self):
        self._grpc.start()
        self._http_thread.start()
        return self

    def __exit__(self, *exc):
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()


def main():
    """Run the receiver alone and print each span as it arrives (for docs/tracing.md's session):

        python tests/python/otlp_receiver.py [GRPC_PORT HTTP_PORT]
    """
    import sys

    ports = [int(p) for p in sys.argv[1:3]] or [4317, 4318]
    receiver = Receiver(*ports)
    with receiver:
        print(f"OTLP receiver: gRPC {receiver.grpc_url}, HTTP {receiver.http_url}/v1/traces",
              flush=True)
        shown = 0
        try:
            while True:
                spans = receiver.snapshot()
                for s in spans[shown:]:
                    attrs = " ".join(f"{k}={v}" for k, v in sorted(s.attributes.items())
                                     if not k.startswith("otel.") and k not in ("busy_ns", "idle_ns"))
                    links = f" links={len(s.links)}" if s.links else ""
                    print(f"{s.trace_id[:8]} {s.span_id[:8]} parent={s.parent_span_id[:8] or '-':<8} "
                          f"{s.name:<32} {attrs}{links}", flush=True)
                shown = len(spans)
                time.sleep(0.2)
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
