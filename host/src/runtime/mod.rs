//! WebAssembly itself: [`engine`] configures wasmtime (pooling allocator,
//! epochs, memory layout), [`instance`] is one guest with its deadline and
//! faults, [`sandbox`] decides what a guest can reach, [`contract`] is the
//! host side of `wit/model.wit`, [`cache`] keeps compiled code, and
//! [`escape`] makes what guests print safe to log.

pub mod cache;
pub mod contract;
pub mod engine;
pub mod escape;
pub mod instance;
pub mod sandbox;

/// The innermost message of an error chain, without the host backtrace that
/// `RUST_BACKTRACE=1` attaches: that is for developers, not for operators.
pub fn root_cause(err: &wasmtime::Error) -> String {
    err.root_cause().to_string()
}
