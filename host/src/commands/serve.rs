//! `wasm-host serve`: bind, load the model, boot the instances, serve until
//! TERM or INT.

use std::sync::Arc;
use std::time::Instant;

use crate::Failure;
use crate::cache::CompileCache;
use crate::cli::ServeArgs;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolConfig};
use crate::server::{App, ServerConfig};
use crate::{contract, engine, model, server, signals};

/// Binds, loads the model, boots the instances and serves until TERM or INT.
pub async fn run(cli: ServeArgs) -> Result<(), Failure> {
    let started = Instant::now();
    // Bind first: a port in use is found before a long compile, not after.
    let listener = bind(&cli)?;
    let instances = cli.instances();
    let memory_limit = usize::try_from(cli.memory_limit).unwrap_or(usize::MAX);
    // TTIN may double the pool, and a reload boots a second generation
    // before the first retires; spares cover replacements in flight.
    let max_instances = instances * 2;
    let slots = max_instances * 2 + 8;
    let (engine, allocator) = engine::build(slots, memory_limit)
        .map_err(|err| Failure::new(Failure::OTHER, format!("{err:#}")))?;
    engine::start_epoch_ticker(&engine);

    let linker =
        model::linker(&engine).map_err(|err| Failure::new(Failure::OTHER, format!("{err:#}")))?;
    let cache = CompileCache::from_args(&cli.code);
    let model = model::Model::load(&engine, &linker, cli.model(), memory_limit, &cache)
        .await
        .map_err(|err| Failure::new(Failure::MODEL, format!("{err:#}")))?;
    let meta = &model.metadata;
    tracing::info!(
        "loaded model {} v{} from {} ({} KiB), {}; inputs: {}; outputs: {}",
        meta.name,
        meta.version,
        cli.model().display(),
        model.file_size / 1024,
        model.compiled,
        describe(&meta.inputs),
        describe(&meta.outputs),
    );

    let pool = Pool::start(
        engine,
        linker,
        cache,
        Arc::new(Metrics::new()),
        Arc::new(model),
        PoolConfig {
            instances: instances as usize,
            max_instances: max_instances as usize,
            memory_limit,
            queue_timeout: cli.queue_timeout,
            max_queue: cli.max_queue,
            max_requests: cli.max_requests,
            max_requests_jitter: cli.max_requests_jitter,
        },
    )
    .await
    .map_err(|err| {
        Failure::new(
            Failure::MODEL,
            format!(
                "{} failed to start: {} (if it ran out of memory, raise --memory-limit)",
                cli.model().display(),
                model::root_cause(&err)
            ),
        )
    })?;

    signals::spawn_control(Arc::clone(&pool))
        .map_err(|err| Failure::new(Failure::OTHER, format!("cannot listen for signals: {err}")))?;
    let app = App::new(
        pool,
        ServerConfig {
            max_body: usize::try_from(cli.max_body).unwrap_or(usize::MAX),
            timeout: cli.timeout,
            graceful_timeout: cli.graceful_timeout,
            max_connections: cli.max_connections as usize,
            header_timeout: cli.header_timeout,
            keep_alive: cli.keep_alive,
            access_log: cli.access_log,
        },
    );
    let address = listener
        .local_addr()
        .map_err(|err| Failure::new(Failure::OTHER, err.to_string()))?;
    tracing::info!(
        "listening on http://{address} with {instances} instances ({allocator}, \
         memory limit {} MiB each, timeout {:?}); ready in {:?}",
        cli.memory_limit >> 20,
        cli.timeout,
        started.elapsed()
    );
    if address.ip().is_unspecified() {
        tracing::info!("{address} is every interface: this host serves beyond this machine");
    }
    server::serve(listener, app, signals::shutdown()).await;
    Ok(())
}

fn bind(cli: &ServeArgs) -> Result<tokio::net::TcpListener, Failure> {
    let fail = |why: String| Failure::new(Failure::BIND, why);
    let listener = std::net::TcpListener::bind(cli.bind).map_err(|err| {
        fail(match err.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "cannot listen on {}: the address is already in use; stop the process that holds \
                 it or pass --bind with another port",
                cli.bind
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "cannot listen on {}: permission denied; ports below 1024 need privileges, \
                 pass --bind with a port above 1024",
                cli.bind
            ),
            _ => format!("cannot listen on {}: {err}", cli.bind),
        })
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|err| fail(err.to_string()))?;
    tokio::net::TcpListener::from_std(listener).map_err(|err| fail(err.to_string()))
}

fn describe(specs: &[contract::TensorSpec]) -> String {
    let described: Vec<String> = specs
        .iter()
        .map(|s| format!("{} {} {:?}", s.name, s.datatype, s.shape))
        .collect();
    described.join(", ")
}
