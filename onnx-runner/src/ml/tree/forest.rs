//! The trees of an ensemble, shared by the classifier and the regressor:
//! their nodes read from the attribute lists and checked whole (lengths,
//! child and leaf references, cycles) when the graph is read, and a row
//! walked down each tree to its leaf. Evaluation indexes without checks
//! because parsing here has already refused every index it could not follow.

use std::collections::{BTreeSet, HashMap};

use tract_onnx::tract_hir::internal::*;

use crate::ml::attrs::Attrs;
use crate::ml::rows;

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
pub(super) struct Forest {
    nodes: Vec<Node>,
    pub(super) roots: Vec<usize>,
    weights: Vec<(usize, f32)>,
    /// Features read by the trees: the input needs more than the highest.
    needs_features: usize,
    /// The distinct class or target ids the leaves name.
    pub(super) ids: BTreeSet<usize>,
    pub(super) all_weights_positive: bool,
}

impl Forest {
    /// `prefix` is `class` or `target`; `outputs` the number of classes or
    /// targets the leaves may name.
    pub(super) fn parse(a: &Attrs, prefix: &str, outputs: usize) -> TractResult<Forest> {
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

    pub(super) fn check_features(&self, name: &str, width: Option<usize>) -> TractResult<()> {
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
    pub(super) fn each_row(
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
