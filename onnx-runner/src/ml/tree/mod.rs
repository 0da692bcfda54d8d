//! TreeEnsembleClassifier and TreeEnsembleRegressor: scikit-learn's
//! decision trees, random forests and gradient boosting, XGBoost and
//! LightGBM (through onnxmltools).
//!
//! Both attribute forms are read: the classic lists (`nodes_values`,
//! `class_weights`, `target_weights`, `base_values`) and ai.onnx.ml opset 3's
//! `*_as_tensor` doubles. The trees are checked whole when the graph is read
//! (list lengths, child and leaf references, feature numbers, cycles), so a
//! malformed ensemble fails `pack`, never a request, and evaluation only
//! follows indices it knows are valid.
//!
//! Scores, labels and the binary special cases follow onnxruntime's
//! aggregators: trees summed in order in f32, base values added after, a
//! label the first class with the highest score, and for two classes its
//! rules on one score (the positive class when the score passes 0.5 for
//! probabilities, 0 for margins).

mod classifier;
mod forest;
mod regressor;

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;
use super::ml_op;
use classifier::TreeClassifier;
use regressor::TreeRegressor;

pub fn register(reg: &mut OnnxOpRegister) {
    ml_op!(reg, "TreeEnsembleClassifier", TreeClassifier::parse);
    ml_op!(reg, "TreeEnsembleRegressor", TreeRegressor::parse);
}

fn base_values(a: &Attrs) -> TractResult<Vec<f32>> {
    Ok(a.floats_or_tensor("base_values")?
        .iter()
        .map(|&v| v as f32)
        .collect())
}
