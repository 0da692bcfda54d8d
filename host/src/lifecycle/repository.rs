//! The model repository: a folder with one folder per model, as Triton
//! lays it out.
//!
//! ```text
//! models/
//!   digits/model.wasm            a model, served under its folder's name
//!   digits/model.toml            optional: its settings (instances, memory-limit, ...)
//!   echo/1/model.wasm            numbered versions: the highest is served,
//!   echo/2/model.wasm            unless model.toml says `version = 1`
//! ```
//!
//! A folder's name is the model's name in every URL. `model.cwasm` (from
//! `wasm-host compile`) is accepted beside or instead of `model.wasm`; it is
//! loaded only where the operator allows precompiled artifacts. A
//! `model.onnx` is packed into a component on the fly (`wasm-host pack`).
//! A folder with no file named so may hold its one model file under any
//! name ending `.wasm`, `.cwasm` or `.onnx`: KServe's storage initializer
//! and model agent keep the uploaded file's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::core::error::LoadError;
use crate::core::name::ModelName;
use crate::lifecycle::registry::{LoadRequest, Registry};
use crate::lifecycle::residency::Cause;
use crate::lifecycle::settings::ModelSettings;
use crate::model::files::{self, Abandoned, FileError};

/// Who may change the served models while the host runs (Triton's --model-control-mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelControl {
    /// The models given at start serve until the host stops; the repository API only reads.
    None,
    /// The repository API loads, swaps and unloads models (POST /v2/repository/models/{m}/load).
    Explicit,
    /// As explicit, and the repository folder is rescanned: new folders load, changed files reload, removed folders unload.
    Poll,
}

/// The file names a model folder may hold its component under, in order of
/// preference.
const MODEL_FILES: [&str; 3] = ["model.wasm", "model.cwasm", "model.onnx"];

/// The endings of a model file under another name: a folder with none of
/// [`MODEL_FILES`] may hold one file so named, whatever it is called.
const MODEL_EXTENSIONS: [&str; 3] = ["wasm", "cwasm", "onnx"];

/// The largest `model.toml` read: settings are a few lines; anything bigger
/// is a mistake or an attack (a link to `/dev/zero`, a huge file).
pub const MAX_SETTINGS_FILE: u64 = 64 << 10;

/// The longest a scan of the repository (listing folders, reading each
/// `model.toml`) may take before it is abandoned: a hung mount fails the
/// scan, it does not stall the host.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(30);

/// One model found in the repository.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub name: ModelName,
    /// The version folder's number; `None` for a model file at the top of
    /// its folder (it reports its own version).
    pub version: Option<String>,
    /// The component's path with every link resolved: inside the repository.
    pub path: PathBuf,
    pub settings: ModelSettings,
    /// What changes when the model's files change: the component's and
    /// model.toml's sizes and modification times.
    pub fingerprint: Vec<(u64, Option<SystemTime>)>,
}

impl Found {
    /// Reads the component and makes the load request for it.
    pub async fn load_request(&self, registry: &Registry) -> Result<LoadRequest, LoadError> {
        let bytes = registry.read_model(&self.path).await?;
        Ok(LoadRequest {
            name: Some(self.name.clone()),
            version: self.version.clone(),
            bytes,
            path: Some(self.path.clone()),
            settings: self.settings.clone(),
            replaces: None,
        })
    }
}

/// A model folder that cannot be loaded: its name and what is wrong.
pub type Broken = (ModelName, String);

/// Every model folder in `dir`: the ones that can be loaded, and the others.
/// Folders whose names cannot be model names are skipped with a warning
/// (they could never be addressed, and their names are not safe to log
/// as they are).
pub fn scan(dir: &Path) -> Result<(Vec<Found>, Vec<Broken>), String> {
    let root = root(dir).map_err(|why| why.to_string())?;
    let entries = std::fs::read_dir(&root).map_err(|err| {
        format!(
            "cannot read the model repository {}: {err}; pass a folder with one folder per model",
            dir.display()
        )
    })?;
    let mut names = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        if !entry
            .file_type()
            .is_ok_and(|t| t.is_dir() || t.is_symlink())
        {
            continue;
        }
        let Some(text) = entry.file_name().into_string().ok() else {
            tracing::warn!("repository: skipping a folder whose name is not UTF-8");
            continue;
        };
        if text.starts_with('.') {
            continue;
        }
        match ModelName::parse(&text) {
            Ok(name) => names.push(name),
            Err(why) => tracing::warn!("repository: skipping a folder: {why}"),
        }
    }
    names.sort();
    let (mut found, mut broken) = (Vec::new(), Vec::new());
    for name in names {
        match find_in(&root, &name) {
            Ok(model) => found.push(model),
            Err(why) => broken.push((name, why.to_string())),
        }
    }
    Ok((found, broken))
}

/// [`scan`], off the runtime's threads and within [`SCAN_TIMEOUT`].
pub async fn scan_off_runtime(dir: &Path) -> Result<(Vec<Found>, Vec<Broken>), String> {
    let dir = dir.to_owned();
    let shown = dir.display().to_string();
    files::off_runtime(SCAN_TIMEOUT, move || scan(&dir))
        .await
        .map_err(|why| format!("scanning the model repository {shown} {why}"))?
}

/// The model folder `dir/name`: its component, version and settings,
/// off the runtime's threads and within [`SCAN_TIMEOUT`].
pub async fn find(dir: &Path, name: &ModelName) -> Result<Found, LoadError> {
    let (dir, owned) = (dir.to_owned(), name.clone());
    files::off_runtime(SCAN_TIMEOUT, move || find_in(&root(&dir)?, &owned))
        .await
        .map_err(|why| {
            let message = format!("reading the repository folder of {name} {why}");
            match why {
                Abandoned::TimedOut(_) => LoadError::Timeout(message),
                Abandoned::Failed(_) => LoadError::Internal(message),
            }
        })?
}

/// The repository folder with every link resolved: what every model path
/// must stay inside. Unreadable, it is the host's own failure, not a
/// client's: internal.
fn root(dir: &Path) -> Result<PathBuf, LoadError> {
    std::fs::canonicalize(dir).map_err(|err| {
        LoadError::Internal(format!(
            "cannot read the model repository {}: {err}; pass a folder with one folder per model",
            dir.display()
        ))
    })
}

/// `path` with its links resolved, if it exists and stays inside `root`.
/// A link that leads outside is refused without saying where it leads or
/// whether that exists: not found, as if there were nothing there.
fn inside(root: &Path, path: &Path) -> Result<Option<PathBuf>, LoadError> {
    match std::fs::canonicalize(path) {
        Ok(real) if real.starts_with(root) => Ok(Some(real)),
        Ok(_) => Err(LoadError::NotFound(format!(
            "{} leads outside the model repository; models and their files must be inside it",
            path.display()
        ))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(LoadError::BadFile(format!(
            "cannot read {}: {err}",
            path.display()
        ))),
    }
}

/// The model folder `root/name` (`root` already resolved).
fn find_in(root: &Path, name: &ModelName) -> Result<Found, LoadError> {
    let folder = root.join(name.as_str());
    let shown = folder.display();
    let folder = match inside(root, &folder)? {
        Some(real) if real.is_dir() => real,
        _ => {
            return Err(LoadError::NotFound(format!(
                "the repository has no folder {shown}"
            )));
        }
    };
    let toml_path = folder.join("model.toml");
    let settings = match inside(root, &toml_path)? {
        None => ModelSettings::default(),
        Some(real) => match files::read_regular(&real, MAX_SETTINGS_FILE, "model.toml") {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    LoadError::BadFile(format!("{} is not UTF-8 text", toml_path.display()))
                })?;
                ModelSettings::from_toml(&text).map_err(|err| {
                    LoadError::BadFile(format!("{} is not valid: {err}", toml_path.display()))
                })?
            }
            Err(FileError::NotFound) => ModelSettings::default(),
            Err(FileError::Refused(why)) => return Err(LoadError::BadFile(why)),
        },
    };
    let mut versions: Vec<u64> = std::fs::read_dir(&folder)
        .map_err(|err| LoadError::BadFile(format!("cannot read {shown}: {err}")))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let (model_dir, version) = match (settings.version, versions.last()) {
        (Some(wanted), _) if versions.contains(&wanted) => {
            (folder.join(wanted.to_string()), Some(wanted.to_string()))
        }
        (Some(wanted), _) => {
            return Err(LoadError::NotFound(format!(
                "model.toml asks for version {wanted}, but {shown} has versions {versions:?}"
            )));
        }
        (None, Some(&latest)) => (folder.join(latest.to_string()), Some(latest.to_string())),
        (None, None) => (folder.clone(), None),
    };
    let path = model_file(root, &model_dir)?.ok_or_else(|| {
        LoadError::NotFound(format!(
            "{} holds no model: put the component there as model.wasm",
            model_dir.display()
        ))
    })?;
    let fingerprint = [&path, &toml_path]
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            (
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    Ok(Found {
        name: name.clone(),
        version,
        path,
        settings,
        fingerprint,
    })
}

/// The model file in `dir`, resolved and inside `root`: see
/// [`model_files`]; two are refused, naming both.
fn model_file(root: &Path, dir: &Path) -> Result<Option<PathBuf>, LoadError> {
    match model_files(root, dir)?.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(LoadError::BadFile(ambiguous(dir, many))),
    }
}

/// The model files in `dir`, resolved and inside `root`: `model.wasm`,
/// `model.cwasm` or `model.onnx` alone, the first of them there is; else
/// every file ending in one of [`MODEL_EXTENSIONS`], whatever its name.
fn model_files(root: &Path, dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    for file in MODEL_FILES {
        if let Some(real) = inside(root, &dir.join(file))?
            && real.is_file()
        {
            return Ok(vec![real]);
        }
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|err| LoadError::BadFile(format!("cannot read {}: {err}", dir.display())))?;
    let mut named: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .and_then(|ext| ext.to_str())
                .is_some_and(|ext| MODEL_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
        })
        .collect();
    named.sort();
    let mut found = Vec::new();
    for path in named {
        if let Some(real) = inside(root, &path)?
            && real.is_file()
        {
            found.push(real);
        }
    }
    Ok(found)
}

/// Why a folder with two or more model files is refused, and what to do:
/// which one to serve is the operator's choice, not the host's.
fn ambiguous(dir: &Path, files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|path| {
            path.file_name()
                .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
        })
        .collect();
    format!(
        "{} holds {} model files ({}): keep one, or name the one to serve model.wasm \
         (model.onnx for an ONNX file)",
        dir.display(),
        files.len(),
        names.join(", ")
    )
}

/// What a model path given to `serve` holds. KServe's storage initializer
/// leaves one of these in `/mnt/models`: the uploaded file, a folder
/// holding it (under the name it was uploaded with), or a repository.
#[derive(Debug, PartialEq)]
pub enum Holds {
    /// A model file: the path itself, or the one model file at the top of
    /// the folder, resolved inside it.
    File(PathBuf),
    /// A folder with no model file at its top: a repository, one folder
    /// per model.
    Repository(PathBuf),
    /// A folder with two or more model files at its top, and why that is
    /// refused.
    Ambiguous(String),
}

/// Says what `path` holds: a file is a model file; a folder is the one
/// model file at its top ([`model_files`]), or a repository if it has
/// none, or ambiguous if it has more.
pub fn holds(path: &Path) -> Result<Holds, LoadError> {
    if !path.is_dir() {
        return Ok(Holds::File(path.to_owned()));
    }
    let root = root(path)?;
    let files = model_files(&root, &root)?;
    Ok(match files.as_slice() {
        [] => Holds::Repository(path.to_owned()),
        [one] => Holds::File(one.clone()),
        many => Holds::Ambiguous(ambiguous(path, many)),
    })
}

/// Loads every model in the repository, one at a time. A model that fails
/// is recorded as UNAVAILABLE with its reason; the others serve.
pub async fn load_all(registry: &Registry, dir: &Path) -> Result<Vec<Found>, String> {
    let (found, broken) = scan_off_runtime(dir).await?;
    for (name, why) in broken {
        tracing::error!("model {name} is unavailable: {why}");
        registry.failed(&name, "", &why);
    }
    let mut loaded = Vec::new();
    for model in found {
        let result = match model.load_request(registry).await {
            Ok(request) => registry.load_as(request, Cause::Startup).await.map(drop),
            Err(why) => {
                let version = model.version.as_deref().unwrap_or("");
                registry.failed(&model.name, version, why.message());
                Err(why)
            }
        };
        match result {
            Ok(()) => loaded.push(model),
            Err(why) => tracing::error!("model {} is unavailable: {why}", model.name),
        }
    }
    Ok(loaded)
}

/// `--load on-demand`: registers every model in the repository without
/// loading any (design §11): what the scan reads (folders, model.toml) is
/// all a model costs until its first request. A folder that cannot be
/// loaded is recorded as UNAVAILABLE with its reason.
pub async fn register_all(registry: &Registry, dir: &Path) -> Result<Vec<Found>, String> {
    let (found, broken) = scan_off_runtime(dir).await?;
    for (name, why) in broken {
        tracing::error!("model {name} is unavailable: {why}");
        registry.failed(&name, "", &why);
    }
    let count = registry.register_all(found.clone());
    tracing::info!(
        "registered {count} models from {}; each loads at its first request",
        dir.display()
    );
    Ok(found)
}

/// `--model-control poll`: rescans the repository every `interval`; a new
/// folder loads, a changed component or model.toml reloads (a swap with
/// no failed request), and a removed folder unloads. The loop is
/// supervised: if a round panics, it is logged, counted and the loop goes
/// on from what it knew.
pub fn spawn_poll(registry: Arc<Registry>, dir: PathBuf, interval: Duration, loaded: Vec<Found>) {
    let known = Known {
        found: loaded.into_iter().map(|f| (f.name.clone(), f)).collect(),
        broken: BTreeMap::new(),
    };
    let known = Arc::new(Mutex::new(known));
    let metrics = registry.shared_metrics();
    crate::core::supervise::spawn("repository-poll", metrics, move || {
        let (registry, dir, known) = (Arc::clone(&registry), dir.clone(), Arc::clone(&known));
        async move {
            loop {
                tokio::time::sleep(interval).await;
                poll_once(&registry, &dir, &known).await;
            }
        }
    });
}

/// What the poll has seen: the folders it loaded (or tried to), and the
/// broken ones with their reasons, each reported once until it changes.
struct Known {
    found: BTreeMap<ModelName, Found>,
    broken: BTreeMap<ModelName, String>,
}

/// One round of the poll: what is new or changed loads, what is gone
/// unloads, and a folder that cannot be loaded is marked UNAVAILABLE with
/// its reason.
async fn poll_once(registry: &Registry, dir: &Path, known: &Mutex<Known>) {
    let (found, broken) = match scan_off_runtime(dir).await {
        Ok(scanned) => scanned,
        Err(why) => {
            tracing::error!("repository poll: {why}");
            return;
        }
    };
    {
        let mut known = known.lock().unwrap();
        for (name, why) in &broken {
            if known.broken.get(name) != Some(why) && registry.get(name, None).is_err() {
                tracing::error!("repository poll: model {name} is unavailable: {why}");
                registry.failed(name, "", why);
            }
            known.found.remove(name);
        }
        known.broken = broken.into_iter().collect();
    }
    for model in &found {
        let what = match known.lock().unwrap().found.get(&model.name) {
            Some(old) if old == model => continue,
            Some(_) => "changed",
            None => "new",
        };
        tracing::info!(
            "repository poll: model {} is {what}; loading it",
            model.name
        );
        // Remembered before the load: a model that fails (or panics the
        // round) is tried again only when its files change.
        known
            .lock()
            .unwrap()
            .found
            .insert(model.name.clone(), model.clone());
        let result = if registry.on_demand() {
            // Registered anew; loaded again only if it is resident now.
            match registry.register(model.clone()) {
                false => Ok(()),
                true => match registry.registered(&model.name) {
                    Some(registered) => registry
                        .load_registered(&registered, Cause::Poll)
                        .await
                        .map(drop),
                    None => Ok(()),
                },
            }
        } else {
            match model.load_request(registry).await {
                Ok(request) => registry.load_as(request, Cause::Poll).await.map(drop),
                Err(why) => {
                    let version = model.version.as_deref().unwrap_or("");
                    registry.failed(&model.name, version, why.message());
                    Err(why)
                }
            }
        };
        if let Err(why) = result {
            tracing::error!(
                "repository poll: model {} failed to load: {why}; it is tried again when its \
                 files change",
                model.name
            );
        }
    }
    let gone: Vec<ModelName> = known
        .lock()
        .unwrap()
        .found
        .keys()
        .filter(|name| !found.iter().any(|f| &f.name == *name))
        .cloned()
        .collect();
    for name in gone {
        tracing::info!("repository poll: model {name}'s folder is gone; unloading it");
        let _ = registry.unload(&name).await;
        if registry.on_demand() {
            registry.deregister(&name);
        }
        known.lock().unwrap().found.remove(&name);
    }
}
