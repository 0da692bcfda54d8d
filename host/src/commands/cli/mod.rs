//! Command-line flags. Each flag's documentation lives here, once, and is what
//! `--help` prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::lifecycle::repository::ModelControl;
use crate::lifecycle::settings::values::{parse_duration, parse_queue_delay, parse_size};
use crate::runtime::cache::CompileCache;
use crate::telemetry::LogFormat;

mod values;

pub use values::parse_bind;

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
  POST /predict                    {\"inputs\": [[...]]} in, outputs and instance out (one model)
  POST /v2/models/{name}/infer     Open Inference Protocol (KServe v2 / Triton) inference
  GET  /v2/models/{name}[/ready]   model metadata and readiness (also /versions/{v}/...)
  GET  /v2/models/{name}/config    Triton model configuration; .../stats: Triton statistics
  POST /v2/repository/index        models and their states; /v2/repository/models/{name}/load and
                                   /unload load, swap and unload them (--model-control explicit)
  GET  /v2, /v2/health/live, /v2/health/ready
  GET  /health                     instances total / busy / replaced, queue depth
  GET  /metrics                    Prometheus metrics (queue, compute time, pending requests)
  gRPC on --grpc-bind              inference.GRPCInferenceService (tritonclient.grpc, KServe)

Commands (serve is the default):
  wasm-host [serve] MODEL.wasm...        serve models (or --model-repository DIR)
  wasm-host compile MODEL.wasm -o M.cwasm compile ahead of time, for fast cold starts on edge nodes
                                         (serve M.cwasm with --allow-precompiled: it is native code)
  wasm-host inspect MODEL.wasm           name, inputs, outputs, imports; does it fit the contract?
  wasm-host plan MODEL.wasm --rate 200   how many instances sustain 200 requests/s here?
  wasm-host pack M.onnx -o MODEL.wasm    pack an ONNX model into a pre-initialised component
  wasm-host [serve] MODEL.onnx           pack on the fly (cached), then serve
  wasm-host --model-name NAME /mnt/models the model file in a folder (KServe), under NAME

Examples:
  wasm-host target/wasm32-wasip2/release/guest_model.wasm
  wasm-host digits.wasm echo.wasm                two models, each under its own name
  WASM_HOST_ADMIN_TOKEN=secret wasm-host --model-repository models/ --model-control explicit
  wasm-host --instances 8 --bind :8000 --memory-limit 64Mi --timeout 2s model.wasm
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

#[derive(Debug, Clone, Subcommand)]
#[allow(clippy::large_enum_variant)] // made once per run
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
    ///
    /// On a terminal, each step (read, prepare the runner, load the graph, snapshot, check) is
    /// shown on standard error with its time; piped, only the result or one `error:` line is
    /// printed. A model that cannot be served exactly is refused here, with exit code 3.
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

    /// Compile for another machine (e.g. aarch64-unknown-linux-gnu, x86_64-unknown-linux-gnu) [default: this one]
    #[arg(long, value_name = "TRIPLE")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The model component to describe.
    #[arg(value_name = "MODEL.wasm")]
    pub model: PathBuf,

    #[command(flatten)]
    pub code: CodeArgs,
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

    /// How many calls to time for the latency (CPU time is measured over a separate loop of at least a second).
    #[arg(long, default_value_t = 20)]
    pub samples: u32,

    #[command(flatten)]
    pub code: CodeArgs,
}

/// When a repository's models load (design §11: more models than memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadMode {
    /// Every model loads at start, and a load past --memory-budget is refused.
    Startup,
    /// Every model is registered at start without loading; a model loads at its first request, evicting the least recently used idle models when --memory-budget is full.
    OnDemand,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The models: WebAssembly components exporting wasm-host:model/model (wit/model.wit), or ONNX files (packed on the fly), each served under its own name. A folder stands for the one model file in it, whatever its name, or is served as --model-repository if it holds none (as KServe's /mnt/models).
    #[arg(
        value_name = "MODEL.wasm",
        env = "WASM_HOST_MODEL",
        required_unless_present = "model_repository"
    )]
    pub models: Vec<PathBuf>,

    /// Serve the model under this name in URLs instead of the one it declares (e.g. {{.Name}} in a KServe ServingRuntime); for one model file, or a folder holding one. A folder of model folders keeps their names.
    #[arg(long, env = "WASM_HOST_MODEL_NAME", value_name = "NAME")]
    pub model_name: Option<String>,

    /// A folder with one folder per model (DIR/NAME/model.wasm or DIR/NAME/1/model.wasm, and an optional DIR/NAME/model.toml of its settings), laid out as a Triton model repository.
    #[arg(long, env = "WASM_HOST_MODEL_REPOSITORY", value_name = "DIR")]
    pub model_repository: Option<PathBuf>,

    /// Who may change the served models: none (those given at start), explicit (the repository API), poll (explicit, and the repository folder is rescanned).
    #[arg(long, env = "WASM_HOST_MODEL_CONTROL", default_value = "none")]
    pub model_control: ModelControl,

    /// When --model-repository's models load: startup (all at start), or on-demand (registered at start, loaded at first request, least recently used evicted to stay under --memory-budget).
    #[arg(long, env = "WASM_HOST_LOAD", default_value = "startup")]
    pub load: LoadMode,

    /// How often --model-control poll rescans the repository (e.g. 2s).
    #[arg(long, env = "WASM_HOST_REPOSITORY_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub repository_poll_interval: Duration,

    /// A secret the repository API requires as `Authorization: Bearer TOKEN`; prefer the environment variable to the flag, which `ps` shows.
    #[arg(
        long,
        env = "WASM_HOST_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// Serve the repository API on this address only (e.g. 127.0.0.1:8001), away from the inference port.
    #[arg(long, env = "WASM_HOST_ADMIN_BIND", value_name = "ADDR")]
    pub admin_bind: Option<SocketAddr>,

    /// Most memory all models together may reserve, as the sum of instances × memory limit (e.g. 8GiB); a load past it is refused [default: three quarters of this machine's memory]
    #[arg(long, env = "WASM_HOST_MEMORY_BUDGET", value_parser = parse_size)]
    pub memory_budget: Option<u64>,

    /// A TOML file of settings (e.g. wasm-host.toml), keys named as the long flags; flags and environment win over it.
    #[arg(short = 'c', long, env = "WASM_HOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Instances serving in parallel, like gunicorn's --workers (e.g. 8) [default: the cores this process may use]
    #[arg(short = 'n', long, env = "WASM_HOST_INSTANCES", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub instances: Option<u32>,

    /// Make pools elastic, keeping at least this many instances when idle (0: scale to zero; the first request boots one, in about 0.1 ms). With --max-instances.
    #[arg(long, env = "WASM_HOST_MIN_INSTANCES", value_parser = clap::value_parser!(u32).range(0..=16384))]
    pub min_instances: Option<u32>,

    /// Make pools elastic, booting instances for queued requests up to this many (default with --min-instances: --instances).
    #[arg(long, env = "WASM_HOST_MAX_INSTANCES", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub max_instances: Option<u32>,

    /// How long an elastic pool's instance may sit unused before it retires, down to --min-instances (e.g. 30s).
    #[arg(long, env = "WASM_HOST_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Join requests that wait for an instance at the same time into one call of up to this many rows (dimension 0), like Triton's dynamic batcher; for models whose inputs and outputs all have a leading -1. A batch that fails is re-run request by request, so only the request that caused it fails.
    #[arg(long, env = "WASM_HOST_MAX_BATCH_SIZE", value_name = "ROWS", value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub max_batch_size: Option<u32>,

    /// With --max-batch-size: how long a batch that has an instance may wait for more requests, in microseconds or with a unit (e.g. 500, 500us, 2ms; at most 1s) [default: 0, batch only what already waits].
    #[arg(long, env = "WASM_HOST_MAX_QUEUE_DELAY", value_name = "DELAY", value_parser = parse_queue_delay)]
    pub max_queue_delay: Option<Duration>,

    /// With --max-batch-size: batch sizes that go at once rather than wait out the delay (e.g. 4,8).
    #[arg(
        long,
        env = "WASM_HOST_PREFERRED_BATCH_SIZES",
        value_name = "ROWS,...",
        value_delimiter = ','
    )]
    pub preferred_batch_sizes: Option<Vec<usize>>,

    /// Address to listen on: IP:PORT, HOST:PORT (e.g. localhost:8000, resolved at start), or :PORT for every interface (serves beyond this machine).
    #[arg(
        short = 'b',
        long,
        env = "WASM_HOST_BIND",
        default_value = "127.0.0.1:8000",
        value_parser = parse_bind
    )]
    pub bind: SocketAddr,

    /// Also serve the Open Inference Protocol over gRPC on this address (e.g. 127.0.0.1:8001, Triton's gRPC port), for tritonclient.grpc and KServe gRPC clients; same models, limits and metrics as HTTP.
    #[arg(long, env = "WASM_HOST_GRPC_BIND", value_name = "ADDR", value_parser = parse_bind)]
    pub grpc_bind: Option<SocketAddr>,

    /// Memory cap per instance (e.g. 64MiB, 128Mi, 1GiB; Ki, Mi, Gi, Ti are binary units, as in Kubernetes); a request that needs more gets a 507.
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

    /// Largest request body accepted (e.g. 1MiB), also once decompressed (gzip, deflate); larger ones get a 413.
    #[arg(long, env = "WASM_HOST_MAX_BODY", default_value = "16MiB", value_parser = parse_size)]
    pub max_body: u64,

    /// Longest a request's body may take to arrive (e.g. 10s); past it, 408 and the connection is closed (gRPC: DEADLINE_EXCEEDED).
    #[arg(long, env = "WASM_HOST_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Most bytes of request bodies held at once across all connections, HTTP and gRPC (e.g. 1GiB); past it, 503 with Retry-After (gRPC: UNAVAILABLE).
    #[arg(long, env = "WASM_HOST_BODY_BUDGET", default_value = "256MiB", value_parser = parse_size)]
    pub body_budget: u64,

    /// Largest response the host builds from a model's outputs (e.g. 16MiB); past it, 500 saying so.
    #[arg(long, env = "WASM_HOST_MAX_RESPONSE", default_value = "64MiB", value_parser = parse_size)]
    pub max_response: u64,

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

    /// Log one line per request, HTTP or gRPC (method, path, status, gRPC status, latency, instance) under the `access` target.
    #[arg(long, env = "WASM_HOST_ACCESS_LOG")]
    pub access_log: bool,

    /// Export OpenTelemetry traces to this OTLP collector (e.g. http://127.0.0.1:4318 for
    /// HTTP/protobuf, http://127.0.0.1:4317 with --otlp-protocol grpc). Also read from the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; sampling
    /// from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on).
    /// Off when unset.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// How spans reach the collector (e.g. grpc) [default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<crate::telemetry::otel::Protocol>,

    #[command(flatten)]
    pub code: CodeArgs,
}

/// Where compiled code may come from; shared by serve, inspect and plan.
#[derive(Debug, Clone, Args)]
pub struct CodeArgs {
    /// Where compiled models are cached (e.g. /var/cache/wasm-host); it must belong to this user and be writable by no one else [default: $XDG_CACHE_HOME/wasm-host or ~/.cache/wasm-host]
    #[arg(long, env = "WASM_HOST_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile the model at every start instead of using the cache.
    #[arg(long, env = "WASM_HOST_NO_CACHE", value_parser = BoolishValueParser::new())]
    pub no_cache: bool,

    /// Accept a model file precompiled by `wasm-host compile` (.cwasm). It is loaded as native code and runs unchecked in this process: give only artifacts you built yourself with `wasm-host compile`.
    #[arg(long, env = "WASM_HOST_ALLOW_PRECOMPILED", value_parser = BoolishValueParser::new())]
    pub allow_precompiled: bool,
}

impl CodeArgs {
    /// The cache these flags describe.
    pub fn compile_cache(&self) -> CompileCache {
        let dir = match (&self.cache_dir, self.no_cache) {
            (_, true) => None,
            (Some(dir), false) => Some(dir.clone()),
            (None, false) => CompileCache::default_dir(),
        };
        CompileCache::new(dir).allow_precompiled(self.allow_precompiled)
    }
}

impl ServeArgs {
    /// `--memory-budget`, or three quarters of the memory this process may
    /// use (the machine's, or its cgroup's limit if lower).
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
            .unwrap_or_else(|| available_memory() / 4 * 3)
    }

    pub fn instances(&self) -> u32 {
        self.instances.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        })
    }
}

/// The machine's memory, or the cgroup's limit when it is lower.
fn available_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(8 << 30, |kib| kib * 1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    cgroup.map_or(total, |limit| limit.min(total))
}

/// docs/configuration.md's flag table, made from the same definitions as `--help`, so
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
mod tests;
