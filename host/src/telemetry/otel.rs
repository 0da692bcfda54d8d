//! OpenTelemetry export: the spans of [`crate::telemetry::spans`], sent to
//! an OTLP collector over gRPC or HTTP/protobuf.
//!
//! Off unless an endpoint is configured (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
//! when off, no layer is installed and every span in the request path is a
//! disabled callsite, a branch on a cached flag. The rest of the standard
//! environment is the SDK's: `OTEL_TRACES_SAMPLER`/`_ARG` (default
//! `parentbased_always_on`), `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`.
//!
//! Exporting never blocks or fails a request. An ended span goes into a
//! bounded queue with `try_send` (a full queue drops it); one task on the
//! runtime takes spans off in batches and exports them under a timeout. A
//! collector that is down or slow loses spans, counted in
//! `wasm_host_trace_spans_dropped_total`, and is logged once per outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

/// Spans waiting to be exported: past this, new ones are dropped. At 10
/// spans a request this is the last ~800 requests, a few MB.
const QUEUE: usize = 8192;
/// Most spans per export call (the collector's default limit is 4 MiB a message).
const BATCH: usize = 512;
/// How long a batch may wait for more spans before it goes.
const LINGER: Duration = Duration::from_millis(200);
/// How long one export may take before its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP over gRPC (a collector's port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, POST /v1/traces).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Where spans go: the endpoint and protocol, resolved from the flags and
/// the standard environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// For gRPC the collector's address; for HTTP the full URL of its
    /// traces endpoint.
    pub url: String,
    pub protocol: Protocol,
}

impl Export {
    /// The export the flags and environment ask for, or `None` (tracing
    /// off). `env` reads a variable (the process's environment, or a test's).
    /// The flag wins over `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as
    /// is), which wins over `OTEL_EXPORTER_OTLP_ENDPOINT` (a base, to which
    /// HTTP adds `/v1/traces`), as the OpenTelemetry specification says.
    pub fn resolve(
        flag_endpoint: Option<&str>,
        flag_protocol: Option<Protocol>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Export>, String> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        let protocol = match flag_protocol {
            Some(protocol) => protocol,
            None => match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
                .as_deref()
                .map(str::trim)
            {
                None | Some("http/protobuf") => Protocol::HttpProtobuf,
                Some("grpc") => Protocol::Grpc,
                Some(other) => {
                    return Err(format!(
                        "OTLP protocol {other:?} is not supported: use grpc or http/protobuf \
                         (OTEL_EXPORTER_OTLP_PROTOCOL, --otlp-protocol)"
                    ));
                }
            },
        };
        let (endpoint, is_base) = match (flag_endpoint, set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(flag), _) => (flag.trim().to_owned(), true),
            (None, Some(traces)) => (traces.trim().to_owned(), false),
            (None, None) => match set("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => (base.trim().to_owned(), true),
                None => return Ok(None),
            },
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "OTLP endpoint {endpoint:?} is not an http:// or https:// URL \
                 (e.g. http://127.0.0.1:4317 for gRPC, http://127.0.0.1:4318 for HTTP)"
            ));
        }
        if endpoint.starts_with("https://") {
            return Err(format!(
                "OTLP endpoint {endpoint:?}: this build exports over plain http:// only; run a \
                 collector beside the host (a sidecar) and point it there"
            ));
        }
        let url = match protocol {
            Protocol::HttpProtobuf if is_base => {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            }
            _ => endpoint,
        };
        Ok(Some(Export { url, protocol }))
    }
}

/// Export's own counters, registered in the host's metrics.
pub struct Counters {
    /// Spans handed to the collector.
    pub exported: Counter,
    /// Spans lost: the queue was full, or the collector failed or timed out.
    pub dropped: Counter,
}

/// The export counters: one set per process (the layer is global too).
pub fn counters() -> &'static Counters {
    static COUNTERS: LazyLock<Counters> = LazyLock::new(|| Counters {
        exported: Counter::default(),
        dropped: Counter::default(),
    });
    &COUNTERS
}

/// Whether spans are exported: set once, at start.
static ON: AtomicBool = AtomicBool::new(false);

/// Whether an exporter is installed; the edge makes no request span
/// (and reads no `traceparent`) when it is not.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

enum Message {
    Span(Box<SpanData>),
    /// Export what is queued, then answer.
    Flush(oneshot::Sender<()>),
}

/// The tracer provider's only processor: ends spans into the queue.
#[derive(Debug)]
struct Queue {
    sender: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.sender.try_send(Message::Span(Box::new(span))).is_err() {
            counters().dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// What [`install`] gives the log setup: the layer to add and the handle
/// that flushes at exit.
pub struct Installed {
    pub provider: SdkTracerProvider,
    flush: mpsc::Sender<Message>,
}

impl Installed {
    /// Exports what is queued, waiting at most `limit` (at exit).
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        if self.flush.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }

    /// The tracer the `tracing-opentelemetry` layer records into.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer("wasm-host")
    }
}

/// Builds the exporter and the provider, starts the export task on the
/// current Tokio runtime, and marks tracing on.
pub fn install(export: &Export) -> Result<Installed, String> {
    let resource = Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let exporter = match export.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&export.url)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(
                opentelemetry_http::hyper::HyperClient::with_default_connector(
                    EXPORT_TIMEOUT,
                    None,
                ),
            )
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&export.url)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(|err| format!("cannot set up OTLP export to {}: {err}", export.url))?;
    let mut exporter = exporter;
    exporter.set_resource(&resource);
    let (sender, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(export_loop(exporter, receiver, export.url.clone()));
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(Queue {
            sender: sender.clone(),
        })
        .build();
    ON.store(true, Ordering::Relaxed);
    Ok(Installed {
        provider,
        flush: sender,
    })
}

/// Takes spans off the queue in batches and exports them, one call at a
/// time (the exporter's contract), each under [`EXPORT_TIMEOUT`].
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut receiver: mpsc::Receiver<Message>,
    url: String,
) {
    let exporter = Arc::new(exporter);
    let mut down = false;
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    while let Some(first) = receiver.recv().await {
        let mut flushed = None;
        match first {
            Message::Span(span) => batch.push(*span),
            Message::Flush(done) => flushed = Some(done),
        }
        // Gather more, until the batch is full, a flush asks, or LINGER passes.
        let until = tokio::time::Instant::now() + LINGER;
        while flushed.is_none() && batch.len() < BATCH {
            match tokio::time::timeout_at(until, receiver.recv()).await {
                Ok(Some(Message::Span(span))) => batch.push(*span),
                Ok(Some(Message::Flush(done))) => flushed = Some(done),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let count = spans.len() as u64;
            let result = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await;
            match result {
                Ok(Ok(())) => {
                    counters().exported.inc_by(count);
                    if down {
                        down = false;
                        tracing::info!("trace export to {url} works again");
                    }
                }
                failed => {
                    counters().dropped.inc_by(count);
                    if !down {
                        down = true;
                        let why = match failed {
                            Ok(Err(err)) => err.to_string(),
                            _ => format!("no answer within {EXPORT_TIMEOUT:?}"),
                        };
                        tracing::warn!(
                            "trace export to {url} failed ({why}); spans are dropped and \
                             counted in wasm_host_trace_spans_dropped_total until it works \
                             again (requests are not affected)"
                        );
                    }
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn tracing_is_off_without_an_endpoint() {
        assert_eq!(Export::resolve(None, None, env(&[])), Ok(None));
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(Export::resolve(None, None, env(&disabled)), Ok(None));
    }

    #[test]
    fn a_base_endpoint_gets_the_traces_path_over_http_only() {
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")];
        let http = Export::resolve(None, None, env(&base)).unwrap().unwrap();
        assert_eq!(http.url, "http://c:4318/v1/traces");
        assert_eq!(http.protocol, Protocol::HttpProtobuf);
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let grpc = Export::resolve(None, None, env(&grpc)).unwrap().unwrap();
        assert_eq!(grpc.url, "http://c:4317");
        assert_eq!(grpc.protocol, Protocol::Grpc);
    }

    #[test]
    fn the_flag_wins_and_a_traces_endpoint_is_used_as_is() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom"),
        ];
        let traces = Export::resolve(None, None, env(&vars)).unwrap().unwrap();
        assert_eq!(traces.url, "http://t:4318/custom");
        let flag = Export::resolve(Some("http://f:4317"), Some(Protocol::Grpc), env(&vars));
        assert_eq!(flag.unwrap().unwrap().url, "http://f:4317");
    }

    #[test]
    fn bad_endpoints_and_protocols_are_refused_with_what_to_use() {
        let err = Export::resolve(Some("c:4317"), None, env(&[])).unwrap_err();
        assert!(err.contains("http://"), "{err}");
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ];
        let err = Export::resolve(None, None, env(&vars)).unwrap_err();
        assert!(err.contains("grpc or http/protobuf"), "{err}");
    }
}
