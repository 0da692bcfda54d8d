//! The ten `Reduce*` operators with their axes as a tensor the graph computes
//! or receives, not a constant.
//!
//! From opset 18 (13 for `ReduceSum`) the axes are the operator's second
//! input. tract-onnx 0.23.9 reads them only when they are a constant, and
//! refuses the graph otherwise ("expected axes as a constant"). Exporters
//! mostly write a constant, but a graph may compute its axes or take them as
//! an input, and ONNX's own backend cases do (126 of them).
//!
//! Here the parse is tract's, with one change: when the axes are known at
//! load time the node becomes tract's `Reduce` exactly as before; when they
//! are not, it becomes [`ReduceByInput`], which reads the axes on each call
//! and runs tract's own `Reduce` for them (through a one-node plan), so both
//! paths give the same answers. Its output's dimensions are new symbols: the
//! rank is known (from `keepdims` or the axes' count), the sizes are not.

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::nn::{Reduce, Reducer};

pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("ReduceL1", |c, node| parse(c, node, Reducer::L1));
    reg.insert("ReduceL2", |c, node| parse(c, node, Reducer::L2));
    reg.insert("ReduceLogSum", |c, node| parse(c, node, Reducer::LogSum));
    reg.insert("ReduceLogSumExp", |c, node| {
        parse(c, node, Reducer::LogSumExp)
    });
    reg.insert("ReduceMax", |c, node| parse(c, node, Reducer::Max));
    reg.insert("ReduceMean", |c, node| parse(c, node, Reducer::Mean));
    reg.insert("ReduceMin", |c, node| parse(c, node, Reducer::Min));
    reg.insert("ReduceProd", |c, node| parse(c, node, Reducer::Prod));
    reg.insert("ReduceSum", |c, node| parse(c, node, Reducer::Sum));
    reg.insert("ReduceSumSquare", |c, node| {
        parse(c, node, Reducer::SumSquare)
    });
}

/// tract-onnx's own reading of the node's attributes and opset, with the
/// axes-as-input form handed to [`AxesInput`].
fn parse(
    ctx: &ParsingContext,
    node: &NodeProto,
    reducer: Reducer,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let keep_dims = node.get_attr_opt("keepdims")?.unwrap_or(1i64) == 1;
    let axes_are_input = ctx.onnx_operator_set_version >= 18
        || (ctx.onnx_operator_set_version >= 13 && node.op_type == "ReduceSum");
    if !axes_are_input {
        let axes = node.get_attr_opt_vec("axes")?;
        return Ok((expand(Reduce::new(axes, keep_dims, reducer)), vec![]));
    }
    let noop_with_empty_axes = node.get_attr_opt("noop_with_empty_axes")?.unwrap_or(0i64) == 1;
    if node.input.len() < 2 {
        let axes = noop_with_empty_axes.then(Vec::new);
        return Ok((expand(Reduce::new(axes, keep_dims, reducer)), vec![]));
    }
    Ok((
        expand(AxesInput {
            keep_dims,
            noop_with_empty_axes,
            reducer,
        }),
        vec![],
    ))
}

/// The axes, in `0..rank`, sorted, each once; empty means "all" unless
/// `noop_with_empty_axes`.
fn resolve(axes: &Tensor, rank: usize, noop_with_empty_axes: bool) -> TractResult<Vec<i64>> {
    let axes = axes.cast_to::<i64>()?;
    let axes = axes.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
    if axes.is_empty() {
        return Ok(if noop_with_empty_axes {
            vec![]
        } else {
            (0..rank as i64).collect()
        });
    }
    let rank = rank as i64;
    let mut resolved = axes
        .iter()
        .map(|&axis| {
            if (-rank..rank).contains(&axis) {
                Ok(axis.rem_euclid(rank.max(1)))
            } else {
                bail!("axis {axis} is out of range for a tensor of rank {rank}")
            }
        })
        .collect::<TractResult<Vec<_>>>()?;
    resolved.sort_unstable();
    resolved.dedup();
    Ok(resolved)
}

/// A reduction whose axes are the node's second input.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct AxesInput {
    keep_dims: bool,
    noop_with_empty_axes: bool,
    reducer: Reducer,
}

impl AxesInput {
    fn at(&self, axes: Vec<i64>) -> Reduce {
        Reduce::new(Some(axes), self.keep_dims, self.reducer)
    }

    /// The output's rank for `count` axes, as ONNX defines it.
    fn output_rank(&self, rank: usize, count: usize) -> usize {
        if self.keep_dims || (count == 0 && self.noop_with_empty_axes) {
            rank
        } else if count == 0 {
            0
        } else {
            rank.saturating_sub(count)
        }
    }
}

impl Expansion for AxesInput {
    fn name(&self) -> StaticName {
        "ReduceByInput".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.given_2(&inputs[0].rank, &inputs[1].shape, move |s, rank, axes| {
            if let Some(count) = axes.first().and_then(|d| d.to_usize().ok()) {
                s.equals(
                    &outputs[0].rank,
                    self.output_rank(rank as usize, count) as i64,
                )?;
            }
            Ok(())
        })?;
        s.given_2(&inputs[0].shape, &inputs[1].value, move |s, shape, axes| {
            let axes = resolve(&axes, shape.len(), self.noop_with_empty_axes)?;
            s.equals(&outputs[0].shape, self.at(axes).output_shape(&shape))
        })
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let rank = model.outlet_fact(inputs[0])?.rank();
        if let Some(axes) = model.outlet_fact(inputs[1])?.konst.clone() {
            let axes = resolve(&axes, rank, self.noop_with_empty_axes)?;
            return self.at(axes).wire(name, model, &inputs[..1]);
        }
        let count = model
            .outlet_fact(inputs[1])?
            .shape
            .as_concrete()
            .and_then(|s| s.first().copied());
        let Some(count) = count else {
            bail!(
                "ReduceByInput node `{name}`: the number of its axes must be known when the model loads"
            );
        };
        let shape = (0..self.output_rank(rank, count))
            .map(|_| model.symbols.new_with_prefix("reduced").to_dim())
            .collect();
        model.wire_node(
            name,
            ReduceByInput {
                reduce: self.clone(),
                shape,
            },
            inputs,
        )
    }
}

/// Reads the axes when it runs, then reduces as tract's `Reduce` would.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ReduceByInput {
    reduce: AxesInput,
    /// The output's dimensions: symbols, one per output axis.
    shape: TVec<TDim>,
}

impl Op for ReduceByInput {
    fn name(&self) -> StaticName {
        "ReduceByInput".into()
    }

    op_as_typed_op!();
}

impl TypedOp for ReduceByInput {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(&*self.shape)))
    }

    as_op!();
}

impl EvalOp for ReduceByInput {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, axes) = args_2!(inputs);
        let axes = resolve(&axes, x.rank(), self.reduce.noop_with_empty_axes)?;
        let mut model = TypedModel::default();
        let source = model.add_source("x", x.datum_type().fact(x.shape()))?;
        let output = self.reduce.at(axes).wire("reduce", &mut model, &[source])?;
        model.select_output_outlets(&output)?;
        crate::extrema::make_exact(&mut model)?;
        let mut outputs = model.into_runnable()?.run(tvec!(x))?;
        Ok(tvec!(outputs.remove(0)))
    }
}
