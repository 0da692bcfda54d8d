//! Telemetry: traces exported over OpenTelemetry ([`otel`]) and the spans a
//! request makes ([`spans`]).

pub mod otel;
pub mod spans;
