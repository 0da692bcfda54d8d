//! What each request does. A request's whole path is `handle` → `infer`:
//! decode and check the body (protocol), take an instance (pool), call the
//! guest (instance), encode the outputs. Every outcome becomes a response
//! here, errors as `{"error": "..."}` with the status that says who must act.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::error::ApiError;
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
    ModelMetadata(&'a str),
    ModelReady(&'a str),
    Infer(&'a str),
    Metrics,
}

impl Route<'_> {
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
            ["v2", "models", m] => Route::ModelMetadata(m),
            ["v2", "models", m, "ready"] => Route::ModelReady(m),
            ["v2", "models", m, "infer"] => Route::Infer(m),
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
            let body = serde_json::json!({
                "status": if app.ready() { "ok" } else { "unavailable" },
                "model": metadata.name,
                "instances": {
                    "total": status.total,
                    "busy": status.busy,
                    "idle": status.idle,
                    "target": status.target,
                    "replaced": status.replaced,
                },
                "calls": status.calls,
                "queue": { "depth": status.queued, "max": app.pool.max_queue() },
            });
            Ok(json(StatusCode::OK, body.to_string().into()))
        }
        Route::Metrics => {
            let status = app.pool.status();
            let metrics = app.pool.metrics();
            metrics.set_instances(status.total, status.busy);
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
            check_model(name)?;
            let body = protocol::model_metadata(metadata).to_string();
            Ok(json(StatusCode::OK, body.into()))
        }
        Route::ModelReady(name) => {
            check_model(name)?;
            Ok(ready_response(app))
        }
        Route::Infer(name) => {
            check_model(name)?;
            measured(app, infer(app, request, Form::OpenInference)).await
        }
        Route::Predict => measured(app, infer(app, request, Form::Simple)).await,
    }
}

/// Counts an inference request as pending while it runs, then records its
/// outcome and duration.
async fn measured(
    app: &App,
    inference: impl Future<Output = Result<Response<Full<Bytes>>, ApiError>>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let metrics = app.pool.metrics();
    let started = Instant::now();
    let pending = metrics.pending();
    let result = inference.await;
    drop(pending);
    let outcome = match &result {
        Ok(_) => "success",
        Err(err) => err.outcome,
    };
    metrics.request_done(outcome, started.elapsed());
    result
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
    let body = read_body(request, app.config.max_body).await?;
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

    for output in &outputs {
        protocol::check_output(output).map_err(|why| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why).served_by(instance)
        })?;
    }
    let mut response = match form {
        Form::OpenInference => {
            let encoded = protocol::encode_infer_response(&model.metadata, &inference, &outputs);
            let mut response = json(StatusCode::OK, encoded.body.into());
            if let Some(len) = encoded.json_len {
                let headers = response.headers_mut();
                headers.insert(INFERENCE_HEADER_LENGTH, HeaderValue::from(len));
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
            }
            response
        }
        Form::Simple => {
            let body = protocol::encode_predict_response(&model.metadata, &outputs, instance);
            json(StatusCode::OK, body.into())
        }
    };
    response
        .headers_mut()
        .insert("x-instance-id", HeaderValue::from(instance));
    Ok(response)
}

/// The binary tensor data extension's header: the length of the JSON part
/// of a body that continues with raw tensor bytes.
const INFERENCE_HEADER_LENGTH: &str = "inference-header-content-length";

fn binary_header_length(request: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    let Some(value) = request.headers().get(INFERENCE_HEADER_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("Inference-Header-Content-Length must be a number of bytes")
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

async fn read_body(request: Request<Incoming>, max_body: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than {max_body} bytes; send less, or raise --max-body"
            ),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), max_body).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::bad_request(format!(
            "could not read the request body: {err}"
        ))),
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
    if let Some(method) = &err.allow {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_str(method.as_str()).expect("a method is a valid header"),
        );
    }
    response
}
