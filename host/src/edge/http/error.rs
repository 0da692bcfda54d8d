//! The HTTP edge's error: a status that says who must act and a message
//! that says what to do, rendered as `{"error": "..."}`, with the headers
//! that go with it. The core's failures arrive as [`Error`] and are mapped
//! to a status here, once; errors only HTTP has (a body too large, a wrong
//! method, a bad content type) are made here directly.

use hyper::StatusCode;

use crate::core::error::{Error, Kind};
use crate::lifecycle::registry::Lookup;
use crate::pool::Overloaded;
use crate::runtime::instance::Fault;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds a client should wait before retrying (503 only).
    pub retry_after: Option<u32>,
    /// The instance that served the request, once one was chosen.
    pub instance: Option<u64>,
    /// The methods the route takes (405 only).
    pub allow: Option<&'static str>,
    /// The metrics label for what happened.
    pub outcome: &'static str,
    /// Close the connection after this response (a body that timed out:
    /// what the client sends next cannot be trusted to start a request).
    pub close_connection: bool,
    /// Ask for credentials (401 only).
    pub www_authenticate: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            instance: None,
            allow: None,
            close_connection: false,
            www_authenticate: false,
            outcome: match status.as_u16() {
                400..=499 => "bad_input",
                503 => "overloaded",
                504 => "timeout",
                507 => "memory_cap",
                _ => "model_error",
            },
        }
    }

    pub fn served_by(mut self, instance: u64) -> Self {
        self.instance = Some(instance);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message }).to_string()
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = match err.kind {
            Kind::BadInput => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Kind::MemoryCap => StatusCode::INSUFFICIENT_STORAGE,
            Kind::ModelFailed | Kind::Trap => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
        };
        ApiError {
            retry_after: (err.kind == Kind::Unavailable).then_some(1),
            instance: err.instance,
            outcome: err.outcome(),
            www_authenticate: err.kind == Kind::Unauthenticated,
            ..ApiError::new(status, err.message)
        }
    }
}

impl crate::core::infer::Outcome for ApiError {
    fn outcome(&self) -> &'static str {
        self.outcome
    }
}

/// Domain failures reach HTTP through [`Error`], so both edges say the same.
macro_rules! through_error {
    ($($from:ty),*) => {$(
        impl From<$from> for ApiError {
            fn from(failure: $from) -> Self {
                ApiError::from(Error::from(failure))
            }
        }
    )*};
}

through_error!(Fault, Lookup, Overloaded);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::LoadError;

    /// A failed load's status, variant by variant: a bad or unsupported
    /// file is Triton's 400, over the budget the 503 with `Retry-After` a
    /// cold on-demand request has always had.
    #[test]
    fn each_load_error_maps_to_its_status_with_its_message() {
        let cases = [
            (LoadError::BadFile("m".into()), 400, None),
            (LoadError::Unsupported("m".into()), 400, None),
            (LoadError::OverBudget("m".into()), 503, Some(1)),
            (LoadError::NotFound("m".into()), 404, None),
            (LoadError::Timeout("m".into()), 504, None),
            (LoadError::Internal("m".into()), 500, None),
        ];
        for (load, status, retry_after) in cases {
            let shown = format!("{load:?}");
            let err = ApiError::from(Error::from(load.context("failed to load x")));
            assert_eq!(err.status.as_u16(), status, "{shown}");
            assert_eq!(err.retry_after, retry_after, "{shown}");
            assert_eq!(err.message, "failed to load x: m", "{shown}");
        }
    }
}
