//! HUP: reload every file-backed model whose file changed, as a swap.

use std::path::Path;

use super::{LoadRequest, Registry};
use crate::core::name::ModelName;
use crate::lifecycle::served::{ServedModel, Source};

impl Registry {
    /// Reloads every file-backed model whose file changed since it was
    /// loaded (HUP). A file that cannot be loaded leaves its model serving.
    pub async fn reload_changed(&self) {
        let mut changed = 0;
        for served in self.served() {
            let Source::File { path, digest } = &served.source else {
                continue;
            };
            let bytes = match self.read_model(path).await {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::error!(
                        "reload failed, still serving the previous model {} v{}: {err:#}",
                        served.name,
                        served.version
                    );
                    changed += 1;
                    continue;
                }
            };
            let hashed = bytes.clone();
            let now = tokio::task::spawn_blocking(move || crate::runtime::cache::sha256(&hashed))
                .await
                .expect("hashing does not panic");
            if now == *digest {
                continue;
            }
            changed += 1;
            tracing::info!("reloading model {} from {}", served.name, path.display());
            let request = LoadRequest {
                name: self.fixed_name(&served),
                version: None,
                bytes,
                path: Some(path.clone()),
                settings: served.given.clone(),
                replaces: Some(served.name.clone()),
            };
            match self.load(request).await {
                Ok(new) => tracing::info!(
                    "reloaded {}: model {} v{} serves in place of {} v{}",
                    path.display(),
                    new.name,
                    new.version,
                    served.name,
                    served.version
                ),
                Err(err) => tracing::error!(
                    "reload failed, still serving the previous model {} v{}: {err}",
                    served.name,
                    served.version
                ),
            }
        }
        if changed == 0 {
            tracing::info!("HUP: no model file changed since it was loaded, nothing reloaded");
        }
    }

    /// The name a model was loaded under when it is not the model's own
    /// (a repository folder's name); `None` when the model names itself.
    fn fixed_name(&self, served: &ServedModel) -> Option<ModelName> {
        if served.name == served.model.metadata.name {
            return None;
        }
        ModelName::parse(&served.name).ok()
    }

    /// The path of a file-backed model, for messages.
    pub fn path_of(served: &ServedModel) -> Option<&Path> {
        match &served.source {
            Source::File { path, .. } => Some(path),
            Source::Uploaded { .. } => None,
        }
    }
}
