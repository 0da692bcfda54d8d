//! Why a request failed, in the host's own words and in no protocol's: a
//! [`Kind`] that says who must act, and a message that says what to do.
//!
//! The core (protocol decoding, the pool, the guest call, the repository
//! API) fails with an [`Error`]; each edge maps its kind once, the HTTP edge
//! to a status ([`crate::edge::http::error`]), the gRPC edge to a status code
//! ([`crate::edge::grpc`]), and both send the same message.
//!
//! A model load (or resize) fails with a [`LoadError`], which says what was
//! wrong in the load's own terms; it becomes an [`Error`] of the matching
//! kind at the repository API, so each edge still maps kinds in one place.
//!
//! This module imports no layer: every layer may use it, and each failure
//! type of a lower layer (a guest's fault, a full pool, a failed lookup)
//! says how it becomes an [`Error`] beside its own definition.

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

/// Why a model could not be loaded or resized: a bad file, one this host
/// does not run, no room in the budget, no such model in the repository, a
/// set-up that never finished, or a fault of the host's own. Each carries
/// the one line an operator acts on (the texts the registry always gave).
///
/// A type of its own rather than more [`Kind`]s: loads also run where no
/// request waits (at start, on a poll, on HUP, on demand) and end up in a
/// log line or an index reason, and [`Error`]'s `instance` means nothing for
/// them; the repository API turns one into an [`Error`] with [`Error::from`],
/// whose kind the edges already map, once each (HTTP in
/// [`crate::edge::http::error`], gRPC in `edge::grpc::status`):
///
/// | variant       | kind               | HTTP                  | gRPC               |
/// |---------------|--------------------|-----------------------|--------------------|
/// | `BadFile`     | `BadInput`         | 400                   | `INVALID_ARGUMENT` |
/// | `Unsupported` | `BadInput`         | 400                   | `INVALID_ARGUMENT` |
/// | `OverBudget`  | `Unavailable`      | 503, `Retry-After: 1` | `UNAVAILABLE`      |
/// | `NotFound`    | `NotFound`         | 404                   | `NOT_FOUND`        |
/// | `Timeout`     | `DeadlineExceeded` | 504                   | `DEADLINE_EXCEEDED`|
/// | `Internal`    | `ModelFailed`      | 500                   | `INTERNAL`         |
///
/// A bad file stays 400 / `INVALID_ARGUMENT`, as Triton answers a failed
/// load, so tritonclient users see what they always saw. Over the budget is
/// 503 with `Retry-After` on every path, as a cold request under
/// `--load on-demand` has always been answered when nothing can be evicted:
/// the budget frees as models unload or go idle, and one status for one
/// cause is what a client can act on (507 stays a request's memory cap).
/// There is no conflict variant: a model's loads, reloads and unloads wait
/// for each other (they are serialised per name) rather than being refused,
/// and model control being off is [`Kind::Forbidden`], checked before any load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// Not a model this host can use as it is: not a component, a bad
    /// ONNX file, the wrong contract, bad settings, refused metadata, or a
    /// model that fails as it starts.
    BadFile(String),
    /// A kind of file or setting this host does not run: a precompiled
    /// artifact where native code is not allowed (or built for another
    /// architecture), an ONNX graph past the packer's size, a memory limit
    /// past what the host reserves per instance.
    Unsupported(String),
    /// The model's instances × memory limit do not fit in `--memory-budget`
    /// (or the pooling allocator's room) beside the others, and nothing
    /// can be evicted for it.
    OverBudget(String),
    /// No such model folder, version or file in the repository.
    NotFound(String),
    /// Reading the repository took too long and was abandoned.
    Timeout(String),
    /// The host itself failed (a task that panicked).
    Internal(String),
}

impl LoadError {
    /// The line an operator acts on.
    pub fn message(&self) -> &str {
        match self {
            LoadError::BadFile(m)
            | LoadError::Unsupported(m)
            | LoadError::OverBudget(m)
            | LoadError::NotFound(m)
            | LoadError::Timeout(m)
            | LoadError::Internal(m) => m,
        }
    }

    /// Who must act: the kind the edges map.
    pub fn kind(&self) -> Kind {
        match self {
            LoadError::BadFile(_) | LoadError::Unsupported(_) => Kind::BadInput,
            LoadError::OverBudget(_) => Kind::Unavailable,
            LoadError::NotFound(_) => Kind::NotFound,
            LoadError::Timeout(_) => Kind::DeadlineExceeded,
            LoadError::Internal(_) => Kind::ModelFailed,
        }
    }

    /// The same failure, its message prefixed with `what` (`"failed to
    /// load m: ..."`).
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        self.map(|m| format!("{what}: {m}"))
    }

    /// The same failure with its message rewritten.
    pub fn map(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            LoadError::BadFile(m) => LoadError::BadFile(f(m)),
            LoadError::Unsupported(m) => LoadError::Unsupported(f(m)),
            LoadError::OverBudget(m) => LoadError::OverBudget(f(m)),
            LoadError::NotFound(m) => LoadError::NotFound(f(m)),
            LoadError::Timeout(m) => LoadError::Timeout(f(m)),
            LoadError::Internal(m) => LoadError::Internal(f(m)),
        }
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for LoadError {}

impl From<LoadError> for Error {
    fn from(err: LoadError) -> Self {
        let kind = err.kind();
        Error::new(kind, err.to_string())
    }
}
