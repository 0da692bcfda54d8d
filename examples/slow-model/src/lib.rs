//! A model that does nothing but take its time: the tutorial's "2-second
//! model", for seeing how the host behaves while a prediction is in flight
//! (timeouts, concurrency, requests queueing behind a busy instance).
//!
//! It sleeps for the milliseconds in the first element of `ms`, or for two
//! seconds if `ms` is empty or 0, and reports how long it asked to sleep.
//! Sleeping goes through WASI's monotonic clock, so the host sees a guest
//! that is waiting, not one burning CPU.

use std::time::Duration;
use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};

const DEFAULT_MS: i64 = 2000;

struct Slow;

impl Model for Slow {
    fn metadata() -> Metadata {
        Metadata {
            name: "slow".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("ms", Datatype::Int64, &[-1])],
            outputs: vec![TensorSpec::new("slept_ms", Datatype::Int64, &[1])],
        }
    }

    fn predict(
        inputs: Vec<Tensor>,
        _parameters: Option<Vec<(String, String)>>,
    ) -> Result<Vec<Tensor>, Error> {
        let [ms] = wasm_host_guest::inputs(inputs)?;
        let ms = ms.to_i64()?;
        let ms = match ms.first().copied().unwrap_or(0) {
            0 => DEFAULT_MS,
            ms if ms < 0 => return Err(Error::invalid_input(format!("ms: {ms} is negative"))),
            ms => ms,
        };
        std::thread::sleep(Duration::from_millis(ms as u64));
        Ok(vec![Tensor::from_i64(vec![1], &[ms])])
    }
}

wasm_host_guest::export_model!(Slow);
