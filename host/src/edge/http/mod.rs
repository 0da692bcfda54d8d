//! What each HTTP request does. An inference's path is `handle` → `infer`:
//! resolve its model (registry), read and decode the body (protocol), run it
//! through the core gRPC shares ([`crate::core::infer`]: pool, guest, checks),
//! encode the outputs. Every outcome becomes a response here, errors as
//! `{"error": "..."}` with the status [`crate::edge::http::error`] gives them.

pub mod body;
pub mod error;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::core::infer::{self, Answer, Deadline};
use crate::core::protocol;
use crate::edge::access::{self, X_INSTANCE_ID};
use crate::edge::app::{App, Plane};
use crate::edge::control;
use crate::edge::http::error::ApiError;
use crate::edge::telemetry;
use crate::edge::triton;
use crate::lifecycle::registry::Lookup;
use crate::lifecycle::served::ServedModel;
use crate::telemetry::spans;
use body::Coding;

/// The routes, by path. A known path with the wrong method is a 405, an
/// unknown path a 404. Model routes carry the model's name and, when the
/// path names one, its version.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    StatusPage,
    Status,
    Health,
    Predict,
    Server,
    Live,
    Ready,
    Metrics,
    ModelMetadata(Cow<'a, str>, Option<&'a str>),
    ModelReady(Cow<'a, str>, Option<&'a str>),
    ModelConfig(Cow<'a, str>, Option<&'a str>),
    ModelStats(Option<Cow<'a, str>>, Option<&'a str>),
    Infer(Cow<'a, str>, Option<&'a str>),
    RepositoryIndex,
    RepositoryLoad(Cow<'a, str>),
    RepositoryUnload(Cow<'a, str>),
    Drain,
    Undrain,
    /// Triton's trace settings: the global ones, or a model's.
    TraceSetting(Option<Cow<'a, str>>),
    /// Triton's log settings.
    Logging,
}

impl Route<'_> {
    /// `None` for an unknown path. Model names are percent-decoded, so
    /// `/v2/models/a%20b/infer` reaches a model named `a b`.
    fn parse(path: &str) -> Option<Route<'_>> {
        // Into an array, not a `Vec`: every request is routed, and no route
        // has more than six segments. Split at each `/` byte by hand:
        // `str::split('/')` runs a memchr per segment, 440 instructions a
        // request for paths this short.
        let mut all = [""; 6];
        let mut count = 0;
        let path = path.trim_matches('/');
        let mut start = 0;
        for end in (0..path.len()).filter(|&i| path.as_bytes()[i] == b'/') {
            *all.get_mut(count)? = &path[start..end];
            count += 1;
            start = end + 1;
        }
        *all.get_mut(count)? = &path[start..];
        count += 1;
        let mut versioned = [""; 4];
        let (segments, version) = match &all[..count] {
            ["v2", "models", m, "versions", v, rest @ ..] if rest.len() <= 1 => {
                versioned[..3].copy_from_slice(&["v2", "models", m]);
                versioned[3..3 + rest.len()].copy_from_slice(rest);
                (&versioned[..3 + rest.len()], Some(*v))
            }
            segments => (segments, None),
        };
        Some(match segments {
            [""] => Route::StatusPage,
            ["status"] => Route::Status,
            ["health"] => Route::Health,
            ["metrics"] => Route::Metrics,
            ["predict"] => Route::Predict,
            ["v2"] => Route::Server,
            ["v2", "health", "live"] => Route::Live,
            ["v2", "health", "ready"] => Route::Ready,
            ["v2", "trace", "setting"] => Route::TraceSetting(None),
            ["v2", "logging"] => Route::Logging,
            ["v2", "models", m, "trace", "setting"] => {
                Route::TraceSetting(Some(percent_decode(m)?))
            }
            ["v2", "models", "stats"] => Route::ModelStats(None, None),
            ["v2", "models", m] => Route::ModelMetadata(percent_decode(m)?, version),
            ["v2", "models", m, "ready"] => Route::ModelReady(percent_decode(m)?, version),
            ["v2", "models", m, "config"] => Route::ModelConfig(percent_decode(m)?, version),
            ["v2", "models", m, "stats"] => Route::ModelStats(Some(percent_decode(m)?), version),
            ["v2", "models", m, "infer"] => Route::Infer(percent_decode(m)?, version),
            ["v2", "repository", "index"] => Route::RepositoryIndex,
            ["v2", "repository", "drain"] => Route::Drain,
            ["v2", "repository", "undrain"] => Route::Undrain,
            ["v2", "repository", "models", m, "load"] => Route::RepositoryLoad(percent_decode(m)?),
            ["v2", "repository", "models", m, "unload"] => {
                Route::RepositoryUnload(percent_decode(m)?)
            }
            _ => return None,
        })
    }

    fn method(&self) -> Method {
        match self {
            Route::Predict
            | Route::Infer(..)
            | Route::RepositoryIndex
            | Route::RepositoryLoad(_)
            | Route::RepositoryUnload(_)
            | Route::Drain
            | Route::Undrain => Method::POST,
            _ => Method::GET,
        }
    }

    /// Whether the route reads with GET and changes with POST (Triton's
    /// settings extensions); [`Route::method`] is then GET.
    fn also_post(&self) -> bool {
        matches!(self, Route::TraceSetting(_) | Route::Logging)
    }

    /// The methods for `Allow`.
    fn allow(&self) -> &'static str {
        if self.also_post() {
            "GET, POST"
        } else if self.method() == Method::POST {
            "POST"
        } else {
            "GET"
        }
    }

    fn is_admin(&self) -> bool {
        matches!(
            self,
            Route::RepositoryIndex
                | Route::RepositoryLoad(_)
                | Route::RepositoryUnload(_)
                | Route::Drain
                | Route::Undrain
                | Route::TraceSetting(_)
                | Route::Logging
        )
    }
}

/// A path segment with its `%XX` escapes decoded; `None` if an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<Cow<'_, str>> {
    if !segment.bytes().any(|b| b == b'%') {
        return Some(Cow::Borrowed(segment));
    }
    let mut bytes = Vec::with_capacity(segment.len());
    let mut rest = segment.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

pub use crate::edge::app::Refused;

pub(crate) async fn handle(
    app: &App,
    plane: Plane,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refused> {
    if app.refusing()
        && plane.serves_public()
        && matches!(
            Route::parse(request.uri().path()),
            Some(Route::Infer(..) | Route::Predict)
        )
    {
        app.refused_one();
        return Err(Refused);
    }
    if spans::on() {
        return Ok(traced(app, plane, request).await);
    }
    Ok(handle_logged(app, plane, request).await)
}

/// [`handle`] when spans are on (an OTLP exporter, or JSON logs): an
/// inference runs inside a request span joined to the caller's
/// `traceparent`, which records the response's status.
async fn traced(app: &App, plane: Plane, request: Request<Incoming>) -> Response<Full<Bytes>> {
    use tracing::Instrument;
    let path = request.uri().path();
    let span = match Route::parse(path) {
        Some(Route::Infer(model, version)) if app.traces(&model) => {
            let route = match version {
                None => "/v2/models/{model}/infer",
                Some(_) => "/v2/models/{model}/versions/{version}/infer",
            };
            spans::http_request(request.headers(), request.method(), route, path, &model)
        }
        Some(Route::Predict) if app.traces("") => {
            spans::http_request(request.headers(), request.method(), "/predict", path, "")
        }
        _ => tracing::Span::none(),
    };
    if span.is_disabled() {
        return Box::pin(handle_logged(app, plane, request)).await;
    }
    let response = Box::pin(handle_logged(app, plane, request))
        .instrument(span.clone())
        .await;
    spans::http_status(&span, response.status().as_u16());
    response
}

/// [`respond`], with the access log line if it is on.
async fn handle_logged(
    app: &App,
    plane: Plane,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !app.config.access_log {
        return respond(app, plane, request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = respond(app, plane, request).await;
    access::log(access::Line {
        method: &method,
        path: &path,
        status: response.status().as_u16(),
        grpc_status: None,
        headers: response.headers(),
        started,
    });
    response
}

async fn respond(app: &App, plane: Plane, request: Request<Incoming>) -> Response<Full<Bytes>> {
    // A clone of the URI shares its bytes (a reference count), where the
    // path as a `String` would be an allocation and a copy per request.
    let uri = request.uri().clone();
    let path = uri.path();
    let route = Route::parse(path).filter(|route| {
        if route.is_admin() {
            plane.serves_admin()
        } else {
            plane.serves_public()
        }
    });
    let result = match route {
        None => Err(ApiError::not_found(format!(
            "no route {path}; see GET /v2 for the server, POST /v2/models/{{name}}/infer and \
             /predict for inference"
        ))),
        Some(route)
            if *request.method() != route.method()
                && !head_of_get(&request, &route)
                && !(route.also_post() && *request.method() == Method::POST) =>
        {
            let mut err = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {}, not {}", route.allow(), request.method()),
            );
            err.allow = Some(route.allow());
            Err(err)
        }
        Some(route) => route_request(app, route, request).await,
    };
    result.unwrap_or_else(|err| error_response(&err))
}

fn head_of_get(request: &Request<Incoming>, route: &Route) -> bool {
    request.method() == Method::HEAD && route.method() == Method::GET
}

async fn route_request(
    app: &App,
    route: Route<'_>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let model = |name: &str, version: Option<&str>| app.registry.get(name, version);
    match route {
        Route::StatusPage => Ok(crate::edge::status::page()),
        Route::Status => Ok(json(
            StatusCode::OK,
            crate::edge::status::snapshot(app).to_string().into(),
        )),
        Route::Health => Ok(json(StatusCode::OK, health(app).to_string().into())),
        Route::Metrics => {
            for served in app.registry.served() {
                let status = served.pool.status();
                served
                    .metrics
                    .set_instances(status.total, status.busy, status.missing);
            }
            let mut response =
                Response::new(Full::new(Bytes::from(app.registry.metrics().render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        Route::Live => Ok(empty(StatusCode::OK)),
        Route::Ready => Ok(ready_response(app.ready())),
        Route::Server => {
            let body = serde_json::json!({
                "name": "wasm-host",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": triton::EXTENSIONS,
            });
            Ok(json(StatusCode::OK, body.to_string().into()))
        }
        // Metadata, readiness and config answer for a registered model
        // (`--load on-demand`) without loading it.
        Route::ModelMetadata(name, version) => {
            let described = Box::pin(app.registry.describe(&name, version)).await?;
            let mut body = protocol::model_metadata(&described.metadata);
            body["name"] = described.name.clone().into();
            body["versions"] = serde_json::json!([described.version]);
            Ok(json(StatusCode::OK, body.to_string().into()))
        }
        Route::ModelReady(name, version) => match app.registry.get_quietly(&name, version) {
            Ok(served) => Ok(ready_response(served.pool.ready())),
            Err(Lookup::NotResident { .. }) => Ok(ready_response(true)),
            Err(err) => Err(err.into()),
        },
        Route::ModelConfig(name, version) => {
            let described = Box::pin(app.registry.describe(&name, version)).await?;
            Ok(json(
                StatusCode::OK,
                triton::config(&described).to_string().into(),
            ))
        }
        Route::ModelStats(name, version) => {
            let models = match name {
                Some(name) => vec![model(&name, version)?],
                None => app.registry.served(),
            };
            Ok(json(
                StatusCode::OK,
                triton::stats(&models).to_string().into(),
            ))
        }
        Route::Infer(name, version) => {
            let _counted = app.inference_begins();
            // A registered model that is not resident loads here (boxed:
            // only a cold request pays for the load's future).
            let (served, cold) = match model(&name, version) {
                Err(Lookup::NotResident { .. }) => {
                    (Box::pin(app.registry.resolve(&name, version)).await?, true)
                }
                found => (found?, false),
            };
            let arrived = Instant::now();
            let inference = infer(app, &served, request, Form::OpenInference, arrived);
            let mut response = infer::measured(&served, arrived, inference).await;
            // A request that waited for its model's load says so: what a
            // client (or the bench) needs to tell cold latency from warm.
            if cold && let Ok(response) = &mut response {
                response
                    .headers_mut()
                    .insert(X_MODEL_LOAD, HeaderValue::from_static("demand"));
            }
            response
        }
        Route::Predict => {
            let _counted = app.inference_begins();
            let served = app.registry.only().map_err(|served| {
                ApiError::not_found(format!(
                    "/predict serves a host with one model, and this one serves {}: use \
                     POST /v2/models/{{name}}/infer",
                    served.join(", ")
                ))
            })?;
            let arrived = Instant::now();
            let inference = infer(app, &served, request, Form::Simple, arrived);
            infer::measured(&served, arrived, inference).await
        }
        // The control plane's futures are boxed: a loading model's is 5 KB,
        // and an `async fn` is as large as its largest arm, which every
        // inference request would otherwise move around.
        Route::RepositoryIndex => Box::pin(control::http_index(app, request)).await,
        Route::RepositoryLoad(name) => Box::pin(control::http_load(app, &name, request)).await,
        Route::RepositoryUnload(name) => Box::pin(control::http_unload(app, &name, request)).await,
        Route::Drain => Box::pin(control::drain(app, request, true)).await,
        Route::Undrain => Box::pin(control::drain(app, request, false)).await,
        Route::TraceSetting(name) => {
            Box::pin(telemetry::http_trace(app, name.as_deref(), request)).await
        }
        Route::Logging => Box::pin(telemetry::http_logging(app, request)).await,
    }
}

/// `/health`: the host's totals and, per model, its pool and queue.
fn health(app: &App) -> serde_json::Value {
    let served = app.registry.served();
    let statuses: Vec<_> = served.iter().map(|s| (s, s.pool.status())).collect();
    let sum =
        |f: fn(&crate::pool::Status) -> usize| statuses.iter().map(|(_, s)| f(s)).sum::<usize>();
    let missing = sum(|s| s.missing);
    let traffic = app.traffic();
    let state = if traffic.draining {
        "draining"
    } else if !app.ready() {
        "unavailable"
    } else if missing > 0 {
        "degraded"
    } else {
        "ok"
    };
    let models: serde_json::Map<String, serde_json::Value> = statuses
        .iter()
        .map(|(served, status)| {
            let entry = serde_json::json!({
                "version": served.version,
                "ready": served.pool.ready(),
                "instances": {
                    "total": status.total,
                    "busy": status.busy,
                    "idle": status.idle,
                    "target": status.target,
                    "booting": status.booting,
                    "min": served.settings.pool.min_instances,
                    "max": served.settings.pool.max_instances,
                    "replaced": status.replaced,
                    "missing": status.missing,
                },
                "calls": status.calls,
                "queue": { "depth": status.queued, "max": served.settings.pool.max_queue },
            });
            (served.name.clone(), entry)
        })
        .collect();
    let only = (served.len() == 1).then(|| served[0].name.clone());
    serde_json::json!({
        "status": state,
        "model": only,
        "instances": {
            "total": sum(|s| s.total),
            "busy": sum(|s| s.busy),
            "idle": sum(|s| s.idle),
            "target": sum(|s| s.target),
            "replaced": statuses.iter().map(|(_, s)| s.replaced).sum::<u64>(),
            "missing": missing,
        },
        "calls": statuses.iter().map(|(_, s)| s.calls).sum::<u64>(),
        "queue": {
            "depth": sum(|s| s.queued),
            "max": served.iter().map(|s| s.settings.pool.max_queue).sum::<usize>(),
        },
        "bodies": {
            "held_bytes": app.body.budget_in_use(),
            "budget_bytes": app.config.body_budget,
        },
        "traffic": traffic,
        "models": models,
    })
}

#[derive(Clone, Copy)]
enum Form {
    /// `/v2/models/{m}/infer`
    OpenInference,
    /// `/predict`
    Simple,
}

async fn infer(
    app: &App,
    served: &Arc<ServedModel>,
    request: Request<Incoming>,
    form: Form,
    arrived: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let json_len = binary_header_length(&request)?;
    check_content_type(&request, json_len.is_some())?;
    let compression = Coding::accepted(request.headers());
    // `_held` is this body's share of --body-budget, kept until the end.
    let (body, _held) = body::read(request, &app.body, arrived)
        .await
        .inspect_err(|err| {
            if err.status == StatusCode::REQUEST_TIMEOUT {
                app.registry.metrics().body_timed_out();
            }
        })?;
    let metadata = &served.model.metadata;
    let inference = match form {
        Form::OpenInference => protocol::decode_infer(&body, json_len, metadata),
        Form::Simple => protocol::decode_predict(&body, metadata),
    }?;
    let deadline = Deadline::tightest(arrived.into(), &[inference.timeout]);
    let Answer { outputs, instance } = infer::run(served, &inference, deadline).await?;
    spans::answered(&served.name, &served.version, instance);

    let limit = app.config.max_response;
    let (body, json_len) = match form {
        Form::OpenInference => {
            // The name and version the client addressed, which for a
            // repository model are its folder's, not the model's own.
            let (name, version) = (&served.name, &served.version);
            let encoded = protocol::encode_infer_response(
                name, version, metadata, &inference, &outputs, limit,
            )
            .map_err(|err| err.served_by(instance))?;
            (encoded.body, encoded.json_len)
        }
        Form::Simple => {
            let body = protocol::encode_predict_response(metadata, &outputs, instance, limit)
                .map_err(|err| err.served_by(instance))?;
            (body, None)
        }
    };
    drop(outputs);
    let body = match compression {
        Some(coding) => body::compress(body, coding).await,
        None => body,
    };
    let mut response = json(StatusCode::OK, body.into());
    let headers = response.headers_mut();
    if let Some(len) = json_len {
        headers.insert(INFERENCE_HEADER_LENGTH, HeaderValue::from(len));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    if let Some(coding) = compression {
        headers.insert(header::CONTENT_ENCODING, body::header_value(coding));
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    headers.insert(X_INSTANCE_ID, HeaderValue::from(instance));
    Ok(response)
}

/// On a response whose request found its model not resident and waited
/// for its load (`--load on-demand`).
const X_MODEL_LOAD: HeaderName = HeaderName::from_static("x-model-load");

/// The binary tensor data extension's header: the length of the JSON part
/// of a body that continues with raw tensor bytes.
/// A `HeaderName`, not a `&str`: looking a header up by a string parses
/// and hashes the name on every request (650 instructions, by callgrind).
const INFERENCE_HEADER_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

fn binary_header_length(request: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    let Some(value) = request.headers().get(INFERENCE_HEADER_LENGTH) else {
        return Ok(None);
    };
    // Digits only: `parse` would also take a sign ("+362").
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Inference-Header-Content-Length must be a number of bytes, digits only",
            )
        })
}

fn check_content_type(request: &Request<Incoming>, binary: bool) -> Result<(), ApiError> {
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value.to_str().unwrap_or("");
    let mime = mime.split_once(';').map_or(mime, |(mime, _)| mime).trim();
    if media_type_accepted(mime, binary) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {mime:?} is not supported; send JSON with Content-Type: application/json"
            ),
        ))
    }
}

/// Whether a request body of media type `mime` (parameters removed) is read
/// as JSON, or as JSON followed by raw tensor bytes when `binary`. Media
/// types are case-insensitive: compared in place, with no lowercase copy.
fn media_type_accepted(mime: &str, binary: bool) -> bool {
    let is = |name: &str| mime.eq_ignore_ascii_case(name);
    let suffix = mime.len().checked_sub(5).map(|at| &mime.as_bytes()[at..]);
    is("application/json")
        || suffix.is_some_and(|suffix| suffix.eq_ignore_ascii_case(b"+json"))
        || is("text/plain")
        // curl -d sends form-urlencoded by default; the body is still JSON.
        || is("application/x-www-form-urlencoded")
        || (binary && is("application/octet-stream"))
}

fn ready_response(ready: bool) -> Response<Full<Bytes>> {
    if ready {
        empty(StatusCode::OK)
    } else {
        let mut response = empty(StatusCode::SERVICE_UNAVAILABLE);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
        response
    }
}

pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn error_response(err: &ApiError) -> Response<Full<Bytes>> {
    let mut response = json(err.status, err.body().into());
    let headers = response.headers_mut();
    if let Some(seconds) = err.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(instance) = err.instance {
        headers.insert(X_INSTANCE_ID, HeaderValue::from(instance));
    }
    if err.www_authenticate {
        headers.insert(header::WWW_AUTHENTICATE, control::www_authenticate());
    }
    if err.close_connection {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(methods) = err.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(methods));
    }
    response
}

#[cfg(test)]
mod tests;
