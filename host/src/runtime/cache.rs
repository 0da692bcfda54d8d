//! The compiled-artifact cache: compiling a model with Cranelift takes from
//! milliseconds to many seconds, and start-up (and every edge node's cold
//! start) should pay it once per model, not once per start.
//!
//! An artifact is keyed by the SHA-256 of the component's bytes and of the
//! engine's compatibility hash (wasmtime version, target, and every setting
//! that changes generated code), so a new model, a new wasm-host or a new
//! CPU never loads a stale artifact.
//!
//! A cache entry is native code that this process will run, so the cache
//! trusts nothing it did not write itself:
//! - the directory and every entry must belong to this process's effective
//!   user and be writable by nobody else; a directory or entry that is not is
//!   refused with one warning line, and the model is compiled instead;
//! - symlinks are never followed, reading or writing (`O_NOFOLLOW`, and
//!   `symlink_metadata` for the directory);
//! - an entry is written to a fresh file with an unpredictable name, created
//!   exclusively with mode 0600, then renamed into place; the directory is
//!   created 0700;
//! - each entry starts with a header that names its key and the SHA-256 of
//!   the artifact after it, so an entry renamed from another model, or
//!   truncated or patched, is refused (and overwritten by a fresh compile);
//! - entries are read into memory, never memory-mapped: a file truncated under
//!   a running host cannot fault it (SIGBUS).

use std::fs::{DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry; the version byte changes with the format.
const MAGIC: &[u8; 16] = b"wasm-host-cache\x01";
/// Magic, the entry's key, the SHA-256 of the artifact.
const HEADER_LEN: usize = MAGIC.len() + 32 + 32;
/// The largest entry read back; a bigger file is not one this host wrote.
const MAX_ENTRY: u64 = 4 << 30;

/// Where compiled code may come from: the compile cache (`None` when caching
/// is off), and whether the operator lets precompiled model files (native
/// code from `wasm-host compile`) be loaded. Carried together because every
/// load, at start and on reload, needs both.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    allow_precompiled: bool,
}

impl CompileCache {
    pub fn new(dir: Option<PathBuf>) -> Self {
        CompileCache {
            dir,
            allow_precompiled: false,
        }
    }

    /// The cache the `--cache-dir`, `--no-cache` and `--allow-precompiled`
    /// flags describe.
    pub fn from_args(args: &crate::commands::cli::CodeArgs) -> Self {
        let dir = match (&args.cache_dir, args.no_cache) {
            (_, true) => None,
            (Some(dir), false) => Some(dir.clone()),
            (None, false) => CompileCache::default_dir(),
        };
        CompileCache::new(dir).allow_precompiled(args.allow_precompiled)
    }

    /// Lets model files that are precompiled artifacts be loaded.
    pub fn allow_precompiled(mut self, allow: bool) -> Self {
        self.allow_precompiled = allow;
        self
    }

    pub fn precompiled_allowed(&self) -> bool {
        self.allow_precompiled
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

    /// The entry's key: SHA-256 over the engine's compatibility hash and
    /// the component's bytes.
    fn key(engine: &Engine, wasm: &[u8]) -> [u8; 32] {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.update(wasm);
        hasher.0.finalize().into()
    }

    fn entry_path(dir: &Path, key: &[u8; 32]) -> PathBuf {
        dir.join(format!("{}.cwasm", hex(key)))
    }

    /// The cached artifact for these bytes, if there is a trustworthy one.
    /// Blocking (it hashes and reads files): call it off the runtime.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Option<Component> {
        let dir = self.dir.as_ref()?;
        match std::fs::symlink_metadata(dir) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                warn_unused(dir, &err.to_string());
                return None;
            }
            Ok(meta) => {
                if let Err(why) = check_owned("directory", &meta, true) {
                    warn_unused(dir, &why);
                    return None;
                }
            }
        }
        let key = Self::key(engine, wasm);
        let path = Self::entry_path(dir, &key);
        let artifact = match read_entry(&path, &key) {
            Ok(Some(artifact)) => artifact,
            Ok(None) => return None,
            Err(why) => {
                tracing::warn!(
                    "ignoring cache entry {} ({why}); compiling instead, and replacing it",
                    path.display()
                );
                return None;
            }
        };
        // SAFETY: the bytes are an entry this user wrote (owner and mode
        // checked, no symlink), bound to this key by its header and intact by
        // its checksum; wasmtime checks its own header and version too. They
        // are copied into memory first: `deserialize_file` would map the file,
        // and a truncated file would then fault the process.
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(
                    "ignoring unusable cache entry {} ({}); compiling instead",
                    path.display(),
                    err.root_cause()
                );
                None
            }
        }
    }

    /// Saves an artifact; a cache that cannot be written only costs speed.
    /// Blocking: call it off the runtime.
    pub fn store(&self, engine: &Engine, wasm: &[u8], component: &Component) {
        let Some(dir) = self.dir.as_ref() else {
            return;
        };
        let key = Self::key(engine, wasm);
        let path = Self::entry_path(dir, &key);
        let result = (|| -> Result<(), String> {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|err| err.to_string())?;
            let meta = std::fs::symlink_metadata(dir).map_err(|err| err.to_string())?;
            if check_owned("directory", &meta, true).is_err() {
                // `load` has said why, once; the model runs from memory.
                return Err(String::new());
            }
            let artifact = component.serialize().map_err(|err| err.to_string())?;
            let mut header = Vec::with_capacity(HEADER_LEN);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&key);
            header.extend_from_slice(&Sha256::digest(&artifact));
            let (partial, mut file) = create_private(dir, &key)?;
            let written = file
                .write_all(&header)
                .and_then(|()| file.write_all(&artifact))
                .and_then(|()| file.sync_all())
                // rename replaces whatever sits at `path`, a symlink
                // included, and never follows it.
                .and_then(|()| std::fs::rename(&partial, &path));
            if let Err(err) = written {
                let _ = std::fs::remove_file(&partial);
                return Err(err.to_string());
            }
            Ok(())
        })();
        match result {
            Ok(()) => tracing::debug!("cached the compiled model in {}", path.display()),
            Err(why) if why.is_empty() => {}
            Err(why) => tracing::warn!(
                "could not write the compile cache {} ({why}); pass --cache-dir or --no-cache",
                path.display()
            ),
        }
    }
}

fn warn_unused(dir: &Path, why: &str) {
    tracing::warn!(
        "not using the compile cache {} ({why}); compiling instead: fix its owner and mode \
         (chown, chmod 700), or pass another --cache-dir or --no-cache",
        dir.display()
    );
}

/// This process's effective user id: the owner every cache file must have.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses a file or directory that another user owns or may write, or
/// that is not what it should be (a symlink, a device, ...).
fn check_owned(what: &str, meta: &std::fs::Metadata, directory: bool) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        return Err(format!(
            "the {what} is a symlink, which the cache never follows; name the real path"
        ));
    }
    let kind_ok = if directory {
        meta.file_type().is_dir()
    } else {
        meta.file_type().is_file()
    };
    if !kind_ok {
        let expected = if directory {
            "a directory"
        } else {
            "a regular file"
        };
        return Err(format!("the {what} is not {expected}"));
    }
    let uid = effective_uid();
    if meta.uid() != uid {
        return Err(format!(
            "the {what} is owned by uid {}, not by this user (uid {uid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "the {what} is writable by other users (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// An entry's artifact bytes: `Ok(None)` when there is no entry, `Err` with
/// the reason when there is one that must not be used.
fn read_entry(path: &Path, key: &[u8; 32]) -> Result<Option<Vec<u8>>, String> {
    let file = OpenOptions::new()
        .read(true)
        // No symlinks; no blocking on a FIFO planted under the entry's name.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err("it is a symlink".into());
        }
        Err(err) => return Err(err.to_string()),
    };
    // fstat the file opened, not the name: the name may change meanwhile.
    let meta = file.metadata().map_err(|err| err.to_string())?;
    check_owned("entry", &meta, false)?;
    if meta.len() > MAX_ENTRY {
        return Err(format!("it is larger than {} GiB", MAX_ENTRY >> 30));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_ENTRY + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| err.to_string())?;
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("it has no wasm-host cache header".into());
    }
    let (header, artifact) = bytes.split_at(HEADER_LEN);
    if &header[MAGIC.len()..MAGIC.len() + 32] != key {
        return Err("its header names another key: it was renamed or swapped".into());
    }
    if header[MAGIC.len() + 32..] != Sha256::digest(artifact)[..] {
        return Err("its checksum does not match: it was truncated or modified".into());
    }
    Ok(Some(artifact.to_vec()))
}

/// A new file in `dir`, with a name no other process can predict, created
/// exclusively (an existing file or symlink under that name is an error, not
/// something to write through) and readable by this user only.
fn create_private(dir: &Path, key: &[u8; 32]) -> Result<(PathBuf, File), String> {
    let mut last = String::new();
    for _ in 0..8 {
        // std's RandomState is seeded from the OS's random source.
        let nonce = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        let partial = dir.join(format!(".{}.partial-{nonce:016x}", &hex(key)[..16]));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
        {
            Ok(file) => return Ok((partial, file)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => last = err.to_string(),
            Err(err) => return Err(err.to_string()),
        }
    }
    Err(last)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
