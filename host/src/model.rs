//! Loading a model: read the `.wasm` file, compile it once, link it against
//! WASI, and read its metadata. Every way this can fail gets a message that
//! names the file, the step and what to do, because this is where an operator
//! meets a bad deployment.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::cache::CompileCache;
use crate::contract::{Metadata, PredictorPre};
use crate::sandbox::GuestState;

/// A compiled model, ready to be instantiated any number of times.
pub struct Model {
    pub path: PathBuf,
    pub metadata: Metadata,
    pub pre: PredictorPre<GuestState>,
    /// Size of the model file, for the start-up log.
    pub file_size: usize,
    pub compiled: Compiled,
}

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];

/// The linker every model is instantiated with: WASI p2 and nothing else. The
/// sandbox's capabilities are decided per store in [`GuestState::new`].
pub fn linker(engine: &Engine) -> Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|err| anyhow::anyhow!("cannot link WASI: {err}"))?;
    Ok(linker)
}

/// How a model's code came to be: compiled now, or loaded ready-made.
#[derive(Debug, Clone, Copy)]
pub enum Compiled {
    /// Compiled with Cranelift (and saved to the cache, if one is on).
    Now(Duration),
    /// Loaded from the compile cache.
    FromCache(Duration),
    /// The model file was an artifact from `wasm-host compile`.
    Ahead(Duration),
}

impl std::fmt::Display for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compiled::Now(took) => write!(f, "compiled in {took:.1?}"),
            Compiled::FromCache(took) => write!(f, "loaded from the compile cache in {took:.1?}"),
            Compiled::Ahead(took) => write!(f, "loaded precompiled in {took:.1?}"),
        }
    }
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Reads a model file and checks that it is a component, or an artifact
/// from `wasm-host compile`; every other file gets a message that says
/// what it is and what to do.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "model file {shown} does not exist: pass the path of a model component \
             (`make model` builds the example into target/wasm32-wasip2/release/guest_model.wasm)"
        ),
        Err(err) => bail!("cannot read model file {shown}: {err}"),
    };
    if bytes.starts_with(ELF_MAGIC) {
        return Ok(bytes);
    }
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        bail!(
            "{shown} is not a WebAssembly file: pass a component built with \
             `cargo build --target wasm32-wasip2`"
        );
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        bail!(
            "{shown} is a core WebAssembly module, not a component: build it with \
             `cargo build --target wasm32-wasip2`, or wrap it with `wasm-tools component new`"
        );
    }
    Ok(bytes)
}

/// Turns a model file's bytes into code: from the cache, from a
/// precompiled artifact, or by compiling (off the runtime's threads: it
/// takes from milliseconds to seconds of CPU, and also runs on reload).
pub async fn compile(
    engine: &Engine,
    bytes: Vec<u8>,
    cache: &CompileCache,
    shown: &str,
) -> Result<(Component, Compiled)> {
    let started = Instant::now();
    if bytes.starts_with(ELF_MAGIC) {
        // SAFETY: an ELF model file is an artifact of `wasm-host compile`,
        // which the operator chose to run; wasmtime checks that it was made
        // by this version with this configuration before using it.
        return match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Ok((component, Compiled::Ahead(started.elapsed()))),
            Err(err) => bail!(
                "{shown} is a compiled artifact this wasm-host cannot use ({}): recompile it \
                 with `wasm-host compile` from the .wasm, with this version and these flags",
                root_cause(&err)
            ),
        };
    }
    if let Some(component) = cache.load(engine, &bytes) {
        return Ok((component, Compiled::FromCache(started.elapsed())));
    }
    let compiling = {
        let (engine, cache) = (engine.clone(), cache.clone());
        tokio::task::spawn_blocking(move || {
            let component = Component::new(&engine, &bytes)?;
            cache.store(&engine, &bytes, &component);
            wasmtime::Result::Ok(component)
        })
    };
    match compiling.await.expect("the compile task panicked") {
        Ok(component) => Ok((component, Compiled::Now(started.elapsed()))),
        Err(err) => bail!("{shown} failed to compile: {}", root_cause(&err)),
    }
}

impl Model {
    pub async fn load(
        engine: &Engine,
        linker: &Linker<GuestState>,
        path: &Path,
        memory_limit: usize,
        cache: &CompileCache,
    ) -> Result<Model> {
        let shown = path.display().to_string();
        let bytes = if crate::pack::is_onnx(path) {
            crate::pack::packed_for_serving(engine, path, memory_limit, cache).await?
        } else {
            read(path)?
        };
        let file_size = bytes.len();
        let (component, compiled) = compile(engine, bytes, cache, &shown).await?;
        let (pre, metadata) = prepare(engine, linker, &component, memory_limit, &shown).await?;
        Ok(Model {
            path: path.to_owned(),
            metadata,
            pre,
            file_size,
            compiled,
        })
    }
}

/// Links a compiled component, checks it exports the contract, and reads its
/// metadata from a throwaway instance.
pub async fn prepare(
    engine: &Engine,
    linker: &Linker<GuestState>,
    component: &Component,
    memory_limit: usize,
    shown: &str,
) -> Result<(PredictorPre<GuestState>, Metadata)> {
    let instance_pre = match linker.instantiate_pre(component) {
        Ok(pre) => pre,
        Err(err) => bail!(
            "{shown} needs imports wasm-host does not provide ({}): a model may import \
             only WASI p2 interfaces",
            root_cause(&err)
        ),
    };
    let pre = match PredictorPre::new(instance_pre) {
        Ok(pre) => pre,
        Err(err) => bail!(
            "{shown} does not export the model contract wasm-host:model/model@0.1.0 ({}): \
             build it against wit/model.wit",
            root_cause(&err)
        ),
    };
    let mut store = crate::instance::new_store(engine, memory_limit);
    let bindings = match pre.instantiate_async(&mut store).await {
        Ok(bindings) => bindings,
        Err(err) => bail!(
            "{shown} failed to start: {} (if it ran out of memory, raise --memory-limit)",
            root_cause(&err)
        ),
    };
    let metadata = match bindings
        .wasm_host_model_model()
        .call_metadata(&mut store)
        .await
    {
        Ok(metadata) => metadata,
        Err(err) => bail!("{shown} trapped in metadata(): {}", root_cause(&err)),
    };
    check_metadata(&metadata).map_err(|why| anyhow::anyhow!("{shown}: {why}"))?;
    Ok((pre, metadata))
}

/// The host trusts metadata to validate requests, so it must be coherent.
fn check_metadata(metadata: &Metadata) -> Result<(), String> {
    if metadata.name.is_empty() || metadata.name.contains('/') {
        return Err(format!(
            "model name {:?} cannot be used in a URL: metadata().name must be non-empty and contain no '/'",
            metadata.name
        ));
    }
    if metadata.inputs.is_empty() || metadata.outputs.is_empty() {
        return Err("metadata() must declare at least one input and one output".into());
    }
    for (kind, specs) in [("input", &metadata.inputs), ("output", &metadata.outputs)] {
        for (i, spec) in specs.iter().enumerate() {
            if specs[..i].iter().any(|other| other.name == spec.name) {
                return Err(format!("metadata() declares {kind} {:?} twice", spec.name));
            }
            if spec.shape.iter().any(|&d| d < -1) {
                return Err(format!(
                    "{kind} {:?} has shape {:?}: dimensions must be -1 (any) or at least 0",
                    spec.name, spec.shape
                ));
            }
        }
    }
    Ok(())
}

/// The innermost message of an error chain, without the host backtrace that
/// `RUST_BACKTRACE=1` attaches: that is for developers, not for operators.
pub fn root_cause(err: &wasmtime::Error) -> String {
    err.root_cause().to_string()
}
