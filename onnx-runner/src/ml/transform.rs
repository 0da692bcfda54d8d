//! The post-transforms of ai.onnx.ml classifiers and regressors, computed
//! the way onnxruntime computes them (in f32, with its erfinv
//! approximation for PROBIT), since onnxruntime is what users compare with.

use tract_onnx::tract_hir::internal::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl Post {
    pub fn parse(name: &str) -> TractResult<Post> {
        Ok(match name {
            "NONE" => Post::None,
            "LOGISTIC" => Post::Logistic,
            "SOFTMAX" => Post::Softmax,
            "SOFTMAX_ZERO" => Post::SoftmaxZero,
            "PROBIT" => Post::Probit,
            other => bail!(
                "post_transform {other:?} is none of NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO, PROBIT"
            ),
        })
    }

    /// Applies the transform to one row of two or more scores.
    pub fn apply(self, scores: &mut [f32]) {
        match self {
            Post::None => (),
            Post::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            Post::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
            Post::Softmax => softmax(scores),
            Post::SoftmaxZero => softmax_zero(scores),
        }
    }
}

/// How a binary model's single score becomes two columns (onnxruntime's
/// `add_second_class`): with all weights positive the score is a
/// probability and the other column is `1 - p`; with mixed weights it is a
/// margin and the other column is its negation (or the logistic of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondClass {
    /// Leave a single score alone.
    No,
    Complement,
    Negation,
}

/// One row's scores written out: two or more scores are transformed; a
/// single score is expanded into two columns first (PROBIT aside, which
/// onnxruntime applies to the single score and leaves as one column).
pub fn write_scores(mut scores: Vec<f32>, post: Post, second: SecondClass) -> Vec<f32> {
    if scores.len() >= 2 {
        post.apply(&mut scores);
        return scores;
    }
    let Some(&s) = scores.first() else {
        return scores;
    };
    if post == Post::Probit {
        return vec![probit(s)];
    }
    match second {
        SecondClass::No => scores,
        SecondClass::Complement => vec![1.0 - s, s],
        SecondClass::Negation if post == Post::Logistic => vec![logistic(-s), logistic(s)],
        SecondClass::Negation => vec![-s, s],
    }
}

pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

/// onnxruntime's probit: `sqrt(2) * erfinv(2p - 1)`, with its closed-form
/// erfinv approximation (Winitzki's, a = 0.147), down to its rounded pi.
#[allow(clippy::approx_constant)]
pub fn probit(p: f32) -> f32 {
    let x = 2.0 * p - 1.0;
    let sign = if x < 0.0 { -1.0f32 } else { 1.0 };
    let y = (1.0 - x) * (1.0 + x);
    let log = y.ln();
    let v = 2.0 / (3.14159 * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    std::f32::consts::SQRT_2 * sign * v3.sqrt()
}

pub fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::MIN, f32::max);
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    values.iter_mut().for_each(|v| *v /= sum);
}

/// Softmax over the non-zero scores; zeros stay (nearly) zero.
pub fn softmax_zero(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::MIN, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        if v.abs() > 1e-7 {
            *v = (*v - max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    values.iter_mut().for_each(|v| *v /= sum);
}

/// The index of the first highest score (onnxruntime's tie rule).
pub fn first_max(scores: &[f32]) -> usize {
    let mut best = 0;
    for (ix, &s) in scores.iter().enumerate().skip(1) {
        if s > scores[best] {
            best = ix;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_max_keeps_the_first_of_equal_scores() {
        assert_eq!(first_max(&[0.25, 0.5, 0.5]), 1);
    }

    #[test]
    fn probit_of_a_half_is_zero() {
        assert!(probit(0.5).abs() < 1e-6);
    }
}
