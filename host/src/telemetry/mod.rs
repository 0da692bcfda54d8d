//! What the host tells operators about itself as it runs, and the knobs
//! they turn while it does: the log subscriber ([`init_logs`], `RUST_LOG`,
//! `--log-format`), the log settings Triton's logging extension changes
//! ([`logging`]), and Triton's trace settings, which say which requests
//! are traced ([`settings`]); the spans a request makes ([`spans`]) and
//! their export over OpenTelemetry ([`otel`]).
//!
//! The log filter is a per-layer filter on the log lines' layer, behind a
//! reload handle: changing it (`POST /v2/logging`) affects the lines and
//! nothing else, so that a span exporter stacked beside it keeps its own
//! filter.

pub mod logging;
pub mod otel;
pub mod settings;
pub mod spans;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, reload};

/// How log lines are written: for a person at a terminal, or one JSON
/// object a line for a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub use logging::LogControl;
pub use settings::TraceSettings;

/// The log lines' layer, filtered by `RUST_LOG` (or `info`) behind a
/// reload handle, for any subscriber stack; and the [`LogControl`] that
/// changes its filter.
pub fn log_layer<S>(format: LogFormat) -> (Box<dyn Layer<S> + Send + Sync>, LogControl)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
{
    // Colours only for a person at a terminal, never in files or pipelines.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let base = LogControl::base_from_env();
    let (filter, handle) = reload::Layer::new(hide_spans(logging::filter_of(&base), format));
    let control = LogControl::new(base, move |filter| {
        handle
            .reload(hide_spans(filter, format))
            .map_err(|err| format!("cannot change the log filter: {err}"))
    });
    let layer = lines(format, colour, std::io::stderr).with_filter(filter);
    (Box::new(layer), control)
}

/// Log lines never show the spans inside a request, and show the request's
/// own span (its trace id on each line) only in JSON. Directives, not a
/// closure: an `EnvFilter` tells tracing which callsites can never log, so
/// with no exporter a span in the request path stays a cached branch (a
/// closure made every span and every library's `trace!` a call: 1.4x the
/// CPU per request, measured).
fn hide_spans(
    filter: tracing_subscriber::EnvFilter,
    format: LogFormat,
) -> tracing_subscriber::EnvFilter {
    let json = format == LogFormat::Json;
    let hidden = [Some(spans::INNER), (!json).then_some(spans::REQUEST)];
    hidden.into_iter().flatten().fold(filter, |filter, target| {
        filter.add_directive(format!("{target}=off").parse().expect("a valid directive"))
    })
}

/// The formatting layer: pretty for people, or one JSON object per line
/// with the event's fields at the top and the spans it happened in (the
/// innermost as `span`, all of them as `spans`), so a request span's
/// fields (its trace id) are on every line logged inside it.
fn lines<S, W>(format: LogFormat, colour: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => Box::new(fmt),
        LogFormat::Json => Box::new(
            fmt.json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true),
        ),
    }
}

/// Installs the log subscriber for the process and answers its
/// [`LogControl`].
pub fn init_logs(format: LogFormat) -> LogControl {
    let (layer, control) = log_layer(format);
    tracing_subscriber::registry().with(layer).init();
    control
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn a_json_line_inside_a_request_span_carries_its_trace_id_even_in_a_child_span() {
        let out = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(lines(LogFormat::Json, false, out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", trace_id = "4bf92f3577b34da6");
            let _request = request.enter();
            tracing::info!("in the request");
            let guest = tracing::info_span!("guest", instance = 3);
            let _guest = guest.enter();
            tracing::warn!(model = "digits", "in the guest call");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            let spans = line["spans"].as_array().expect("a span list");
            assert_eq!(spans[0]["trace_id"], "4bf92f3577b34da6", "{line}");
        }
        assert_eq!(lines[1]["model"], "digits", "flattened: {}", lines[1]);
        assert_eq!(lines[1]["span"]["instance"], 3, "{}", lines[1]);
    }

    #[test]
    fn the_reloaded_filter_changes_which_lines_are_written() {
        let out = Captured::default();
        let (filter, handle) = reload::Layer::new(logging::filter_of("info"));
        let layer = lines(LogFormat::Pretty, false, out.clone()).with_filter(filter);
        let subscriber = tracing_subscriber::registry().with(layer);
        let control = LogControl::new("info", move |f| handle.reload(f).map_err(|e| e.to_string()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "wasm_host::pool", "hidden debug");
            tracing::info!(target: "wasm_host::pool", "shown info one");
            control
                .apply(&logging::LogUpdate {
                    log_verbose_level: Some(1),
                    ..Default::default()
                })
                .unwrap();
            tracing::debug!(target: "wasm_host::pool", "shown debug");
            control
                .apply(&logging::LogUpdate {
                    log_info: Some(false),
                    log_verbose_level: Some(0),
                    ..Default::default()
                })
                .unwrap();
            tracing::info!(target: "wasm_host::pool", "hidden info");
            tracing::warn!(target: "wasm_host::pool", "shown warning");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        for shown in ["shown info one", "shown debug", "shown warning"] {
            assert!(text.contains(shown), "{shown}: {text}");
        }
        assert!(!text.contains("hidden"), "{text}");
    }
}
