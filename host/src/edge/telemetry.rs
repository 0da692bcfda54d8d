//! Triton's trace and logging extensions at the edge, so that tritonclient's
//! `get/update_trace_settings` and `get/update_log_settings` work unchanged:
//!
//! - `GET/POST /v2/trace/setting`, `GET/POST /v2/models/{m}/trace/setting`:
//!   the trace settings, global or a model's ([`crate::telemetry::settings`]);
//! - `GET/POST /v2/logging`: the log settings ([`crate::telemetry::logging`]).
//!
//! A POST changes the keys its body names and answers every setting; a GET
//! (or, over gRPC, a call with no settings) only answers them. Both sit
//! with the repository API: on the `--admin-bind` address when there is
//! one, and behind `--admin-token`, reads included. Triton gates neither
//! unless told to (`--http-restricted-api`, which then gates the reads
//! too); here they are an operator's knobs like loads and drains: who may
//! read them may learn when a host traces, and what it logs.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::core::error::Error;
use crate::edge::app::App;
use crate::edge::control;
use crate::edge::http::body;
use crate::edge::http::error::ApiError;
use crate::edge::http::json;
use crate::lifecycle::registry::Lookup;
use crate::telemetry::logging::{LogSettings, LogUpdate};
use crate::telemetry::settings::update::{TraceUpdate, Values};

/// Applies `update`, if any, to the trace settings of `model` (or the
/// global ones), and answers those in force there.
pub fn trace(app: &App, model: Option<&str>, update: Option<TraceUpdate>) -> Result<Values, Error> {
    if let Some(name) = model {
        known(app, name)?;
    }
    let settings = &app.telemetry.trace;
    match update {
        None => Ok(settings.values(model)),
        Some(update) => settings.apply(model, &update).map_err(Error::bad_input),
    }
}

/// Applies `update`, if any, to the log settings, and answers them.
pub fn logging(app: &App, update: Option<LogUpdate>) -> Result<LogSettings, Error> {
    let logs = &app.telemetry.logs;
    match update {
        None => Ok(logs.settings()),
        Some(update) => logs.apply(&update).map_err(Error::bad_input),
    }
}

/// A model the registry knows, loaded or not (`--load on-demand`): 404
/// otherwise, as every model route answers.
fn known(app: &App, name: &str) -> Result<(), Error> {
    match app.registry.get_quietly(name, None) {
        Ok(_) | Err(Lookup::NotResident { .. } | Lookup::Unavailable { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// `GET/POST /v2[/models/{m}]/trace/setting`.
pub async fn http_trace(
    app: &App,
    model: Option<&str>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let update = match admitted(app, request).await? {
        None => None,
        Some(body) => Some(TraceUpdate::from_json(&body).map_err(ApiError::bad_request)?),
    };
    let values = trace(app, model, update)?;
    Ok(json(StatusCode::OK, values.to_json().to_string().into()))
}

/// `GET/POST /v2/logging`.
pub async fn http_logging(
    app: &App,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let update = match admitted(app, request).await? {
        None => None,
        Some(body) => Some(LogUpdate::from_json(&body).map_err(ApiError::bad_request)?),
    };
    let settings = logging(app, update)?;
    Ok(json(StatusCode::OK, settings.to_json().to_string().into()))
}

/// The request's body once its token is right: `None` for a GET, the JSON
/// object for a POST (an empty body is `{}`).
async fn admitted(app: &App, request: Request<Incoming>) -> Result<Option<Value>, ApiError> {
    control::authorize(app, control::bearer(request.headers()))?;
    if request.method() != Method::POST {
        return Ok(None);
    }
    let (bytes, _held) =
        body::read(request, &app.settings_bodies, std::time::Instant::now()).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Value::Object(Default::default())));
    }
    Ok(Some(crate::core::protocol::parse_json(
        &bytes,
        "settings request",
    )?))
}
