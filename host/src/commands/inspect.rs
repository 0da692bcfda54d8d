//! `wasm-host inspect`: what a model is, what it needs, and whether it fits
//! the contract, without serving it.

use std::fmt::Write;

use wasmtime::component::types::ComponentItem;

use crate::Failure;
use crate::commands::cli::InspectArgs;
use crate::model;
use crate::runtime::contract::{self, TensorSpec};

const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

pub async fn run(args: InspectArgs) -> Result<(), Failure> {
    let (engine, linker) = super::tool_engine(DEFAULT_MEMORY_LIMIT)?;
    let shown = args.model.display().to_string();
    let bytes = model::read(&args.model)
        .await
        .map_err(super::model_failure)?;
    let size = bytes.len();
    let onnx = crate::model::pack::provenance(&bytes);
    let cache = args.code.compile_cache();
    let model::Code {
        component,
        compiled,
        ..
    } = model::compile(&engine, bytes.into(), &cache, &shown)
        .await
        .map_err(super::model_failure)?;

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "file:     {shown} ({} KiB, {compiled})", size / 1024);
    if let Some(onnx) = onnx {
        write_onnx(&mut out, &onnx);
    }
    let ty = component.component_type();
    let kind = |item: &ComponentItem| match item {
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::Type(_) | ComponentItem::Resource(_) => "type",
        _ => "other",
    };
    let _ = writeln!(out, "imports:");
    for (name, item) in ty.imports(&engine) {
        let _ = writeln!(out, "  {name} ({})", kind(&item.ty));
    }
    let _ = writeln!(out, "exports:");
    for (name, item) in ty.exports(&engine) {
        let _ = writeln!(out, "  {name} ({})", kind(&item.ty));
    }
    match model::prepare(&engine, &linker, &component, DEFAULT_MEMORY_LIMIT, &shown).await {
        Ok((_, metadata)) => {
            let _ = writeln!(out, "contract: fits {}", contract::MODEL_EXPORT);
            let _ = writeln!(out, "name:     {}", metadata.name);
            let _ = writeln!(out, "version:  {}", metadata.version);
            write_specs(&mut out, "inputs:", &metadata.inputs);
            write_specs(&mut out, "outputs:", &metadata.outputs);
            super::print(&out)
        }
        Err(err) => {
            let _ = match contract::other_version(&component, &engine) {
                Some(version) => writeln!(
                    out,
                    "contract: does not fit: built against {}@{version}; this wasm-host speaks {}",
                    contract::PACKAGE,
                    contract::VERSION
                ),
                None => writeln!(out, "contract: does not fit"),
            };
            super::print(&out)?;
            Err(super::model_failure(err))
        }
    }
}

fn write_specs(out: &mut String, title: &str, specs: &[TensorSpec]) {
    let _ = writeln!(out, "{title}");
    for spec in specs {
        let _ = writeln!(
            out,
            "  {:<16} {:<6} {:?}",
            spec.name, spec.datatype, spec.shape
        );
    }
}

/// What `wasm-host pack` recorded about the ONNX file a component came from.
fn write_onnx(out: &mut String, p: &serde_json::Value) {
    let text = |key: &str| p[key].as_str().unwrap_or("?").to_string();
    let opsets: Vec<String> = p["opset"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| format!("{} {}", o["domain"].as_str().unwrap_or("?"), o["version"]))
        .collect();
    let operators: Vec<&str> = p["operators"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str())
        .collect();
    let _ = writeln!(
        out,
        "packed:   from ONNX {} ({} bytes, sha256 {}) by {}",
        text("source"),
        p["source_bytes"],
        text("source_sha256"),
        text("packed_by")
    );
    let _ = writeln!(
        out,
        "producer: {} {}",
        text("producer"),
        text("producer_version")
    );
    let _ = writeln!(out, "opset:    {}", opsets.join(", "));
    let _ = writeln!(
        out,
        "operators: {} ({} nodes)",
        operators.join(", "),
        p["nodes"]
    );
}
