//! A test fixture: a model whose name holds a newline, which would forge a
//! line in the host's log and cannot be a URL path segment. The host must
//! refuse it at load (exit 3) with one line that says why.

use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};

struct BadName;

impl Model for BadName {
    fn metadata() -> Metadata {
        Metadata {
            name: "echo\nINFO forged log line".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("x", Datatype::Fp32, &[-1, -1])],
            outputs: vec![TensorSpec::new("y", Datatype::Fp32, &[-1, -1])],
        }
    }

    fn predict(
        inputs: Vec<Tensor>,
        _: Option<Vec<(String, String)>>,
    ) -> Result<Vec<Tensor>, Error> {
        Ok(inputs)
    }
}

wasm_host_guest::export_model!(BadName);
