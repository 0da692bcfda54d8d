//! Why a request failed, in the host's own words and in no protocol's: a
//! [`Kind`] that says who must act, and a message that says what to do.
//!
//! The core (protocol decoding, the pool, the guest call, the repository
//! API) fails with an [`Error`]; each edge maps its kind once, the HTTP edge
//! to a status ([`crate::edge::http::error`]), the gRPC edge to a status code
//! ([`crate::edge::grpc`]), and both send the same message.

use crate::lifecycle::registry::Lookup;
use crate::pool::Overloaded;
use crate::runtime::instance::Fault;

/// Who must act on a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is wrong: the client must change it (HTTP 400).
    BadInput,
    /// No such model or version (404).
    NotFound,
    /// Overloaded, or the model is not ready: retry later (503).
    Unavailable,
    /// The request ran past its deadline, the model's or the client's (504).
    DeadlineExceeded,
    /// The model hit its memory cap (507).
    MemoryCap,
    /// The model failed, broke its contract, or made too large a response (500).
    ModelFailed,
    /// The guest trapped and its instance was replaced (500).
    Trap,
    /// The repository API's token is missing or wrong (401).
    Unauthenticated,
    /// The host's settings forbid the call (403).
    Forbidden,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    /// The instance that served the request, once one was chosen.
    pub instance: Option<u64>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            instance: None,
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(Kind::BadInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }

    pub fn model_failed(message: impl Into<String>) -> Self {
        Self::new(Kind::ModelFailed, message)
    }

    pub fn served_by(mut self, instance: u64) -> Self {
        self.instance = Some(instance);
        self
    }

    /// The metrics label for what happened.
    pub fn outcome(&self) -> &'static str {
        match self.kind {
            Kind::BadInput | Kind::NotFound | Kind::Unauthenticated | Kind::Forbidden => {
                "bad_input"
            }
            Kind::Unavailable => "overloaded",
            Kind::DeadlineExceeded => "timeout",
            Kind::MemoryCap => "memory_cap",
            Kind::ModelFailed => "model_error",
            Kind::Trap => "trap",
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Fault> for Error {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::InvalidInput(why) => {
                Error::bad_input(format!("the model rejected the input: {why}"))
            }
            Fault::Failed(why) => Error::model_failed(format!("the model failed: {why}")),
            Fault::Trap(why) => Error::new(
                Kind::Trap,
                format!("the model trapped: {why}; its instance was replaced, retrying is safe"),
            ),
            Fault::Timeout(limit) => Error::new(
                Kind::DeadlineExceeded,
                format!(
                    "the model ran past its deadline of {limit:?} and was stopped; \
                     raise --timeout if it needs longer"
                ),
            ),
            Fault::MemoryCap(limit) => Error::new(
                Kind::MemoryCap,
                format!(
                    "the model hit its memory cap of {} MiB and was stopped; \
                     send a smaller input or raise --memory-limit",
                    limit >> 20
                ),
            ),
        }
    }
}

/// A registry lookup's failure: a model that is not there is not found
/// (with what is there), one that is loading or broken unavailable.
impl From<Lookup> for Error {
    fn from(lookup: Lookup) -> Self {
        let message = lookup.to_string();
        match lookup {
            Lookup::Unavailable { .. } | Lookup::NotResident { .. } => {
                Error::new(Kind::Unavailable, message)
            }
            _ => Error::not_found(message),
        }
    }
}

impl From<Overloaded> for Error {
    fn from(overloaded: Overloaded) -> Self {
        Error::new(Kind::Unavailable, overloaded.to_string())
    }
}
