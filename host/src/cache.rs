//! The compiled-artifact cache: compiling a model with Cranelift takes from
//! milliseconds to many seconds, and start-up (and every edge node's cold
//! start) should pay it once per model, not once per start.
//!
//! An artifact is keyed by the SHA-256 of the component's bytes and of the
//! engine's compatibility hash (wasmtime version, target, and every setting
//! that changes generated code), so a new model, a new wasm-host or a new
//! CPU never loads a stale artifact.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled artifacts live; `None` when caching is off.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    pub fn new(dir: Option<PathBuf>) -> Self {
        CompileCache { dir }
    }

    /// `$XDG_CACHE_HOME/wasm-host`, else `~/.cache/wasm-host`: where a Linux
    /// user looks for a program's cache.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
        Some(base.join("wasm-host"))
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn path(&self, engine: &Engine, wasm: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.update(wasm);
        let digest = hasher.0.finalize();
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{name}.cwasm")))
    }

    /// The cached artifact for these bytes, if there is a usable one.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Option<Component> {
        let path = self.path(engine, wasm)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `store` below from a component this
        // engine compiled, under a name that pins the engine configuration;
        // wasmtime still checks its header and version before using it.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!("ignoring unusable cache entry {}: {err}", path.display());
                None
            }
        }
    }

    /// Saves an artifact; a cache that cannot be written only costs speed.
    pub fn store(&self, engine: &Engine, wasm: &[u8], component: &Component) {
        let Some(path) = self.path(engine, wasm) else {
            return;
        };
        let result = (|| -> anyhow::Result<()> {
            let bytes = component
                .serialize()
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            std::fs::create_dir_all(path.parent().expect("a cache file has a directory"))?;
            // Write beside, then rename: a reader never sees half a file.
            let partial = path.with_extension(format!("partial-{}", std::process::id()));
            std::fs::write(&partial, bytes)?;
            std::fs::rename(&partial, &path)?;
            Ok(())
        })();
        match result {
            Ok(()) => tracing::debug!("cached the compiled model in {}", path.display()),
            Err(err) => tracing::warn!(
                "could not write the compile cache {} ({err}); pass --cache-dir or --no-cache",
                path.display()
            ),
        }
    }
}

/// Feeds `Hash` impls into SHA-256, which, unlike std's hasher, is the same
/// in every build.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 digest is read")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
