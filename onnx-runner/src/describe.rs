//! What the runner reads from the ONNX proto itself, before tract builds a
//! graph: is it ONNX at all, can every operator run, what are the inputs and
//! outputs called, and where did the model come from.

use std::collections::BTreeSet;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// Decodes the file, refusing what is not an ONNX model (a truncated file
/// mostly fails to decode; one cut at a message boundary has no graph left).
pub fn decode(bytes: &[u8]) -> Result<pb::ModelProto, String> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|err| format!("not an ONNX model (truncated or another format): {err}"))?;
    let graph = proto.graph.as_ref();
    if proto.ir_version <= 0 || graph.is_none_or(|g| g.node.is_empty() || g.output.is_empty()) {
        return Err(
            "not an ONNX model (truncated or another format): no graph with nodes and outputs"
                .into(),
        );
    }
    Ok(proto)
}

fn graph(proto: &pb::ModelProto) -> &pb::GraphProto {
    proto.graph.as_ref().expect("checked by decode")
}

/// Fails on the first node tract cannot run, naming the operator and the
/// node; a ZipMap (scikit-learn's dictionary output) gets its own advice.
pub fn check_operators(proto: &pb::ModelProto) -> Result<(), String> {
    let known = crate::ml::onnx().op_register;
    for node in &graph(proto).node {
        // An unnamed node goes by its first output (an optional output
        // left out is an empty name).
        let shown = if node.name.is_empty() {
            node.output
                .iter()
                .find(|o| !o.is_empty())
                .cloned()
                .unwrap_or_default()
        } else {
            node.name.clone()
        };
        if node.op_type == "ZipMap" {
            return Err(format!(
                "the model has a ZipMap output (node `{shown}`), a list of dictionaries wasm-host \
                 cannot serve: export it with zipmap=False (skl2onnx: \
                 to_onnx(model, X, options={{'zipmap': False}}))"
            ));
        }
        if let Some(why) = answers_wrong(node) {
            return Err(format!(
                "node `{shown}` ({}): {why}, so the ONNX runner refuses it rather than answer \
                 wrong",
                node.op_type
            ));
        }
        if !known.0.contains_key(&node.op_type) {
            let domain = if node.domain.is_empty() {
                "ai.onnx"
            } else {
                &node.domain
            };
            return Err(format!(
                "operator {domain}.{} (node `{shown}`) is not supported by the ONNX runner \
                 (tract-onnx 0.23.9)",
                node.op_type
            ));
        }
    }
    for output in &graph(proto).output {
        if output.r#type.as_ref().is_some_and(|t| t.value.is_none()) {
            return Err(format!(
                "output `{}` is not a tensor (a sequence or map): wasm-host serves tensors only",
                output.name
            ));
        }
    }
    Ok(())
}

/// Forms of operators tract-onnx 0.23.9 runs but answers differently from
/// onnxruntime, found by the ONNX backend tests: refused, since a wrong
/// answer is worse than a refusal.
fn answers_wrong(node: &pb::NodeProto) -> Option<&'static str> {
    let text = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    };
    match node.op_type.as_str() {
        "RNN" | "GRU" | "LSTM" if text("direction").as_deref() == Some("reverse") => {
            Some("tract computes a reverse-direction recurrence's final state differently")
        }
        "SpaceToDepth" if text("mode").as_deref() == Some("CRD") => {
            Some("tract ignores SpaceToDepth's CRD mode")
        }
        _ => None,
    }
}

/// The names of the graph's inputs (those not fed by an initializer) and
/// outputs, in the graph's order, which is the order tract keeps.
pub fn io_names(proto: &pb::ModelProto) -> Result<(Vec<String>, Vec<String>), String> {
    let graph = graph(proto);
    let initialized: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<String> = graph
        .input
        .iter()
        .filter(|i| !initialized.contains(i.name.as_str()))
        .map(|i| i.name.clone())
        .collect();
    if inputs.is_empty() {
        return Err("the graph has no inputs: nothing for a request to feed".into());
    }
    let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
    Ok((inputs, outputs))
}

/// Where the model came from, as JSON: the packer records it in the packed
/// component for `wasm-host inspect`.
pub fn provenance(proto: &pb::ModelProto) -> String {
    let operators: BTreeSet<String> = graph(proto)
        .node
        .iter()
        .map(|n| {
            if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            }
        })
        .collect();
    let opsets: Vec<serde_json::Value> = proto
        .opset_import
        .iter()
        .map(|o| {
            let domain = if o.domain.is_empty() {
                "ai.onnx"
            } else {
                &o.domain
            };
            serde_json::json!({ "domain": domain, "version": o.version })
        })
        .collect();
    serde_json::json!({
        "producer": proto.producer_name,
        "producer_version": proto.producer_version,
        "ir_version": proto.ir_version,
        "opset": opsets,
        "operators": operators,
        "nodes": graph(proto).node.len(),
    })
    .to_string()
}
