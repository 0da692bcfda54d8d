//! The layering rule, checked: every module imports only from layers below
//! its own (lib.rs draws them), so a request flows down and no two layers
//! form a circle. A new import that points up fails this test with the file
//! and the line, which is cheaper than finding the circle in review.
//!
//! Two kinds of module are shared by every layer, because each of them
//! imports no layer at all: the core's vocabulary (the domain error, names,
//! metrics, supervised tasks) and telemetry (logs and traces). The one
//! other edge that points up is named below with its reason.

use std::path::{Path, PathBuf};

/// The layers, top first: a module may import from its own layer and any
/// layer after it.
const ORDER: [&str; 7] = [
    "commands",
    "edge",
    "core",
    "lifecycle",
    "pool",
    "model",
    "runtime",
];

/// Modules any layer may import, since they import no layer themselves.
const SHARED: [&str; 6] = [
    "core::error",
    "core::name",
    "core::metrics",
    "core::loads",
    "core::supervise",
    "telemetry",
];

/// Imports that point up on purpose, with the reason.
const ALLOWED_UP: [(&str, &str, &str); 1] = [(
    "lifecycle",
    "core::scheduler",
    "a served model owns its scheduler (direct or batching), which the registry builds at load \
     from the model's settings",
)];

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The `crate::layer::module` paths a line of code names (comments skipped).
fn imports(line: &str) -> Vec<(String, String)> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let path: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut parts = path.split("::").filter(|part| !part.is_empty());
        if let Some(layer) = parts.next() {
            found.push((layer.to_string(), parts.next().unwrap_or("").to_string()));
        }
    }
    found
}

fn shared(layer: &str, module: &str) -> bool {
    SHARED.iter().any(|entry| match entry.split_once("::") {
        Some((l, m)) => l == layer && m == module,
        None => *entry == layer,
    })
}

/// What the module at `path` (relative to src/) is: its layer and, for the
/// shared check, its first module below the layer.
fn home(relative: &Path) -> (String, String) {
    let mut parts = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string());
    let layer = parts.next().unwrap_or_default();
    (layer, parts.next().unwrap_or_default())
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let rank = |layer: &str| ORDER.iter().position(|l| *l == layer);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let (layer, module) = home(relative);
        let from_shared = shared(&layer, &module);
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for (to_layer, to_module) in imports(line) {
                if to_layer == layer && !from_shared {
                    continue;
                }
                let allowed_up = ALLOWED_UP.iter().any(|(from, to, _)| {
                    *from == layer && *to == format!("{to_layer}::{to_module}")
                });
                let fine = if from_shared {
                    // The shared modules import nothing but each other.
                    shared(&to_layer, &to_module) || to_layer == layer && to_module == module
                } else {
                    shared(&to_layer, &to_module)
                        || allowed_up
                        || match (rank(&layer), rank(&to_layer)) {
                            (Some(from), Some(to)) => to >= from,
                            // lib.rs imports anything, and anything may use
                            // lib.rs's own items (`crate::Failure`).
                            (None, _) | (_, None) => true,
                        }
                };
                if !fine {
                    wrong.push(format!(
                        "{}:{}: {layer} imports crate::{to_layer}::{to_module}",
                        relative.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up a layer (see lib.rs for the order):\n{}",
        wrong.join("\n")
    );
}
