//! The access log (`--access-log`): one line per request under the `access`
//! target, HTTP and gRPC alike, so that an operator sees every call whichever
//! protocol its client speaks.

use std::time::Instant;

use hyper::Method;
use hyper::header::{HeaderMap, HeaderName};

/// The header naming the instance that served an inference. A constant:
/// as a string it is parsed and hashed on every response (600 instructions).
pub const X_INSTANCE_ID: HeaderName = HeaderName::from_static("x-instance-id");

/// What a request was and how it ended; `grpc_status` for gRPC calls, whose
/// HTTP status is 200 whatever happened.
pub struct Line<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub headers: &'a HeaderMap,
    pub started: Instant,
}

/// Logs the line; the instance comes from the response's `x-instance-id`.
pub fn log(line: Line<'_>) {
    let Line {
        method,
        path,
        status,
        grpc_status,
        headers,
        started,
    } = line;
    let instance = headers
        .get(X_INSTANCE_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let latency_us = started.elapsed().as_micros() as u64;
    match grpc_status {
        None => tracing::info!(
            target: "access",
            method = %method,
            path,
            status,
            latency_us,
            instance,
            "{method} {path} {status}"
        ),
        Some(grpc_status) => tracing::info!(
            target: "access",
            method = %method,
            path,
            status,
            grpc_status,
            latency_us,
            instance,
            "{method} {path} {status} grpc-status {grpc_status}"
        ),
    }
}

/// The access line of a gRPC call. Every call is unary, so its outcome is
/// known when the response's head is: a failure is a trailers-only response
/// with `grpc-status` among its headers, a success carries `grpc-status: 0`
/// in its trailers.
pub fn log_grpc<B>(path: &str, response: &hyper::Response<B>, started: Instant) {
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    log(Line {
        method: &Method::POST,
        path,
        status: response.status().as_u16(),
        grpc_status: Some(grpc_status),
        headers: response.headers(),
        started,
    });
}
