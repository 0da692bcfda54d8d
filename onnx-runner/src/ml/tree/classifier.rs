//! TreeEnsembleClassifier: the leaf weights summed per class, then a label
//! and scores by onnxruntime's classifier aggregator, with its special
//! cases for two classes. Apart from the regressor because those rules are
//! the classifier's alone.

use tract_onnx::tract_hir::internal::*;

use super::base_values;
use super::forest::Forest;
use crate::ml::attrs::Attrs;
use crate::ml::transform::{Post, SecondClass, write_scores};
use crate::ml::{Kernel, Out, features, labels, table};

#[derive(Debug)]
pub(super) struct TreeClassifier {
    forest: Forest,
    labels: Vec<i64>,
    base: Vec<f32>,
    post: Post,
    /// Two classes and the leaves score only one of them.
    binary_case: bool,
}

impl TreeClassifier {
    pub(super) fn parse(a: &Attrs) -> TractResult<TreeClassifier> {
        let labels = a.class_labels("classlabels_int64s", "classlabels_strings")?;
        if labels.len() < 2 {
            bail!(
                "classlabels_int64s has {} labels: a classifier needs two or more",
                labels.len()
            );
        }
        let forest = Forest::parse(a, "class", labels.len())?;
        let base = base_values(a)?;
        let ok = if labels.len() == 2 {
            base.len() <= 2
        } else {
            base.is_empty() || base.len() == labels.len()
        };
        if !ok {
            bail!(
                "base_values has {} values for {} classes",
                base.len(),
                labels.len()
            );
        }
        Ok(TreeClassifier {
            binary_case: labels.len() == 2 && forest.ids.len() == 1,
            forest,
            labels,
            base,
            post: Post::parse(&a.string("post_transform", "NONE"))?,
        })
    }

    /// One row's label and scores from the summed leaf weights, by
    /// onnxruntime's `TreeAggregatorClassifier::FinalizeScores`.
    fn finish(&self, mut scores: Vec<f32>, mut has: Vec<bool>) -> (i64, Vec<f32>) {
        let classes = self.labels.len();
        if classes > 2 {
            for (k, &b) in self.base.iter().enumerate() {
                if has[k] {
                    scores[k] += b;
                } else {
                    scores[k] = b;
                    has[k] = true;
                }
            }
            // The first class with the highest score among the scored ones.
            let mut best: Option<usize> = None;
            for k in 0..classes {
                if has[k] && best.is_none_or(|b| scores[k] > scores[b]) {
                    best = Some(k);
                }
            }
            let label = self.labels[best.unwrap_or(0)];
            return (label, write_scores(scores, self.post, SecondClass::No));
        }
        let mut second = SecondClass::No;
        match self.base[..] {
            [b0, b1] => {
                if has[1] {
                    // onnxruntime's rule: the score is class 0's plus the
                    // second base value, and class 0 gets its negation.
                    scores[1] = b1 + scores[0];
                    scores[0] = -scores[1];
                } else {
                    scores[1] += b1;
                    scores[0] += b0;
                }
            }
            [b0] => {
                scores[0] += b0;
                if !has[1] {
                    scores.pop();
                }
            }
            _ => {
                second = SecondClass::Negation;
                if !has[1] {
                    scores.pop();
                }
            }
        }
        let positive = if scores.len() == 2 && has[1] {
            scores[1]
        } else if has[0] {
            scores[0]
        } else {
            0.0
        };
        let label = if self.binary_case {
            if self.forest.all_weights_positive {
                second = SecondClass::Complement;
                if positive > 0.5 {
                    self.labels[1]
                } else {
                    self.labels[0]
                }
            } else {
                second = SecondClass::Negation;
                if positive > 0.0 {
                    self.labels[1]
                } else {
                    self.labels[0]
                }
            }
        } else if positive > 0.0 {
            // onnxruntime answers 1 or 0 here, not the class labels.
            1
        } else {
            0
        };
        let mut out = write_scores(scores, self.post, second);
        out.resize(2, 0.0);
        (label, out)
    }
}

impl Kernel for TreeClassifier {
    fn name(&self) -> &'static str {
        "TreeEnsembleClassifier"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![
            Out::Rows(DatumType::I64),
            Out::Table(DatumType::F32, self.labels.len()),
        ]
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        self.forest
            .check_features("TreeEnsembleClassifier", features(inputs[0]))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let classes = self.labels.len();
        let mut sums: Vec<(Vec<f32>, Vec<bool>)> = vec![];
        let n = self.forest.each_row(self.name(), &inputs[0], |r, leaf| {
            if r == sums.len() {
                sums.push((vec![0.0; classes], vec![false; classes]));
            }
            let (scores, has) = &mut sums[r];
            for &(k, w) in leaf {
                scores[k] += w;
                has[k] = true;
            }
        })?;
        sums.resize(n, (vec![0.0; classes], vec![false; classes]));
        let mut chosen = Vec::with_capacity(n);
        let mut out = Vec::with_capacity(n * classes);
        for (scores, has) in sums {
            let (label, row) = self.finish(scores, has);
            chosen.push(label);
            out.extend(row);
        }
        Ok(tvec!(labels(chosen)?, table(out, n, classes)?))
    }
}
