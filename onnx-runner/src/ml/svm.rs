//! SVMClassifier and SVMRegressor: scikit-learn's SVC, NuSVC, SVR, NuSVR
//! and OneClassSVM (libsvm models).
//!
//! Labels follow onnxruntime, which follows libsvm: with support vectors
//! the label is the class with the most one-against-one votes (the first
//! of equal counts), *also* when probabilities are asked for, so the label
//! and the highest probability can disagree, exactly as scikit-learn's
//! `predict` and `predict_proba` do. Probabilities are libsvm's pairwise
//! coupling, in f32 as onnxruntime computes them.

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;
use super::transform::{Post, SecondClass, logistic, write_scores};
use super::{Kernel, Out, check_row_width, check_width, labels, ml_op, rows, table};

pub fn register(reg: &mut OnnxOpRegister) {
    ml_op!(reg, "SVMClassifier", SvmClassifier::parse);
    ml_op!(reg, "SVMRegressor", SvmRegressor::parse);
}

#[derive(Debug, Clone, Copy)]
enum KernelType {
    Linear,
    Poly,
    Rbf,
    Sigmoid,
}

/// The kernel function with its parameters (`kernel_params`: gamma, coef0,
/// degree).
#[derive(Debug, Clone, Copy)]
struct SvmKernel {
    kind: KernelType,
    gamma: f32,
    coef0: f32,
    degree: f32,
}

impl SvmKernel {
    fn parse(a: &Attrs) -> TractResult<SvmKernel> {
        let kind = match a.string("kernel_type", "LINEAR").as_str() {
            "LINEAR" => KernelType::Linear,
            "POLY" => KernelType::Poly,
            "RBF" => KernelType::Rbf,
            "SIGMOID" => KernelType::Sigmoid,
            other => bail!("kernel_type {other:?} is none of LINEAR, POLY, RBF, SIGMOID"),
        };
        let params = a.floats("kernel_params");
        let p = |i: usize| params.get(i).copied().unwrap_or(0.0);
        Ok(SvmKernel {
            kind,
            gamma: p(0),
            coef0: p(1),
            degree: p(2),
        })
    }

    fn apply(&self, x: &[f32], v: &[f32]) -> f32 {
        let dot = || x.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        match self.kind {
            KernelType::Linear => dot(),
            KernelType::Poly => (self.gamma * dot() + self.coef0).powf(self.degree),
            KernelType::Sigmoid => (self.gamma * dot() + self.coef0).tanh(),
            KernelType::Rbf => {
                let d: f32 = x.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum();
                (-self.gamma * d).exp()
            }
        }
    }
}

#[derive(Debug)]
struct SvmClassifier {
    kernel: SvmKernel,
    labels: Vec<i64>,
    /// Support vectors per class, their starts, and all of them row-major.
    per_class: Vec<usize>,
    starts: Vec<usize>,
    vectors: Vec<f32>,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    features: usize,
    post: Post,
}

impl SvmClassifier {
    fn parse(a: &Attrs) -> TractResult<SvmClassifier> {
        let labels = a.class_labels("classlabels_ints", "classlabels_strings")?;
        let classes = labels.len();
        if classes < 2 {
            bail!("classlabels_ints has {classes} labels: a classifier needs two or more");
        }
        let per_class = a.indices("vectors_per_class")?;
        let vectors = a.floats("support_vectors");
        let coefficients = a.floats("coefficients");
        let rho = a.floats("rho");
        let prob_a = a.floats("prob_a");
        let prob_b = a.floats("prob_b");
        let count: usize = per_class.iter().sum();
        if count == 0 {
            // A linear model (liblinear) has no support vectors; the
            // converters emit LinearClassifier for those.
            bail!("vectors_per_class is empty: a linear SVMClassifier is not served");
        }
        Attrs::expect_len("vectors_per_class", &per_class, classes, "one per class")?;
        if vectors.is_empty() || !vectors.len().is_multiple_of(count) {
            bail!(
                "support_vectors has {} values, not a multiple of the {count} support vectors",
                vectors.len()
            );
        }
        let pairs = classes * (classes - 1) / 2;
        Attrs::expect_len(
            "coefficients",
            &coefficients,
            (classes - 1) * count,
            "(classes - 1) × support vectors",
        )?;
        Attrs::expect_len("rho", &rho, pairs, "one per pair of classes")?;
        if !prob_a.is_empty() || !prob_b.is_empty() {
            Attrs::expect_len("prob_a", &prob_a, pairs, "one per pair of classes")?;
            Attrs::expect_len("prob_b", &prob_b, pairs, "one per pair of classes")?;
        }
        let starts = per_class
            .iter()
            .scan(0, |at, &n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        Ok(SvmClassifier {
            kernel: SvmKernel::parse(a)?,
            labels,
            starts,
            features: vectors.len() / count,
            per_class,
            vectors,
            coefficients,
            rho,
            prob_a,
            prob_b,
            post: Post::parse(&a.string("post_transform", "NONE"))?,
        })
    }

    fn width(&self) -> usize {
        let classes = self.labels.len();
        match (self.prob_a.is_empty(), classes) {
            (false, _) => classes,
            (true, 2) => 2,
            (true, _) => classes * (classes - 1) / 2,
        }
    }

    /// One row's label and scores.
    fn row(&self, x: &[f32]) -> (i64, Vec<f32>) {
        let classes = self.labels.len();
        let count = self.coefficients.len() / (classes - 1);
        let kernels: Vec<f32> = self
            .vectors
            .chunks(self.features)
            .map(|v| self.kernel.apply(x, v))
            .collect();
        let mut votes = vec![0usize; classes];
        let mut scores = Vec::with_capacity(classes * (classes - 1) / 2);
        let mut pair = 0;
        for i in 0..classes - 1 {
            for j in i + 1..classes {
                let mut sum = 0f64;
                let (si, ni) = (self.starts[i], self.per_class[i]);
                let (sj, nj) = (self.starts[j], self.per_class[j]);
                let row_j = count * (j - 1);
                let row_i = count * i;
                for m in 0..ni {
                    sum += (self.coefficients[row_j + si + m] * kernels[si + m]) as f64;
                }
                for m in 0..nj {
                    sum += (self.coefficients[row_i + sj + m] * kernels[sj + m]) as f64;
                }
                sum += self.rho[pair] as f64;
                pair += 1;
                scores.push(sum as f32);
                votes[if sum > 0.0 { i } else { j }] += 1;
            }
        }
        // The first class with the most votes.
        let mut best = 0;
        for k in 1..classes {
            if votes[k] > votes[best] {
                best = k;
            }
        }
        let label = self.labels[best];
        if !self.prob_a.is_empty() {
            let mut pairwise = vec![0f32; classes * classes];
            let mut index = 0;
            for i in 0..classes - 1 {
                for j in i + 1..classes {
                    let p = 1.0 - logistic(scores[index] * self.prob_a[index] + self.prob_b[index]);
                    let p = p.clamp(1e-7, 1.0 - 1e-7);
                    pairwise[i * classes + j] = p;
                    pairwise[j * classes + i] = 1.0 - p;
                    index += 1;
                }
            }
            let mut probabilities = multiclass_probability(classes, &pairwise);
            self.post.apply(&mut probabilities);
            return (label, probabilities);
        }
        if classes == 2 {
            // One score: its negation goes first, or 1 - score with a
            // transform other than NONE (onnxruntime's rule).
            let second = if self.post == Post::None {
                SecondClass::Negation
            } else {
                SecondClass::Complement
            };
            let mut out = write_scores(scores, self.post, second);
            out.resize(2, 0.0);
            return (label, out);
        }
        self.post.apply(&mut scores);
        (label, scores)
    }
}

/// libsvm's pairwise coupling (Wu, Lin and Weng 2004, method 2), in f32
/// with onnxruntime's stopping rule.
fn multiclass_probability(k: usize, r: &[f32]) -> Vec<f32> {
    let mut q = vec![0f32; k * k];
    let mut qp = vec![0f32; k];
    let mut p = vec![1.0 / k as f32; k];
    let eps = 0.005 / k as f32;
    for i in 0..k {
        for j in 0..i {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = q[j * k + i];
        }
        for j in i + 1..k {
            q[i * k + i] += r[j * k + i] * r[j * k + i];
            q[i * k + j] = -r[j * k + i] * r[i * k + j];
        }
    }
    for _ in 0..100 {
        let mut pqp = 0f32;
        for i in 0..k {
            qp[i] = 0.0;
            for j in 0..k {
                qp[i] += q[i * k + j] * p[j];
            }
            pqp += p[i] * qp[i];
        }
        let max_error = (0..k).map(|i| (qp[i] - pqp).abs()).fold(0f32, f32::max);
        if max_error < eps {
            break;
        }
        for i in 0..k {
            let diff = (-qp[i] + pqp) / q[i * k + i];
            p[i] += diff;
            pqp = (pqp + diff * (diff * q[i * k + i] + 2.0 * qp[i])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[i * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
    p
}

impl Kernel for SvmClassifier {
    fn name(&self) -> &'static str {
        "SVMClassifier"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![
            Out::Rows(DatumType::I64),
            Out::Table(DatumType::F32, self.width()),
        ]
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        check_width("SVMClassifier", inputs[0], self.features)
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n, c) = rows::<f32>(&inputs[0])?;
        check_row_width("SVMClassifier", c, self.features)?;
        let width = self.width();
        let mut chosen = Vec::with_capacity(n);
        let mut out = Vec::with_capacity(n * width);
        for row in x.chunks(c.max(1)).take(n) {
            let (label, scores) = self.row(row);
            chosen.push(label);
            out.extend(scores);
        }
        Ok(tvec!(labels(chosen)?, table(out, n, width)?))
    }
}

#[derive(Debug)]
struct SvmRegressor {
    kernel: SvmKernel,
    /// Support vectors row-major (empty for a linear model).
    vectors: Vec<f32>,
    coefficients: Vec<f32>,
    rho: f32,
    features: usize,
    one_class: bool,
    post: Post,
}

impl SvmRegressor {
    fn parse(a: &Attrs) -> TractResult<SvmRegressor> {
        let supports = usize::try_from(a.int("n_supports", 0))
            .map_err(|_| format_err!("n_supports is negative"))?;
        let vectors = a.floats("support_vectors");
        let coefficients = a.floats("coefficients");
        let rho = a.floats("rho");
        if rho.len() != 1 {
            bail!("rho has {} values: a regressor needs one", rho.len());
        }
        let features = if supports > 0 {
            if vectors.is_empty() || !vectors.len().is_multiple_of(supports) {
                bail!(
                    "support_vectors has {} values, not a multiple of n_supports {supports}",
                    vectors.len()
                );
            }
            Attrs::expect_len(
                "coefficients",
                &coefficients,
                supports,
                "one per support vector (n_supports)",
            )?;
            vectors.len() / supports
        } else {
            if coefficients.is_empty() {
                bail!("coefficients is empty");
            }
            coefficients.len()
        };
        Ok(SvmRegressor {
            kernel: if supports > 0 {
                SvmKernel::parse(a)?
            } else {
                SvmKernel {
                    kind: KernelType::Linear,
                    gamma: 0.0,
                    coef0: 0.0,
                    degree: 0.0,
                }
            },
            vectors,
            coefficients,
            rho: rho[0],
            features,
            one_class: a.int("one_class", 0) != 0,
            post: Post::parse(&a.string("post_transform", "NONE"))?,
        })
    }
}

impl Kernel for SvmRegressor {
    fn name(&self) -> &'static str {
        "SVMRegressor"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Table(DatumType::F32, 1)]
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        check_width("SVMRegressor", inputs[0], self.features)
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, n, c) = rows::<f32>(&inputs[0])?;
        check_row_width("SVMRegressor", c, self.features)?;
        let mut out = Vec::with_capacity(n);
        for row in x.chunks(c.max(1)).take(n) {
            let mut score = if self.vectors.is_empty() {
                self.kernel.apply(row, &self.coefficients)
            } else {
                self.vectors
                    .chunks(self.features)
                    .zip(&self.coefficients)
                    .map(|(v, w)| w * self.kernel.apply(row, v))
                    .sum::<f32>()
            } + self.rho;
            if self.one_class {
                score = if score > 0.0 { 1.0 } else { -1.0 };
            }
            out.extend(write_scores(vec![score], self.post, SecondClass::No));
        }
        Ok(tvec!(table(out, n, 1)?))
    }
}
