//! wasm-host serves an ML model from N sandboxed WebAssembly instances.
//!
//! A request travels through one module per concept:
//! [`server`] (connections) → [`routes`] (HTTP) or [`grpc`] → [`protocol`] (JSON or protobuf ↔
//! tensors, checked against the model's metadata) → [`infer`] (the core both protocols share;
//! [`batch`] joins concurrent requests into one call for a model that batches) →
//! [`pool`] (a free instance, or a fair wait) → [`instance`] (the guest call, its deadline and
//! faults) → back out through [`protocol`]. Failures are an [`error::Error`], which each edge
//! maps once: [`http_error`] to a status, [`grpc`] to a status code. [`model`] loads and compiles a component once (through the
//! [`cache`]), [`engine`] configures wasmtime, [`sandbox`] decides what a
//! guest can reach, and [`contract`] is the host side of `wit/model.wit`.
//! [`pack`] turns an ONNX model into a
//! pre-initialised model component. [`commands`] has one file per subcommand; [`cli`] and [`config`] turn
//! flags, environment and a TOML file into settings.
//!
//! What comes from outside is checked where it enters: [`name`] makes every
//! model name and version (URL, upload, repository folder, `metadata()`),
//! [`files`] reads every model, settings and ONNX file (regular, bounded, off
//! the runtime), and [`supervise`] keeps the background tasks (repository
//! poll, elastic reaper) from dying silently.

pub mod access;
pub mod app;
pub mod batch;
pub mod body;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contract;
pub mod control;
pub mod engine;
pub mod error;
pub mod escape;
pub mod files;
pub mod grpc;
pub mod http_error;
pub mod infer;
pub mod instance;
pub mod metrics;
pub mod model;
pub mod name;
pub mod pack;
pub mod pool;
pub mod protocol;
pub mod registry;
pub mod repository;
pub mod routes;
pub mod sandbox;
pub mod served;
pub mod server;
pub mod settings;
pub mod signals;
pub mod status;
pub mod supervise;
pub mod triton;

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
