//! Standard ONNX operators whose tract-onnx 0.23.9 version gives answers
//! that differ from onnxruntime's, replaced in the register by versions that
//! follow the ONNX specification (and onnxruntime) exactly.
//!
//! Found by the backend operator tests (tests/python/onnx_conformance.py),
//! where each was a wrong answer, the worst outcome a model server has:
//! - `Celu`: tract computes `max(0, x) + min(0, exp(x/α) - 1)`, without the
//!   factor α on the negative side, so every α other than 1 answers wrong.
//! - `BitShift`: tract shifts with Rust's `<<` and `>>`, which mask a shift
//!   count of at least the type's width (or a negative one) instead of
//!   saturating, as the specification and numpy do: such a shift gives 0,
//!   or -1 for a right shift of a negative value.

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ndarray::Zip;
use tract_onnx::tract_core::ops::math::{add, div, exp, max, min, mul, sub};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::activations::broadcast_scalar;
use tract_onnx::tract_hir::ops::binary::wire_rank_broadcast;

pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("Celu", celu);
    reg.insert("BitShift", bit_shift);
}

fn celu(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let alpha = node.get_attr_opt("alpha")?.unwrap_or(1.0f32);
    if alpha == 0.0 || !alpha.is_finite() {
        bail!(
            "Celu node `{}`: alpha must be finite and not zero, it is {alpha}",
            node.name
        );
    }
    Ok((expand(Celu(alpha)), vec![]))
}

/// `max(0, x) + min(0, α · (exp(x / α) - 1))`, computed in the input's type.
#[derive(Debug, Clone)]
struct Celu(f32);

impl Expansion for Celu {
    fn name(&self) -> StaticName {
        "Celu".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let constant = |model: &mut TypedModel, what: &str, value: f32| {
            let tensor = broadcast_scalar(value, model, inputs)?;
            model.add_const(format!("{name}.{what}"), tensor)
        };
        let zero = constant(model, "zero", 0.0)?;
        let one = constant(model, "one", 1.0)?;
        let alpha = constant(model, "alpha", self.0)?;
        let x = inputs[0];
        let scaled = model.wire_node(format!("{name}.x_over_alpha"), div(), &[x, alpha])?;
        let grown = model.wire_node(format!("{name}.exp"), exp(), &scaled)?;
        let less_one = model.wire_node(format!("{name}.minus_one"), sub(), &[grown[0], one])?;
        let negative =
            model.wire_node(format!("{name}.times_alpha"), mul(), &[less_one[0], alpha])?;
        let negative =
            model.wire_node(format!("{name}.at_most_zero"), min(), &[zero, negative[0]])?;
        let positive = model.wire_node(format!("{name}.relu"), max(), &[zero, x])?;
        model.wire_node(name, add(), &[positive[0], negative[0]])
    }
}

fn bit_shift(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let left = match node.get_attr_opt("direction")?.unwrap_or("LEFT") {
        "LEFT" => true,
        "RIGHT" => false,
        other => bail!(
            "BitShift node `{}`: direction is {other:?}, not LEFT or RIGHT",
            node.name
        ),
    };
    Ok((expand(BitShift { left }), vec![]))
}

/// `x << y` or `x >> y`, elementwise with broadcasting; a shift count below
/// zero or at least the type's width saturates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BitShift {
    left: bool,
}

impl Expansion for BitShift {
    fn name(&self) -> StaticName {
        "BitShift".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        tract_onnx::tract_hir::ops::binary::rules(s, inputs, outputs, |a, b| {
            if a != b {
                bail!("BitShift needs operands of one type, not {a:?} and {b:?}");
            }
            Ok(a)
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let wires = wire_rank_broadcast(prefix, model, inputs)?;
        model.wire_node(prefix, self.clone(), &wires)
    }
}

impl Op for BitShift {
    fn name(&self) -> StaticName {
        "BitShift".into()
    }

    op_as_typed_op!();
}

impl TypedOp for BitShift {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, y) = (inputs[0], inputs[1]);
        if x.datum_type != y.datum_type {
            bail!(
                "BitShift needs operands of one type, not {:?} and {:?}",
                x.datum_type,
                y.datum_type
            );
        }
        let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[&*x.shape, &*y.shape])?;
        Ok(tvec!(x.datum_type.fact(shape)))
    }

    as_op!();
}

/// The shift of one element, saturating as numpy's `left_shift` and
/// `right_shift` do.
macro_rules! shift {
    ($x:expr, $y:expr, $out:expr, $left:expr, $t:ty) => {{
        let x = $x.to_plain_array_view::<$t>()?;
        let y = $y.to_plain_array_view::<$t>()?;
        let bits = <$t>::BITS as i128;
        let mut out = $out.to_plain_array_view_mut::<$t>()?;
        Zip::from(&mut out)
            .and_broadcast(&x)
            .and_broadcast(&y)
            .for_each(|o, &a, &b| {
                let count = b as i128;
                *o = if (0..bits).contains(&count) {
                    if $left {
                        a.wrapping_shl(count as u32)
                    } else {
                        a.wrapping_shr(count as u32)
                    }
                } else if $left {
                    0
                } else {
                    // Every bit shifted out: what is left is the sign.
                    a.wrapping_shr((bits - 1) as u32)
                        & if <$t>::MIN == 0 as $t {
                            0 as $t
                        } else {
                            !(0 as $t)
                        }
                };
            });
    }};
}

impl EvalOp for BitShift {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, y) = (&inputs[0], &inputs[1]);
        let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[x.shape(), y.shape()])?;
        let mut out = Tensor::zero_dt(x.datum_type(), &shape)?;
        match x.datum_type() {
            DatumType::I8 => shift!(x, y, out, self.left, i8),
            DatumType::I16 => shift!(x, y, out, self.left, i16),
            DatumType::I32 => shift!(x, y, out, self.left, i32),
            DatumType::I64 => shift!(x, y, out, self.left, i64),
            DatumType::U8 => shift!(x, y, out, self.left, u8),
            DatumType::U16 => shift!(x, y, out, self.left, u16),
            DatumType::U32 => shift!(x, y, out, self.left, u32),
            DatumType::U64 => shift!(x, y, out, self.left, u64),
            dt => bail!("BitShift does not take {dt:?}"),
        }
        Ok(tvec!(out.into_tvalue()))
    }
}
