//! `wasm-host serve`: bind, load the models (files given, or a repository),
//! boot their instances, serve until TERM or INT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::Failure;
use crate::commands::cli::{LoadMode, ServeArgs};
use crate::core::name::ModelName;
use crate::edge::app::{App, ControlConfig, Plane, ServerConfig, Telemetry};
use crate::edge::server;
use crate::lifecycle::registry::{Budget, LoadRequest, Registry};
use crate::lifecycle::repository::Holds;
use crate::lifecycle::repository::ModelControl;
use crate::lifecycle::residency::Cause;
use crate::lifecycle::settings::{ModelSettings, Settings};
use crate::lifecycle::{repository, signals};
use crate::model;
use crate::model::files;
use crate::pool::PoolConfig;
use crate::runtime::engine;
use crate::telemetry::{LogControl, TraceSettings};

/// How many instances the memory budget makes room for: one per memory limit,
/// counting at most this much each (an instance rarely uses its whole cap),
/// so a host with a 12 GiB budget has room for 384 instances of 32 MiB or
/// more, and 6,144 of 2 MiB. Each instance's slot in the engine's pool
/// reserves address space, not memory; engine.rs fits the pool to it.
const SLOT_SHARE: u64 = 32 << 20;
/// The most instances one host counts room for, whatever its budget.
const MOST_INSTANCES: u64 = 16384;

/// Binds, loads the models, boots their instances and serves until TERM or INT.
/// `logs` changes the log filter ([`crate::telemetry::init_logs`]'s).
pub async fn run(cli: ServeArgs, logs: LogControl) -> Result<(), Failure> {
    let started = Instant::now();
    if cli.body_budget < cli.max_body {
        return Err(Failure::new(
            Failure::USAGE,
            format!(
                "--body-budget ({} bytes) must be at least --max-body ({} bytes): \
                 otherwise a body of the largest accepted size could never be read",
                cli.body_budget, cli.max_body
            ),
        ));
    }
    let Given {
        files,
        name,
        repository: model_repository,
    } = given_models(&cli).await?;
    if cli.model_control == ModelControl::Poll && model_repository.is_none() {
        return Err(Failure::new(
            Failure::USAGE,
            "--model-control poll needs --model-repository DIR: the folder to rescan",
        ));
    }
    if cli.load == LoadMode::OnDemand && model_repository.is_none() {
        return Err(Failure::new(
            Failure::USAGE,
            "--load on-demand needs --model-repository DIR: the models to register and load \
             at their first request",
        ));
    }
    // Bind first: a port in use is found before a long compile, not after.
    let listener = bind(cli.bind)?;
    let admin_listener = cli.admin_bind.map(bind).transpose()?;
    let grpc_listener = cli.grpc_bind.map(bind).transpose()?;
    let instances = cli.instances() as usize;
    let memory_limit = usize::try_from(cli.memory_limit).unwrap_or(usize::MAX);
    let memory_budget = cli.memory_budget();
    let mut budget = Budget {
        memory: memory_budget,
        instances: (memory_budget / (memory_limit as u64).clamp(1 << 20, SLOT_SHARE))
            .clamp(64, MOST_INSTANCES) as usize,
        memory_cap: 4 << 30,
    };
    // Linux caps a process's memory mappings (vm.max_map_count, 65,530 by
    // default): each pool slot maps its stack as two regions and each live
    // instance a few more, about 8 per instance counted here. Past the cap
    // the pool cannot be built, so the count stays within it.
    if let Some(room) = mapping_room()
        && budget.instances > room
    {
        tracing::info!(
            "room for {room} instances, not {}: vm.max_map_count limits this process's \
             memory mappings (raise it for more: sysctl -w vm.max_map_count=262144)",
            budget.instances
        );
        budget.instances = room.max(64);
    }
    // Twice the budget's instances: a swap boots the new version beside the
    // old one; spares cover replacements in flight.
    let slots = (budget.instances * 2 + 8) as u32;
    let (engine, allocator, why) = engine::build(slots, memory_limit)
        .map_err(|err| Failure::new(Failure::OTHER, format!("{err:#}")))?;
    match allocator {
        engine::Allocator::Pooling { .. } => tracing::info!("{why}"),
        engine::Allocator::OnDemand { .. } => tracing::warn!("{why}"),
    }
    // A small address space may have shrunk the pool, and a compact layout
    // caps every model's memory limit.
    if let Some(pooled) = allocator.slots() {
        budget.instances = budget
            .instances
            .min((pooled.saturating_sub(8) / 2).max(1) as usize);
    }
    budget.memory_cap = allocator.layout().memory_cap();
    engine::start_epoch_ticker(&engine);
    let linker =
        model::linker(&engine).map_err(|err| Failure::new(Failure::OTHER, format!("{err:#}")))?;
    let cache = cli.code.compile_cache();
    let fixed = Settings {
        pool: PoolConfig {
            instances,
            // TTIN may double the pool.
            max_instances: instances * 2,
            min_instances: None,
            idle_timeout: cli.idle_timeout,
            memory_limit,
            queue_timeout: cli.queue_timeout,
            max_queue: cli.max_queue,
            max_requests: cli.max_requests,
            max_requests_jitter: cli.max_requests_jitter,
        },
        timeout: cli.timeout,
        batching: None,
    };
    // The pool flags go through the same checks as a model.toml's keys, so
    // `--min-instances 4 --max-instances 2` is refused the same way.
    let mut flags = ModelSettings::default();
    flags.instances = cli.instances.map(|n| n as usize);
    flags.min_instances = cli.min_instances.map(|n| n as usize);
    flags.max_instances = cli.max_instances.map(|n| n as usize);
    flags.max_batch_size = cli.max_batch_size.map(|n| n as usize);
    flags.max_queue_delay = cli.max_queue_delay;
    flags.preferred_batch_sizes = cli.preferred_batch_sizes.clone();
    let defaults = flags
        .resolve(&fixed)
        .map_err(|why| Failure::new(Failure::USAGE, format!("{why} (from the flags)")))?;
    let registry = Registry::new(engine, linker, cache, defaults, budget);
    if cli.load == LoadMode::OnDemand {
        registry.enable_on_demand();
    }

    for path in &files {
        let bytes = registry
            .read_model(path)
            .await
            .map_err(|why| Failure::new(Failure::MODEL, why.to_string()))?;
        let request = LoadRequest {
            name: name.clone(),
            version: None,
            bytes,
            path: Some(path.clone()),
            settings: ModelSettings::default(),
            replaces: None,
        };
        registry
            .load_as(request, Cause::Startup)
            .await
            .map_err(|why| Failure::new(Failure::MODEL, why.to_string()))?;
    }
    if registry.served().len() < files.len() {
        return Err(Failure::new(
            Failure::MODEL,
            "two of the model files declare the same model name; each model needs its own \
             name (metadata().name), or serve them from a --model-repository under folder names",
        ));
    }
    let mut found = Vec::new();
    if let Some(dir) = &model_repository {
        let loaded = match cli.load {
            LoadMode::Startup => repository::load_all(&registry, dir).await,
            LoadMode::OnDemand => repository::register_all(&registry, dir).await,
        };
        found = loaded.map_err(|why| Failure::new(Failure::MODEL, why))?;
    }
    if cli.model_control == ModelControl::Poll
        && let Some(dir) = &model_repository
    {
        repository::spawn_poll(
            Arc::clone(&registry),
            dir.clone(),
            cli.repository_poll_interval,
            found,
        );
    }

    signals::spawn_control(Arc::clone(&registry))
        .map_err(|err| Failure::new(Failure::OTHER, format!("cannot listen for signals: {err}")))?;
    let app = App::new(
        Arc::clone(&registry),
        ServerConfig {
            max_body: usize::try_from(cli.max_body).unwrap_or(usize::MAX),
            body_timeout: cli.body_timeout,
            body_budget: usize::try_from(cli.body_budget).unwrap_or(usize::MAX),
            max_response: usize::try_from(cli.max_response).unwrap_or(usize::MAX),
            graceful_timeout: cli.graceful_timeout,
            max_connections: cli.max_connections as usize,
            header_timeout: cli.header_timeout,
            keep_alive: cli.keep_alive,
            access_log: cli.access_log,
        },
        ControlConfig {
            mode: cli.model_control,
            token: cli.admin_token.clone().filter(|t| !t.is_empty()),
            repository: model_repository.clone(),
        },
        Telemetry {
            // With an exporter every request is offered to the sampler
            // (TIMESTAMPS); without, nothing is traced (OFF).
            trace: Arc::new(TraceSettings::new(crate::telemetry::otel::on())),
            logs,
        },
    );
    let address = listener
        .local_addr()
        .map_err(|err| Failure::new(Failure::OTHER, err.to_string()))?;
    let served = registry.served();
    let total: usize = served.iter().map(|s| s.settings.pool.instances).sum();
    let elastic = served
        .iter()
        .any(|s| s.settings.pool.min_instances.is_some());
    let most: usize = served.iter().map(|s| s.settings.pool.max_instances).sum();
    let instances = if elastic {
        format!("{total} instances (elastic, up to {most})")
    } else {
        format!("{total} instances")
    };
    let what = match served.as_slice() {
        _ if cli.load == LoadMode::OnDemand => format!(
            "{} models registered, loaded on demand",
            registry.residency().registered
        ),
        [_] => instances,
        _ => format!("{} models, {instances}", served.len()),
    };
    // Before the HTTP line, which tells a waiting script the host is up.
    if let Some(grpc) = &grpc_listener {
        let grpc_address = grpc
            .local_addr()
            .map_err(|err| Failure::new(Failure::OTHER, err.to_string()))?;
        tracing::info!("grpc listening on {grpc_address} (inference.GRPCInferenceService)");
    }
    tracing::info!(
        "listening on http://{address} with {what} ({allocator}, memory limit {} MiB each, \
         timeout {:?}, memory budget {} MiB, model control {:?}); ready in {:?}",
        cli.memory_limit >> 20,
        cli.timeout,
        memory_budget >> 20,
        cli.model_control,
        started.elapsed()
    );
    if address.ip().is_unspecified() {
        tracing::info!("{address} is every interface: this host serves beyond this machine");
    }
    // One shutdown signal, told to every listener.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signals::shutdown().await;
        let _ = stop.send(true);
    });
    let wait = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let separate_admin = admin_listener.is_some();
    let mut servers = tokio::task::JoinSet::new();
    if let Some(admin) = admin_listener {
        let admin_address = admin
            .local_addr()
            .map_err(|err| Failure::new(Failure::OTHER, err.to_string()))?;
        tracing::info!("repository API on http://{admin_address} only");
        let (app, stopping) = (Arc::clone(&app), stopping.clone());
        servers.spawn(async move {
            server::serve(admin, app, Plane::Admin, wait(stopping)).await;
        });
    }
    if let Some(grpc) = grpc_listener {
        let (app, stopping) = (Arc::clone(&app), stopping.clone());
        servers.spawn(async move {
            server::serve_grpc(grpc, app, !separate_admin, wait(stopping)).await;
        });
    }
    let plane = Plane::Public {
        admin: !separate_admin,
    };
    server::serve(listener, app, plane, wait(stopping)).await;
    while servers.join_next().await.is_some() {}
    Ok(())
}

/// What `serve` was given to serve.
struct Given {
    /// The model files, each loaded at start.
    files: Vec<PathBuf>,
    /// `--model-name`, checked: the name of the one model file.
    name: Option<ModelName>,
    /// The repository: `--model-repository`, or a folder given as a model
    /// that holds no model file.
    repository: Option<PathBuf>,
}

/// The model files to serve and the repository, from the paths given and
/// `--model-repository`: a folder given as a model is the one model file
/// in it (KServe's storage initializer keeps the uploaded file's name), or
/// the repository if it holds none. `--model-name` names one model file;
/// beside a repository alone it names nothing (a KServe runtime passes it
/// whatever the storage holds), and that is logged.
async fn given_models(cli: &ServeArgs) -> Result<Given, Failure> {
    let name = match &cli.model_name {
        Some(text) => Some(ModelName::parse(text).map_err(|why| {
            Failure::new(Failure::USAGE, format!("--model-name {text:?}: {why}"))
        })?),
        None => None,
    };
    let mut files = Vec::new();
    let mut repository = cli.model_repository.clone();
    for path in &cli.models {
        // Off the runtime and within the scan's deadline: a hung mount fails
        // the start, it does not stall it.
        let owned = path.clone();
        let given = files::off_runtime(repository::SCAN_TIMEOUT, move || repository::holds(&owned))
            .await
            .map_err(|why| {
                Failure::new(Failure::MODEL, format!("reading {} {why}", path.display()))
            })?
            .map_err(|why| Failure::new(Failure::MODEL, why.message().to_owned()))?;
        match given {
            Holds::File(file) => files.push(file),
            Holds::Ambiguous(why) => return Err(Failure::new(Failure::USAGE, why)),
            Holds::Repository(dir) => match &repository {
                None => repository = Some(dir),
                Some(other) => {
                    return Err(Failure::new(
                        Failure::USAGE,
                        format!(
                            "{} holds no model file, so it would be a model repository, but \
                             {} is one already; serve one repository, or put the model file \
                             in the folder",
                            path.display(),
                            other.display()
                        ),
                    ));
                }
            },
        }
    }
    if let Some(name) = &name {
        match files.len() {
            1 => {}
            0 => tracing::info!(
                "--model-name {name} names no model: the repository's models go by their \
                 folder names"
            ),
            n => {
                return Err(Failure::new(
                    Failure::USAGE,
                    format!(
                        "--model-name names one model, and {n} model files were given; drop \
                         it (each model goes by its own name), or serve one file"
                    ),
                ));
            }
        }
    }
    Ok(Given {
        files,
        name,
        repository,
    })
}

fn bind(address: std::net::SocketAddr) -> Result<tokio::net::TcpListener, Failure> {
    let fail = |why: String| Failure::new(Failure::BIND, why);
    let listener = std::net::TcpListener::bind(address).map_err(|err| {
        fail(match err.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "cannot listen on {address}: the address is already in use; stop the process \
                 that holds it or pass --bind with another port"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "cannot listen on {address}: permission denied; ports below 1024 need privileges, \
                 pass --bind with a port above 1024"
            ),
            _ => format!("cannot listen on {address}: {err}"),
        })
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|err| fail(err.to_string()))?;
    tokio::net::TcpListener::from_std(listener).map_err(|err| fail(err.to_string()))
}

/// Instances whose mappings fit under `vm.max_map_count`, leaving 8,192 for
/// the rest of the process (code, heap, threads, models' images).
fn mapping_room() -> Option<usize> {
    engine::max_map_count().map(room_for_mappings)
}

fn room_for_mappings(most: usize) -> usize {
    most.saturating_sub(8192) / 8
}

#[cfg(test)]
mod tests {
    use super::room_for_mappings;

    #[test]
    fn linux_default_mapping_cap_leaves_room_for_thousands_of_instances() {
        // 10,000 instances (20,008 slots: 40,016 stack regions, ~40,000 for
        // the instances) need the cap raised; 7,000 fit under the default.
        assert_eq!(room_for_mappings(65_530), 7_167);
        assert!(room_for_mappings(262_144) >= 10_000 * 3);
        assert_eq!(room_for_mappings(100), 0);
    }
}
