//! `wasm-host compile`: compile a model ahead of time, so that an edge node
//! starts serving in milliseconds instead of compiling at boot.

use std::time::Instant;

use crate::Failure;
use crate::cache::CompileCache;
use crate::cli::CompileArgs;
use crate::model;

pub async fn run(args: CompileArgs) -> Result<(), Failure> {
    let memory_limit = usize::try_from(args.memory_limit).unwrap_or(usize::MAX);
    let (engine, linker) = super::tool_engine(memory_limit)?;
    let shown = args.model.display().to_string();
    let bytes = model::read(&args.model)
        .await
        .map_err(super::model_failure)?;
    if model::is_precompiled(&bytes) {
        return Err(Failure::new(
            Failure::MODEL,
            format!("{shown} is already compiled; pass the .wasm component"),
        ));
    }
    let size = bytes.len();
    let started = Instant::now();
    let no_cache = CompileCache::new(None);
    let (component, _) = model::compile(&engine, bytes, &no_cache, &shown)
        .await
        .map_err(super::model_failure)?;
    let took = started.elapsed();
    // Only a model that fits the contract is worth shipping.
    let (_, metadata) = model::prepare(&engine, &linker, &component, memory_limit, &shown)
        .await
        .map_err(super::model_failure)?;
    let artifact = component
        .serialize()
        .map_err(|err| Failure::new(Failure::OTHER, format!("cannot serialize: {err}")))?;
    std::fs::write(&args.output, &artifact).map_err(|err| {
        Failure::new(
            Failure::OTHER,
            format!("cannot write {}: {err}", args.output.display()),
        )
    })?;
    super::print(&format!(
        "compiled {} v{} ({shown}, {} KiB) in {took:.1?} into {} ({} KiB); serve it with \
         `wasm-host --allow-precompiled {}` on a machine of the same architecture, with the \
         same wasm-host version (it is native code: serve only artifacts you built)\n",
        metadata.name,
        metadata.version,
        size / 1024,
        args.output.display(),
        artifact.len() / 1024,
        args.output.display()
    ))
}
