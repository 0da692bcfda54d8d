//! Packing an ONNX model into a model component: the ONNX runner (tract built
//! for wasm32-wasip2, the workspace's `onnx-runner` crate), pre-initialised
//! with wasmtime-wizer so that the parsed, type-checked and optimised plan is
//! in the component's data segments.
//!
//! The packer instantiates the runner once, in a store with the serving
//! memory cap and a deadline (an ONNX file is untrusted input), calls its
//! `load` export with the file's bytes, and lets wizer snapshot the instance.
//! Every instance of the result maps that plan copy-on-write, so N instances
//! cost about one copy of the weights, and the first request parses nothing.
//! Where the model came from (producer, opset, operators, the file's SHA-256)
//! goes into a custom section, [`SECTION`], which `wasm-host inspect` prints:
//! a custom section rather than an exported function because it can be read
//! without instantiating anything and leaves the contract untouched.
//!
//! [`packed_for_serving`] is what `wasm-host serve model.onnx` (and anything
//! else that loads a model by path) uses: it packs on the fly and keeps the
//! result in the compile cache's `onnx/` folder, keyed by content.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime::{Engine, Store};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::runtime::cache::CompileCache;
use crate::runtime::root_cause;
use crate::runtime::sandbox::GuestState;

mod progress;
mod section;
mod wire;

pub use progress::Progress;
use section::append_custom_section;
pub use section::provenance;
pub use wire::graph_nodes;

/// Overrides where the runner component is found.
pub const RUNNER_ENV: &str = "WASM_HOST_ONNX_RUNNER";
/// The runner's file name beside the `wasm-host` executable.
pub const RUNNER_FILE: &str = "onnx-runner.wasm";
/// The custom section that records a packed model's provenance (JSON).
pub const SECTION: &str = "wasm-host-onnx";
/// Longest the runner may take to load a model. Big graphs take seconds;
/// a minute is generous, and bounds a hostile file.
const LOAD_DEADLINE: Duration = Duration::from_secs(120);

/// The largest ONNX file read: protobuf's own limit for one message. A
/// bigger (or sparse) file is refused before a byte of it is read.
pub const MAX_ONNX_FILE: u64 = 2 << 30;

/// The most nodes a graph may have. Real exports have hundreds to a few
/// thousand (ResNet-50 about 180, a BERT-base encoder under 2,000); tract's
/// optimiser is superlinear in them, and a 20,000-node chain of Relu took
/// 95 s of CPU and 730 MB to pack: a cheap file must not buy that.
pub const MAX_ONNX_NODES: usize = 10_000;

/// Packs run one at a time: each takes a core and up to the memory limit
/// plus the runner's compile, so concurrent uploads or poll rounds queue
/// here instead of multiplying that.
static PACKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// True for a path the host should pack before serving.
pub fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("onnx"))
}

/// The runner component: `$WASM_HOST_ONNX_RUNNER`, else `onnx-runner.wasm`
/// beside the executable (where `make` puts it), else cargo's build output
/// next to the executable's folder (a developer's `target/`).
pub fn find_runner() -> Result<(PathBuf, Vec<u8>)> {
    if let Some(path) = std::env::var_os(RUNNER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read the ONNX runner {} (from ${RUNNER_ENV})",
                path.display()
            )
        })?;
        return Ok((path, bytes));
    }
    let exe = std::env::current_exe().context("cannot find the wasm-host executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(RUNNER_FILE),
        dir.join("../wasm32-wasip2/release/onnx_runner.wasm"),
    ];
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            return Ok((path, bytes));
        }
    }
    bail!(
        "the ONNX runner ({RUNNER_FILE}) is not installed beside {}: build it with \
         `make onnx-runner`, or set {RUNNER_ENV} to its path",
        exe.display()
    )
}

/// What the packer needs besides the file.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// The model name; `None` takes the file name without `.onnx`.
    pub name: Option<String>,
    /// The model version; `None` means "1".
    pub version: Option<String>,
    /// The memory cap the model is loaded (and will be served) under.
    pub memory_limit: usize,
    /// Whether each step is shown as it runs.
    pub progress: Progress,
}

/// A packed component and what was recorded about it.
pub struct Packed {
    pub wasm: Vec<u8>,
    pub provenance: serde_json::Value,
}

/// A model name from a file name: what a URL path segment can carry.
pub fn default_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "model".into()
    } else {
        name
    }
}

/// Packs the ONNX model at `path` with `runner`. Errors are one line each,
/// naming the file and what is wrong with it.
pub async fn pack(
    engine: &Engine,
    path: &Path,
    runner: &[u8],
    options: &PackOptions,
    cache: &CompileCache,
) -> Result<Packed> {
    let reading = options.progress.step(format!("reading {}", path.display()));
    let onnx = read_onnx(path).await?;
    reading.done(&progress::size(onnx.len()));
    pack_bytes(engine, path, onnx, runner, options, cache).await
}

/// [`pack`] of an ONNX file's bytes, already read from `path`.
async fn pack_bytes(
    engine: &Engine,
    path: &Path,
    onnx: Vec<u8>,
    runner: &[u8],
    options: &PackOptions,
    cache: &CompileCache,
) -> Result<Packed> {
    let shown = path.display();
    let nodes = graph_nodes(&onnx).map_err(|why| anyhow!("{shown} is not an ONNX model: {why}"))?;
    if nodes > MAX_ONNX_NODES {
        return Err(crate::core::error::LoadError::Unsupported(format!(
            "{shown} has {nodes} nodes; wasm-host packs graphs of at most {MAX_ONNX_NODES} \
             (simplify it, e.g. with onnx-simplifier, or split it)"
        ))
        .into());
    }
    let _packing = PACKING
        .acquire()
        .await
        .expect("the pack semaphore is never closed");
    let name = options.name.clone().unwrap_or_else(|| default_name(path));
    if name.is_empty() || name.contains('/') {
        bail!("model name {name:?} cannot be used in a URL: pass --name without '/'");
    }
    let version = options.version.clone().unwrap_or_else(|| "1".into());

    let mut wizer = Wizer::new();
    // `load` is never called by wizer itself (the packer calls it with the
    // bytes), but must survive the rewrite: wizer drops its init function
    // from the output unless told to keep it.
    wizer.init_func("load").keep_init_func(true);
    let preparing = options
        .progress
        .step("preparing the ONNX runner (compiled once per host, then cached)");
    let (context, instrumented) = wizer.instrument_component(runner).map_err(|err| {
        anyhow!(
            "the ONNX runner is not a valid component: {}",
            root_cause(&err)
        )
    })?;
    let (component, cached) = compile_cached(engine, instrumented, cache).await?;
    preparing.done(if cached { "from the cache" } else { "compiled" });

    let loading = options
        .progress
        .step("loading the graph (parse, check, optimise, run once on zeros)");

    let mut store = crate::runtime::instance::new_store(engine, options.memory_limit);
    store.data_mut().deadline = Instant::now() + LOAD_DEADLINE;
    let linker = crate::model::linker(engine)?;
    let instance = match linker.instantiate_async(&mut store, &component).await {
        Ok(instance) => instance,
        Err(_) if store.data().memory.hit => bail!(
            "the ONNX runner alone needs more than the memory limit of {} MiB: raise --memory-limit",
            options.memory_limit >> 20
        ),
        Err(err) => bail!("the ONNX runner failed to start: {}", root_cause(&err)),
    };
    let load = instance
        .get_typed_func::<(&[u8], &str, &str), (Result<String, String>,)>(&mut store, "load")
        .map_err(|err| anyhow!("the ONNX runner has no usable `load`: {}", root_cause(&err)))?;
    let loaded = load
        .call_async(
            &mut store,
            (onnx.as_slice(), name.as_str(), version.as_str()),
        )
        .await;
    let guest_provenance = match loaded {
        Ok((Ok(provenance),)) => provenance,
        // A refused grow can also come back as an error from the guest (a
        // fallible allocation), not only as a trap.
        Ok((Err(_),)) if store.data().memory.hit => bail!(
            "{shown} needs more than the memory limit of {} MiB to load: raise --memory-limit",
            options.memory_limit >> 20
        ),
        Ok((Err(why),)) => bail!("{shown}: {why}"),
        Err(err) => {
            let state = store.data();
            if state.memory.hit {
                bail!(
                    "{shown} needs more than the memory limit of {} MiB to load: raise \
                     --memory-limit",
                    state.memory.limit >> 20
                );
            }
            if Instant::now() >= state.deadline {
                bail!("{shown} took longer than {LOAD_DEADLINE:?} to load");
            }
            let said = state
                .stderr
                .take()
                .map(|(text, _)| {
                    format!(
                        " ({})",
                        text.split_whitespace().collect::<Vec<_>>().join(" ")
                    )
                })
                .unwrap_or_default();
            bail!(
                "{shown}: the ONNX runner crashed while loading it: {}{said}",
                root_cause(&err)
            );
        }
    };

    loading.done("");

    // wizer reads the whole linear memory back in one call: allow that call
    // to copy as much as the memory cap lets the guest hold (wasmtime's
    // default, 128 MiB, panicked the pack of any model with more weights).
    store.set_hostcall_fuel(options.memory_limit.saturating_add(1 << 20));
    let mut reading = Snapshotting {
        store: &mut store,
        instance,
        failed: None,
    };
    let snapshotting = options.progress.step("taking the snapshot");
    let snapshot = wizer
        .snapshot_component(&context, &mut reading)
        .await
        .map_err(|err| anyhow!("cannot snapshot the loaded model: {}", root_cause(&err)))?;
    if let Some(why) = reading.failed {
        bail!("{shown}: cannot snapshot the loaded model: {why}");
    }
    drop(store);
    snapshotting.done(&progress::size(snapshot.len()));

    let mut provenance: serde_json::Value =
        serde_json::from_str(&guest_provenance).context("the ONNX runner's provenance")?;
    let extra = serde_json::json!({
        "format": "wasm-host-onnx/v1",
        "source": path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        "source_sha256": hex(&Sha256::digest(&onnx)),
        "source_bytes": onnx.len(),
        "runner_sha256": hex(&Sha256::digest(runner)),
        "packed_by": concat!("wasm-host ", env!("CARGO_PKG_VERSION")),
        "name": name,
        "version": version,
    });
    if let (Some(map), serde_json::Value::Object(extra)) = (provenance.as_object_mut(), extra) {
        map.extend(extra);
    }
    let mut wasm = snapshot;
    append_custom_section(&mut wasm, SECTION, provenance.to_string().as_bytes());
    Ok(Packed { wasm, provenance })
}

/// Compiling the instrumented runner (16 MB of tract) takes Cranelift seconds;
/// it is the same for every model, so it goes through the compile cache.
/// Hashing, the cache's read and the compile all run off the runtime; the
/// flag says whether the cache had it.
async fn compile_cached(
    engine: &Engine,
    wasm: Vec<u8>,
    cache: &CompileCache,
) -> Result<(Component, bool)> {
    let (engine, cache) = (engine.clone(), cache.clone());
    tokio::task::spawn_blocking(move || {
        let sha256 = crate::runtime::cache::sha256(&wasm);
        if let Some(component) = cache.load(&engine, &sha256) {
            return Ok((component, true));
        }
        let component = Component::new(&engine, &wasm)
            .map_err(|err| anyhow!("the ONNX runner failed to compile: {}", root_cause(&err)))?;
        cache.store(&engine, &sha256, &component);
        Ok((component, false))
    })
    .await
    .expect("the compile task panicked")
}

/// What wizer reads the loaded instance's state through: its instrumentation
/// exports, each a function without parameters.
///
/// wizer's trait cannot return an error, so a read that fails is recorded
/// in `failed` (and answered with an empty value); the packer checks it
/// after the snapshot, and the failure becomes one error line, never a
/// panic.
struct Snapshotting<'a> {
    store: &'a mut Store<GuestState>,
    instance: Instance,
    failed: Option<String>,
}

impl Snapshotting<'_> {
    async fn call<R: Lift + Send + Sync + 'static>(
        &mut self,
        instance: &str,
        func: &str,
    ) -> Option<R> {
        if self.failed.is_some() {
            return None;
        }
        match self.try_call(instance, func).await {
            Ok(value) => Some(value),
            Err(why) => {
                self.failed = Some(why);
                None
            }
        }
    }

    async fn try_call<R: Lift + Send + Sync + 'static>(
        &mut self,
        instance: &str,
        func: &str,
    ) -> Result<R, String> {
        let missing = || format!("the runner lacks wizer's export {instance}#{func}");
        let (_, exported) = self
            .instance
            .get_export(&mut *self.store, None, instance)
            .ok_or_else(missing)?;
        let (_, export) = self
            .instance
            .get_export(&mut *self.store, Some(&exported), func)
            .ok_or_else(missing)?;
        let typed = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, export)
            .map_err(|err| format!("{instance}#{func}: {}", root_cause(&err)))?;
        let (value,) = typed
            .call_async(&mut *self.store, ())
            .await
            .map_err(|err| format!("reading {instance}#{func}: {}", root_cause(&err)))?;
        Ok(value)
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .await
            .unwrap_or_default()
            .to_bits()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .await
            .unwrap_or_default()
            .to_bits()
    }
}

/// The packed component for an ONNX file, for serving: from the pack cache
/// (`<cache dir>/onnx/`, keyed by the SHA-256 of the file, the runner and
/// this wasm-host's version) or packed now and saved there. With no cache
/// dir it packs every time.
pub async fn packed_for_serving(
    engine: &Engine,
    path: &Path,
    memory_limit: usize,
    cache: &CompileCache,
) -> Result<Vec<u8>> {
    let (_, runner) = find_runner()?;
    let onnx = read_onnx(path).await?;
    let mut key = Sha256::new();
    key.update(concat!("wasm-host ", env!("CARGO_PKG_VERSION"), "\0").as_bytes());
    key.update(Sha256::digest(&runner));
    key.update(Sha256::digest(&onnx));
    key.update(default_name(path).as_bytes());
    let cached = cache.dir().map(|dir| {
        dir.join("onnx")
            .join(format!("{}.wasm", hex(&key.finalize())))
    });
    if let Some(bytes) = cached.as_ref().and_then(|p| std::fs::read(p).ok()) {
        tracing::info!("packed {} found in the pack cache", path.display());
        return Ok(bytes);
    }
    let started = Instant::now();
    let options = PackOptions {
        name: None,
        version: None,
        memory_limit,
        progress: Progress::Quiet,
    };
    let packed = pack_bytes(engine, path, onnx, &runner, &options, cache).await?;
    tracing::info!(
        "packed {} into a model component ({} KiB) in {:.1?}",
        path.display(),
        packed.wasm.len() / 1024,
        started.elapsed()
    );
    if let Some(cached) = cached
        && let Err(err) = write_private(&cached, &packed.wasm)
    {
        tracing::warn!(
            "cannot save the packed model to {}: {err:#}",
            cached.display()
        );
    }
    Ok(packed.wasm)
}

/// Reads an ONNX file: a regular file of at most [`MAX_ONNX_FILE`], off the
/// runtime's threads and within [`crate::model::READ_TIMEOUT`].
async fn read_onnx(path: &Path) -> Result<Vec<u8>> {
    use crate::model::files::{self, FileError};
    let shown = path.display().to_string();
    let owned = path.to_owned();
    let read = move || files::read_regular(&owned, MAX_ONNX_FILE, "ONNX file");
    match files::off_runtime(crate::model::READ_TIMEOUT, read).await {
        Err(why) => bail!("reading ONNX file {shown} {why}"),
        Ok(Err(FileError::NotFound)) => Err(crate::core::error::LoadError::NotFound(format!(
            "ONNX file {shown} does not exist"
        ))
        .into()),
        Ok(Err(FileError::Refused(why))) => bail!("{why}"),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Writes `bytes` to `path` whole or not at all: a temporary file renamed
/// into place, in a folder only this user can read (0700).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(path, bytes)
}

/// Writes `bytes` to `path` whole or not at all (a temporary file beside it,
/// renamed into place), so a failed or concurrent write never leaves a
/// truncated component behind.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&temp, bytes).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot move {} into place", temp.display())
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
