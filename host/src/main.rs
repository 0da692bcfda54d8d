//! The `wasm-host` binary: parse the settings, set up logging, run the command.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use wasm_host::commands;
use wasm_host::commands::cli::{Command, LogFormat};

fn main() -> ExitCode {
    let cli = match wasm_host::commands::config::parse_cli() {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or pipelines.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Pretty => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.into_command() {
            Command::Serve(args) => commands::serve::run(args).await,
            Command::Compile(args) => commands::compile::run(args).await,
            Command::Inspect(args) => commands::inspect::run(args).await,
            Command::Plan(args) => commands::plan::run(args).await,
            Command::Pack(args) => commands::pack::run(args).await,
        }
    });
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
