//! Loading a model: read the `.wasm` file, compile it once, link it against
//! WASI, and read its metadata. Every way this can fail gets a message that
//! names the file, the step and what to do, because this is where an operator
//! meets a bad deployment.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::contract::{Metadata, PredictorPre};
use crate::sandbox::GuestState;

/// A compiled model, ready to be instantiated any number of times.
pub struct Model {
    pub path: PathBuf,
    pub metadata: Metadata,
    pub pre: PredictorPre<GuestState>,
    /// Size of the `.wasm` file, for the start-up log.
    pub file_size: usize,
    pub compile_time: Duration,
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

impl Model {
    pub async fn load(
        engine: &Engine,
        linker: &Linker<GuestState>,
        path: &Path,
        memory_limit: usize,
    ) -> Result<Model> {
        let shown = path.display();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "model file {shown} does not exist: pass the path of a model component \
                 (`make model` builds the example into target/wasm32-wasip2/release/guest_model.wasm)"
            ),
            Err(err) => bail!("cannot read model file {shown}: {err}"),
        };
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

        let started = Instant::now();
        // Compiling takes from milliseconds to seconds of CPU: keep it off the
        // runtime threads that serve requests (it also runs on reload).
        let compiling = {
            let (engine, bytes) = (engine.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
        };
        let component = match compiling.await.expect("the compile task panicked") {
            Ok(component) => component,
            Err(err) => bail!("{shown} failed to compile: {}", root_cause(&err)),
        };
        let compile_time = started.elapsed();

        let instance_pre = match linker.instantiate_pre(&component) {
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

        Ok(Model {
            path: path.to_owned(),
            metadata,
            pre,
            file_size: bytes.len(),
            compile_time,
        })
    }
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
