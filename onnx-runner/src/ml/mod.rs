//! The `ai.onnx.ml` operators that scikit-learn, XGBoost and LightGBM
//! exports use (skl2onnx, onnxmltools), written for this runner.
//!
//! tract-onnx 0.23.9 knows only a few of them, and its TreeEnsembleClassifier
//! served a random forest whose probabilities matched onnxruntime's but whose
//! labels did not (21 rows of 30), and lacks onnxruntime's rules for binary
//! ensembles and the SOFTMAX_ZERO and PROBIT transforms. Every operator here
//! replaces tract's of the same name in the register and follows
//! onnxruntime, the reference users compare with, down to its binary-case
//! and tie rules (the first highest score wins).
//!
//! Each operator is a [`Kernel`]: its attributes are parsed and checked once,
//! when the graph is read (so a hostile or inconsistent model fails `pack`
//! with one line naming the node, never a request), and `eval` then only
//! computes. One generic tract op ([`MlOp`]) carries any kernel through
//! tract's inference, typing and planning.

mod attrs;
mod features;
mod linear;
mod scale;
mod svm;
mod transform;
mod tree;

use std::fmt;

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

/// tract-onnx with this module's operators, and the standard ones it gets
/// wrong ([`crate::corrected`]), registered over its own.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    register(&mut onnx.op_register);
    crate::corrected::register(&mut onnx.op_register);
    crate::reduce_axes::register(&mut onnx.op_register);
    crate::attention::register(&mut onnx.op_register);
    onnx
}

fn register(reg: &mut OnnxOpRegister) {
    scale::register(reg);
    linear::register(reg);
    tree::register(reg);
    svm::register(reg);
    features::register(reg);
}

/// What one output looks like, for tract's shape inference.
#[derive(Debug, Clone)]
pub enum Out {
    /// One value per row: `[N]`.
    Rows(DatumType),
    /// `width` values per row: `[N, width]`.
    Table(DatumType, usize),
    /// Any other shape: the kernel computes it ([`Kernel::shape`]).
    Free(DatumType),
    /// A shape the kernel computes, of the type of input `.0`.
    FreeLike(usize),
}

impl Out {
    fn datum_type(&self) -> Option<DatumType> {
        match self {
            Out::Rows(dt) | Out::Table(dt, _) | Out::Free(dt) => Some(*dt),
            Out::FreeLike(_) => None,
        }
    }
}

/// One `ai.onnx.ml` operator, parsed and validated.
pub trait Kernel: fmt::Debug + Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// How many inputs it takes (`None`: any number, at least one).
    fn inputs(&self) -> Option<usize> {
        Some(1)
    }
    fn outputs(&self) -> Vec<Out>;
    /// The shape of an [`Out::Free`] output, from the inputs' facts.
    fn shape(&self, _output: usize, _inputs: &[&TypedFact]) -> TractResult<TVec<TDim>> {
        bail!("{}: no free-form output", self.name())
    }
    /// Checks what only the typed inputs can tell (the number of features).
    fn check_inputs(&self, _inputs: &[&TypedFact]) -> TractResult<()> {
        Ok(())
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// Builds the InferenceOp for a kernel that parsed.
fn op(kernel: impl Kernel) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(MlOp(Arc::new(kernel))), vec![]))
}

/// Registers `name` with a parser that builds the kernel from the node.
macro_rules! ml_op {
    ($reg:expr, $name:literal, $parse:path) => {
        $reg.insert($name, |ctx, node| {
            let kernel = $parse(&$crate::ml::attrs::Attrs::new(ctx, node))?;
            $crate::ml::op(kernel)
        })
    };
}
pub(crate) use ml_op;

/// The generic op: an expansion for tract's inference model and a typed op
/// for the typed model and the plan.
#[derive(Debug, Clone)]
pub struct MlOp(Arc<dyn Kernel>);

impl PartialEq for MlOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for MlOp {}

impl Expansion for MlOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.outputs().len())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if let Some(n) = self.0.inputs() {
            check_input_arity(inputs, n)?;
        }
        let outs = self.0.outputs();
        check_output_arity(outputs, outs.len())?;
        for (proxy, out) in outputs.iter().zip(&outs) {
            match out {
                Out::FreeLike(ix) => s.equals(&proxy.datum_type, &inputs[*ix].datum_type)?,
                _ => s.equals(&proxy.datum_type, out.datum_type().unwrap())?,
            }
            match out {
                Out::Rows(_) => {
                    s.equals(&proxy.rank, 1)?;
                    s.equals(&proxy.shape[0], &inputs[0].shape[0])?;
                }
                Out::Table(_, width) => {
                    s.equals(&proxy.rank, 2)?;
                    s.equals(&proxy.shape[0], &inputs[0].shape[0])?;
                    s.equals(&proxy.shape[1], width.to_dim())?;
                }
                Out::Free(_) | Out::FreeLike(_) => (),
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for MlOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    op_as_typed_op!();
}

impl EvalOp for MlOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }
}

impl TypedOp for MlOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let name = self.0.name();
        if inputs.is_empty() {
            bail!("{name} has no input");
        }
        for input in inputs {
            if input.rank() == 0 {
                bail!("{name} needs inputs of one row or more, not a scalar");
            }
        }
        self.0.check_inputs(inputs)?;
        // One row may come as a vector; rows otherwise lead.
        let rows = if inputs[0].rank() == 1 {
            TDim::from(1)
        } else {
            inputs[0].shape[0].clone()
        };
        self.0
            .outputs()
            .iter()
            .enumerate()
            .map(|(ix, out)| {
                Ok(match out {
                    Out::Rows(dt) => dt.fact([rows.clone()]),
                    Out::Table(dt, width) => dt.fact([rows.clone(), (*width).into()]),
                    Out::Free(dt) => dt.fact(self.0.shape(ix, inputs)?),
                    Out::FreeLike(input) => {
                        inputs[*input].datum_type.fact(self.0.shape(ix, inputs)?)
                    }
                })
            })
            .collect()
    }

    as_op!();
}

/// The input as rows of features (`[N, C]`, or `[C]` for one row), cast to
/// `T`: (values, rows, columns).
pub fn rows<T: Datum + Copy>(input: &TValue) -> TractResult<(Vec<T>, usize, usize)> {
    let shape = input.shape();
    let (n, c) = match shape.len() {
        1 => (1, shape[0]),
        2 => (shape[0], shape[1]),
        r => bail!("expected rows of features (rank 2), got rank {r}"),
    };
    let cast = input.cast_to::<T>()?;
    let values = cast.try_as_plain_ram()?.as_slice::<T>()?.to_vec();
    Ok((values, n, c))
}

/// The number of features the typed input declares, when it is known.
pub fn features(fact: &TypedFact) -> Option<usize> {
    fact.shape
        .last()
        .and_then(|d| d.to_i64().ok())
        .map(|d| d as usize)
}

/// Refuses an input whose declared width is not `expected`.
pub fn check_width(name: &str, fact: &TypedFact, expected: usize) -> TractResult<()> {
    match features(fact) {
        Some(width) if width != expected => {
            bail!("{name} expects {expected} features per row, the input has {width}")
        }
        _ => Ok(()),
    }
}

/// Same check at run time, where the width is always known.
pub fn check_row_width(name: &str, got: usize, expected: usize) -> TractResult<()> {
    if got != expected {
        bail!("{name} expects {expected} features per row, the input has {got}");
    }
    Ok(())
}

/// A `[N, width]` f32 tensor.
pub fn table(values: Vec<f32>, n: usize, width: usize) -> TractResult<TValue> {
    Ok(Tensor::from_shape(&[n, width], &values)?.into_tvalue())
}

/// A `[N]` i64 tensor of labels.
pub fn labels(values: Vec<i64>) -> TractResult<TValue> {
    let n = values.len();
    Ok(Tensor::from_shape(&[n], &values)?.into_tvalue())
}
