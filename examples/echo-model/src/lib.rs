//! The smallest useful model: it returns its input. A template to copy when
//! writing a model, and the stand-in the reload tests swap in for the digits
//! model (it takes the same rows and answers differently).

use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};

struct Echo;

impl Model for Echo {
    fn metadata() -> Metadata {
        Metadata {
            name: "echo".into(),
            version: "1".into(),
            // -1: any number of rows of any length.
            inputs: vec![TensorSpec::new("x", Datatype::Fp32, &[-1, -1])],
            outputs: vec![TensorSpec::new("y", Datatype::Fp32, &[-1, -1])],
        }
    }

    fn predict(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let x = wasm_host_guest::input(&inputs, "x")?;
        let values = x.to_f32()?;
        Ok(vec![Tensor::from_f32("y", x.shape.clone(), &values)])
    }
}

wasm_host_guest::export_model!(Echo);
