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

use std::collections::{BTreeSet, HashMap};

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;
use super::transform::{Post, SecondClass, write_scores};
use super::{Kernel, Out, features, labels, ml_op, rows, table};

pub fn register(reg: &mut OnnxOpRegister) {
    ml_op!(reg, "TreeEnsembleClassifier", TreeClassifier::parse);
    ml_op!(reg, "TreeEnsembleRegressor", TreeRegressor::parse);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    fn parse(name: &str) -> TractResult<Mode> {
        Ok(match name {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => Mode::Leaf,
            other => bail!("nodes_modes holds {other:?}, not a known node mode"),
        })
    }

    fn holds<T: PartialOrd>(self, x: T, threshold: T) -> bool {
        match self {
            Mode::Leq => x <= threshold,
            Mode::Lt => x < threshold,
            Mode::Gte => x >= threshold,
            Mode::Gt => x > threshold,
            Mode::Eq => x == threshold,
            Mode::Neq => x != threshold,
            Mode::Leaf => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    mode: Mode,
    feature: usize,
    /// The threshold as given (f64 in the `_as_tensor` form) and as f32,
    /// the precision onnxruntime compares float inputs in.
    threshold: f64,
    threshold32: f32,
    missing_goes_true: bool,
    when_true: usize,
    when_false: usize,
    /// This leaf's `(class or target, weight)` entries: `weights[leaf.0..leaf.1]`.
    leaf: (usize, usize),
}

/// The trees of an ensemble, validated, in onnxruntime's order: a tree's
/// root is its first node in the attribute lists, trees in the order their
/// first node appears.
#[derive(Debug)]
struct Forest {
    nodes: Vec<Node>,
    roots: Vec<usize>,
    weights: Vec<(usize, f32)>,
    /// Features read by the trees: the input needs more than the highest.
    needs_features: usize,
    /// The distinct class or target ids the leaves name.
    ids: BTreeSet<usize>,
    all_weights_positive: bool,
}

impl Forest {
    /// `prefix` is `class` or `target`; `outputs` the number of classes or
    /// targets the leaves may name.
    fn parse(a: &Attrs, prefix: &str, outputs: usize) -> TractResult<Forest> {
        let tree_ids = a.indices("nodes_treeids")?;
        let n = tree_ids.len();
        if n == 0 {
            bail!("nodes_treeids is empty: the ensemble has no nodes");
        }
        let node_ids = a.indices("nodes_nodeids")?;
        let feature_ids = a.indices("nodes_featureids")?;
        let modes = a.strings("nodes_modes");
        let true_ids = a.indices("nodes_truenodeids")?;
        let false_ids = a.indices("nodes_falsenodeids")?;
        let values = a.floats_or_tensor("nodes_values")?;
        let missing = a.ints("nodes_missing_value_tracks_true");
        let what = "one per node (nodes_treeids)";
        Attrs::expect_len("nodes_nodeids", &node_ids, n, what)?;
        Attrs::expect_len("nodes_featureids", &feature_ids, n, what)?;
        Attrs::expect_len("nodes_modes", &modes, n, what)?;
        Attrs::expect_len("nodes_truenodeids", &true_ids, n, what)?;
        Attrs::expect_len("nodes_falsenodeids", &false_ids, n, what)?;
        Attrs::expect_len("nodes_values", &values, n, what)?;
        if !missing.is_empty() {
            Attrs::expect_len("nodes_missing_value_tracks_true", &missing, n, what)?;
        }

        let mut index: HashMap<(usize, usize), usize> = HashMap::with_capacity(n);
        let mut roots = vec![];
        let mut seen_trees = BTreeSet::new();
        for ix in 0..n {
            if index.insert((tree_ids[ix], node_ids[ix]), ix).is_some() {
                bail!(
                    "node {} of tree {} is defined twice",
                    node_ids[ix],
                    tree_ids[ix]
                );
            }
            if seen_trees.insert(tree_ids[ix]) {
                roots.push(ix);
            }
        }
        let child = |ix: usize, id: usize, side: &str| -> TractResult<usize> {
            index.get(&(tree_ids[ix], id)).copied().ok_or_else(|| {
                format_err!(
                    "node {} of tree {} has {side} child {id}, which does not exist",
                    node_ids[ix],
                    tree_ids[ix]
                )
            })
        };
        let mut nodes = Vec::with_capacity(n);
        let mut needs_features = 0;
        for ix in 0..n {
            let mode = Mode::parse(&modes[ix])?;
            let (when_true, when_false) = if mode == Mode::Leaf {
                (0, 0)
            } else {
                needs_features = needs_features.max(feature_ids[ix] + 1);
                (
                    child(ix, true_ids[ix], "true")?,
                    child(ix, false_ids[ix], "false")?,
                )
            };
            nodes.push(Node {
                mode,
                feature: feature_ids[ix],
                threshold: values[ix],
                threshold32: values[ix] as f32,
                missing_goes_true: missing.get(ix).is_some_and(|&m| m != 0),
                when_true,
                when_false,
                leaf: (0, 0),
            });
        }
        check_acyclic(&nodes, &roots, &node_ids, &tree_ids)?;

        let name = |s: &str| format!("{prefix}_{s}");
        let leaf_trees = a.indices(&name("treeids"))?;
        let leaf_nodes = a.indices(&name("nodeids"))?;
        let leaf_ids = a.indices(&name("ids"))?;
        let leaf_weights = a.floats_or_tensor(&name("weights"))?;
        let m = leaf_trees.len();
        let what = format!("one per leaf weight ({})", name("treeids"));
        Attrs::expect_len(&name("nodeids"), &leaf_nodes, m, &what)?;
        Attrs::expect_len(&name("ids"), &leaf_ids, m, &what)?;
        Attrs::expect_len(&name("weights"), &leaf_weights, m, &what)?;
        // Each leaf's entries, in the order the lists give them (the order
        // onnxruntime adds them in).
        let mut per_leaf: Vec<Vec<(usize, f32)>> = vec![vec![]; n];
        for k in 0..m {
            let Some(&ix) = index.get(&(leaf_trees[k], leaf_nodes[k])) else {
                bail!(
                    "{} names node {} of tree {}, which does not exist",
                    name("nodeids"),
                    leaf_nodes[k],
                    leaf_trees[k]
                );
            };
            if nodes[ix].mode != Mode::Leaf {
                bail!(
                    "{} names node {} of tree {}, which is not a leaf",
                    name("nodeids"),
                    leaf_nodes[k],
                    leaf_trees[k]
                );
            }
            if leaf_ids[k] >= outputs {
                bail!(
                    "{} holds {}, but the model has {outputs} {prefix}{}",
                    name("ids"),
                    leaf_ids[k],
                    if prefix == "class" { "es" } else { "s" }
                );
            }
            per_leaf[ix].push((leaf_ids[k], leaf_weights[k] as f32));
        }
        let mut weights = Vec::with_capacity(m);
        for (node, entries) in nodes.iter_mut().zip(per_leaf) {
            let start = weights.len();
            weights.extend(entries);
            node.leaf = (start, weights.len());
        }
        Ok(Forest {
            nodes,
            roots,
            ids: leaf_ids.iter().copied().collect(),
            all_weights_positive: leaf_weights.iter().all(|&w| w >= 0.0),
            weights,
            needs_features,
        })
    }

    fn check_features(&self, name: &str, width: Option<usize>) -> TractResult<()> {
        match width {
            Some(w) if w < self.needs_features => bail!(
                "{name} reads feature {} but the input has {w} features per row",
                self.needs_features - 1
            ),
            _ => Ok(()),
        }
    }

    /// The leaf one row reaches in the tree rooted at `root`.
    fn leaf<T: Copy + PartialOrd>(
        &self,
        root: usize,
        row: &[T],
        threshold: impl Fn(&Node) -> T,
        nan: impl Fn(T) -> bool,
    ) -> &[(usize, f32)] {
        let mut node = &self.nodes[root];
        while node.mode != Mode::Leaf {
            let x = row[node.feature];
            let go_true = node.mode.holds(x, threshold(node)) || (node.missing_goes_true && nan(x));
            node = &self.nodes[if go_true {
                node.when_true
            } else {
                node.when_false
            }];
        }
        &self.weights[node.leaf.0..node.leaf.1]
    }

    /// Calls `visit` with the leaf entries each tree gives each row, trees
    /// in order; the input is compared in f64 when it is f64 and in f32
    /// otherwise, as onnxruntime does.
    fn each_row(
        &self,
        name: &str,
        input: &TValue,
        mut visit: impl FnMut(usize, &[(usize, f32)]),
    ) -> TractResult<usize> {
        if input.datum_type() == DatumType::F64 {
            let (x, n, c) = rows::<f64>(input)?;
            self.check_features(name, Some(c))?;
            for (r, row) in x.chunks(c.max(1)).take(n).enumerate() {
                for &root in &self.roots {
                    visit(r, self.leaf(root, row, |nd| nd.threshold, f64::is_nan));
                }
            }
            Ok(n)
        } else {
            let (x, n, c) = rows::<f32>(input)?;
            self.check_features(name, Some(c))?;
            for (r, row) in x.chunks(c.max(1)).take(n).enumerate() {
                for &root in &self.roots {
                    visit(r, self.leaf(root, row, |nd| nd.threshold32, f32::is_nan));
                }
            }
            Ok(n)
        }
    }
}

/// Refuses a tree in which some path comes back to a node it has passed:
/// evaluating it would never reach a leaf.
fn check_acyclic(
    nodes: &[Node],
    roots: &[usize],
    node_ids: &[usize],
    tree_ids: &[usize],
) -> TractResult<()> {
    // 0: not visited, 1: on the current path, 2: done.
    let mut state = vec![0u8; nodes.len()];
    for &root in roots {
        let mut stack = vec![(root, false)];
        while let Some((ix, leaving)) = stack.pop() {
            if leaving {
                state[ix] = 2;
                continue;
            }
            match state[ix] {
                1 => bail!(
                    "tree {} has a cycle through node {}: a row would never reach a leaf",
                    tree_ids[ix],
                    node_ids[ix]
                ),
                2 => continue,
                _ => (),
            }
            state[ix] = 1;
            stack.push((ix, true));
            let node = &nodes[ix];
            if node.mode != Mode::Leaf {
                for next in [node.when_true, node.when_false] {
                    if state[next] == 1 {
                        bail!(
                            "tree {} has a cycle through node {}: a row would never reach a leaf",
                            tree_ids[next],
                            node_ids[next]
                        );
                    }
                    if state[next] == 0 {
                        stack.push((next, false));
                    }
                }
            }
        }
    }
    Ok(())
}

fn base_values(a: &Attrs) -> TractResult<Vec<f32>> {
    Ok(a.floats_or_tensor("base_values")?
        .iter()
        .map(|&v| v as f32)
        .collect())
}

#[derive(Debug)]
struct TreeClassifier {
    forest: Forest,
    labels: Vec<i64>,
    base: Vec<f32>,
    post: Post,
    /// Two classes and the leaves score only one of them.
    binary_case: bool,
}

impl TreeClassifier {
    fn parse(a: &Attrs) -> TractResult<TreeClassifier> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug)]
struct TreeRegressor {
    forest: Forest,
    targets: usize,
    aggregate: Aggregate,
    base: Vec<f32>,
    post: Post,
}

impl TreeRegressor {
    fn parse(a: &Attrs) -> TractResult<TreeRegressor> {
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
