//! `ReduceMax` and `ReduceMin` of floats made exact where every element is
//! an infinity of the reduction's own sign, or where nothing is reduced.
//!
//! tract-core 0.23.9 starts a float max at the type's lowest *finite* value
//! (`f32::MIN`) and a min at its highest, so the max of a row that is all
//! `-inf` comes out as `-3.4e38`, not `-inf`. ONNX (and onnxruntime) say
//! `-inf`, and real graphs test for it: the Attention function of opsets 23
//! and 24 finds a fully masked row by `ReduceMax(mask) == -inf` and zeroes
//! its probabilities. With tract's value the test is false, the row's
//! softmax of all `-inf` stays NaN, and the answer is wrong (found by the
//! backend's `test_attention_*_fullymasked_*_expanded` cases).
//!
//! The pass runs on the typed graph, after every ONNX form of the reducers
//! (axes as an attribute or an input, any `keepdims`) has become tract's one
//! `Reduce` node, and rewires each float max or min as
//! `Where(any(x != edge), reduce(x), edge)` over the same axes, with `edge`
//! `-inf` for a max and `+inf` for a min. Everything stays tract's own
//! operators, so the optimiser still sees the graph; NaN is never equal to
//! `edge`, so a row holding one keeps tract's answer.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_core::ops::logic::{Iff, comp_ne};
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

/// Rewrites every float `Reduce<Max>` and `Reduce<Min>` in `model`.
pub fn make_exact(model: &mut TypedModel) -> TractResult<()> {
    let targets: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|node| {
            node.op_as::<Reduce>()
                .is_some_and(|r| matches!(r.reducer, Reducer::Max | Reducer::Min))
        })
        .map(|node| node.id)
        .collect();
    for id in targets {
        let node = model.node(id);
        let reduce = node.op_as::<Reduce>().expect("chosen above").clone();
        let input = node.inputs[0];
        let fact = model.outlet_fact(input)?.clone();
        if !fact.datum_type.is_float() {
            continue;
        }
        let edge = if reduce.reducer == Reducer::Max {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        let edge = tensor0(edge)
            .cast_to_dt(fact.datum_type)?
            .into_owned()
            .broadcast_into_rank(fact.rank())?;
        let name = node.name.clone();

        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, input)?;
        let reduced = patch.wire_node(&name, reduce.clone(), &[x])?[0];
        let edge = patch.add_const(format!("{name}.edge"), edge)?;
        let other = patch.wire_node(
            format!("{name}.not_edge"),
            TypedBinOp(comp_ne(), None),
            &[x, edge],
        )?;
        let other = patch.wire_node(
            format!("{name}.not_edge_u8"),
            cast(u8::datum_type()),
            &other,
        )?;
        // A max over 0 and 1 is "any"; over no element at all it is 0.
        let any = Reduce::new(reduce.axes.clone(), Reducer::Max);
        let any = patch.wire_node(format!("{name}.any_not_edge"), any, &other)?;
        let any = patch.wire_node(format!("{name}.any"), cast(bool::datum_type()), &any)?[0];
        let exact = patch.wire_node(format!("{name}.exact"), Iff, &[any, reduced, edge])?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), exact)?;
        patch.obliterate(id)?;
        patch.apply(model)?;
    }
    Ok(())
}
