//! What every request shares: the registry of served models, the server's
//! limits, the body budget, the model-control settings, and whether the
//! host still accepts work.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::body::BodyLimits;
use crate::cli::ModelControl;
use crate::registry::Registry;

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

pub struct App {
    pub registry: Arc<Registry>,
    pub config: ServerConfig,
    /// The bounds on request bodies, and the budget they share.
    pub body: BodyLimits,
    /// The bounds on repository API bodies, which carry components.
    pub uploads: BodyLimits,
    pub control: ControlConfig,
    /// `--max-connections`, shared by the public HTTP and gRPC listeners.
    pub connections: Arc<Semaphore>,
    /// Cleared when shutdown starts, so load balancers stop sending traffic.
    accepting: AtomicBool,
}

impl App {
    pub fn new(registry: Arc<Registry>, config: ServerConfig, control: ControlConfig) -> Arc<App> {
        Arc::new(App {
            registry,
            body: BodyLimits::new(config.max_body, config.body_timeout, config.body_budget),
            uploads: crate::control::upload_limits(config.body_timeout * 4),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
            control,
            accepting: AtomicBool::new(true),
        })
    }

    /// Accepting work and every served model ready.
    pub fn ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
            && self.registry.served().iter().all(|m| m.pool.ready())
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }
}
