//! Loading a model: read the `.wasm` file, compile it once, link it against
//! WASI, and read its metadata. Every way this can fail gets a message that
//! names the file, the step and what to do, because this is where an operator
//! meets a bad deployment.

pub mod files;
pub mod pack;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::core::error::LoadError;
use crate::core::name::{self, ModelName};
use crate::runtime::cache::{self, CompileCache};
use crate::runtime::contract::{self, Metadata, PredictorPre};
use crate::runtime::root_cause;
use crate::runtime::sandbox::GuestState;
use files::FileError;

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

/// A model file turned into code: the component, how it came to be, and
/// the file's SHA-256 (hashed once, off the runtime, for the compile cache's
/// key and the served model's source digest).
pub struct Code {
    pub component: Component,
    pub compiled: Compiled,
    pub sha256: [u8; 32],
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

/// The largest model file read: a bigger one is a mistake (a data set, a
/// disk image), and reading it would only exhaust memory.
pub const MAX_MODEL_FILE: u64 = 1 << 30;

/// The longest a model file may take to read. Past it the read is abandoned
/// (its thread stays blocked, the server does not) and the load fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a model file and checks that it is a component, or an artifact
/// from `wasm-host compile`; every other file gets a message that says
/// what it is and what to do.
///
/// The file is read off the runtime's threads, within [`READ_TIMEOUT`] and
/// [`MAX_MODEL_FILE`]: a model path that became a FIFO, a device or a file on
/// a hung mount fails this load (and a reload leaves the old model serving)
/// but never stalls the server.
pub async fn read(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    let owned = path.to_owned();
    let read = move || files::read_regular(&owned, MAX_MODEL_FILE, "model file");
    let bytes = match files::off_runtime(READ_TIMEOUT, read).await {
        Err(why) => bail!("reading model file {shown} {why}"),
        Ok(Err(FileError::NotFound)) => {
            return Err(LoadError::NotFound(format!(
                "model file {shown} does not exist: pass the path of a model component \
                 (`make model` builds the example into target/wasm32-wasip2/release/guest_model.wasm)"
            ))
            .into());
        }
        Ok(Err(FileError::Refused(why))) => bail!("{why}: pass the path of a .wasm component"),
        Ok(Ok(bytes)) => bytes,
    };
    check_kind(&bytes, &shown)?;
    Ok(bytes)
}

fn check_kind(bytes: &[u8], shown: &str) -> Result<()> {
    if bytes.starts_with(ELF_MAGIC) {
        return Ok(());
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
    Ok(())
}

/// Whether a model file's bytes are a precompiled artifact (native code).
pub fn is_precompiled(bytes: &[u8]) -> bool {
    bytes.starts_with(ELF_MAGIC)
}

/// The architecture an ELF file's code is for (as `std::env::consts::ARCH`
/// names it), from its header's machine field.
pub fn elf_arch(bytes: &[u8]) -> Option<String> {
    if !is_precompiled(bytes) || bytes.len() < 20 {
        return None;
    }
    let machine = match bytes[5] {
        2 => u16::from_be_bytes([bytes[18], bytes[19]]),
        _ => u16::from_le_bytes([bytes[18], bytes[19]]),
    };
    Some(match machine {
        62 => "x86_64".to_owned(),
        183 => "aarch64".to_owned(),
        243 => "riscv64".to_owned(),
        22 => "s390x".to_owned(),
        3 => "x86".to_owned(),
        40 => "arm".to_owned(),
        other => format!("machine type {other}"),
    })
}

/// The target triple of this host, as `wasm-host compile --target` takes it.
pub fn host_triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// Refuses an artifact compiled for another architecture with one line that
/// says how to make one for this host.
fn check_arch(bytes: &[u8], shown: &str) -> Result<()> {
    let here = std::env::consts::ARCH;
    match elf_arch(bytes) {
        // Typed, so that a load says "unsupported" rather than "bad file".
        Some(arch) if arch != here => Err(LoadError::Unsupported(format!(
            "{shown} was compiled for {arch}, this host is {here}: compile the .wasm for this \
             host with `wasm-host compile --target {} MODEL.wasm -o MODEL.cwasm` (on any \
             machine), or serve the .wasm itself",
            host_triple()
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Turns a model file's bytes into code: from the cache, from a
/// precompiled artifact (only when the operator allowed them), or by
/// compiling. All of it runs off the runtime's threads: hashing, reading the
/// cache and compiling take from milliseconds to seconds, at start and on
/// reload.
pub async fn compile(
    engine: &Engine,
    bytes: Bytes,
    cache: &CompileCache,
    shown: &str,
) -> Result<Code> {
    let started = Instant::now();
    check_arch(&bytes, shown)?;
    if is_precompiled(&bytes) && !cache.precompiled_allowed() {
        return Err(LoadError::Unsupported(format!(
            "{shown} is a precompiled artifact, i.e. native code that would run unchecked in \
             this process; refusing it: pass the .wasm component, or pass --allow-precompiled \
             if you built this file yourself with `wasm-host compile`"
        ))
        .into());
    }
    let (engine, cache, owned) = (engine.clone(), cache.clone(), shown.to_owned());
    tokio::task::spawn_blocking(move || compile_blocking(&engine, &bytes, &cache, &owned, started))
        .await
        .expect("the compile task panicked")
}

fn compile_blocking(
    engine: &Engine,
    bytes: &[u8],
    cache: &CompileCache,
    shown: &str,
    started: Instant,
) -> Result<Code> {
    let sha256 = cache::sha256(bytes);
    let code = |component, compiled| Code {
        component,
        compiled,
        sha256,
    };
    if is_precompiled(bytes) {
        // SAFETY: the operator passed --allow-precompiled, promising this is
        // an artifact of `wasm-host compile` they built; the bytes are in
        // memory (not mapped, so changing the file cannot fault us), and
        // wasmtime checks that they were made by this version with this
        // configuration before using them.
        return match unsafe { Component::deserialize(engine, bytes) } {
            Ok(component) => Ok(code(component, Compiled::Ahead(started.elapsed()))),
            Err(err) => {
                let why = root_cause(&err);
                let hint = if why.contains("memory reservation") || why.contains("memory guard") {
                    "it was compiled for another memory layout: compile it with the \
                     --memory-limit this host serves with (limits that round up to the same \
                     power of two share a layout)"
                } else {
                    "recompile it with `wasm-host compile` from the .wasm, with this version \
                     and these flags"
                };
                bail!("{shown} is a compiled artifact this wasm-host cannot use ({why}): {hint}")
            }
        };
    }
    if let Some(component) = cache.load(engine, &sha256) {
        return Ok(code(component, Compiled::FromCache(started.elapsed())));
    }
    match Component::new(engine, bytes) {
        Ok(component) => {
            cache.store(engine, &sha256, &component);
            Ok(code(component, Compiled::Now(started.elapsed())))
        }
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
        let bytes = if crate::model::pack::is_onnx(path) {
            crate::model::pack::packed_for_serving(engine, path, memory_limit, cache).await?
        } else {
            read(path).await?
        };
        let file_size = bytes.len();
        let Code {
            component,
            compiled,
            ..
        } = compile(engine, bytes.into(), cache, &shown).await?;
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
    // Before the imports: a model built against another version of the
    // contract may link, and what it needs is a rebuild, whatever else.
    if let Some(version) = contract::other_version(component, engine) {
        bail!("{}", contract::other_version_refusal(shown, &version));
    }
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
            "{shown} does not export the model contract {} ({}): \
             build it against wit/model.wit",
            contract::MODEL_EXPORT,
            root_cause(&err)
        ),
    };
    let mut store = crate::runtime::instance::new_store(engine, memory_limit);
    let bindings = match crate::runtime::instance::set_up(pre.instantiate_async(&mut store)).await {
        Ok(bindings) => bindings,
        Err(err) => bail!(
            "{shown} failed to start: {} (if it ran out of memory, raise --memory-limit)",
            root_cause(&err)
        ),
    };
    let call = bindings.wasm_host_model_model().call_metadata(&mut store);
    let metadata = match crate::runtime::instance::set_up(call).await {
        Ok(metadata) => metadata,
        Err(err) => bail!("{shown} failed in metadata(): {}", root_cause(&err)),
    };
    check_metadata(&metadata).map_err(|why| anyhow::anyhow!("{shown}: {why}"))?;
    Ok((pre, metadata))
}

pub use crate::core::name::MAX_LABEL;

/// The host trusts metadata to validate requests, so it must be coherent;
/// and names end up in URLs, logs and metrics, so they must be safe there.
fn check_metadata(metadata: &Metadata) -> Result<(), String> {
    let said = |why: String| format!("metadata() returned a bad name: {why}");
    ModelName::parse(&metadata.name).map_err(said)?;
    name::check_version(&metadata.version).map_err(said)?;
    if metadata.inputs.is_empty() || metadata.outputs.is_empty() {
        return Err("metadata() must declare at least one input and one output".into());
    }
    for (kind, specs) in [("input", &metadata.inputs), ("output", &metadata.outputs)] {
        for (i, spec) in specs.iter().enumerate() {
            name::check_text(&format!("{kind} name"), &spec.name).map_err(said)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::contract::{Datatype, TensorSpec};

    fn named(name: &str, version: &str) -> Metadata {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![-1],
        };
        Metadata {
            name: name.into(),
            version: version.into(),
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
        }
    }

    #[test]
    fn model_names_must_be_printable_bounded_url_path_segments() {
        for good in [
            "digits",
            "a b",
            "résumé-v2",
            "m.onnx",
            &"n".repeat(MAX_LABEL),
        ] {
            assert_eq!(check_metadata(&named(good, "1")), Ok(()), "{good:?}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("   ", "whitespace"),
            (" lead", "whitespace"),
            ("a/b", "'/'"),
            ("a\\b", "'\\\\'"),
            ("a?b", "'?'"),
            ("a#b", "'#'"),
            ("..", "names a folder"),
            ("bad\nname", "control character"),
            ("bad\rname", "control character"),
            ("bad\tname", "control character"),
            ("bad\u{7f}", "control character"),
            ("bad\u{85}", "control character"),
            ("evil\u{202E}gpj.exe", "U+202E"),
            ("evil\u{2066}x", "U+2066"),
            (&"n".repeat(MAX_LABEL + 1), "at most 128"),
        ] {
            let err = check_metadata(&named(bad, "1")).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn model_versions_may_be_empty_but_are_otherwise_checked_like_names() {
        assert_eq!(check_metadata(&named("m", "")), Ok(()));
        assert_eq!(check_metadata(&named("m", "2024-06-01 rc 1")), Ok(()));
        for bad in ["1\n", "1/2", "\u{202A}1", &"9".repeat(MAX_LABEL + 1)] {
            let err = check_metadata(&named("m", bad)).expect_err(bad);
            assert!(err.contains("model version"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn tensor_names_must_be_printable_and_bounded() {
        let mut metadata = named("m", "1");
        metadata.inputs[0].name = "x\ny".into();
        assert!(
            check_metadata(&metadata)
                .unwrap_err()
                .contains("input name")
        );
    }

    #[tokio::test]
    async fn a_blocking_read_that_hangs_is_abandoned_after_its_timeout() {
        let started = Instant::now();
        let result = files::off_runtime(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2))
        })
        .await;
        assert!(result.unwrap_err().to_string().contains("abandoned"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
