//! The spans a request makes on its way to the guest and back, named and
//! attributed in one place so the layers that open them stay one line each.
//!
//! ```text
//! request (server: http.* or rpc.*, model.name, model.version, wasm_host.instance)
//! ├── queue                waiting for a free instance, or for a batch to take it
//! ├── guest call           (alone) wasm_host.instance, wasm_host.outcome
//! └── link → batch         (batched) a trace of its own, linked both ways with
//!                          each request it carries, parent of its guest call
//! model load, instance boot: under the request that caused them, if any
//! ```
//!
//! The request span joins the caller's W3C `traceparent`/`tracestate`.
//! Spans use two targets: [`REQUEST`] (the request span, which JSON logs also
//! show, so each line a request logs carries its `trace_id`) and [`INNER`]
//! (the rest, for the exporter only). With no exporter and no layer
//! interested, each span here is a disabled callsite: no allocation, no lock.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::{Empty, display};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::otel;

/// The target of every request span.
pub const REQUEST: &str = "wasm_host::request";
/// The target of the spans inside a request: queue, batch, guest call,
/// load, boot.
pub const INNER: &str = "wasm_host::span";

/// The gRPC service every inference RPC belongs to.
const GRPC_SERVICE: &str = "inference.GRPCInferenceService";

/// Whether request spans are wanted: set at start when traces are exported
/// or logs are JSON. When not, the edge skips even looking for them.
static ON: AtomicBool = AtomicBool::new(false);

/// Whether logs want every request's span, sampled or not (JSON logs
/// show its trace id on each line).
static LOGGED: AtomicBool = AtomicBool::new(false);

/// Turns request spans on (once, at start): `logged` when JSON logs show
/// them.
pub fn turn_on(logged: bool) {
    ON.store(true, Ordering::Relaxed);
    LOGGED.store(logged, Ordering::Relaxed);
}

/// Whether the edge opens request spans.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The span of an HTTP inference request, joined to the caller's trace.
/// `route` is the path template (`/v2/models/{model}/infer`).
pub fn http_request(
    headers: &hyper::HeaderMap,
    method: &hyper::Method,
    route: &'static str,
    path: &str,
    model: &str,
) -> Span {
    let span = tracing::info_span!(
        target: REQUEST,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = path,
        http.response.status_code = Empty,
        model.name = model,
        model.version = Empty,
        wasm_host.instance = Empty,
        trace_id = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    join(span, &opentelemetry_http::HeaderExtractor(headers))
}

/// The span of a gRPC inference call (`ModelInfer`), joined to the caller's
/// trace carried in its metadata.
pub fn grpc_request(
    metadata: &tonic::metadata::MetadataMap,
    method: &'static str,
    model: &str,
) -> Span {
    let span = tracing::info_span!(
        target: REQUEST,
        "request",
        otel.name = %format_args!("{GRPC_SERVICE}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = GRPC_SERVICE,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        model.name = model,
        model.version = Empty,
        wasm_host.instance = Empty,
        trace_id = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    join(span, &Metadata(metadata))
}

/// Joins `span` to the trace the caller sent, and records the trace id
/// (for JSON logs). A request the sampler leaves out is not traced at all
/// (unless logs are JSON and want its trace id): its inner spans then cost
/// nothing either, which is what makes 1 % sampling cheap.
fn join(span: Span, carrier: &dyn Extractor) -> Span {
    let parent = TraceContextPropagator::new().extract(carrier);
    let trace_id = if otel::on() {
        // Only fails if the span has started, and it has not.
        let _ = span.set_parent(parent);
        let context = span.context();
        let own = context.span();
        if !own.span_context().is_sampled() && !LOGGED.load(Ordering::Relaxed) {
            return Span::none();
        }
        own.span_context().trace_id()
    } else {
        parent.span().span_context().trace_id()
    };
    if trace_id != TraceId::INVALID {
        span.record("trace_id", display(trace_id));
    }
    span
}

/// Whether the caller is inside a traced request: spans inside a request
/// are made only then.
fn traced() -> bool {
    otel::on() && !Span::current().is_disabled()
}

/// Records, on the request span the caller is in, the model version that
/// answered and the instance that made the answer.
pub fn answered(model: &str, version: &str, instance: u64) {
    if !on() {
        return;
    }
    let span = Span::current();
    span.record("model.name", model);
    span.record("model.version", version);
    span.record("wasm_host.instance", instance as i64);
}

/// Records an HTTP response's status; a 5xx marks the span an error (a
/// server span's 4xx is the client's, per the semantic conventions).
pub fn http_status(span: &Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records a gRPC call's status code; the codes the semantic conventions
/// count as a server's errors mark the span an error.
pub fn grpc_status(span: &Span, code: tonic::Code) {
    use tonic::Code::*;
    span.record("rpc.grpc.status_code", code as i64);
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Waiting for a free instance (or for a batch to take the request).
pub fn queue() -> Span {
    if !traced() {
        return Span::none();
    }
    tracing::info_span!(target: INNER, "queue")
}

/// One call into the guest, on `instance`.
pub fn guest_call(model: &str, version: &str, instance: u64) -> Span {
    if !traced() {
        return Span::none();
    }
    tracing::info_span!(
        target: INNER,
        "guest call",
        model.name = model,
        model.version = version,
        wasm_host.instance = instance as i64,
        wasm_host.outcome = Empty,
        otel.status_code = Empty,
    )
}

/// Records how a guest call ended: `ok`, or the fault's kind.
pub fn outcome(span: &Span, outcome: &'static str) {
    span.record("wasm_host.outcome", outcome);
    if outcome != "ok" {
        span.record("otel.status_code", "ERROR");
    }
}

/// A batch: the root of a trace of its own, since it belongs to several
/// requests' traces at once; [`link`] ties it to each of them. Made only
/// if one of `requests` is traced.
pub fn batch<'a>(
    model: &str,
    version: &str,
    mut requests: impl ExactSizeIterator<Item = &'a Span>,
    rows: usize,
) -> Span {
    let count = requests.len();
    if !otel::on() || requests.all(Span::is_disabled) {
        return Span::none();
    }
    tracing::info_span!(
        target: INNER,
        parent: None,
        "batch",
        model.name = model,
        model.version = version,
        wasm_host.batch.requests = count as i64,
        wasm_host.batch.rows = rows as i64,
    )
}

/// The span a request is in, to hand to a batch that runs in another task;
/// a disabled span when nothing is exported.
pub fn current() -> Span {
    if otel::on() {
        Span::current()
    } else {
        Span::none()
    }
}

/// Links a batch and a request it carries, both ways: the batch lists its
/// requests, and each request points at the batch it rode in.
pub fn link(batch: &Span, request: &Span) {
    if batch.is_disabled() || request.is_disabled() {
        return;
    }
    let request_cx = request.context().span().span_context().clone();
    let batch_cx = batch.context().span().span_context().clone();
    batch.add_link(request_cx);
    request.add_link(batch_cx);
}

/// Loading a model version: reading, compiling, booting its instances.
pub fn model_load(model: &str, version: &str, cause: &'static str) -> Span {
    tracing::info_span!(
        target: INNER,
        "model load",
        model.name = model,
        model.version = version,
        wasm_host.cause = cause,
    )
}

/// Booting one instance of a model.
pub fn instance_boot(model: &str, instance: u64) -> Span {
    tracing::info_span!(
        target: INNER,
        "instance boot",
        model.name = model,
        wasm_host.instance = instance as i64,
    )
}

/// gRPC metadata as a carrier of `traceparent` and `tracestate`.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
