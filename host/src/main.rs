//! The `wasm-host` binary: parse the settings, set up logging, run the command.

use std::process::ExitCode;

use wasm_host::commands;
use wasm_host::commands::cli::Command;

fn main() -> ExitCode {
    let cli = match wasm_host::commands::config::parse_cli() {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let logs = wasm_host::telemetry::init_logs(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.into_command() {
            Command::Serve(args) => commands::serve::run(args, logs).await,
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
