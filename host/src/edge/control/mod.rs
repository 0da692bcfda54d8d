//! The model repository API, as Triton serves it, so that tritonclient's
//! `get_model_repository_index()`, `load_model(name, config=..., files=...)`
//! and `unload_model(name)` work unchanged:
//!
//! - `POST /v2/repository/index`: every model with its state and reason;
//! - `POST /v2/repository/models/{m}/load`: load (or swap in, or resize) a
//!   model, from the repository folder or from `file:` parameters carrying
//!   the component, base64, with an optional JSON `config` over model.toml;
//! - `POST /v2/repository/models/{m}/unload`: drain and unload;
//! - `POST /v2/repository/drain`, `.../undrain`: take the whole host out of
//!   its load balancer (readiness 503, requests still served) and back, for
//!   a rolling upgrade; both answer the host's traffic, so that a script
//!   can poll until the balancer has stopped sending.
//!
//! Loading and unloading are off unless `--model-control explicit` (or
//! `poll`); with `--admin-token` every call needs `Authorization: Bearer`.
//! Only components are accepted over HTTP: a precompiled artifact is native
//! code, and native code never comes from a client.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::core::error::{Error, Kind, LoadError};
use crate::core::name::ModelName;
use crate::edge::app::{App, ControlConfig, Drain};
use crate::edge::http::body::{self, BodyLimits};
use crate::edge::http::error::ApiError;
use crate::edge::http::{empty, json};
use crate::lifecycle::registry::{IndexEntry, LoadRequest, State};
use crate::lifecycle::repository;
use crate::lifecycle::repository::ModelControl;
use crate::lifecycle::settings::ModelSettings;

/// The most a load request may carry (its base64 components): an operator's
/// upload, bounded like every other body.
pub const MAX_UPLOAD: usize = 512 << 20;

/// What a load carries, however it arrived: a JSON `config` over
/// model.toml, and files (`file:<path>` parameters), already decoded.
#[derive(Default)]
pub struct LoadParameters {
    pub config: Option<Value>,
    pub files: Vec<(String, Vec<u8>)>,
    /// `pinned`: never evicted under `--load on-demand` (over model.toml's).
    pub pinned: Option<bool>,
}

/// The repository index, or only its ready models.
pub fn index(app: &App, ready_only: bool) -> Vec<IndexEntry> {
    app.registry
        .index()
        .into_iter()
        .filter(|e| !ready_only || e.state == State::Ready)
        .collect()
}

/// Loads (or swaps in, or resizes) model `name`: from the files sent, or
/// from its repository folder.
pub async fn load(app: &App, name: &str, parameters: LoadParameters) -> Result<(), Error> {
    may_change(app)?;
    let name = &ModelName::parse(name).map_err(Error::bad_input)?;
    let mut config = load_config(parameters.config)?;
    if parameters.pinned.is_some() {
        config.pinned = parameters.pinned;
    }
    let request = if parameters.files.is_empty() {
        from_repository(app, name, config).await?
    } else {
        uploaded(name, parameters.files, config)?
    };
    if resize_only(app, name, &request).await? {
        return Ok(());
    }
    app.registry
        .load(request)
        .await
        .map_err(|reason| Error::from(reason.context(format_args!("failed to load {name}"))))?;
    Ok(())
}

/// A load's `config`: model.toml's settings as JSON, in a string (as
/// tritonclient sends it) or as an object; none is model.toml's own.
fn load_config(config: Option<Value>) -> Result<ModelSettings, Error> {
    let parsed = match config {
        None => return Ok(ModelSettings::default()),
        Some(Value::String(text)) => ModelSettings::from_json(&text),
        Some(other) => ModelSettings::from_json(&other.to_string()),
    };
    parsed.map_err(|err| Error::bad_input(format!("parameters.config: {err}")))
}

/// Drains and unloads model `name`.
pub async fn unload(app: &App, name: &str) -> Result<(), Error> {
    may_change(app)?;
    app.registry.unload(name).await?;
    Ok(())
}

/// With `--admin-token`, every repository call (and every trace or log
/// settings call) must carry it.
pub fn authorize(app: &App, given: Option<&str>) -> Result<(), Error> {
    check_token(&app.control, given)
}

fn check_token(control: &ControlConfig, given: Option<&str>) -> Result<(), Error> {
    let Some(token) = &control.token else {
        return Ok(());
    };
    if constant_time_eq(given.unwrap_or("").as_bytes(), token.as_bytes()) {
        return Ok(());
    }
    Err(Error::new(
        Kind::Unauthenticated,
        "the admin API (repository, trace and log settings) needs Authorization: Bearer \
         <the host's --admin-token>",
    ))
}

/// `POST /v2/repository/index`.
pub async fn http_index(
    app: &App,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = admit(app, request, false).await?;
    let ready_only = body.get("ready").and_then(Value::as_bool).unwrap_or(false);
    let body = serde_json::to_vec(&index(app, ready_only)).expect("the index serializes");
    Ok(json(StatusCode::OK, body.into()))
}

/// `POST /v2/repository/models/{m}/load`: `file:` parameters carry files
/// as base64.
pub async fn http_load(
    app: &App,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    authorize(app, bearer(request.headers()))?;
    may_change(app)?;
    // The body's share of the upload budget is held until the load is done
    // with the decoded component, not only while the body arrives: else
    // concurrent uploads would hold more than the budget.
    let (body, _held) = read(app, request).await?;
    let parameters = load_parameters(&body)?;
    load(app, name, parameters).await?;
    Ok(empty(StatusCode::OK))
}

/// A load request's `parameters`: its `config`, and its `file:<path>`
/// files decoded from base64; other parameters are ignored.
fn load_parameters(body: &Value) -> Result<LoadParameters, ApiError> {
    use base64::Engine as _;
    let mut parameters = LoadParameters::default();
    let given = body.get("parameters").and_then(Value::as_object);
    for (key, value) in given.into_iter().flatten() {
        if key == "config" {
            parameters.config = Some(value.clone());
        } else if key == "pinned" {
            parameters.pinned = Some(pinned(value).map_err(ApiError::bad_request)?);
        } else if let Some(path) = key.strip_prefix("file:") {
            let text = value.as_str().ok_or_else(|| {
                ApiError::bad_request(format!("file:{path} must be a base64 string"))
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|err| {
                    ApiError::bad_request(format!("file:{path} is not base64: {err}"))
                })?;
            parameters.files.push((path.to_owned(), bytes));
        }
    }
    Ok(parameters)
}

/// The `pinned` load parameter: a boolean, or Triton's string form.
pub fn pinned(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(pinned) => Ok(*pinned),
        Value::String(text) if text == "true" || text == "false" => Ok(text == "true"),
        _ => Err(format!(
            "parameters.pinned must be true or false, not {value}"
        )),
    }
}

/// `POST /v2/repository/models/{m}/unload`.
pub async fn http_unload(
    app: &App,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    admit(app, request, true).await?;
    unload(app, name).await?;
    Ok(empty(StatusCode::OK))
}

/// A repository call's body, once its token is right and, for a call that
/// `changes` the models, model control is on.
async fn admit(app: &App, request: Request<Incoming>, changes: bool) -> Result<Value, ApiError> {
    authorize(app, bearer(request.headers()))?;
    if changes {
        may_change(app)?;
    }
    Ok(read(app, request).await?.0)
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Turns draining on (`{"refuse": true}` to refuse new inference requests
/// too) or off, and answers the host's traffic: `draining`, `refusing`,
/// `in_flight`, `requests` (served since start), `refused`. Calling it again
/// changes nothing and answers the same, so it is also how a script watches
/// a drain.
pub async fn drain(
    app: &App,
    request: Request<Incoming>,
    on: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = admit(app, request, true).await?;
    app.set_drain(drain_mode(&body, on)?);
    let body = serde_json::to_vec(&app.traffic()).expect("traffic serializes");
    Ok(json(StatusCode::OK, body.into()))
}

/// The drain a `drain` (`on`) or `undrain` call with this body asks for.
fn drain_mode(body: &Value, on: bool) -> Result<Drain, ApiError> {
    let refuse = match body.get("refuse") {
        None => false,
        Some(Value::Bool(refuse)) => *refuse,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "refuse must be true or false, not {other}"
            )));
        }
    };
    Ok(match (on, refuse) {
        (false, _) => Drain::Off,
        (true, false) => Drain::Serve,
        (true, true) => Drain::Refuse,
    })
}

/// A load from the model's repository folder, its model.toml under the
/// request's config.
async fn from_repository(
    app: &App,
    name: &ModelName,
    config: ModelSettings,
) -> Result<LoadRequest, Error> {
    let Some(dir) = &app.control.repository else {
        return Err(Error::bad_input(format!(
            "cannot load {name}: send its component as a file: parameter, or start the host \
             with --model-repository to load from a folder"
        )));
    };
    let found = repository::find(dir, name).await?;
    let mut request = found
        .load_request(&app.registry)
        .await
        .map_err(|why| why.context(format_args!("cannot load {name}")))?;
    request.settings = config.over(&found.settings);
    Ok(request)
}

/// A load of a component sent in the request: `file:<path>` parameters,
/// base64. Exactly one must be a component.
fn uploaded(
    name: &ModelName,
    files: Vec<(String, Vec<u8>)>,
    config: ModelSettings,
) -> Result<LoadRequest, Error> {
    let mut components = Vec::new();
    for (path, bytes) in files {
        if bytes.starts_with(b"\x7fELF") {
            return Err(LoadError::Unsupported(format!(
                "file:{path} is a precompiled artifact, which is native code: the repository API \
                 takes only components (.wasm); precompiled artifacts come from the operator's \
                 own disk"
            ))
            .into());
        }
        if bytes.starts_with(b"\0asm") {
            components.push((path, bytes));
        }
    }
    let (path, bytes) = match components.len() {
        1 => components.pop().expect("one component"),
        0 => {
            return Err(LoadError::BadFile(format!(
                "none of the file: parameters for {name} is a WebAssembly component"
            ))
            .into());
        }
        n => {
            return Err(LoadError::BadFile(format!(
                "{n} file: parameters for {name} are components; send one"
            ))
            .into());
        }
    };
    // Triton's layout: `file:1/model.wasm` names version 1.
    let version = path
        .split('/')
        .next()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && path.contains('/'))
        .map(str::to_owned);
    Ok(LoadRequest {
        name: Some(name.clone()),
        version,
        bytes: bytes.into(),
        path: None,
        settings: config,
        replaces: None,
    })
}

/// TorchServe's `PUT /models/{m}?min_worker=N`, Triton's way: a load of the
/// component already served whose settings differ only in the instance
/// count resizes the pool in place, without a swap.
async fn resize_only(app: &App, name: &str, request: &LoadRequest) -> Result<bool, Error> {
    let Ok(served) = app.registry.get(name, None) else {
        return Ok(false);
    };
    if request
        .version
        .as_ref()
        .is_some_and(|v| *v != served.version)
    {
        return Ok(false);
    }
    // Off the runtime: an upload may be hundreds of MB.
    let bytes = request.bytes.clone();
    let digest = tokio::task::spawn_blocking(move || crate::runtime::cache::sha256(&bytes))
        .await
        .expect("hashing does not panic");
    let same_component = match &served.source {
        crate::lifecycle::served::Source::File { digest: d, .. }
        | crate::lifecycle::served::Source::Uploaded { digest: d } => *d == digest,
    };
    let Ok(wanted) = request.settings.resolve(app.registry.defaults()) else {
        return Ok(false);
    };
    let mut same_but_count = wanted.clone();
    same_but_count.pool.instances = served.settings.pool.instances;
    same_but_count.pool.max_instances = served.settings.pool.max_instances;
    // A change of `pinned` is a load: the registration must learn it.
    let repinned = request.settings.pinned != served.given.pinned;
    if !same_component || same_but_count != served.settings || repinned {
        return Ok(false);
    }
    let count = wanted.pool.instances;
    if count > served.settings.pool.max_instances {
        return Ok(false);
    }
    let now = app
        .registry
        .resize(&served, count)
        .await
        .map_err(|why| why.context(format_args!("cannot resize {name}")))?;
    tracing::info!("model {name}: resized to {now} instances");
    Ok(true)
}

/// Loading and unloading need `--model-control explicit` or `poll`.
fn may_change(app: &App) -> Result<(), Error> {
    changes_allowed(&app.control)
}

fn changes_allowed(control: &ControlConfig) -> Result<(), Error> {
    if control.mode == ModelControl::None {
        return Err(Error::new(
            Kind::Forbidden,
            "model control is off (--model-control none): start wasm-host with \
             --model-control explicit to load and unload models and drain the host over HTTP",
        ));
    }
    Ok(())
}

/// A repository call's JSON body (empty is `{}`), within the upload limits.
async fn read(app: &App, request: Request<Incoming>) -> Result<(Value, body::Held), ApiError> {
    let (bytes, held) = body::read(request, &app.uploads, std::time::Instant::now()).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((Value::Object(Default::default()), held));
    }
    let value = crate::core::protocol::parse_json(&bytes, "repository request")?;
    Ok((value, held))
}

/// The limits for repository calls' bodies: large (components), few.
pub fn upload_limits(timeout: std::time::Duration) -> BodyLimits {
    BodyLimits::new(MAX_UPLOAD, timeout, MAX_UPLOAD)
}

/// Compares a given token with the host's in time that depends on neither:
/// both are hashed first, so neither the length nor the first differing
/// byte shows in how long the answer takes.
fn constant_time_eq(given: &[u8], token: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(token));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `WWW-Authenticate` for a 401.
pub fn www_authenticate() -> HeaderValue {
    HeaderValue::from_static("Bearer")
}

#[cfg(test)]
mod tests;
