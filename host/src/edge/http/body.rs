//! Request bodies, the one place the host buffers what a client sends, and
//! the compression of response bodies.
//!
//! A body is bounded three ways: in size (`--max-body`, also after
//! decompression, so a small gzip bomb cannot expand), in time
//! (`--body-timeout`: a client that sends headers and then trickles or stops
//! must not hold a connection forever), and across all connections together
//! (`--body-budget`: 50 clients each sending 15 MiB and stalling must not
//! pin 750 MiB). The budget is a semaphore of bytes; a request holds its
//! share until its response is written.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Request, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::edge::http::error::ApiError;

/// Compressed data larger than this is inflated or deflated off the
/// runtime's threads, so a large body cannot stall other requests.
const INLINE_CODING: usize = 64 << 10;

/// The bounds every request body is read within.
#[derive(Clone)]
pub struct BodyLimits {
    pub max_body: usize,
    pub timeout: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl BodyLimits {
    pub fn new(max_body: usize, timeout: Duration, budget_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_body,
            timeout,
            budget: Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS))),
            budget_bytes,
        }
    }

    /// Bytes of the budget held by bodies in flight.
    pub fn budget_in_use(&self) -> usize {
        self.budget_bytes
            .saturating_sub(self.budget.available_permits())
    }
}

/// A request's share of the body budget, given back when dropped.
#[derive(Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Held {
    /// Grows the share to `bytes`, or refuses with a 503 when the budget has
    /// no room: the host is holding as many bodies as it was told to.
    pub(crate) fn grow_to(&mut self, limits: &BodyLimits, bytes: usize) -> Result<(), ApiError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = u32::try_from(bytes - self.bytes).unwrap_or(u32::MAX);
        let Ok(permit) = Arc::clone(&limits.budget).try_acquire_many_owned(more) else {
            return Err(ApiError::unavailable(format!(
                "the host is already holding {} MiB of request bodies, its --body-budget; \
                 retry later",
                limits.budget_bytes >> 20
            )));
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes = bytes;
        Ok(())
    }
}

/// The content codings wasm-host reads and writes, as HTTP names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's "deflate": a zlib stream (RFC 1950), as Python's
    /// `zlib.compress` (and so tritonclient) writes it.
    Deflate,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    /// The request's `Content-Encoding`: none, gzip or deflate; anything
    /// else is a 415 that names what is accepted.
    fn of_request(headers: &HeaderMap) -> Result<Option<Coding>, ApiError> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(None);
        };
        let value = value.to_str().unwrap_or("?").trim().to_ascii_lowercase();
        match value.as_str() {
            "" | "identity" => Ok(None),
            "gzip" | "x-gzip" => Ok(Some(Coding::Gzip)),
            "deflate" => Ok(Some(Coding::Deflate)),
            _ => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding {value:?} is not supported; send the body as is, \
                     or with Content-Encoding gzip or deflate"
                ),
            )),
        }
    }

    /// The coding a client's `Accept-Encoding` asks for, preferring gzip;
    /// `None` when it accepts neither (or sent no header).
    pub fn accepted(headers: &HeaderMap) -> Option<Coding> {
        let value = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
        // Read in place, with no allocation: most clients send this header
        // on every request.
        let mut accepted = None;
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            if refused {
                continue;
            }
            if name.eq_ignore_ascii_case("gzip") || name == "*" {
                return Some(Coding::Gzip);
            }
            if name.eq_ignore_ascii_case("deflate") {
                accepted = Some(Coding::Deflate);
            }
        }
        accepted
    }
}

/// Reads a request's body within its bounds, decompressed. The body's
/// share of the budget comes with it and must be kept until the response
/// is written. `--body-timeout` counts from `arrived`.
pub async fn read(
    request: Request<Incoming>,
    limits: &BodyLimits,
    arrived: Instant,
) -> Result<(Bytes, Held), ApiError> {
    let coding = Coding::of_request(request.headers())?;
    let max_body = limits.max_body;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return Err(too_large(max_body, ""));
    }
    let mut held = Held::default();
    // A declared length is reserved up front: a body the budget cannot take
    // is refused before any of it is read.
    let expected = declared.unwrap_or(0) as usize;
    held.grow_to(limits, expected)?;
    let mut body = request.into_body();
    let collect = async {
        let mut bytes = Vec::with_capacity(expected);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                ApiError::bad_request(format!("could not read the request body: {err}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if bytes.len() + data.len() > max_body {
                return Err(too_large(max_body, ""));
            }
            held.grow_to(limits, bytes.len() + data.len())?;
            bytes.extend_from_slice(&data);
        }
        Ok(bytes)
    };
    let bytes = match tokio::time::timeout_at((arrived + limits.timeout).into(), collect).await {
        Ok(result) => result?,
        Err(_) => {
            let mut err = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("{}; the connection is closed", not_arrived(limits.timeout)),
            );
            err.close_connection = true;
            return Err(err);
        }
    };
    let Some(coding) = coding else {
        return Ok((Bytes::from(bytes), held));
    };
    let budget = limits.clone();
    let inflate = move || {
        let inflated = inflate(&bytes, coding, &budget, &mut held)?;
        Ok((Bytes::from(inflated), held))
    };
    if declared.unwrap_or(u64::MAX) as usize <= INLINE_CODING {
        inflate()
    } else {
        tokio::task::spawn_blocking(inflate)
            .await
            .expect("the inflate task does not panic")
    }
}

/// Decompresses a body, never past `--max-body` and within the budget.
fn inflate(
    compressed: &[u8],
    coding: Coding,
    limits: &BodyLimits,
    held: &mut Held,
) -> Result<Vec<u8>, ApiError> {
    let mut reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::GzDecoder::new(compressed)),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(compressed)),
    };
    let mut inflated = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk).map_err(|err| {
            ApiError::bad_request(format!(
                "the request body is not valid {} data: {err}",
                coding.name()
            ))
        })?;
        if n == 0 {
            return Ok(inflated);
        }
        if inflated.len() + n > limits.max_body {
            return Err(too_large(limits.max_body, " once decompressed"));
        }
        held.grow_to(limits, compressed.len() + inflated.len() + n)?;
        inflated.extend_from_slice(&chunk[..n]);
    }
}

/// What a client hears when its body stops arriving: HTTP's 408 and
/// gRPC's DEADLINE_EXCEEDED say the same.
pub(crate) fn not_arrived(timeout: Duration) -> String {
    format!("the request body did not arrive within {timeout:?} (--body-timeout)")
}

pub(crate) fn too_large(max_body: usize, when: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than {max_body} bytes{when}; send less, or raise --max-body"
        ),
    )
}

/// Compresses a response body as the client asked (Triton does the same
/// for `Accept-Encoding`), off the runtime's threads when it is large.
pub async fn compress(body: Vec<u8>, coding: Coding) -> Vec<u8> {
    let inline = body.len() <= INLINE_CODING;
    let deflate = move || {
        let level = flate2::Compression::fast();
        let mut out = Vec::with_capacity(body.len() / 4 + 64);
        let written = match coding {
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(&mut out, level);
                encoder
                    .write_all(&body)
                    .and_then(|()| encoder.finish().map(drop))
            }
            Coding::Deflate => {
                let mut encoder = flate2::write::ZlibEncoder::new(&mut out, level);
                encoder
                    .write_all(&body)
                    .and_then(|()| encoder.finish().map(drop))
            }
        };
        written.expect("compressing into memory cannot fail");
        out
    };
    if inline {
        deflate()
    } else {
        tokio::task::spawn_blocking(deflate)
            .await
            .expect("the compress task does not panic")
    }
}

/// The header value for a coding.
pub fn header_value(coding: Coding) -> hyper::header::HeaderValue {
    hyper::header::HeaderValue::from_static(coding.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(value: &str) -> Option<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        Coding::accepted(&headers)
    }

    #[test]
    fn accept_encoding_prefers_gzip_and_honours_q_zero() {
        assert_eq!(accepted("gzip, deflate"), Some(Coding::Gzip));
        assert_eq!(accepted("deflate, GZIP"), Some(Coding::Gzip));
        assert_eq!(accepted("deflate"), Some(Coding::Deflate));
        assert_eq!(accepted("gzip;q=0, deflate;q=0.5"), Some(Coding::Deflate));
        assert_eq!(accepted("*"), Some(Coding::Gzip));
        assert_eq!(accepted("identity"), None);
        assert_eq!(accepted("br, gzip; q=0"), None);
        assert_eq!(Coding::accepted(&HeaderMap::new()), None);
    }
}
