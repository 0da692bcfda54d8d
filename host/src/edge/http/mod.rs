//! What each HTTP request does. An inference's path is `handle` → `infer`:
//! resolve its model (registry), read and decode the body (protocol), run it
//! through the core gRPC shares ([`crate::core::infer`]: pool, guest, checks),
//! encode the outputs. Every outcome becomes a response here, errors as
//! `{"error": "..."}` with the status [`crate::edge::http::error`] gives them.

pub mod body;
pub mod error;
mod inference;
mod route;

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::core::infer;
use crate::core::protocol;
use crate::edge::access::{self, X_INSTANCE_ID};
use crate::edge::app::{App, Plane};
use crate::edge::control;
use crate::edge::http::error::ApiError;
use crate::edge::telemetry;
use crate::edge::triton;
use crate::lifecycle::registry::Lookup;
use crate::telemetry::spans;
use inference::{Form, X_MODEL_LOAD, infer};
use route::Route;

pub use crate::edge::app::Refused;

pub(crate) async fn handle(
    app: &App,
    plane: Plane,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refused> {
    // The one gate for inference, as over gRPC: a refusing drain turns the
    // request away, else it counts as in flight from before its body is
    // read until its answer is built, so a drain waits for it.
    let inference = plane.serves_public()
        && matches!(
            Route::parse(request.uri().path()),
            Some(Route::Infer(..) | Route::Predict)
        );
    let _admitted = if inference {
        Some(app.admit_inference()?)
    } else {
        None
    };
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
