//! Feature plumbing: OneHotEncoder (numeric categories), ArrayFeatureExtractor
//! (column selection) and FeatureVectorizer (column concatenation), which
//! skl2onnx emits around ColumnTransformer and OneHotEncoder pipelines.

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;
use super::{Kernel, Out, features, ml_op, rows, table};

pub fn register(reg: &mut OnnxOpRegister) {
    ml_op!(reg, "OneHotEncoder", OneHotEncoder::parse);
    ml_op!(reg, "ArrayFeatureExtractor", ArrayFeatureExtractor::parse);
    ml_op!(reg, "FeatureVectorizer", FeatureVectorizer::parse);
}

/// One column of 0/1 per category after the input's own axes.
#[derive(Debug)]
struct OneHotEncoder {
    categories: Vec<i64>,
    /// Whether a value outside the categories is all zeros (or an error).
    zeros: bool,
}

impl OneHotEncoder {
    fn parse(a: &Attrs) -> TractResult<OneHotEncoder> {
        if !a.strings("cats_strings").is_empty() {
            bail!(
                "string categories (cats_strings) are not served: wasm-host carries numeric tensors only"
            );
        }
        let categories = a.ints("cats_int64s");
        if categories.is_empty() {
            bail!("cats_int64s is empty: no categories to encode");
        }
        Ok(OneHotEncoder {
            categories,
            zeros: a.int("zeros", 1) != 0,
        })
    }
}

impl Kernel for OneHotEncoder {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Free(DatumType::F32)]
    }
    fn shape(&self, _: usize, inputs: &[&TypedFact]) -> TractResult<TVec<TDim>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        shape.push(self.categories.len().into());
        Ok(shape)
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        let dt = inputs[0].datum_type;
        // tract may type integers computed from a Gather as TDim: they are integers.
        let accepted = [
            DatumType::I64,
            DatumType::I32,
            DatumType::TDim,
            DatumType::F32,
            DatumType::F64,
        ];
        if !accepted.contains(&dt) {
            bail!("OneHotEncoder takes int64, int32, float or double input, not {dt:?}");
        }
        Ok(())
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let mut shape: Vec<usize> = input.shape().to_vec();
        // onnxruntime truncates floats to integers to find the category.
        let values: Vec<i64> = if input.datum_type().is_float() {
            let x = input.cast_to::<f64>()?;
            x.try_as_plain_ram()?
                .as_slice::<f64>()?
                .iter()
                .map(|&v| v as i64)
                .collect()
        } else {
            let x = input.cast_to::<i64>()?;
            x.try_as_plain_ram()?.as_slice::<i64>()?.to_vec()
        };
        let k = self.categories.len();
        let mut out = vec![0f32; values.len() * k];
        for (ix, v) in values.iter().enumerate() {
            match self.categories.iter().position(|c| c == v) {
                Some(c) => out[ix * k + c] = 1.0,
                None if self.zeros => (),
                None => bail!("OneHotEncoder: {v} is not one of the categories (and zeros=0)"),
            }
        }
        shape.push(k);
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

/// `X[..., indices]`: the columns `indices` names, in its order.
#[derive(Debug)]
struct ArrayFeatureExtractor;

impl ArrayFeatureExtractor {
    fn parse(_: &Attrs) -> TractResult<ArrayFeatureExtractor> {
        Ok(ArrayFeatureExtractor)
    }
}

impl Kernel for ArrayFeatureExtractor {
    fn name(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }
    fn inputs(&self) -> Option<usize> {
        Some(2)
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::FreeLike(0)]
    }
    fn shape(&self, _: usize, inputs: &[&TypedFact]) -> TractResult<TVec<TDim>> {
        let x = &inputs[0].shape;
        let picked = inputs[1].shape.volume();
        let mut shape: TVec<TDim> = if x.rank() == 1 {
            tvec!(1.into())
        } else {
            x.iter().take(x.rank() - 1).cloned().collect()
        };
        shape.push(picked);
        Ok(shape)
    }
    fn check_inputs(&self, inputs: &[&TypedFact]) -> TractResult<()> {
        if !inputs[0].datum_type.is_number() {
            bail!(
                "ArrayFeatureExtractor is served on numbers, not {:?}",
                inputs[0].datum_type
            );
        }
        if let (Some(k), Some(width)) = (inputs[1].konst.as_ref(), features(inputs[0])) {
            let k = k.cast_to::<i64>()?;
            for &i in k.try_as_plain_ram()?.as_slice::<i64>()? {
                if i < 0 || i as usize >= width {
                    bail!("ArrayFeatureExtractor picks column {i} of rows of {width}");
                }
            }
        }
        Ok(())
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let dt = x.datum_type();
        let width = x.shape().last().copied().unwrap_or(1);
        let k = inputs[1].cast_to::<i64>()?;
        let picks: Vec<usize> = k
            .try_as_plain_ram()?
            .as_slice::<i64>()?
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i < width)
                    .ok_or_else(|| {
                        format_err!("ArrayFeatureExtractor picks column {i} of rows of {width}")
                    })
            })
            .collect::<TractResult<_>>()?;
        // Element by element as bytes, so every numeric type is served alike.
        let size = dt.size_of();
        let bytes = x.try_as_plain_ram()?.as_bytes();
        let mut out = Vec::with_capacity(bytes.len() / width.max(1) * picks.len());
        for row in bytes.chunks(width.max(1) * size) {
            for &i in &picks {
                out.extend_from_slice(&row[i * size..(i + 1) * size]);
            }
        }
        let mut shape: Vec<usize> = if x.rank() == 1 {
            vec![1]
        } else {
            x.shape()[..x.rank() - 1].to_vec()
        };
        shape.push(picks.len());
        // SAFETY: `dt` is a plain numeric type (checked when typed) and the
        // bytes are whole elements of it, as many as the shape holds.
        let tensor = unsafe { Tensor::from_raw_dt(dt, &shape, &out)? };
        Ok(tvec!(tensor.into_tvalue()))
    }
}

/// Concatenates its inputs' columns, each cut or zero-padded to the width
/// `inputdimensions` gives it.
#[derive(Debug)]
struct FeatureVectorizer {
    dimensions: Vec<usize>,
}

impl FeatureVectorizer {
    fn parse(a: &Attrs) -> TractResult<FeatureVectorizer> {
        let dimensions = a.indices("inputdimensions")?;
        if a.node.input.len() != dimensions.len() {
            bail!(
                "inputdimensions has {} entries for {} inputs",
                dimensions.len(),
                a.node.input.len()
            );
        }
        Ok(FeatureVectorizer { dimensions })
    }
}

impl Kernel for FeatureVectorizer {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }
    fn inputs(&self) -> Option<usize> {
        Some(self.dimensions.len())
    }
    fn outputs(&self) -> Vec<Out> {
        vec![Out::Table(DatumType::F32, self.dimensions.iter().sum())]
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let total: usize = self.dimensions.iter().sum();
        let parts = inputs
            .iter()
            .map(rows::<f32>)
            .collect::<TractResult<Vec<_>>>()?;
        let n = parts[0].1;
        if parts.iter().any(|p| p.1 != n) {
            bail!("FeatureVectorizer: the inputs have different numbers of rows");
        }
        let mut out = vec![0f32; n * total];
        for r in 0..n {
            let mut at = r * total;
            for ((x, _, c), &d) in parts.iter().zip(&self.dimensions) {
                let take = d.min(*c);
                out[at..at + take].copy_from_slice(&x[r * c..r * c + take]);
                at += d;
            }
        }
        Ok(tvec!(table(out, n, total)?))
    }
}
