//! A test fixture that never finishes setting up: its `metadata()` sleeps on
//! a WASI clock for an hour. The host must give up on it within its set-up
//! deadline, at start-up and on reload, and say why.

use std::time::Duration;

use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};

struct Stuck;

impl Model for Stuck {
    fn metadata() -> Metadata {
        std::thread::sleep(Duration::from_secs(3600));
        Metadata {
            name: "stuck".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("x", Datatype::Fp32, &[-1])],
            outputs: vec![TensorSpec::new("y", Datatype::Fp32, &[-1])],
        }
    }

    fn predict(
        inputs: Vec<Tensor>,
        _: Option<Vec<(String, String)>>,
    ) -> Result<Vec<Tensor>, Error> {
        Ok(inputs)
    }
}

wasm_host_guest::export_model!(Stuck);
