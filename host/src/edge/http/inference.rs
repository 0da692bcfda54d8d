//! The inference handler, `/v2/models/{m}/infer` and `/predict`: the
//! request's headers checked (content type, the binary data extension's
//! length), its body read and decoded, the model run through the core
//! gRPC shares, and the outputs encoded, compressed if asked, into the
//! response. The hot path of the HTTP edge, apart from the other routes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::body::{self, Coding};
use super::json;
use crate::core::infer::{self, Answer, Deadline};
use crate::core::protocol;
use crate::edge::access::X_INSTANCE_ID;
use crate::edge::app::App;
use crate::edge::http::error::ApiError;
use crate::lifecycle::served::ServedModel;
use crate::telemetry::spans;

#[derive(Clone, Copy)]
pub(super) enum Form {
    /// `/v2/models/{m}/infer`
    OpenInference,
    /// `/predict`
    Simple,
}

pub(super) async fn infer(
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
pub(super) const X_MODEL_LOAD: HeaderName = HeaderName::from_static("x-model-load");

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
pub(super) fn media_type_accepted(mime: &str, binary: bool) -> bool {
    let is = |name: &str| mime.eq_ignore_ascii_case(name);
    let suffix = mime.len().checked_sub(5).map(|at| &mime.as_bytes()[at..]);
    is("application/json")
        || suffix.is_some_and(|suffix| suffix.eq_ignore_ascii_case(b"+json"))
        || is("text/plain")
        // curl -d sends form-urlencoded by default; the body is still JSON.
        || is("application/x-www-form-urlencoded")
        || (binary && is("application/octet-stream"))
}
