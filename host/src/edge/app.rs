//! What every request shares: the registry of served models, the server's
//! limits, the body budget, the model-control settings, the trace and log
//! settings, and whether the host still accepts work or is draining.
//!
//! Readiness means "this host can serve": its models are loaded with at
//! least one instance each, and it is neither draining nor shutting down.
//! It never means "this instant is busy": a full queue is answered per
//! request (503 with `Retry-After`), so that a burst does not take hosts out
//! of a load balancer one after another and pile their load on the rest.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::edge::http::body::BodyLimits;
use crate::lifecycle::registry::Registry;
use crate::lifecycle::repository::ModelControl;
use crate::telemetry::{LogControl, TraceSettings};

/// Limits the server applies before a request reaches a model.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_body: usize,
    /// Longest a request's body may take to arrive.
    pub body_timeout: Duration,
    /// Most bytes of request bodies held at once, across all connections.
    pub body_budget: usize,
    /// Largest response body the host will build from a model's outputs.
    pub max_response: usize,
    pub graceful_timeout: Duration,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub keep_alive: Duration,
    /// One log line per request: off by default, as in gunicorn, since a
    /// line per request costs more than a tiny model's whole inference.
    pub access_log: bool,
}

/// Who may change which models are served, and how.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub mode: ModelControl,
    /// Required as `Authorization: Bearer <token>` on the repository API.
    pub token: Option<String>,
    /// The model repository, where `load` without files reads from.
    pub repository: Option<PathBuf>,
}

/// Which routes a listener serves: with `--admin-bind`, the repository API
/// lives on its own address and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Inference, health, metrics and (without `--admin-bind`) the
    /// repository API.
    Public { admin: bool },
    /// Only the repository API.
    Admin,
}

impl Plane {
    pub fn serves_admin(self) -> bool {
        matches!(self, Plane::Admin | Plane::Public { admin: true })
    }

    pub fn serves_public(self) -> bool {
        matches!(self, Plane::Public { .. })
    }
}

/// The largest trace or log settings body: a few keys and values.
const SETTINGS_BODY: usize = 64 << 10;

/// What the trace and logging endpoints change, and what the tracing code
/// reads for every request.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Triton's trace settings: [`TraceSettings::admit`] says whether a
    /// request is traced.
    pub trace: Arc<TraceSettings>,
    /// The live log settings and the filter they rebuild.
    pub logs: LogControl,
}

impl Telemetry {
    /// Nothing traced, and log settings that change no filter: for tests
    /// and tools without the host's subscriber.
    pub fn detached() -> Self {
        Telemetry {
            trace: Arc::new(TraceSettings::new(false)),
            logs: LogControl::detached(),
        }
    }
}

pub struct App {
    pub registry: Arc<Registry>,
    pub config: ServerConfig,
    /// The bounds on request bodies, and the budget they share.
    pub body: BodyLimits,
    /// The bounds on repository API bodies, which carry components.
    pub uploads: BodyLimits,
    pub control: ControlConfig,
    pub telemetry: Telemetry,
    /// The bounds on trace and log settings bodies: a few keys.
    pub settings_bodies: BodyLimits,
    /// `--max-connections`, shared by the public HTTP and gRPC listeners.
    pub connections: Arc<Semaphore>,
    /// Cleared when shutdown starts, so load balancers stop sending traffic.
    accepting: AtomicBool,
    /// Set by an operator (`POST /v2/repository/drain`) before an upgrade:
    /// readiness turns 503 so that the balancer stops sending, while every
    /// request that still arrives is served as usual (a Kubernetes Service
    /// takes a few seconds to drop a pod; refusing those would fail them).
    draining: AtomicBool,
    /// A drain that also refuses new inference requests, for a balancer
    /// that does not poll readiness (open-source nginx): their connection is
    /// closed before any answer, which nginx retries on the next host, and
    /// counts against this one until it stops sending.
    refusing: AtomicBool,
    /// Inference requests being served now, served since start, and
    /// refused while draining: what a rolling upgrade watches to know that
    /// the balancer has stopped sending.
    in_flight: AtomicUsize,
    requests: AtomicU64,
    refused: AtomicU64,
    started: Instant,
}

/// How a drain treats the requests that still arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Not draining: ready, serving.
    Off,
    /// Readiness 503; every request that arrives is served. For balancers
    /// that poll readiness (a Kubernetes Service).
    Serve,
    /// Readiness 503; new inference requests are closed unanswered, so a
    /// balancer that retries on a closed connection sends them elsewhere.
    Refuse,
}

/// Whether a host takes part in its fleet, as `/health`, the status page
/// and the drain call report it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Traffic {
    pub draining: bool,
    /// Whether the drain refuses new inference requests.
    pub refusing: bool,
    /// Inference requests being served now.
    pub in_flight: usize,
    /// Inference requests served (begun) since start.
    pub requests: u64,
    /// Inference requests refused by a drain since start.
    pub refused: u64,
}

impl App {
    pub fn new(
        registry: Arc<Registry>,
        config: ServerConfig,
        control: ControlConfig,
        telemetry: Telemetry,
    ) -> Arc<App> {
        Arc::new(App {
            registry,
            body: BodyLimits::new(config.max_body, config.body_timeout, config.body_budget),
            uploads: crate::edge::control::upload_limits(config.body_timeout * 4),
            settings_bodies: BodyLimits::new(
                SETTINGS_BODY,
                config.body_timeout,
                SETTINGS_BODY * 16,
            ),
            telemetry,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
            control,
            accepting: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Can serve: accepting work, not draining, every served model ready.
    pub fn ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && self.registry.served().iter().all(|m| m.pool.ready())
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Starts, changes or ends a drain.
    pub fn set_drain(&self, drain: Drain) {
        let refusing = drain == Drain::Refuse;
        let was_refusing = self.refusing.swap(refusing, Ordering::SeqCst);
        let was = self.draining.swap(drain != Drain::Off, Ordering::SeqCst);
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        match drain {
            Drain::Off if was => tracing::info!("drain ended: readiness is 200 again"),
            Drain::Serve if !was || was_refusing => tracing::info!(
                "draining: readiness is 503 so that the balancer stops sending; the \
                 {in_flight} requests in flight and any that still arrive are served"
            ),
            Drain::Refuse if !was || !was_refusing => tracing::info!(
                "draining: readiness is 503 and new inference requests are closed unanswered, \
                 for the balancer to retry elsewhere; the {in_flight} in flight finish"
            ),
            _ => {}
        }
    }

    /// Whether a request to `model` gets a span: with an exporter, when
    /// Triton's trace settings admit it (level, rate, count); without one,
    /// always (JSON logs show its trace id).
    pub fn traces(&self, model: &str) -> bool {
        !crate::telemetry::otel::on() || self.telemetry.trace.admit(model)
    }

    /// Whether a drain refuses new inference requests.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Counts a refused request.
    pub fn refused_one(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            draining: self.draining.load(Ordering::SeqCst),
            refusing: self.refusing.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
        }
    }

    /// How long the host has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counts an inference request until the guard is dropped.
    fn inference_begins(&self) -> InferenceGuard<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InferenceGuard(&self.in_flight)
    }
}

/// One inference request in flight, counted in [`App::traffic`].
pub struct InferenceGuard<'a>(&'a AtomicUsize);

impl Drop for InferenceGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A new inference request that a refusing drain turns away: the
/// connection is closed before any answer, which a balancer retries on its
/// next host (nginx's `proxy_next_upstream error`) and counts against this
/// one. Never a 503: that is how overload answers, and a balancer that
/// retried and counted 503s would take busy hosts out one after another.
#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("draining: a new inference request was refused")
    }
}

impl std::error::Error for Refused {}

impl App {
    /// The gate every protocol's inference request passes first: a
    /// refusing drain turns it away (counted), else it counts as in flight
    /// until the guard is dropped, from before its body is read, so a drain
    /// waits for it whichever protocol it came by.
    pub fn admit_inference(&self) -> Result<InferenceGuard<'_>, Refused> {
        if self.refusing() {
            self.refused_one();
            return Err(Refused);
        }
        Ok(self.inference_begins())
    }
}
