//! TreeEnsembleRegressor: the leaf weights folded per target by the
//! aggregate function (sum, average, min, max), then base values and the
//! post-transform, by onnxruntime's regression aggregators.

use tract_onnx::tract_hir::internal::*;

use super::base_values;
use super::forest::Forest;
use crate::ml::attrs::Attrs;
use crate::ml::transform::{Post, SecondClass, write_scores};
use crate::ml::{Kernel, Out, features, table};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug)]
pub(super) struct TreeRegressor {
    forest: Forest,
    targets: usize,
    aggregate: Aggregate,
    base: Vec<f32>,
    post: Post,
}

impl TreeRegressor {
    pub(super) fn parse(a: &Attrs) -> TractResult<TreeRegressor> {
        let targets = usize::try_from(a.int("n_targets", 1))
            .ok()
            .filter(|&t| t > 0)
            .ok_or_else(|| format_err!("n_targets must be 1 or more"))?;
        let aggregate = match a.string("aggregate_function", "SUM").as_str() {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => bail!("aggregate_function {other:?} is none of SUM, AVERAGE, MIN, MAX"),
        };
        let forest = Forest::parse(a, "target", targets)?;
        let base = base_values(a)?;
        if !base.is_empty() && base.len() != targets && !(targets == 1 && base.len() == 1) {
            bail!(
                "base_values has {} values for {targets} targets",
                base.len()
            );
        }
        Ok(TreeRegressor {
            forest,
            targets,
            aggregate,
            base,
            post: Post::parse(&a.string("post_transform", "NONE"))?,
        })
    }

    fn fold(&self, acc: &mut (f32, bool), w: f32) {
        let (score, has) = acc;
        *score = match self.aggregate {
            Aggregate::Sum | Aggregate::Average => *score + w,
            Aggregate::Min if *has => score.min(w),
            Aggregate::Max if *has => score.max(w),
            _ => w,
        };
        *has = true;
    }

    /// One row's values, by onnxruntime's regression aggregators.
    fn finish(&self, acc: Vec<(f32, bool)>) -> Vec<f32> {
        let trees = self.forest.roots.len() as f32;
        let values: Vec<f32> = acc
            .iter()
            .enumerate()
            .map(|(k, &(score, has))| {
                let base = self.base.get(k).copied().unwrap_or(0.0);
                match self.aggregate {
                    Aggregate::Sum => score + base,
                    Aggregate::Average => score / trees + base,
                    _ if has => score + base,
                    _ => base,
                }
            })
            .collect();
        write_scores(values, self.post, SecondClass::No)
    }
}

impl Kernel for TreeRegressor {
    fn name(&self) -> &'static str {
        "TreeEnsembleRegressor"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Table(DatumType::F32, self.targets)]
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        self.forest
            .check_features("TreeEnsembleRegressor", features(inputs[0]))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let targets = self.targets;
        let mut accs: Vec<Vec<(f32, bool)>> = vec![];
        let n = self.forest.each_row(self.name(), &inputs[0], |r, leaf| {
            if r == accs.len() {
                accs.push(vec![(0.0, false); targets]);
            }
            if targets == 1 {
                // onnxruntime's one-target path takes each leaf's first weight.
                if let Some(&(_, w)) = leaf.first() {
                    self.fold(&mut accs[r][0], w);
                }
            } else {
                for &(k, w) in leaf {
                    self.fold(&mut accs[r][k], w);
                }
            }
        })?;
        accs.resize(n, vec![(0.0, false); targets]);
        let mut out = Vec::with_capacity(n * targets);
        for acc in accs {
            out.extend(self.finish(acc));
        }
        Ok(tvec!(table(out, n, targets)?))
    }
}
