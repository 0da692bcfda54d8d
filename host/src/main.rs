//! The `wasm-host` binary: parse the settings, set up logging, run the command.

use std::process::ExitCode;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};
use wasm_host::commands;
use wasm_host::commands::cli::Command;
use wasm_host::telemetry::LogFormat;
use wasm_host::telemetry::otel::{self, Export};
use wasm_host::telemetry::{self, spans};

fn main() -> ExitCode {
    let cli = match wasm_host::commands::config::parse_cli() {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Trace export starts its task on the runtime, before the first span.
    let traces = match &cli.command {
        None => Some(&cli.serve),
        Some(Command::Serve(args)) => Some(args),
        Some(_) => None,
    }
    .map(|args| {
        let _entered = runtime.enter();
        let export = Export::resolve(args.otlp_endpoint.as_deref(), args.otlp_protocol, |name| {
            std::env::var(name).ok()
        })?;
        export
            .map(|export| otel::install(&export).map(|installed| (export, installed)))
            .transpose()
    })
    .transpose();
    let traces = match traces {
        Ok(traces) => traces.flatten(),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(wasm_host::Failure::USAGE);
        }
    };
    let json = cli.log_format == LogFormat::Json;
    let (log_lines, logs) = telemetry::log_layer(cli.log_format);
    let otel_layer = traces.as_ref().map(|(_, installed)| {
        tracing_opentelemetry::layer()
            .with_tracer(installed.tracer())
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(
                filter::Targets::new()
                    .with_target(spans::REQUEST, tracing::Level::INFO)
                    .with_target(spans::INNER, tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(log_lines)
        .with(otel_layer)
        .init();
    if traces.is_some() || json {
        spans::turn_on(json);
    }
    if let Some((export, _)) = &traces {
        tracing::info!(
            "exporting traces to {} over {:?}; sampler from OTEL_TRACES_SAMPLER (default \
             parentbased_always_on)",
            export.url,
            export.protocol
        );
    }
    let result = runtime.block_on(async {
        match cli.into_command() {
            Command::Serve(args) => commands::serve::run(args, logs).await,
            Command::Compile(args) => commands::compile::run(args).await,
            Command::Inspect(args) => commands::inspect::run(args).await,
            Command::Plan(args) => commands::plan::run(args).await,
            Command::Pack(args) => commands::pack::run(args).await,
        }
    });
    // Spans still queued go out before the exit (briefly: a dead collector
    // must not hold it up).
    if let Some((_, installed)) = &traces {
        runtime.block_on(installed.flush(std::time::Duration::from_secs(2)));
    }
    // Stop waiting for blocking work that is stuck (a model file read on a
    // hung mount, abandoned by its timeout): it must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", err.message);
            err.exit_code()
        }
    }
}
