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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::registry::{LoadRequest, Registry};
use crate::settings::ModelSettings;

/// The file names a model folder may hold its component under, in order of
/// preference.
const MODEL_FILES: [&str; 3] = ["model.wasm", "model.cwasm", "model.onnx"];

/// One model found in the repository.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub name: String,
    /// The version folder's number; `None` for a model file at the top of
    /// its folder (it reports its own version).
    pub version: Option<String>,
    pub path: PathBuf,
    pub settings: ModelSettings,
    /// What changes when the model's files change: the component's and
    /// model.toml's sizes and modification times.
    pub fingerprint: Vec<(u64, Option<SystemTime>)>,
}

impl Found {
    /// Reads the component and makes the load request for it.
    pub async fn load_request(&self, registry: &Registry) -> Result<LoadRequest, String> {
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
pub type Broken = (String, String);

/// Every model folder in `dir`: the ones that can be loaded, and the others.
pub fn scan(dir: &Path) -> Result<(Vec<Found>, Vec<Broken>), String> {
    let entries = std::fs::read_dir(dir).map_err(|err| {
        format!(
            "cannot read the model repository {}: {err}; pass a folder with one folder per model",
            dir.display()
        )
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    let (mut found, mut broken) = (Vec::new(), Vec::new());
    for name in names {
        match find(dir, &name) {
            Ok(model) => found.push(model),
            Err(why) => broken.push((name, why)),
        }
    }
    Ok((found, broken))
}

/// The model folder `dir/name`: its component, version and settings.
pub fn find(dir: &Path, name: &str) -> Result<Found, String> {
    let folder = dir.join(name);
    let shown = folder.display();
    if !folder.is_dir() {
        return Err(format!("the repository has no folder {shown}"));
    }
    let toml_path = folder.join("model.toml");
    let settings = match std::fs::read_to_string(&toml_path) {
        Ok(text) => ModelSettings::from_toml(&text)
            .map_err(|err| format!("{} is not valid: {err}", toml_path.display()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => ModelSettings::default(),
        Err(err) => return Err(format!("cannot read {}: {err}", toml_path.display())),
    };
    let mut versions: Vec<u64> = std::fs::read_dir(&folder)
        .map_err(|err| format!("cannot read {shown}: {err}"))?
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
            return Err(format!(
                "model.toml asks for version {wanted}, but {shown} has versions {versions:?}"
            ));
        }
        (None, Some(&latest)) => (folder.join(latest.to_string()), Some(latest.to_string())),
        (None, None) => (folder.clone(), None),
    };
    let path = MODEL_FILES
        .iter()
        .map(|file| model_dir.join(file))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "{} holds no model: put the component there as model.wasm",
                model_dir.display()
            )
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
        name: name.to_owned(),
        version,
        path,
        settings,
        fingerprint,
    })
}

/// Loads every model in the repository, one at a time. A model that fails
/// is recorded as UNAVAILABLE with its reason; the others serve.
pub async fn load_all(registry: &Registry, dir: &Path) -> Result<Vec<Found>, String> {
    let (found, broken) = scan(dir)?;
    for (name, why) in broken {
        tracing::error!("model {name} is unavailable: {why}");
        registry.failed(&name, "", &why);
    }
    let mut loaded = Vec::new();
    for model in found {
        let result = match model.load_request(registry).await {
            Ok(request) => registry.load(request).await.map(drop),
            Err(why) => {
                registry.failed(&model.name, model.version.as_deref().unwrap_or(""), &why);
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

/// `--model-control poll`: rescans the repository every `interval`; a new
/// folder loads, a changed component or model.toml reloads (a swap with
/// no failed request), and a removed folder unloads.
pub fn spawn_poll(registry: Arc<Registry>, dir: PathBuf, interval: Duration, loaded: Vec<Found>) {
    tokio::spawn(async move {
        let mut known: BTreeMap<String, Found> =
            loaded.into_iter().map(|f| (f.name.clone(), f)).collect();
        loop {
            tokio::time::sleep(interval).await;
            let found = match scan(&dir) {
                Ok((found, _)) => found,
                Err(why) => {
                    tracing::error!("repository poll: {why}");
                    continue;
                }
            };
            for model in &found {
                if known.get(&model.name) == Some(model) {
                    continue;
                }
                let what = if known.contains_key(&model.name) {
                    "changed"
                } else {
                    "new"
                };
                tracing::info!(
                    "repository poll: model {} is {what}; loading it",
                    model.name
                );
                let result = match model.load_request(&registry).await {
                    Ok(request) => registry.load(request).await.map(drop),
                    Err(why) => Err(why),
                };
                if let Err(why) = result {
                    tracing::error!(
                        "repository poll: model {} failed to load: {why}; it is tried again \
                         when its files change",
                        model.name
                    );
                }
                known.insert(model.name.clone(), model.clone());
            }
            let gone: Vec<String> = known
                .keys()
                .filter(|name| !found.iter().any(|f| &&f.name == name))
                .cloned()
                .collect();
            for name in gone {
                tracing::info!("repository poll: model {name}'s folder is gone; unloading it");
                let _ = registry.unload(&name).await;
                known.remove(&name);
            }
        }
    });
}
