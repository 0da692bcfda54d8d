//! `wasm-host inspect`: what a model is, what it needs, and whether it fits
//! the contract, without serving it.

use wasmtime::component::types::ComponentItem;

use crate::Failure;
use crate::cache::CompileCache;
use crate::cli::InspectArgs;
use crate::contract::TensorSpec;
use crate::model;

const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

pub async fn run(args: InspectArgs) -> Result<(), Failure> {
    let (engine, linker) = super::tool_engine(DEFAULT_MEMORY_LIMIT)?;
    let shown = args.model.display().to_string();
    let bytes = model::read(&args.model).map_err(super::model_failure)?;
    let size = bytes.len();
    let onnx = crate::pack::provenance(&bytes);
    let cache = CompileCache::new(CompileCache::default_dir());
    let (component, compiled) = model::compile(&engine, bytes, &cache, &shown)
        .await
        .map_err(super::model_failure)?;

    println!("file:     {shown} ({} KiB, {compiled})", size / 1024);
    if let Some(onnx) = onnx {
        print_onnx(&onnx);
    }
    let ty = component.component_type();
    let kind = |item: &ComponentItem| match item {
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::Type(_) | ComponentItem::Resource(_) => "type",
        _ => "other",
    };
    println!("imports:");
    for (name, item) in ty.imports(&engine) {
        println!("  {name} ({})", kind(&item.ty));
    }
    println!("exports:");
    for (name, item) in ty.exports(&engine) {
        println!("  {name} ({})", kind(&item.ty));
    }
    match model::prepare(&engine, &linker, &component, DEFAULT_MEMORY_LIMIT, &shown).await {
        Ok((_, metadata)) => {
            println!("contract: fits wasm-host:model/model@0.1.0");
            println!("name:     {}", metadata.name);
            println!("version:  {}", metadata.version);
            print_specs("inputs:", &metadata.inputs);
            print_specs("outputs:", &metadata.outputs);
            Ok(())
        }
        Err(err) => {
            println!("contract: does not fit");
            Err(super::model_failure(err))
        }
    }
}

fn print_specs(title: &str, specs: &[TensorSpec]) {
    println!("{title}");
    for spec in specs {
        println!("  {:<16} {:<6} {:?}", spec.name, spec.datatype, spec.shape);
    }
}

/// What `wasm-host pack` recorded about the ONNX file a component came from.
fn print_onnx(p: &serde_json::Value) {
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
    println!(
        "packed:   from ONNX {} ({} bytes, sha256 {}) by {}",
        text("source"),
        p["source_bytes"],
        text("source_sha256"),
        text("packed_by")
    );
    println!(
        "producer: {} {}",
        text("producer"),
        text("producer_version")
    );
    println!("opset:    {}", opsets.join(", "));
    println!("operators: {} ({} nodes)", operators.join(", "), p["nodes"]);
}
