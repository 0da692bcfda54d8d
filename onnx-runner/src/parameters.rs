//! Graphs whose shape-defining arguments arrive as inputs: the axes of a
//! Reduce (opset 18 made them an input), the shape of a Reshape or an
//! Expand, the sizes or scales of a Resize, the pads of a Pad, the splits of
//! a Split. tract plans a graph once for every request, and needs those
//! values to type it; when they come from the request, the plan cannot be
//! made at pack time.
//!
//! Such a graph is kept unplanned in the snapshot, with its small integer
//! inputs (rank 0 or 1, `int32` or `int64`) marked as parameters. A request
//! bakes its parameters' values into the graph as constants, and the plan
//! made from that is kept for the next request with the same values (the
//! [`MOST_PLANS`] most recent). Answers are those of the graph with those
//! constants, exactly; the first request with new values pays the planning.

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_hir::internal::{Factoid, bail};

/// Plans kept, by parameter values: a model's requests rarely use more than
/// a few sets of axes or shapes.
const MOST_PLANS: usize = 8;

/// The largest parameter input taken (elements): axes, shapes and pads are
/// a handful of numbers.
const MOST_VALUES: usize = 64;

pub struct PerValues {
    model: InferenceModel,
    /// The inputs (by position) whose values each plan bakes in.
    parameters: Vec<usize>,
    /// Plans by the parameters' values, most recently used last.
    plans: Mutex<Vec<(Vec<u8>, Arc<TypedRunnableModel>)>>,
}

/// The inputs that may set a graph's shapes: integers of rank 0 or 1.
pub fn candidates(model: &InferenceModel) -> Vec<usize> {
    (0..model.inputs.len())
        .filter(|&ix| {
            model.input_fact(ix).is_ok_and(|fact| {
                let integer = matches!(
                    fact.datum_type.concretize(),
                    Some(DatumType::I64 | DatumType::I32)
                );
                let small = fact.shape.rank().concretize().is_some_and(|rank| rank <= 1);
                integer && small
            })
        })
        .collect()
}

impl PerValues {
    /// The graph, if it has inputs that can be parameters (and others: a
    /// graph of parameters only has nothing to plan per request); `None` if
    /// not.
    pub fn new(model: InferenceModel) -> Option<PerValues> {
        let parameters = candidates(&model);
        if parameters.is_empty() {
            return None;
        }
        Some(PerValues {
            model,
            parameters,
            plans: Mutex::new(Vec::new()),
        })
    }

    /// Runs the graph on `values`, every input in the graph's order.
    pub fn run(&self, values: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut key = Vec::new();
        for &ix in &self.parameters {
            let value = &values[ix];
            if value.len() > MOST_VALUES {
                bail!(
                    "input #{ix} sets the graph's shapes and takes at most {MOST_VALUES} values, \
                     not {}",
                    value.len()
                );
            }
            key.extend_from_slice(&(value.rank() as u64).to_le_bytes());
            for &dim in value.shape() {
                key.extend_from_slice(&(dim as u64).to_le_bytes());
            }
            key.extend_from_slice(value.as_bytes());
        }
        let plan = self.plan(&key, &values)?;
        let rest: TVec<TValue> = values
            .into_iter()
            .enumerate()
            .filter(|(ix, _)| !self.parameters.contains(ix))
            .map(|(_, value)| value)
            .collect();
        plan.run(rest)
    }

    fn plan(&self, key: &[u8], values: &[TValue]) -> TractResult<Arc<TypedRunnableModel>> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = plans.iter().position(|(k, _)| k == key) {
            let entry = plans.remove(at);
            let plan = Arc::clone(&entry.1);
            plans.push(entry);
            return Ok(plan);
        }
        drop(plans);
        let plan = self.build(values)?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= MOST_PLANS {
            plans.remove(0);
        }
        plans.push((key.to_vec(), Arc::clone(&plan)));
        Ok(plan)
    }

    /// The graph with the parameters' values as constants, planned.
    fn build(&self, values: &[TValue]) -> TractResult<Arc<TypedRunnableModel>> {
        let mut model = self.model.clone();
        let outlets = model.input_outlets()?.to_vec();
        for &ix in &self.parameters {
            let outlet = outlets[ix];
            let tensor = values[ix].clone().into_tensor().into_arc_tensor();
            model.nodes[outlet.node].op = Box::new(Const::new(tensor.clone())?);
            model.set_outlet_fact(outlet, InferenceFact::from((*tensor).clone()))?;
        }
        model.inputs = outlets
            .iter()
            .enumerate()
            .filter(|(ix, _)| !self.parameters.contains(ix))
            .map(|(_, outlet)| *outlet)
            .collect();
        model.into_typed()?.into_optimized()?.into_runnable()
    }
}
