//! The messages and service trait generated from `proto/grpc_service.proto`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inference");
