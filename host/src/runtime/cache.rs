//! The compiled-artifact cache: compiling a model with Cranelift takes from
//! milliseconds to many seconds, and start-up (and every edge node's cold
//! start) should pay it once per model, not once per start.
//!
//! An artifact is keyed by a SHA-256 over the component's own SHA-256 and
//! the engine's compatibility hash (wasmtime version, target, and every
//! setting that changes generated code), so a new model, a new wasm-host or
//! a new CPU never loads a stale artifact. The component's SHA-256 is the
//! one a load computes anyway, for the served model's source digest: a load
//! hashes the component once (300 MB take about 0.2 s).
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
//! - each entry is two files: `KEY.cwasm`, wasmtime's artifact exactly, and
//!   `KEY.check`, which names the key, the artifact's length and its
//!   SHA-256; an artifact renamed from another model, or truncated or
//!   patched, is refused (and overwritten by a fresh compile).
//!
//! An artifact is copied once, in the same pass that checks its SHA-256,
//! into a sealed memory file (`memfd`, which nothing can shrink or write
//! once sealed), and wasmtime maps that (`Component::deserialize_file`):
//! code and the model's memory image come copy-on-write from one copy. So
//! an entry truncated under a running host cannot fault it (SIGBUS), and an
//! ONNX model with 250 MB of weights (a 720 MB component) loads with one
//! copy instead of three: `wasm-host inspect` took 8.3–16 s and 2.3 GB of
//! peak memory before, 2.8–3.4 s and 0.7 GB after, on a loaded 2-core
//! machine.

use std::fs::{DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every check file; the version byte changes with the
/// format.
const MAGIC: &[u8; 16] = b"wasm-host-cache\x02";
/// A check file: magic, the entry's key, the artifact's length (u64, little
/// endian) and its SHA-256.
const CHECK_LEN: usize = MAGIC.len() + 32 + 8 + 32;
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
    /// the component's SHA-256. The component is hashed once per load, by
    /// [`sha256`]; the served model's source digest is the same hash.
    fn key(engine: &Engine, wasm_sha256: &[u8; 32]) -> [u8; 32] {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.update(wasm_sha256);
        hasher.0.finalize().into()
    }

    /// The entry's artifact and its check file.
    fn entry_paths(dir: &Path, key: &[u8; 32]) -> (PathBuf, PathBuf) {
        let key = hex(key);
        (
            dir.join(format!("{key}.cwasm")),
            dir.join(format!("{key}.check")),
        )
    }

    /// The cached artifact for the component whose SHA-256 is
    /// `wasm_sha256` (from [`sha256`] over the very bytes the caller would
    /// otherwise compile), if there is a trustworthy one. Blocking (it reads
    /// and hashes the artifact): call it off the runtime.
    pub fn load(&self, engine: &Engine, wasm_sha256: &[u8; 32]) -> Option<Component> {
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
        let key = Self::key(engine, wasm_sha256);
        let (path, check) = Self::entry_paths(dir, &key);
        let sealed = match sealed_copy(&path, &check, &key) {
            Ok(Some(sealed)) => sealed,
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
        // checked, no symlink), bound to this key and intact by its check
        // file, copied into a memory file sealed against any change, so the
        // mapping wasmtime makes of it cannot fault; wasmtime checks its own
        // header and version too.
        let mapped = format!("/proc/self/fd/{}", sealed.as_raw_fd());
        match unsafe { Component::deserialize_file(engine, &mapped) } {
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
    pub fn store(&self, engine: &Engine, wasm_sha256: &[u8; 32], component: &Component) {
        let Some(dir) = self.dir.as_ref() else {
            return;
        };
        let key = Self::key(engine, wasm_sha256);
        let (path, check) = Self::entry_paths(dir, &key);
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
            let mut record = Vec::with_capacity(CHECK_LEN);
            record.extend_from_slice(MAGIC);
            record.extend_from_slice(&key);
            record.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
            record.extend_from_slice(&Sha256::digest(&artifact));
            // The artifact first: a check file names only an artifact that
            // is complete. A reader between the two renames sees the new
            // artifact and the old record, which disagree: a recompile.
            write_private(dir, &key, &artifact, &path)?;
            write_private(dir, &key, &record, &check)
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

/// Opens an entry's file: never through a symlink, never blocking on a FIFO
/// planted under its name, and only if this user owns it. `Ok(None)` when
/// there is none.
fn open_entry(path: &Path) -> Result<Option<(File, std::fs::Metadata)>, String> {
    let file = OpenOptions::new()
        .read(true)
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
    Ok(Some((file, meta)))
}

/// A sealed in-memory copy of the entry at `path`, if it is the artifact its
/// check file records for `key`: `Ok(None)` when either file is missing,
/// `Err` with the reason when they are there and must not be used. One pass
/// reads, hashes and copies.
fn sealed_copy(path: &Path, check: &Path, key: &[u8; 32]) -> Result<Option<File>, String> {
    let Some((mut record_file, meta)) = open_entry(check)? else {
        return Ok(None);
    };
    if meta.len() != CHECK_LEN as u64 {
        return Err("its check file is not one wasm-host wrote".into());
    }
    let mut record = [0u8; CHECK_LEN];
    record_file
        .read_exact(&mut record)
        .map_err(|err| err.to_string())?;
    let (magic, rest) = record.split_at(MAGIC.len());
    let (recorded_key, rest) = rest.split_at(32);
    let (length, digest) = rest.split_at(8);
    if magic != MAGIC {
        return Err("its check file is not one wasm-host wrote".into());
    }
    if recorded_key != key {
        return Err("its check file names another key: it was renamed or swapped".into());
    }
    let Some((artifact, meta)) = open_entry(path)? else {
        return Ok(None);
    };
    let length = u64::from_le_bytes(length.try_into().expect("8 bytes"));
    if meta.len() > MAX_ENTRY || meta.len() != length {
        return Err(format!(
            "it is {} bytes where {length} were written: it was truncated, modified, renamed or \
             swapped",
            meta.len()
        ));
    }
    let mut copy = memory_file()?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut reader = artifact.take(length);
    let mut copied = 0u64;
    loop {
        let n = reader.read(&mut chunk).map_err(|err| err.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        copy.write_all(&chunk[..n])
            .map_err(|err| format!("cannot copy it into memory: {err}"))?;
        copied += n as u64;
    }
    if copied != length || hasher.finalize()[..] != *digest {
        return Err(
            "its checksum does not match: it was truncated, modified, renamed or swapped".into(),
        );
    }
    seal(&copy)?;
    Ok(Some(copy))
}

/// Seals a memory file this process wrote with `write` and never mapped
/// against any change of size or content.
///
/// `F_SEAL_FUTURE_WRITE` refuses every later `write`, writable shared
/// mapping and hole punch; with no writable mapping made before it, that is
/// exactly `F_SEAL_WRITE`'s guarantee. `F_SEAL_WRITE` itself waits for the
/// kernel to drop every transient reference to the file's pages and fails
/// with EBUSY when a busy machine keeps one past its short wait (seen under
/// a parallel test run), which cost a recompile. It stays the fallback for
/// kernels older than 5.1, which refuse `F_SEAL_FUTURE_WRITE` with EINVAL,
/// retried a few times on EBUSY.
fn seal(copy: &File) -> Result<(), String> {
    let fixed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    let add = |seals: libc::c_int| {
        // SAFETY: F_ADD_SEALS on a descriptor the caller owns.
        if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let mut result = add(fixed | libc::F_SEAL_FUTURE_WRITE);
    if matches!(&result, Err(err) if err.raw_os_error() == Some(libc::EINVAL)) {
        for attempt in 0..5 {
            result = add(fixed | libc::F_SEAL_WRITE);
            match &result {
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10 << attempt));
                }
                _ => break,
            }
        }
    }
    result.map_err(|err| format!("cannot seal its copy: {err}"))
}

/// An anonymous memory file that can be sealed.
fn memory_file() -> Result<File, String> {
    // SAFETY: a NUL-terminated name and flags; the descriptor returned is
    // owned by the File from here on.
    let fd = unsafe {
        libc::memfd_create(
            c"wasm-host-cache-entry".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot create a memory file for it: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Writes `bytes` to `path` through a private file renamed into place.
fn write_private(dir: &Path, key: &[u8; 32], bytes: &[u8], path: &Path) -> Result<(), String> {
    let (partial, mut file) = create_private(dir, key)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        // rename replaces whatever sits at `path`, a symlink included, and
        // never follows it.
        .and_then(|()| std::fs::rename(&partial, path));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(err.to_string());
    }
    Ok(())
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

/// A component's SHA-256: the compile cache's key is made from it, and a
/// served model's source digest is it. Blocking for big components (about
/// 0.2 s for 300 MB): call it off the runtime.
pub fn sha256(wasm: &[u8]) -> [u8; 32] {
    Sha256::digest(wasm).into()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_copy_can_be_read_but_never_written_shrunk_or_grown() {
        let mut copy = memory_file().unwrap();
        copy.write_all(b"artifact bytes").unwrap();
        seal(&copy).unwrap();

        let refused = copy.write(b"patched").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
        assert!(copy.set_len(4).is_err(), "shrinking a sealed copy");
        assert!(copy.set_len(1 << 20).is_err(), "growing a sealed copy");

        // A second open, as wasmtime makes through /proc/self/fd, reads it
        // whole and cannot open it for writing.
        let mapped = format!("/proc/self/fd/{}", copy.as_raw_fd());
        assert_eq!(std::fs::read(&mapped).unwrap(), b"artifact bytes");
        let mut reopened = OpenOptions::new().write(true).open(&mapped).unwrap();
        assert!(
            reopened.write(b"x").is_err(),
            "writing through a reopened copy"
        );
    }
}
