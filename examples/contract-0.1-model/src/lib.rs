//! A test fixture: an echo model built against the model contract 0.1.0,
//! as every model was before 0.2.0 dropped names from tensors. The host
//! must refuse it at load (exit 3, or a 400 from the model-control API)
//! with one line that says to rebuild it.
//!
//! `wit/model.wit` is a frozen copy of `wasm-host:model@0.1.0`; the bindings
//! are generated from it here, not by the guest SDK, which follows the
//! current contract.

wit_bindgen::generate!({
    world: "predictor",
    path: "wit",
});

use exports::wasm_host::model::model::{Error, Guest, ModelMetadata};
use wasm_host::model::types::{Datatype, Tensor, TensorSpec};

struct Echo;

impl Guest for Echo {
    fn metadata() -> ModelMetadata {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![-1, -1],
        };
        ModelMetadata {
            name: "echo".into(),
            version: "0.1".into(),
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
        }
    }

    /// `y = x`: in 0.1.0, a tensor carries its name.
    fn predict(
        inputs: Vec<Tensor>,
        _parameters: Vec<(String, String)>,
    ) -> Result<Vec<Tensor>, Error> {
        Ok(inputs
            .into_iter()
            .map(|x| Tensor {
                name: "y".into(),
                ..x
            })
            .collect())
    }
}

export!(Echo);
