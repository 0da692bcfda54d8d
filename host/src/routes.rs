//! What each request does. A request's whole path is `handle` → `infer`:
//! decode and check the body (protocol), take an instance (pool), call the
//! guest (instance), encode the outputs. Every outcome becomes a response
//! here, errors as `{"error": "..."}` with the status that says who must act.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::body::{self, Coding};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::protocol;
use crate::server::App;

/// The routes, by path. A known path with the wrong method is a 405, an
/// unknown path a 404.
enum Route<'a> {
    Health,
    Predict,
    Server,
    Live,
    Ready,
    ModelMetadata(Cow<'a, str>),
    ModelReady(Cow<'a, str>),
    Infer(Cow<'a, str>),
    Metrics,
}

impl Route<'_> {
    /// `None` for an unknown path. Model names are percent-decoded, so
    /// `/v2/models/a%20b/infer` reaches a model named `a b`.
    fn parse(path: &str) -> Option<Route<'_>> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // `/v2/models/{m}/versions/{v}/...` addresses the same (only) version.
        let segments: Vec<&str> = match segments.as_slice() {
            ["v2", "models", m, "versions", _, rest @ ..] => {
                [&["v2", "models", m][..], rest].concat()
            }
            _ => segments,
        };
        Some(match segments.as_slice() {
            ["health"] => Route::Health,
            ["metrics"] => Route::Metrics,
            ["predict"] => Route::Predict,
            ["v2"] => Route::Server,
            ["v2", "health", "live"] => Route::Live,
            ["v2", "health", "ready"] => Route::Ready,
            ["v2", "models", m] => Route::ModelMetadata(percent_decode(m)?),
            ["v2", "models", m, "ready"] => Route::ModelReady(percent_decode(m)?),
            ["v2", "models", m, "infer"] => Route::Infer(percent_decode(m)?),
            _ => return None,
        })
    }

    fn method(&self) -> Method {
        match self {
            Route::Predict | Route::Infer(_) => Method::POST,
            _ => Method::GET,
        }
    }
}

/// A path segment with its `%XX` escapes decoded; `None` if an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<Cow<'_, str>> {
    if !segment.contains('%') {
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

pub(crate) async fn handle(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if !app.config.access_log {
        return respond(app, request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = respond(app, request).await;
    let instance = response
        .headers()
        .get("x-instance-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    tracing::info!(
        target: "access",
        method = %method,
        path,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        instance,
        "{method} {path} {}",
        response.status().as_u16()
    );
    response
}

async fn respond(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let result = match Route::parse(&path) {
        None => Err(ApiError::not_found(format!(
            "no route {path}; see GET /v2 for the server, /v2/models/{}/infer and /predict for inference",
            app.pool.model().metadata.name
        ))),
        Some(route) if *request.method() != route.method() && !head_of_get(&request, &route) => {
            let mut err = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {}, not {}", route.method(), request.method()),
            );
            err.allow = Some(route.method());
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
    let model = app.pool.model();
    let metadata = &model.metadata;
    let check_model = |name: &str| {
        if name == metadata.name {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "unknown model {name:?}; this server serves {:?}",
                metadata.name
            )))
        }
    };
    match route {
        Route::Health => {
            let status = app.pool.status();
            let state = if !app.ready() {
                "unavailable"
            } else if status.missing > 0 {
                "degraded"
            } else {
                "ok"
            };
            let body = serde_json::json!({
                "status": state,
                "model": metadata.name,
                "instances": {
                    "total": status.total,
                    "busy": status.busy,
                    "idle": status.idle,
                    "target": status.target,
                    "replaced": status.replaced,
                    "missing": status.missing,
                },
                "calls": status.calls,
                "queue": { "depth": status.queued, "max": app.pool.max_queue() },
                "bodies": {
                    "held_bytes": app.body.budget_in_use(),
                    "budget_bytes": app.config.body_budget,
                },
            });
            Ok(json(StatusCode::OK, body.to_string().into()))
        }
        Route::Metrics => {
            let status = app.pool.status();
            let metrics = app.pool.metrics();
            metrics.set_instances(status.total, status.busy, status.missing);
            let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        Route::Live => Ok(empty(StatusCode::OK)),
        Route::Ready => Ok(ready_response(app)),
        Route::Server => {
            let body = serde_json::json!({
                "name": "wasm-host",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["binary_tensor_data"],
            });
            Ok(json(StatusCode::OK, body.to_string().into()))
        }
        Route::ModelMetadata(name) => {
            check_model(&name)?;
            let body = protocol::model_metadata(metadata).to_string();
            Ok(json(StatusCode::OK, body.into()))
        }
        Route::ModelReady(name) => {
            check_model(&name)?;
            Ok(ready_response(app))
        }
        Route::Infer(name) => {
            check_model(&name)?;
            measured(app, infer(app, request, Form::OpenInference)).await
        }
        Route::Predict => measured(app, infer(app, request, Form::Simple)).await,
    }
}

/// Counts an inference request as pending while it runs, then records its
/// outcome and duration; a request whose client left before its answer (its
/// future dropped) is recorded as `cancelled`.
async fn measured(
    app: &App,
    inference: impl Future<Output = Result<Response<Full<Bytes>>, ApiError>>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut record = Recorder {
        metrics: app.pool.metrics(),
        started: Instant::now(),
        outcome: "cancelled",
    };
    let pending = record.metrics.pending();
    let result = inference.await;
    drop(pending);
    record.outcome = match &result {
        Ok(_) => "success",
        Err(err) => err.outcome,
    };
    result
}

/// Records a request's outcome when dropped, whether it finished or not.
struct Recorder<'a> {
    metrics: &'a Metrics,
    started: Instant,
    outcome: &'static str,
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.metrics
            .request_done(self.outcome, self.started.elapsed());
    }
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
    request: Request<Incoming>,
    form: Form,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let json_len = binary_header_length(&request)?;
    check_content_type(&request, json_len.is_some())?;
    let compression = Coding::accepted(request.headers());
    // `_held` is this body's share of --body-budget, kept until the end.
    let (body, _held) = body::read(request, &app.body).await.inspect_err(|err| {
        if err.status == StatusCode::REQUEST_TIMEOUT {
            app.pool.metrics().body_timed_out();
        }
    })?;
    let decode = |model: &Model| match form {
        Form::OpenInference => protocol::decode_infer(&body, json_len, &model.metadata),
        Form::Simple => protocol::decode_predict(&body, &model.metadata),
    };
    let mut model = app.pool.model();
    let mut inference = decode(&model)?;

    let mut lease = app.pool.acquire().await?;
    let instance = lease.instance_id();
    if !Arc::ptr_eq(lease.model(), &model) {
        // A reload swapped the model while this request waited.
        model = Arc::clone(lease.model());
        inference = decode(&model).map_err(|err| err.served_by(instance))?;
    }
    let outputs = lease
        .predict(
            &inference.inputs,
            &inference.model_parameters(),
            app.config.timeout,
        )
        .await
        .map_err(|fault| ApiError::from(fault).served_by(instance))?;
    // Give the instance back before encoding: the next request need not wait.
    drop(lease);

    let model_error =
        |why: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why).served_by(instance);
    protocol::check_outputs(&outputs, &model.metadata).map_err(model_error)?;
    let limit = app.config.max_response;
    let (body, json_len) = match form {
        Form::OpenInference => {
            let encoded =
                protocol::encode_infer_response(&model.metadata, &inference, &outputs, limit)
                    .map_err(|err| err.served_by(instance))?;
            (encoded.body, encoded.json_len)
        }
        Form::Simple => {
            let body = protocol::encode_predict_response(&model.metadata, &outputs, instance, limit)
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
    headers.insert("x-instance-id", HeaderValue::from(instance));
    Ok(response)
}

/// The binary tensor data extension's header: the length of the JSON part
/// of a body that continues with raw tensor bytes.
const INFERENCE_HEADER_LENGTH: &str = "inference-header-content-length";

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
    let mime = value.to_str().unwrap_or("").to_ascii_lowercase();
    let mime = mime.split(';').next().unwrap_or("").trim();
    // curl -d sends form-urlencoded by default; the body is still JSON.
    let accepted = mime == "application/json"
        || mime.ends_with("+json")
        || mime == "text/plain"
        || mime == "application/x-www-form-urlencoded"
        || (binary && mime == "application/octet-stream");
    if accepted {
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

fn ready_response(app: &App) -> Response<Full<Bytes>> {
    if app.ready() {
        empty(StatusCode::OK)
    } else {
        let mut response = empty(StatusCode::SERVICE_UNAVAILABLE);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
        response
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
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
        headers.insert("x-instance-id", HeaderValue::from(instance));
    }
    if err.close_connection {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(method) = &err.allow {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_str(method.as_str()).expect("a method is a valid header"),
        );
    }
    response
}
