//! The status page, for a person: `GET /` is one self-contained HTML page
//! (plain HTML and a little JS, no build step, nothing fetched from
//! elsewhere) that polls `GET /status` every second and shows each model's
//! version, state, instances busy and idle, request rate, p50 and p99, and
//! the recent replacements. Read-only and on the public plane: it shows
//! nothing `/health` and `/metrics` do not.
//!
//! Rates and percentiles are the page's own arithmetic on two successive
//! snapshots (counts and latency buckets since start), so the host keeps no
//! per-viewer state and any number of pages can watch it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::edge::app::App;
use crate::lifecycle::registry::State;

const PAGE: &str = include_str!("status_page.html");

/// `GET /`: the page itself.
pub fn page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page runs only its own inline script and talks only to this host.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:",
        ),
    );
    response
}

/// The most registered models that are not resident the page lists.
const MAX_NOT_RESIDENT_SHOWN: usize = 100;

/// `GET /status`: what the page shows, as of now.
pub fn snapshot(app: &App) -> Value {
    let served: std::collections::HashMap<String, _> = app
        .registry
        .served()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    // Under `--load on-demand` thousands may be registered: the page lists
    // the resident ones and the first few others, and counts them all.
    let mut others = 0;
    let models: Vec<Value> = app
        .registry
        .index()
        .into_iter()
        .filter(|entry| {
            let shown = entry.resident || others < MAX_NOT_RESIDENT_SHOWN;
            others += usize::from(!entry.resident);
            shown
        })
        .map(|entry| {
            let serving = served.get(&entry.name);
            let mut model = json!({
                "name": entry.name,
                "version": entry.version,
                "state": entry.state,
                "reason": entry.reason,
                "resident": entry.resident,
            });
            if let Some(served) = serving.filter(|_| entry.state == State::Ready) {
                let status = served.pool.status();
                let stats = &served.metrics.stats;
                let count = |t: &crate::core::metrics::Timed| {
                    t.count.load(std::sync::atomic::Ordering::Relaxed)
                };
                model["instances"] = json!({
                    "total": status.total,
                    "busy": status.busy,
                    "idle": status.idle,
                    "target": status.target,
                    "missing": status.missing,
                    "replaced": status.replaced,
                });
                model["queue"] = json!({
                    "depth": status.queued,
                    "max": served.settings.pool.max_queue,
                });
                model["requests"] = json!({
                    "success": count(&stats.success),
                    "failed": count(&stats.fail),
                });
                model["busy_seconds"] = served.metrics.busy_seconds().into();
                model["latency"] = stats.latency.json();
                model["loaded_s_ago"] = served.loaded_at.elapsed().as_secs().into();
            }
            model
        })
        .collect();
    let traffic = app.traffic();
    json!({
        "server": {
            "name": "wasm-host",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": app.uptime().as_secs_f64(),
            "ready": app.ready(),
            "draining": traffic.draining,
            "in_flight": traffic.in_flight,
            "requests": traffic.requests,
        },
        "models": models,
        "residency": app.registry.residency(),
        "events": app.registry.metrics().events(),
    })
}
