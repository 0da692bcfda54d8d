//! The Open Inference Protocol over gRPC (`--grpc-bind`): the service
//! `inference.GRPCInferenceService` of KServe v2 and Triton, so that
//! `tritonclient.grpc`, kserve's `InferenceGRPCClient` and
//! `perf_analyzer -i grpc` work unchanged.
//!
//! Each call maps to what its HTTP route does, on the same registry, pools,
//! limits and metrics: inference decodes into the same [`Inference`], runs
//! through the same core ([`crate::core::infer`]) and fails with the same
//! [`crate::core::error::Error`], which [`status`] maps to a gRPC code with the
//! HTTP message. Connections are served by [`crate::edge::server`], with hyper's
//! HTTP/2; tonic contributes only its codec and the generated service.

mod body;
mod status;
mod tensors;

pub mod proto;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::core::error::{Error, Kind};
use crate::core::infer::{self, Answer, Deadline};
use crate::core::protocol::Inference;
use crate::edge::app::App;
use crate::edge::control::{self, LoadParameters};
use crate::edge::telemetry;
use crate::edge::triton;
use crate::lifecycle::registry::Lookup;
use crate::lifecycle::residency::Described;
use crate::lifecycle::served::ServedModel;
use crate::telemetry::logging::{LogUpdate, LogValue};
use crate::telemetry::settings::update::TraceUpdate;
use crate::telemetry::spans;
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::*;
use tracing::Instrument;

pub use body::{Bounded, Share};
pub use status::status;

/// The generated service around [`Service`], ready to serve connections.
pub type Server = GrpcInferenceServiceServer<Service>;

/// The service, its message limits those of HTTP: requests up to
/// `--max-body`, responses up to `--max-response`.
pub fn service(app: Arc<App>, admin: bool) -> Server {
    let (max_body, max_response) = (app.config.max_body, app.config.max_response);
    GrpcInferenceServiceServer::new(Service { app, admin })
        .max_decoding_message_size(max_body)
        .max_encoding_message_size(max_response)
}

pub struct Service {
    app: Arc<App>,
    /// Whether the repository calls are served here: not when
    /// `--admin-bind` gives them an address of their own.
    admin: bool,
}

type Answered<T> = Result<Response<T>, Status>;

/// Whether a gRPC path is an inference call (the one a drain refuses).
pub fn is_infer(path: &str) -> bool {
    path == "/inference.GRPCInferenceService/ModelInfer"
}

/// The answer to an inference call that a refusing drain turns away:
/// UNAVAILABLE, the code gRPC clients and balancers retry on another host.
pub fn refused() -> hyper::Response<tonic::body::Body> {
    Status::unavailable(
        "this host is draining and refuses new inference requests; retry on another host",
    )
    .into_http()
}

impl Service {
    /// The served model a call names; an empty version is the one served.
    fn model(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, Error> {
        let version = (!version.is_empty()).then_some(version);
        Ok(self.app.registry.get(name, version)?)
    }

    fn addressed(&self, request: &impl Addressed) -> Result<Arc<ServedModel>, Error> {
        let (name, version) = request.address();
        self.model(name, version)
    }

    /// What metadata and config answer, for a registered model without
    /// loading it.
    async fn described(&self, request: &impl Addressed) -> Result<Described, Error> {
        let (name, version) = request.address();
        let version = (!version.is_empty()).then_some(version);
        Ok(Box::pin(self.app.registry.describe(name, version)).await?)
    }

    /// The gate of the repository, trace settings and log settings calls:
    /// served here, and the token right.
    fn admin(&self, metadata: &MetadataMap) -> Result<(), Error> {
        if !self.admin {
            return Err(Error::new(
                Kind::Forbidden,
                "the admin API (repository, trace and log settings) is served on the \
                 --admin-bind address only",
            ));
        }
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        control::authorize(&self.app, token)
    }

    /// `ModelInfer`: resolves the model (loading it if it is registered
    /// but not resident), runs the request, records it in the metrics.
    async fn model_infer_untraced(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Answered<ModelInferResponse> {
        let arrived = Instant::now();
        let grpc_timeout = grpc_timeout(request.metadata())?;
        let request = request.into_inner();
        let version = (!request.model_version.is_empty()).then_some(&*request.model_version);
        let served = match self.app.registry.get(&request.model_name, version) {
            Err(Lookup::NotResident { .. }) => {
                Box::pin(self.app.registry.resolve(&request.model_name, version))
                    .await
                    .map_err(Error::from)?
            }
            found => found.map_err(Error::from)?,
        };
        let answer = self.infer(&served, request, grpc_timeout, arrived);
        Ok(infer::measured(&served, arrived.into_std(), answer).await?)
    }

    async fn infer(
        &self,
        served: &Arc<ServedModel>,
        request: ModelInferRequest,
        grpc_timeout: Option<Duration>,
        arrived: Instant,
    ) -> Result<Response<ModelInferResponse>, Error> {
        let metadata = &served.model.metadata;
        let (inference, raw): (Inference, bool) = tensors::decode(request, metadata)?;
        let deadline = Deadline::tightest(arrived, &[inference.timeout, grpc_timeout]);
        let Answer { outputs, instance } = infer::run(served, &inference, deadline).await?;
        spans::answered(&served.name, &served.version, instance);
        let encoded = tensors::encode(
            served,
            &inference,
            outputs,
            raw,
            self.app.config.max_response,
        )
        .map_err(|err| err.served_by(instance))?;
        let mut response = Response::new(encoded);
        response
            .metadata_mut()
            .insert("x-instance-id", instance.into());
        Ok(response)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answered<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answered<ServerReadyResponse> {
        let ready = self.app.ready();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Answered<ModelReadyResponse> {
        let (name, version) = request.get_ref().address();
        let version = (!version.is_empty()).then_some(version);
        // A registered model (`--load on-demand`) is ready: a request loads it.
        let ready = match self.app.registry.get_quietly(name, version) {
            Ok(served) => served.pool.ready(),
            Err(Lookup::NotResident { .. }) => true,
            Err(err) => return Err(Error::from(err).into()),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Answered<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: "wasm-host".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: triton::EXTENSIONS.map(String::from).to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Answered<ModelMetadataResponse> {
        let described = self.described(request.get_ref()).await?;
        Ok(Response::new(tensors::model_metadata(&described)))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Answered<ModelInferResponse> {
        let model = &request.get_ref().model_name;
        if !spans::on() || !self.app.traces(model) {
            return self.model_infer_untraced(request).await;
        }
        let span = spans::grpc_request(request.metadata(), "ModelInfer", model);
        let answered = Box::pin(self.model_infer_untraced(request))
            .instrument(span.clone())
            .await;
        let code = match &answered {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        spans::grpc_status(&span, code);
        answered
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Answered<ModelConfigResponse> {
        let described = self.described(request.get_ref()).await?;
        let config = tensors::model_config(&described);
        Ok(Response::new(ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Answered<ModelStatisticsResponse> {
        let models = if request.get_ref().name.is_empty() {
            self.app.registry.served()
        } else {
            vec![self.addressed(request.get_ref())?]
        };
        let model_stats = models.iter().map(|m| statistics(m)).collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> Answered<RepositoryIndexResponse> {
        self.admin(request.metadata())?;
        let models = control::index(&self.app, request.get_ref().ready)
            .into_iter()
            .map(|entry| repository_index_response::ModelIndex {
                state: serde_json::to_value(entry.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                name: entry.name,
                version: entry.version,
                reason: entry.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Answered<RepositoryModelLoadResponse> {
        use model_repository_parameter::ParameterChoice;
        self.admin(request.metadata())?;
        let request = request.into_inner();
        let mut parameters = LoadParameters::default();
        for (key, value) in request.parameters {
            match (key.strip_prefix("file:"), value.parameter_choice) {
                (Some(path), Some(ParameterChoice::BytesParam(bytes))) => {
                    parameters.files.push((path.to_owned(), bytes.to_vec()));
                }
                (None, Some(ParameterChoice::StringParam(text))) if key == "config" => {
                    parameters.config = Some(serde_json::Value::String(text));
                }
                (None, Some(ParameterChoice::BoolParam(pinned))) if key == "pinned" => {
                    parameters.pinned = Some(pinned);
                }
                _ => {}
            }
        }
        control::load(&self.app, &request.model_name, parameters).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Answered<RepositoryModelUnloadResponse> {
        self.admin(request.metadata())?;
        control::unload(&self.app, &request.get_ref().model_name).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    /// A call with no settings reads them (tritonclient's
    /// `get_trace_settings`); a setting with no value clears it.
    async fn trace_setting(
        &self,
        request: Request<TraceSettingRequest>,
    ) -> Answered<TraceSettingResponse> {
        self.admin(request.metadata())?;
        let request = request.into_inner();
        let model = (!request.model_name.is_empty()).then_some(&*request.model_name);
        let update = if request.settings.is_empty() {
            None
        } else {
            let pairs = request
                .settings
                .into_iter()
                .map(|(key, given)| (key, (!given.value.is_empty()).then_some(given.value)));
            Some(TraceUpdate::parse(pairs).map_err(Error::bad_input)?)
        };
        let values = telemetry::trace(&self.app, model, update)?;
        let settings = values
            .pairs()
            .into_iter()
            .map(|(key, value)| {
                let value = trace_setting_response::SettingValue { value };
                (key.to_owned(), value)
            })
            .collect();
        Ok(Response::new(TraceSettingResponse { settings }))
    }

    /// A call with no settings reads them (tritonclient's
    /// `get_log_settings`).
    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> Answered<LogSettingsResponse> {
        use log_settings_request::setting_value::ParameterChoice as Given;
        use log_settings_response::setting_value::ParameterChoice as Answer;
        self.admin(request.metadata())?;
        let settings = request.into_inner().settings;
        let update = if settings.is_empty() {
            None
        } else {
            let pairs = settings.into_iter().map(|(key, given)| {
                let value = match given.parameter_choice {
                    Some(Given::BoolParam(b)) => LogValue::Bool(b),
                    Some(Given::Uint32Param(n)) => LogValue::Uint(n.into()),
                    Some(Given::StringParam(text)) => LogValue::Text(text),
                    None => LogValue::Unset,
                };
                (key, value)
            });
            Some(LogUpdate::parse(pairs).map_err(Error::bad_input)?)
        };
        let now = telemetry::logging(&self.app, update)?;
        let settings = now
            .pairs()
            .into_iter()
            .map(|(key, value)| {
                let choice = match value {
                    LogValue::Bool(b) => Answer::BoolParam(b),
                    LogValue::Uint(n) => Answer::Uint32Param(n as u32),
                    LogValue::Text(text) => Answer::StringParam(text),
                    LogValue::Unset => Answer::StringParam(String::new()),
                };
                let value = log_settings_response::SettingValue {
                    parameter_choice: Some(choice),
                };
                (key.to_owned(), value)
            })
            .collect();
        Ok(Response::new(LogSettingsResponse { settings }))
    }
}

/// A request that names a model and, optionally, its version.
trait Addressed {
    fn address(&self) -> (&str, &str);
}

macro_rules! addressed {
    ($($request:ty),*) => {$(
        impl Addressed for $request {
            fn address(&self) -> (&str, &str) {
                (&self.name, &self.version)
            }
        }
    )*};
}

addressed!(
    ModelReadyRequest,
    ModelMetadataRequest,
    ModelConfigRequest,
    ModelStatisticsRequest
);

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        status(err)
    }
}

/// A model's statistics in Triton's messages.
fn statistics(served: &ServedModel) -> ModelStatistics {
    let s = triton::statistics(served);
    let duration = |d: triton::Duration| {
        Some(StatisticDuration {
            count: d.count,
            ns: d.ns,
        })
    };
    ModelStatistics {
        inference_stats: Some(InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.untimed),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.untimed),
            cache_hit: duration(triton::Duration { count: 0, ns: 0 }),
            cache_miss: duration(triton::Duration { count: 0, ns: 0 }),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|&(rows, took)| InferBatchStatistics {
                batch_size: rows,
                compute_input: duration(triton::Duration {
                    count: took.count,
                    ns: 0,
                }),
                compute_infer: duration(took),
                compute_output: duration(triton::Duration {
                    count: took.count,
                    ns: 0,
                }),
            })
            .collect(),
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
    }
}

/// The client's deadline from the `grpc-timeout` header: up to eight
/// digits and a unit (H, M, S, m, u, n), as gRPC over HTTP/2 writes it.
fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, Error> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    let malformed = || Error::bad_input(format!("grpc-timeout {text:?} is malformed"));
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let n: u64 = digits.parse().map_err(|_| malformed())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(malformed()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(text: &str) -> Result<Option<Duration>, Error> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", text.parse().unwrap());
        grpc_timeout(&metadata)
    }

    #[test]
    fn grpc_timeout_is_read_in_each_unit() {
        assert_eq!(timeout("2S").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(timeout("150m").unwrap(), Some(Duration::from_millis(150)));
        assert_eq!(
            timeout("99999999u").unwrap(),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("1H").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&MetadataMap::new()).unwrap(), None);
        for bad in ["S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(bad).unwrap_err().kind, Kind::BadInput, "{bad}");
        }
    }
}
