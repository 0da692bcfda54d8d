//! `wasm-host inspect`: what a model is, what it needs, and whether it fits
//! the contract, without serving it.

use std::fmt::Write;

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
    let bytes = model::read(&args.model)
        .await
        .map_err(super::model_failure)?;
    let size = bytes.len();
    let cache = CompileCache::from_args(&args.code);
    let (component, compiled) = model::compile(&engine, bytes, &cache, &shown)
        .await
        .map_err(super::model_failure)?;

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "file:     {shown} ({} KiB, {compiled})", size / 1024);
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
            let _ = writeln!(out, "contract: fits wasm-host:model/model@0.1.0");
            let _ = writeln!(out, "name:     {}", metadata.name);
            let _ = writeln!(out, "version:  {}", metadata.version);
            write_specs(&mut out, "inputs:", &metadata.inputs);
            write_specs(&mut out, "outputs:", &metadata.outputs);
            super::print(&out)
        }
        Err(err) => {
            let _ = writeln!(out, "contract: does not fit");
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
