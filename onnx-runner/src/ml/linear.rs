//! LinearClassifier and LinearRegressor: scikit-learn's LogisticRegression,
//! LinearSVC, SGD*, Ridge, LinearRegression and friends.

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;
use super::transform::{Post, SecondClass, first_max, write_scores};
use super::{Kernel, Out, check_row_width, check_width, labels, ml_op, rows, table};

pub fn register(reg: &mut OnnxOpRegister) {
    ml_op!(reg, "LinearClassifier", LinearClassifier::parse);
    ml_op!(reg, "LinearRegressor", LinearRegressor::parse);
}

/// `coefficients` as `targets` rows of features, checked to divide evenly.
fn coefficient_rows(coefficients: &[f32], targets: usize) -> TractResult<usize> {
    if targets == 0 {
        bail!("the model has no classes or targets");
    }
    if coefficients.is_empty() || !coefficients.len().is_multiple_of(targets) {
        bail!(
            "coefficients has {} values, not a multiple of the {targets} classes or targets",
            coefficients.len()
        );
    }
    Ok(coefficients.len() / targets)
}

/// `x · coefficients^T + intercepts` for one row, in f32.
fn scores(x: &[f32], coefficients: &[f32], intercepts: &[f32], targets: usize) -> Vec<f32> {
    let c = x.len();
    (0..targets)
        .map(|t| {
            let w = &coefficients[t * c..(t + 1) * c];
            let dot: f32 = x.iter().zip(w).map(|(a, b)| a * b).sum();
            dot + intercepts.get(t).copied().unwrap_or(0.0)
        })
        .collect()
}

#[derive(Debug)]
struct LinearClassifier {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    classes: usize,
    features: usize,
    labels: Vec<i64>,
    post: Post,
}

impl LinearClassifier {
    fn parse(a: &Attrs) -> TractResult<LinearClassifier> {
        let coefficients = a.floats("coefficients");
        let intercepts = a.floats("intercepts");
        let labels = a.class_labels("classlabels_ints", "classlabels_strings")?;
        // onnxruntime counts the classes by the intercepts.
        let classes = intercepts.len();
        let features = coefficient_rows(&coefficients, classes)?;
        if classes == 1 {
            if labels.len() > 2 {
                bail!(
                    "one score cannot choose among {} class labels",
                    labels.len()
                );
            }
        } else if labels.len() != classes {
            bail!(
                "classlabels_ints has {} labels for {classes} classes (intercepts)",
                labels.len()
            );
        }
        Ok(LinearClassifier {
            coefficients,
            intercepts,
            classes,
            features,
            labels,
            post: Post::parse(&a.string("post_transform", "NONE"))?,
        })
    }

    /// One score and two labels: the scores get a second column.
    fn binary(&self) -> bool {
        self.classes == 1 && self.labels.len() == 2
    }
}

impl Kernel for LinearClassifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
    }
    fn outputs(&self) -> Vec<Out> {
        let width = if self.binary() { 2 } else { self.classes };
        vec![Out::Rows(DatumType::I64), Out::Table(DatumType::F32, width)]
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        check_width("LinearClassifier", inputs[0], self.features)
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n, c) = rows::<f32>(&inputs[0])?;
        check_row_width("LinearClassifier", c, self.features)?;
        let width = if self.binary() { 2 } else { self.classes };
        let mut out = Vec::with_capacity(n * width);
        let mut chosen = Vec::with_capacity(n);
        for row in x.chunks(c.max(1)).take(n) {
            let s = scores(row, &self.coefficients, &self.intercepts, self.classes);
            chosen.push(if self.classes == 1 {
                let (negative, positive) = match self.labels[..] {
                    [neg, pos] => (neg, pos),
                    _ => (0, 1),
                };
                if s[0] > 0.0 { positive } else { negative }
            } else {
                self.labels[first_max(&s)]
            });
            let second = if self.binary() {
                SecondClass::Complement
            } else {
                SecondClass::No
            };
            out.extend(write_scores(s, self.post, second));
        }
        Ok(tvec!(labels(chosen)?, table(out, n, width)?))
    }
}

#[derive(Debug)]
struct LinearRegressor {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
    features: usize,
    post: Post,
}

impl LinearRegressor {
    fn parse(a: &Attrs) -> TractResult<LinearRegressor> {
        let coefficients = a.floats("coefficients");
        let intercepts = a.floats("intercepts");
        let targets =
            usize::try_from(a.int("targets", 1)).map_err(|_| format_err!("targets is negative"))?;
        let features = coefficient_rows(&coefficients, targets)?;
        if !intercepts.is_empty() && intercepts.len() != targets {
            bail!(
                "intercepts has {} values for {targets} targets",
                intercepts.len()
            );
        }
        Ok(LinearRegressor {
            coefficients,
            intercepts,
            targets,
            features,
            post: Post::parse(&a.string("post_transform", "NONE"))?,
        })
    }
}

impl Kernel for LinearRegressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Table(DatumType::F32, self.targets)]
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        check_width("LinearRegressor", inputs[0], self.features)
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n, c) = rows::<f32>(&inputs[0])?;
        check_row_width("LinearRegressor", c, self.features)?;
        let mut out = Vec::with_capacity(n * self.targets);
        for row in x.chunks(c.max(1)).take(n) {
            let s = scores(row, &self.coefficients, &self.intercepts, self.targets);
            out.extend(write_scores(s, self.post, SecondClass::No));
        }
        Ok(tvec!(table(out, n, self.targets)?))
    }
}
