//! Reading a node's attributes, with errors that name the attribute.
//!
//! tract's own helpers are not used: the ml operators need tensor attributes
//! as numbers of any width (`*_as_tensor` holds doubles), absent-or-empty
//! treated alike, and every error worded for the one-line pack failure.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{AttributeProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

pub struct Attrs<'a> {
    ctx: &'a ParsingContext<'a>,
    pub node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(ctx: &'a ParsingContext<'a>, node: &'a NodeProto) -> Self {
        Attrs { ctx, node }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }

    pub fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    pub fn strings(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A tensor attribute's values as f64 (empty when absent).
    pub fn tensor(&self, name: &str) -> TractResult<Vec<f64>> {
        let Some(proto) = self.get(name).and_then(|a| a.t.as_ref()) else {
            return Ok(vec![]);
        };
        let tensor = self
            .ctx
            .load_tensor(proto)
            .with_context(|| format!("attribute {name} is not a readable tensor"))?;
        let tensor = tensor.cast_to::<f64>()?;
        Ok(tensor.try_as_plain_ram()?.as_slice::<f64>()?.to_vec())
    }

    /// The list attribute `name` or, when it is absent, its ai.onnx.ml
    /// opset 3 form `name_as_tensor` (doubles), as f64.
    pub fn floats_or_tensor(&self, name: &str) -> TractResult<Vec<f64>> {
        let tensor_name = format!("{name}_as_tensor");
        match (self.has(name), self.has(&tensor_name)) {
            (true, true) => bail!("both {name} and {tensor_name} are set"),
            (false, true) => self.tensor(&tensor_name),
            _ => Ok(self.floats(name).iter().map(|&v| v as f64).collect()),
        }
    }

    /// Indices (ids, feature numbers) as usize: negative ones are refused.
    pub fn indices(&self, name: &str) -> TractResult<Vec<usize>> {
        self.ints(name)
            .iter()
            .map(|&i| {
                usize::try_from(i).map_err(|_| format_err!("{name} holds {i}, a negative index"))
            })
            .collect()
    }

    /// Fails unless `values` (attribute `name`) has `n` entries.
    pub fn expect_len<T>(name: &str, values: &[T], n: usize, what: &str) -> TractResult<()> {
        if values.len() != n {
            bail!("{name} has {} entries, but {what} needs {n}", values.len());
        }
        Ok(())
    }

    /// Integer class labels; string labels cannot be served.
    pub fn class_labels(&self, ints: &str, strings: &str) -> TractResult<Vec<i64>> {
        if !self.strings(strings).is_empty() {
            bail!(
                "the classes are labelled by strings ({strings}), and wasm-host serves numeric \
                 tensors only: train on integer labels"
            );
        }
        Ok(self.ints(ints))
    }
}
