//! `wasm-host pack`: an ONNX model in, a pre-initialised model component out
//! (see [`crate::model::pack`]).

use std::time::Instant;

use crate::Failure;
use crate::commands::cli::PackArgs;
use crate::model;
use crate::model::pack::{self, PackOptions, Progress};
use crate::runtime::cache::CompileCache;

pub async fn run(args: PackArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let memory_limit = usize::try_from(args.memory_limit).unwrap_or(usize::MAX);
    let (engine, linker) = super::tool_engine(memory_limit)?;
    let (runner_path, runner) =
        pack::find_runner().map_err(|err| Failure::new(Failure::OTHER, format!("{err:#}")))?;
    tracing::debug!("ONNX runner: {}", runner_path.display());
    let cache = CompileCache::new(args.cache_dir.clone().or_else(CompileCache::default_dir));
    let options = PackOptions {
        name: args.name.clone(),
        version: args.model_version.clone(),
        memory_limit,
        progress: Progress::on_terminal(),
    };
    let packed = pack::pack(&engine, &args.model, &runner, &options, &cache)
        .await
        .map_err(super::model_failure)?;
    // Serve-check the result before writing it: compile it (into the cache,
    // so serving it here starts at once), instantiate it under the memory
    // limit and read its metadata, as `serve` will.
    let shown = args.output.display().to_string();
    let checking = options
        .progress
        .step("checking the result (compile and instantiate it as serve will)");
    let wasm = bytes::Bytes::from(packed.wasm);
    let model::Code { component, .. } = model::compile(&engine, wasm.clone(), &cache, &shown)
        .await
        .map_err(super::model_failure)?;
    model::prepare(&engine, &linker, &component, memory_limit, &shown)
        .await
        .map_err(super::model_failure)?;
    checking.done("");
    pack::write_file(&args.output, &wasm).map_err(|err| {
        Failure::new(
            Failure::OTHER,
            format!("cannot write {}: {err}", args.output.display()),
        )
    })?;
    let p = &packed.provenance;
    println!(
        "packed {} ({} {}, {} nodes) into {} ({} KiB) in {:.1?}: model {} v{}",
        args.model.display(),
        p["producer"].as_str().unwrap_or("?"),
        p["producer_version"].as_str().unwrap_or(""),
        p["nodes"],
        args.output.display(),
        wasm.len() / 1024,
        started.elapsed(),
        p["name"].as_str().unwrap_or("?"),
        p["version"].as_str().unwrap_or("?"),
    );
    Ok(())
}
