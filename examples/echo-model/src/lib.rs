//! The smallest useful model: it returns its input (scaled by the request
//! parameter `scale`, to show parameters reaching a model). A template to copy when
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

    /// `y = x`, or `y = scale × x` with the request parameter `scale`.
    fn predict(
        inputs: Vec<Tensor>,
        parameters: Option<Vec<(String, String)>>,
    ) -> Result<Vec<Tensor>, Error> {
        let [x] = wasm_host_guest::inputs(inputs)?;
        let scale = match wasm_host_guest::parameter(&parameters, "scale") {
            Some(value) => value
                .parse::<f32>()
                .map_err(|_| Error::invalid_input(format!("scale: {value} is not a number")))?,
            // y = x: the input goes back as it came, with no copy.
            None => {
                x.check(Datatype::Fp32)?;
                return Ok(vec![x]);
            }
        };
        let values: Vec<f32> = x.to_f32()?.iter().map(|v| v * scale).collect();
        Ok(vec![Tensor::from_f32(x.shape.clone(), &values)])
    }
}

wasm_host_guest::export_model!(Echo);
