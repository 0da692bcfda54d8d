//! ONNX's `Attention` (opsets 23 to 25), through tract's own operator, with
//! the forms tract-onnx 0.23.9 answers wrong refused at load time.
//!
//! tract's `Attention` (its `transformers` feature) passes 118 of the ONNX
//! backend's Attention cases. It refuses `softcap`, `qk_matmul_output_mode`
//! and `nonpad_kv_seqlen` itself, but two forms it reads and gets wrong,
//! found by the backend cases (tests/python/onnx_conformance.py):
//! - a causal mask with a `past_key`: ONNX aligns it bottom-right (query `i`
//!   sees key `j` iff `j <= i + past_length`); tract always uses `j <= i`;
//! - `left_window_size` and `right_window_size` (the sliding windows of
//!   opset 25), which tract ignores.
//!
//! A model using either is refused with its node named: a wrong answer is
//! worse than a refusal.

use std::sync::OnceLock;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `Attention` builder, called once the node is known to be a
/// form it answers right.
static TRACT_ATTENTION: OnceLock<Builder> = OnceLock::new();

pub fn register(reg: &mut OnnxOpRegister) {
    if let Some(builtin) = reg.0.get("Attention").copied() {
        let _ = TRACT_ATTENTION.set(builtin);
        reg.insert("Attention", attention);
    }
}

fn attention(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    for side in ["left_window_size", "right_window_size"] {
        if node.get_attr_opt::<i64>(side)?.unwrap_or(-1) != -1 {
            bail!(
                "Attention node `{}`: {side} (a sliding window) is not supported",
                node.name
            );
        }
    }
    let causal = node.get_attr_opt::<i64>("is_causal")?.unwrap_or(0) != 0;
    let past = node.input.get(4).is_some_and(|input| !input.is_empty());
    if causal && past {
        bail!(
            "Attention node `{}`: is_causal with a past_key is not supported (the causal mask \
             must be offset by the cache's length)",
            node.name
        );
    }
    let builtin = TRACT_ATTENTION
        .get()
        .expect("set when this builder was registered");
    builtin(ctx, node)
}
