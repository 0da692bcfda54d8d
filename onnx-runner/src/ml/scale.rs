//! Element-wise preprocessing: Scaler, Normalizer, Imputer, Binarizer
//! (scikit-learn's StandardScaler/MinMaxScaler/MaxAbsScaler, Normalizer,
//! SimpleImputer, Binarizer).

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;
use super::{Kernel, Out, check_width, ml_op};

pub fn register(reg: &mut OnnxOpRegister) {
    ml_op!(reg, "Scaler", Scaler::parse);
    ml_op!(reg, "Normalizer", Normalizer::parse);
    ml_op!(reg, "Imputer", Imputer::parse);
    ml_op!(reg, "Binarizer", Binarizer::parse);
}

/// The input's own shape, for ops that map element to element.
fn same_shape(inputs: &[&TypedFact]) -> TVec<TDim> {
    inputs[0].shape.iter().cloned().collect()
}

/// Per-feature parameters given as one value for all features or one per
/// feature: the value for the element at `ix` of a row-major tensor whose
/// last axis has `width` features.
fn per_feature(values: &[f32], ix: usize, width: usize) -> f32 {
    if values.len() == 1 {
        values[0]
    } else {
        values[ix % width]
    }
}

/// The last axis' length, the features of each row.
fn width(input: &Tensor) -> usize {
    input.shape().last().copied().unwrap_or(1)
}

/// Refuses per-feature parameter lists that match neither one value nor the
/// input's features.
fn check_params(name: &str, attr: &str, n: usize, inputs: &[&TypedFact]) -> TractResult<()> {
    if n > 1 {
        check_width(&format!("{name} ({attr} has {n} values)"), inputs[0], n)?;
    }
    Ok(())
}

fn check_runtime(name: &str, attr: &str, n: usize, width: usize) -> TractResult<()> {
    if n > 1 && n != width {
        bail!("{name}: {attr} has {n} values, the input has {width} features per row");
    }
    Ok(())
}

/// `(x - offset) * scale`, in f32.
#[derive(Debug)]
struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Scaler {
    fn parse(a: &Attrs) -> TractResult<Scaler> {
        let mut offset = a.floats("offset");
        let mut scale = a.floats("scale");
        if offset.is_empty() {
            offset = vec![0.0];
        }
        if scale.is_empty() {
            scale = vec![1.0];
        }
        if offset.len() > 1 && scale.len() > 1 && offset.len() != scale.len() {
            bail!(
                "offset has {} values and scale {}: they must agree",
                offset.len(),
                scale.len()
            );
        }
        Ok(Scaler { offset, scale })
    }
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Free(DatumType::F32)]
    }
    fn shape(&self, _: usize, inputs: &[&TypedFact]) -> TractResult<TVec<TDim>> {
        Ok(same_shape(inputs))
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        check_params("Scaler", "offset", self.offset.len(), inputs)?;
        check_params("Scaler", "scale", self.scale.len(), inputs)
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let w = width(&inputs[0]);
        check_runtime("Scaler", "offset", self.offset.len(), w)?;
        check_runtime("Scaler", "scale", self.scale.len(), w)?;
        let mut x = inputs[0].cast_to::<f32>()?.into_owned();
        let mut view = x.try_as_plain_ram_mut()?;
        for (ix, v) in view.as_slice_mut::<f32>()?.iter_mut().enumerate() {
            *v = (*v - per_feature(&self.offset, ix, w)) * per_feature(&self.scale, ix, w);
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

#[derive(Debug, Clone, Copy)]
enum Norm {
    Max,
    L1,
    L2,
}

/// Each row divided by its max, L1 or L2 norm (rows of zeros stay zero).
#[derive(Debug)]
struct Normalizer {
    norm: Norm,
}

impl Normalizer {
    fn parse(a: &Attrs) -> TractResult<Normalizer> {
        let norm = match a.string("norm", "MAX").as_str() {
            "MAX" => Norm::Max,
            "L1" => Norm::L1,
            "L2" => Norm::L2,
            other => bail!("norm {other:?} is none of MAX, L1, L2"),
        };
        Ok(Normalizer { norm })
    }
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Free(DatumType::F32)]
    }
    fn shape(&self, _: usize, inputs: &[&TypedFact]) -> TractResult<TVec<TDim>> {
        if inputs[0].rank() > 2 {
            bail!("Normalizer takes rows of features (rank 1 or 2)");
        }
        Ok(same_shape(inputs))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let w = width(&inputs[0]);
        let mut x = inputs[0].cast_to::<f32>()?.into_owned();
        let mut view = x.try_as_plain_ram_mut()?;
        for row in view.as_slice_mut::<f32>()?.chunks_mut(w.max(1)) {
            let norm = match self.norm {
                Norm::Max => row.iter().copied().fold(f32::MIN, f32::max),
                Norm::L1 => row.iter().map(|v| v.abs()).sum(),
                Norm::L2 => row.iter().map(|v| v * v).sum::<f32>().sqrt(),
            };
            if norm != 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

/// Replaces a marker value (NaN for scikit-learn's missing values) by a
/// per-feature constant; floats and int64, the output keeps the input type.
#[derive(Debug)]
struct Imputer {
    floats: Vec<f32>,
    replaced_float: f32,
    ints: Vec<i64>,
    replaced_int: i64,
}

impl Imputer {
    fn parse(a: &Attrs) -> TractResult<Imputer> {
        let floats = a.floats("imputed_value_floats");
        let ints = a.ints("imputed_value_int64s");
        if floats.is_empty() == ints.is_empty() {
            bail!("exactly one of imputed_value_floats and imputed_value_int64s must be set");
        }
        Ok(Imputer {
            floats,
            replaced_float: a.float("replaced_value_float", 0.0),
            ints,
            replaced_int: a.int("replaced_value_int64", 0),
        })
    }
    fn count(&self) -> usize {
        self.floats.len().max(self.ints.len())
    }
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Free(if self.floats.is_empty() {
            DatumType::I64
        } else {
            DatumType::F32
        })]
    }
    fn shape(&self, _: usize, inputs: &[&TypedFact]) -> TractResult<TVec<TDim>> {
        Ok(same_shape(inputs))
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        let dt = inputs[0].datum_type;
        if self.floats.is_empty() && dt != DatumType::I64 {
            bail!("Imputer has int64 values to impute, the input is {dt:?}");
        }
        if !self.floats.is_empty() && dt != DatumType::F32 {
            bail!("Imputer has float values to impute, the input is {dt:?}");
        }
        check_params("Imputer", "the imputed values", self.count(), inputs)
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let w = width(&inputs[0]);
        check_runtime("Imputer", "the imputed values", self.count(), w)?;
        let mut x = inputs[0].clone().into_tensor();
        let mut view = x.try_as_plain_ram_mut()?;
        if self.floats.is_empty() {
            for (ix, v) in view.as_slice_mut::<i64>()?.iter_mut().enumerate() {
                if *v == self.replaced_int {
                    *v = if self.ints.len() == 1 {
                        self.ints[0]
                    } else {
                        self.ints[ix % w]
                    };
                }
            }
        } else {
            let nan = self.replaced_float.is_nan();
            for (ix, v) in view.as_slice_mut::<f32>()?.iter_mut().enumerate() {
                if (nan && v.is_nan()) || *v == self.replaced_float {
                    *v = per_feature(&self.floats, ix, w);
                }
            }
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

/// 1 where the value is above the threshold, 0 elsewhere; same type out.
#[derive(Debug)]
struct Binarizer {
    threshold: f32,
}

impl Binarizer {
    fn parse(a: &Attrs) -> TractResult<Binarizer> {
        Ok(Binarizer {
            threshold: a.float("threshold", 0.0),
        })
    }
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Free(DatumType::F32)]
    }
    fn shape(&self, _: usize, inputs: &[&TypedFact]) -> TractResult<TVec<TDim>> {
        Ok(same_shape(inputs))
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        if inputs[0].datum_type != DatumType::F32 {
            bail!(
                "Binarizer takes float input, not {:?}",
                inputs[0].datum_type
            );
        }
        Ok(())
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut x = inputs[0].clone().into_tensor();
        let mut view = x.try_as_plain_ram_mut()?;
        for v in view.as_slice_mut::<f32>()? {
            *v = if *v > self.threshold { 1.0 } else { 0.0 };
        }
        Ok(tvec!(x.into_tvalue()))
    }
}
