//! One file per subcommand, each taking its own arguments.

pub mod cli;
pub mod config;

pub mod compile;
pub mod inspect;
pub mod pack;
pub mod plan;
pub mod serve;

use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::Failure;
use crate::runtime::sandbox::GuestState;

/// An engine and linker for tools that run one instance at a time: the
/// same configuration as `serve`, so what they measure and compile is what
/// `serve` runs.
fn tool_engine(memory_limit: usize) -> Result<(Engine, Linker<GuestState>), Failure> {
    let fail = |err: anyhow::Error| Failure::new(Failure::OTHER, format!("{err:#}"));
    let (engine, _, why) = crate::runtime::engine::build(8, memory_limit).map_err(fail)?;
    tracing::debug!("{why}");
    crate::runtime::engine::start_epoch_ticker(&engine);
    let linker = crate::model::linker(&engine).map_err(fail)?;
    Ok((engine, linker))
}

fn model_failure(err: anyhow::Error) -> Failure {
    Failure::new(Failure::MODEL, format!("{err:#}"))
}

/// A command's report on stdout. A reader that left early (`| head -1`)
/// ends the output quietly, as it does for any Unix tool; `println!` would
/// panic.
fn print(report: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(report.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(Failure::new(
            Failure::OTHER,
            format!("cannot write to stdout: {err}"),
        )),
    }
}
