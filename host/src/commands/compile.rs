//! `wasm-host compile`: compile a model ahead of time, so that an edge node
//! starts serving in milliseconds instead of compiling at boot.

use std::time::Instant;

use crate::Failure;
use crate::commands::cli::CompileArgs;
use crate::model;
use crate::runtime::cache::CompileCache;
use crate::runtime::engine;

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
    // A cross-compiling engine first, so a bad --target fails before a compile.
    let cross = match &args.target {
        Some(triple) => Some(
            engine::build_for_target(triple, memory_limit)
                .map_err(|err| Failure::new(2, format!("{err:#}")))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let no_cache = CompileCache::new(None);
    let bytes = bytes::Bytes::from(bytes);
    let model::Code { component, .. } = model::compile(&engine, bytes.clone(), &no_cache, &shown)
        .await
        .map_err(super::model_failure)?;
    // Only a model that fits the contract is worth shipping: it is checked
    // here, natively, whatever the target.
    let (_, metadata) = model::prepare(&engine, &linker, &component, memory_limit, &shown)
        .await
        .map_err(super::model_failure)?;
    let (artifact, took, arch) = match cross {
        None => {
            let artifact = component
                .serialize()
                .map_err(|err| Failure::new(Failure::OTHER, format!("cannot serialize: {err}")))?;
            (
                artifact,
                started.elapsed(),
                std::env::consts::ARCH.to_owned(),
            )
        }
        Some((cross, _)) => {
            let started = Instant::now();
            let artifact = tokio::task::spawn_blocking(move || cross.precompile_component(&bytes))
                .await
                .expect("the compile task panicked")
                .map_err(|err| {
                    Failure::new(
                        Failure::MODEL,
                        format!(
                            "{shown} failed to compile: {}",
                            crate::runtime::root_cause(&err)
                        ),
                    )
                })?;
            let arch = model::elf_arch(&artifact).unwrap_or_default();
            (artifact, started.elapsed(), arch)
        }
    };
    std::fs::write(&args.output, &artifact).map_err(|err| {
        Failure::new(
            Failure::OTHER,
            format!("cannot write {}: {err}", args.output.display()),
        )
    })?;
    super::print(&format!(
        "compiled {} v{} ({shown}, {} KiB) for {arch} in {took:.1?} into {} ({} KiB); serve \
         it with `wasm-host --allow-precompiled --memory-limit {}MiB {}` on an {arch} machine, \
         with the same wasm-host version (it is native code: serve only artifacts you built)\n",
        metadata.name,
        metadata.version,
        size / 1024,
        args.output.display(),
        artifact.len() / 1024,
        args.memory_limit >> 20,
        args.output.display()
    ))
}
