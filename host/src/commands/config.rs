//! Settings from a TOML file, under flags and environment variables.
//!
//! The file's keys are the long flag names (`instances = 8`,
//! `memory-limit = "64MiB"`), so the flags' documentation is the file's
//! documentation, and every value goes through the same parser as the flag.
//! The file is applied by re-parsing the command line with a `--key=value`
//! appended for each setting that neither a flag nor the environment gave.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::commands::cli::{Cli, Command};

/// Parses the command line, the environment and the `--config` file.
pub fn parse_cli() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os().collect())
}

pub fn parse_from(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let (config, serve_matches) = match &cli.command {
        None => (cli.serve.config.clone(), &matches),
        Some(Command::Serve(args)) => (
            args.config.clone(),
            matches.subcommand_matches("serve").unwrap_or(&matches),
        ),
        Some(_) => (None, &matches),
    };
    let Some(path) = config else {
        return Ok(cli);
    };
    let extra = file_args(&path, serve_matches)
        .map_err(|message| Cli::command().error(clap::error::ErrorKind::InvalidValue, message))?;
    let mut argv = argv;
    argv.extend(extra);
    let matches = Cli::command().try_get_matches_from(&argv)?;
    Cli::from_arg_matches(&matches)
}

/// The `--key=value` arguments for the file's settings that flags and the
/// environment left at their defaults.
fn file_args(path: &Path, given: &ArgMatches) -> Result<Vec<OsString>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read the config file {shown}: {err}"))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|err| format!("{shown} is not valid TOML: {err}"))?;
    let command = Cli::command();
    let settings: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| {
            arg.get_long()
                .is_some_and(|l| !matches!(l, "config" | "help" | "version"))
        })
        .collect();
    let mut args = Vec::new();
    for (key, value) in table {
        let Some(arg) = settings.iter().find(|a| a.get_long() == Some(key.as_str())) else {
            let known: Vec<&str> = settings.iter().filter_map(|a| a.get_long()).collect();
            return Err(format!(
                "unknown setting `{key}` in {shown}; settings are named as the long flags: {}",
                known.join(", ")
            ));
        };
        let source = given.value_source(arg.get_id().as_str());
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(true) => {
                args.push(format!("--{key}").into());
                continue;
            }
            toml::Value::Boolean(false) => continue,
            other => {
                return Err(format!(
                    "setting `{key}` in {shown} is {}, not a string, number or boolean",
                    other.type_str()
                ));
            }
        };
        args.push(format!("--{key}={value}").into());
    }
    Ok(args)
}
