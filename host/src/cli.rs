//! Command-line flags. Each flag's documentation lives here, once, and is what
//! `--help` prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Serve an ML model from N sandboxed WebAssembly instances";

const LONG_ABOUT: &str = "\
Serve an ML model from N sandboxed WebAssembly instances.

wasm-host compiles a model component once, starts --instances isolated instances of it, each with its \
own memory cap, and serves HTTP. Every request goes to a free instance (or waits its turn in a bounded \
queue); every inference response names the instance that served it in the x-instance-id header, as a \
gunicorn response could name its worker's PID. A model that traps, loops or runs out of memory fails \
its own request; its instance is replaced and nothing else is affected.";

const AFTER_HELP: &str = "\
Endpoints:
  POST /predict                    {\"inputs\": [[...]]} in, outputs, prediction and instance out
  POST /v2/models/{name}/infer     Open Inference Protocol (KServe v2 / Triton) inference
  GET  /v2/models/{name}[/ready]   model metadata and readiness
  GET  /v2, /v2/health/live, /v2/health/ready
  GET  /health                     instances total / busy / replaced, queue depth

Commands (serve is the default):
  wasm-host [serve] MODEL.wasm           serve a model
  wasm-host compile MODEL.wasm -o M.cwasm compile ahead of time, for fast cold starts on edge nodes
  wasm-host inspect MODEL.wasm           name, inputs, outputs, imports; does it fit the contract?
  wasm-host plan MODEL.wasm --rate 200   how many instances sustain 200 requests/s here?
  wasm-host pack M.onnx -o MODEL.wasm    pack an ONNX model into a pre-initialised component
  wasm-host [serve] MODEL.onnx           pack on the fly (cached), then serve

Examples:
  wasm-host target/wasm32-wasip2/release/guest_model.wasm
  wasm-host --instances 8 --bind 0.0.0.0:8000 --memory-limit 64MiB --timeout 2s model.wasm
  wasm-host --config wasm-host.toml model.wasm
  RUST_LOG=debug wasm-host --log-format json model.wasm

Configuration comes from flags, then WASM_HOST_* environment variables, then the --config TOML file
(keys named as the long flags, e.g. `instances = 8`, `memory-limit = \"64MiB\"`), then the defaults.

Exit codes: 0 after a clean shutdown, 2 bad flags, 3 the model cannot be loaded, 4 the address cannot \
be bound.";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "wasm-host",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,

    /// Log format: pretty for people, json for log pipelines (one object per line).
    #[arg(
        long,
        global = true,
        env = "WASM_HOST_LOG_FORMAT",
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
}

impl Cli {
    /// The command to run: `serve` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve a model over HTTP (the default command).
    Serve(ServeArgs),
    /// Compile a model ahead of time: the artifact starts in milliseconds (for edge nodes).
    Compile(CompileArgs),
    /// Describe a model: its name, inputs, outputs and imports, and whether it fits the contract.
    Inspect(InspectArgs),
    /// Measure the model's latency on this machine and size the pool for a request rate.
    Plan(PlanArgs),
    /// Pack an ONNX model into a sandboxed, pre-initialised model component.
    Pack(PackArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PackArgs {
    /// The ONNX model (e.g. from skl2onnx with zipmap=False, torch.onnx.export, tf2onnx).
    #[arg(value_name = "MODEL.onnx")]
    pub model: PathBuf,

    /// Where to write the component; serve it with `wasm-host MODEL.wasm`.
    #[arg(short = 'o', long, value_name = "OUT.wasm")]
    pub output: PathBuf,

    /// The model's name in URLs (e.g. digits) [default: the file name without .onnx]
    #[arg(long)]
    pub name: Option<String>,

    /// The model's version (e.g. 2) [default: 1]
    #[arg(long = "version", value_name = "VERSION")]
    pub model_version: Option<String>,

    /// The memory cap the model will be served with (e.g. 512MiB); loading must fit in it.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub memory_limit: u64,

    /// Where compiled code is cached (e.g. /var/cache/wasm-host) [default: $XDG_CACHE_HOME/wasm-host or ~/.cache/wasm-host]
    #[arg(long, env = "WASM_HOST_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CompileArgs {
    /// The model component to compile.
    #[arg(value_name = "MODEL.wasm")]
    pub model: PathBuf,

    /// Where to write the artifact; serve it with `wasm-host MODEL.cwasm`.
    #[arg(short = 'o', long, value_name = "OUT.cwasm")]
    pub output: PathBuf,

    /// The memory cap the artifact will be served with (it shapes the generated code).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub memory_limit: u64,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The model component to describe.
    #[arg(value_name = "MODEL.wasm")]
    pub model: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The model component to measure.
    #[arg(value_name = "MODEL.wasm")]
    pub model: PathBuf,

    /// The request rate to sustain, in requests per second.
    #[arg(long, value_name = "REQ/S")]
    pub rate: f64,

    /// The input to measure with, as a /predict body ({"inputs": ...}); default: zeros of the input shapes.
    #[arg(long, value_name = "JSON")]
    pub input: Option<String>,

    /// How many calls to time.
    #[arg(long, default_value_t = 20)]
    pub samples: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The model: a WebAssembly component exporting wasm-host:model/model (wit/model.wit), or an ONNX file (packed on the fly).
    #[arg(value_name = "MODEL.wasm", env = "WASM_HOST_MODEL", required = true)]
    pub model: Option<PathBuf>,

    /// A TOML file of settings (e.g. wasm-host.toml), keys named as the long flags; flags and environment win over it.
    #[arg(short = 'c', long, env = "WASM_HOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Instances serving in parallel, like gunicorn's --workers (e.g. 8) [default: the cores this process may use]
    #[arg(short = 'n', long, env = "WASM_HOST_INSTANCES", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub instances: Option<u32>,

    /// Address to listen on; use 0.0.0.0:PORT to serve beyond this machine.
    #[arg(
        short = 'b',
        long,
        env = "WASM_HOST_BIND",
        default_value = "127.0.0.1:8000"
    )]
    pub bind: SocketAddr,

    /// Memory cap per instance (e.g. 64MiB, 1GiB); a request that needs more gets a 507.
    #[arg(long, env = "WASM_HOST_MEMORY_LIMIT", default_value = "256MiB", value_parser = parse_size)]
    pub memory_limit: u64,

    /// Deadline per request (e.g. 500ms, 30s); past it the request gets a 504 and its instance is replaced.
    #[arg(short = 't', long, env = "WASM_HOST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Most requests that may wait for a free instance (e.g. 256); past it, 503 with Retry-After.
    #[arg(long, env = "WASM_HOST_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// Longest a request may wait for a free instance (e.g. 5s) before it gets a 503.
    #[arg(long, env = "WASM_HOST_QUEUE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Largest request body accepted (e.g. 1MiB); larger ones get a 413.
    #[arg(long, env = "WASM_HOST_MAX_BODY", default_value = "16MiB", value_parser = parse_size)]
    pub max_body: u64,

    /// Recycle an instance after it served this many requests (e.g. 10000), like gunicorn's --max-requests [default: never]
    #[arg(long, env = "WASM_HOST_MAX_REQUESTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests: Option<u64>,

    /// Add up to this many requests (e.g. 500) to --max-requests, per instance, so instances do not all recycle together.
    #[arg(long, env = "WASM_HOST_MAX_REQUESTS_JITTER", default_value_t = 0)]
    pub max_requests_jitter: u64,

    /// Most client connections open at once (e.g. 4096); more wait in the kernel's accept backlog.
    #[arg(long, env = "WASM_HOST_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Longest a client may take to send a request's headers (e.g. 5s); a slow client is cut off within twice this. Also bounds keep-alive.
    #[arg(long, env = "WASM_HOST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long an idle keep-alive connection stays open waiting for its next request (e.g. 2s).
    #[arg(long, env = "WASM_HOST_KEEP_ALIVE", default_value = "5s", value_parser = parse_duration)]
    pub keep_alive: Duration,

    /// How long TERM or INT waits for in-flight and queued requests before exiting (e.g. 10s).
    #[arg(long, env = "WASM_HOST_GRACEFUL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub graceful_timeout: Duration,

    /// Log one line per request (method, path, status, latency, instance) under the `access` target.
    #[arg(long, env = "WASM_HOST_ACCESS_LOG")]
    pub access_log: bool,

    /// Where compiled models are cached (e.g. /var/cache/wasm-host) [default: $XDG_CACHE_HOME/wasm-host or ~/.cache/wasm-host]
    #[arg(long, env = "WASM_HOST_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile the model at every start instead of using the cache.
    #[arg(long, env = "WASM_HOST_NO_CACHE")]
    pub no_cache: bool,
}

impl ServeArgs {
    /// The model path; clap guarantees it for `serve`.
    pub fn model(&self) -> &std::path::Path {
        self.model
            .as_deref()
            .expect("clap requires MODEL for serve")
    }

    pub fn instances(&self) -> u32 {
        self.instances.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        })
    }
}

/// Parses "256MiB", "1GiB", "512KB", "64M" or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. 64MiB, 1GiB or 1048576"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit in {text:?}; use KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses "500ms", "30s", "2m" or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 500ms, 30s or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        _ => return Err(format!("unknown duration unit in {text:?}; use ms, s or m")),
    };
    if seconds <= 0.0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The README's flag table, made from the same definitions as `--help`, so
/// the two cannot drift apart (a test compares them).
pub fn flags_markdown() -> String {
    use clap::CommandFactory;
    let command = Cli::command();
    let mut table = String::from("| flag | environment | default | what |\n|---|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            if arg.is_positional() {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                table.push_str(&format!(
                    "| `{}` | `{}` | | {} |\n",
                    arg.get_value_names().map_or(String::new(), |v| v.join(" ")),
                    env.unwrap_or_default(),
                    help
                ));
            }
            continue;
        };
        if matches!(long, "help" | "version") {
            continue;
        }
        let short = arg.get_short().map_or(String::new(), |s| format!("-{s}, "));
        let env = arg
            .get_env()
            .map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| format!("`{}`", v.to_string_lossy()))
            .collect();
        let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        // "[default: ...]" written into the help text moves to the default column.
        let mut default = default.join(", ");
        if let Some(start) = help.find(" [default: ") {
            default = help[start + 11..].trim_end_matches(']').to_string();
            help.truncate(start);
        }
        table.push_str(&format!(
            "| `{short}--{long}` | {env} | {default} | {help} |\n"
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_flag_table_is_the_help() {
        let readme = include_str!("../../README.md");
        let table = flags_markdown();
        assert!(
            readme.contains(&table),
            "README.md's flag table is out of date; replace it with:\n{table}"
        );
    }

    #[test]
    fn sizes_and_durations_parse_as_written_in_the_help() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
