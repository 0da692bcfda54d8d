//! The digits classifier as a wasm-host model component: scikit-learn's
//! `MLPClassifier` for 8×8 handwritten digits, with its weights compiled in.
//!
//! It is the project's real example model, small enough to read and to test
//! against scikit-learn exactly (`tests/reference.rs`). The math lives in
//! [`mlp`], free of any wasm dependency, so native tools (the bench server)
//! can link this crate as an rlib; the component export exists only when
//! building for wasm.

pub mod mlp;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::mlp::Mlp;
    use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};

    struct Digits;

    impl Model for Digits {
        fn metadata() -> Metadata {
            let mlp = Mlp::embedded();
            Metadata {
                name: "digits".into(),
                version: "1".into(),
                // Pixels scaled to 0..1 (raw 0..16 / 16), one image per row.
                inputs: vec![TensorSpec::new(
                    "x",
                    Datatype::Fp32,
                    &[-1, mlp.input_size() as i64],
                )],
                outputs: vec![
                    TensorSpec::new("probabilities", Datatype::Fp32, &[-1, mlp.classes() as i64]),
                    TensorSpec::new("label", Datatype::Int64, &[-1]),
                ],
            }
        }

        fn predict(
            inputs: Vec<Tensor>,
            _parameters: Option<Vec<(String, String)>>,
        ) -> Result<Vec<Tensor>, Error> {
            let mlp = Mlp::embedded();
            let [x] = wasm_host_guest::inputs(inputs)?;
            if !matches!(x.shape[..], [_, cols] if cols == mlp.input_size() as u64) {
                return Err(Error::invalid_input(format!(
                    "x: expected shape [rows, {}], got {:?}",
                    mlp.input_size(),
                    x.shape
                )));
            }
            // Checks the data length against the shape, so `rows` is exact.
            let x = x.to_f32()?;
            let rows = x.len() / mlp.input_size();

            let mut probabilities = vec![0.0; rows * mlp.classes()];
            let mut labels = vec![0; rows];
            mlp.predict_batch(&x, &mut probabilities, &mut labels);
            // In the order `metadata()` declares them: probabilities, label.
            Ok(vec![
                Tensor::from_f32(vec![rows as u64, mlp.classes() as u64], &probabilities),
                Tensor::from_i64(vec![rows as u64], &labels),
            ])
        }
    }

    wasm_host_guest::export_model!(Digits);
}
