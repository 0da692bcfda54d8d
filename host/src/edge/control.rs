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
        bytes,
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
    let digest: [u8; 32] = Sha256::digest(&request.bytes).into();
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
mod tests {
    use hyper::StatusCode;
    use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue};
    use serde_json::json;

    use super::{
        ControlConfig, Drain, bearer, changes_allowed, check_token, constant_time_eq, drain_mode,
        load_config, load_parameters, uploaded,
    };
    use crate::core::error::Kind;
    use crate::core::name::ModelName;
    use crate::lifecycle::repository::ModelControl;
    use crate::lifecycle::settings::ModelSettings;

    fn control(mode: ModelControl, token: Option<&str>) -> ControlConfig {
        ControlConfig {
            mode,
            token: token.map(str::to_owned),
            repository: None,
        }
    }

    #[test]
    fn without_a_token_every_call_is_allowed_and_with_one_only_the_right_bearer() {
        let open = control(ModelControl::Explicit, None);
        assert!(check_token(&open, None).is_ok());
        assert!(check_token(&open, Some("anything")).is_ok());
        let guarded = control(ModelControl::Explicit, Some("s3cret-token"));
        assert!(check_token(&guarded, Some("s3cret-token")).is_ok());
        for given in [None, Some(""), Some("s3cret"), Some("S3CRET-TOKEN")] {
            let err = check_token(&guarded, given).unwrap_err();
            assert_eq!(err.kind, Kind::Unauthenticated, "{given:?}");
            assert!(
                err.message.contains("Authorization: Bearer"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn the_token_is_read_from_a_bearer_authorization_header_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn loads_unloads_and_drains_are_forbidden_unless_model_control_is_on() {
        let err = changes_allowed(&control(ModelControl::None, None)).unwrap_err();
        assert_eq!(err.kind, Kind::Forbidden);
        assert!(
            err.message.contains("--model-control explicit"),
            "{}",
            err.message
        );
        assert!(changes_allowed(&control(ModelControl::Explicit, None)).is_ok());
        assert!(changes_allowed(&control(ModelControl::Poll, None)).is_ok());
    }

    #[test]
    fn a_load_takes_its_config_and_base64_files_and_ignores_other_parameters() {
        let body = json!({ "parameters": {
            "config": "{\"instances\": 3}",
            "file:1/model.wasm": "AGFzbQ==",
            "something_else": 7,
        }});
        let parameters = load_parameters(&body).unwrap();
        assert_eq!(parameters.config, Some(json!("{\"instances\": 3}")));
        assert_eq!(
            parameters.files,
            vec![("1/model.wasm".to_owned(), b"\0asm".to_vec())]
        );
        let empty = load_parameters(&json!({})).unwrap();
        assert!(empty.config.is_none() && empty.files.is_empty());
    }

    #[test]
    fn a_file_parameter_that_is_not_a_base64_string_is_a_400_naming_it() {
        for (value, needle) in [
            (json!(42), "file:m.wasm must be a base64 string"),
            (json!("not base64!"), "file:m.wasm is not base64"),
        ] {
            let body = json!({ "parameters": { "file:m.wasm": value } });
            let err = load_parameters(&body).err().expect("refused");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }

    #[test]
    fn a_load_config_is_json_in_a_string_or_an_object_and_a_bad_one_is_a_400() {
        assert_eq!(load_config(None).unwrap(), ModelSettings::default());
        let from_string = load_config(Some(json!("{\"instances\": 3}"))).unwrap();
        let from_object = load_config(Some(json!({ "instances": 3 }))).unwrap();
        assert_eq!(from_string, from_object);
        assert_ne!(from_string, ModelSettings::default());
        for bad in [json!("{not json"), json!({ "instances": "many" })] {
            let err = load_config(Some(bad.clone())).unwrap_err();
            assert_eq!(err.kind, Kind::BadInput, "{bad}");
            assert!(
                err.message.starts_with("parameters.config: "),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn an_upload_needs_exactly_one_component_and_never_native_code() {
        let name = ModelName::parse("m").unwrap();
        let component = b"\0asm\x0d\0\x01\0".to_vec();
        let settings = ModelSettings::default;
        let refused = |files: Vec<(&str, Vec<u8>)>| {
            let files = files.into_iter().map(|(p, b)| (p.to_owned(), b)).collect();
            let err = uploaded(&name, files, settings()).err().expect("refused");
            assert_eq!(err.kind, Kind::BadInput);
            err.message
        };
        let elf = refused(vec![("1/model.cwasm", b"\x7fELF....".to_vec())]);
        assert!(elf.contains("native code"), "{elf}");
        let none = refused(vec![("README", b"hello".to_vec())]);
        assert!(none.contains("none of the file: parameters"), "{none}");
        let two = refused(vec![
            ("a.wasm", component.clone()),
            ("b.wasm", component.clone()),
        ]);
        assert!(two.starts_with("2 file: parameters"), "{two}");
        // Other files ride along; the component's folder names its version.
        let files = vec![
            ("1/model.wasm".to_owned(), component.clone()),
            ("1/notes.txt".to_owned(), b"notes".to_vec()),
        ];
        let request = uploaded(&name, files, settings()).unwrap();
        assert_eq!(request.version.as_deref(), Some("1"));
        assert_eq!(request.bytes, component);
        assert!(request.path.is_none() && request.replaces.is_none());
    }

    #[test]
    fn an_uploads_version_is_its_folder_when_that_is_a_number() {
        let name = ModelName::parse("m").unwrap();
        let version = |path: &str| {
            let files = vec![(path.to_owned(), b"\0asm\x0d\0\x01\0".to_vec())];
            uploaded(&name, files, ModelSettings::default())
                .unwrap()
                .version
        };
        assert_eq!(version("12/model.wasm").as_deref(), Some("12"));
        assert_eq!(version("model.wasm"), None);
        assert_eq!(version("v1/model.wasm"), None);
        assert_eq!(version("/model.wasm"), None);
    }

    #[test]
    fn drain_serves_or_refuses_as_asked_and_undrain_always_turns_it_off() {
        assert_eq!(drain_mode(&json!({}), true).unwrap(), Drain::Serve);
        assert_eq!(
            drain_mode(&json!({ "refuse": false }), true).unwrap(),
            Drain::Serve
        );
        assert_eq!(
            drain_mode(&json!({ "refuse": true }), true).unwrap(),
            Drain::Refuse
        );
        assert_eq!(
            drain_mode(&json!({ "refuse": true }), false).unwrap(),
            Drain::Off
        );
        assert_eq!(drain_mode(&json!({}), false).unwrap(), Drain::Off);
        let err = drain_mode(&json!({ "refuse": "yes" }), true).expect_err("refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(
            err.message.contains("refuse must be true or false"),
            "{}",
            err.message
        );
    }

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        let token = b"s3cret-token";
        assert!(constant_time_eq(token, token));
        for given in [
            &b""[..],
            b"s",
            b"s3cret-toke",
            b"s3cret-tokeN",
            b"s3cret-token!",
        ] {
            assert!(!constant_time_eq(given, token), "{given:?}");
        }
    }
}
