//! The one error type a request can end in: a status that says who must act
//! and a message that says what to do. Rendered as `{"error": "..."}`.

use hyper::{Method, StatusCode};

use crate::instance::Fault;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds a client should wait before retrying (503 only).
    pub retry_after: Option<u32>,
    /// The instance that served the request, once one was chosen.
    pub instance: Option<u64>,
    /// The method the route takes (405 only).
    pub allow: Option<Method>,
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

impl From<Fault> for ApiError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::InvalidInput(why) => {
                ApiError::bad_request(format!("the model rejected the input: {why}"))
            }
            Fault::Failed(why) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the model failed: {why}"),
            ),
            Fault::Trap(why) => ApiError {
                outcome: "trap",
                ..ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "the model trapped: {why}; its instance was replaced, retrying is safe"
                    ),
                )
            },
            Fault::Timeout(limit) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the model ran past its deadline of {limit:?} and was stopped; \
                     raise --timeout if it needs longer"
                ),
            ),
            Fault::MemoryCap(limit) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "the model hit its memory cap of {} MiB and was stopped; \
                     send a smaller input or raise --memory-limit",
                    limit >> 20
                ),
            ),
        }
    }
}
