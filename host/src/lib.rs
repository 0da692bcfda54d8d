//! wasm-host serves ML models from sandboxed WebAssembly instances.
//!
//! One folder per layer; a request flows down through them and its answer
//! back up, and nothing imports from a layer above its own (top to bottom
//! in this table; the `layers` test checks every import):
//!
//! ```text
//! commands/   serve, pack, inspect, compile, plan: flags in, the library called
//! edge/       connections, HTTP and gRPC, the admission gate, the repository API, status page
//! core/       the protocol-neutral inference API: the request, batching, the domain error
//! lifecycle/  which models serve: registry, settings, repository (explicit, poll), signals
//! pool/       a model's instances: a free one for each request, a fair queue, replacement
//! model/      model files: reading them safely, compiling, ONNX packing
//! runtime/    WebAssembly: engine, instance (deadline, faults), sandbox, contract, cache
//! telemetry/  logs (subscriber, live filter), traces (a request's spans, OTLP export), trace settings
//! ```
//!
//! Two kinds of module serve every layer because they import none: the
//! core's vocabulary ([`core::error`], [`core::name`], [`core::metrics`],
//! [`core::supervise`]) and [`telemetry`]. One import points up on purpose:
//! a served model (lifecycle) owns its [`core::scheduler`], direct or batching.
//!
//! An inference over HTTP: [`edge::server`] accepts the connection →
//! [`edge::http`] routes it, passes the drain gate on [`edge::app::App`] and
//! reads the body within its limits → [`core::protocol`] decodes it into an
//! `Inference` checked against the model's metadata → [`lifecycle::registry`]
//! resolves the served model → [`core::infer`] runs it alone or in a
//! [`core::batch`] → [`pool`] leases a free instance → [`runtime::instance`]
//! calls the guest under its deadline and memory cap → back out through
//! [`core::protocol`]'s encoders. Over gRPC, [`edge::grpc`] takes the place of
//! [`edge::http`] and everything below is the same. Failures are a
//! [`core::error::Error`], mapped once per edge.
//!
//! What comes from outside is checked where it enters: [`core::name`] makes
//! every model name and version (URL, upload, repository folder,
//! `metadata()`), [`model::files`] reads every model, settings and ONNX file
//! (regular, bounded, off the runtime), and [`core::supervise`] keeps the
//! background tasks (repository poll, elastic reaper) from dying silently.

pub mod commands;
pub mod core;
pub mod edge;
pub mod lifecycle;
pub mod model;
pub mod pool;
pub mod runtime;
pub mod telemetry;

#[cfg(test)]
mod layers;

use std::process::ExitCode;

/// A command's failure: one line for the operator and the exit code that
/// classifies it.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Anything else: an internal error, a failed step.
    pub const OTHER: u8 = 1;
    /// Flags that contradict each other (clap's own code for bad flags).
    pub const USAGE: u8 = 2;
    /// The model file cannot be loaded or does not fit the contract.
    pub const MODEL: u8 = 3;
    /// The listen address cannot be bound.
    pub const BIND: u8 = 4;

    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}
