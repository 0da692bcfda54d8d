//! The edge: where requests arrive and answers leave. Everything here knows
//! a protocol; nothing below it does.
//!
//! [`server`] accepts connections (HTTP/1.1 and HTTP/2) and hands each
//! request to [`http`] (the Open Inference Protocol's routes, Triton's
//! extensions, health, metrics) or [`grpc`] (the same service over gRPC).
//! Both pass every inference through the one admission gate on [`app::App`]
//! (a refusing drain, the in-flight count from the first byte), read bodies
//! within the same limits, and call the same [`crate::core::infer`]. Each
//! edge maps [`crate::core::error::Error`] to its own statuses in one place
//! ([`http::error`], [`grpc`]'s `status`). [`control`] is the repository API
//! both edges share, [`triton`] the model config and statistics both report,
//! [`telemetry`] Triton's trace and log settings endpoints, [`status`] the
//! status page, [`access`] the access log.

pub mod access;
pub mod app;
pub mod control;
pub mod grpc;
pub mod http;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod triton;
