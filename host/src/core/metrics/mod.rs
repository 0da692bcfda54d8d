//! Prometheus metrics, named as operators of Triton and KServe expect them:
//! what happened to each request, where its time went (waiting for an
//! instance, computing in one), how many are pending, and how the instances
//! are doing, per model and version.
//!
//! For an autoscaler (HPA, KEDA) the gauges are not enough: a fast model's
//! requests last microseconds, so `pending_requests` sampled every 15 s reads
//! 0 however loaded the host is. `instance_busy_seconds_total` and
//! `pending_requests_seconds_total` are the integrals over time of busy
//! instances and of pending requests, kept exactly at every change (an
//! [`Integral`]): `rate()` over any window is their average over it, so
//! `rate(busy_seconds) / instances` is the busy ratio however short each
//! request is.
//!
//! [`Metrics`] is the host's one registry; [`ModelMetrics`] is a served
//! model's set of handles into it, made once when the model loads (a family
//! lookup per request showed in the profile) and removed when it unloads.
//! The same handles keep the counts Triton's statistics extension reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

mod integral;
mod model;

pub use integral::{Buckets, Integral};
pub use model::{ModelHandles, ModelMetrics, Stats, Timed};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    version: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    model: String,
    version: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    model: String,
    instance: String,
}

type Seconds<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every outcome a request can have; each series exists from the model's
/// load at zero, so a query over it never meets a missing series.
pub const OUTCOMES: [&str; 8] = [
    "success",
    "bad_input",
    "model_error",
    "trap",
    "timeout",
    "memory_cap",
    "overloaded",
    "cancelled",
];

/// Why instances are replaced.
const CAUSES: [&str; 5] = ["trap", "timeout", "memory_cap", "cancelled", "recycled"];

/// The first latency bucket's bound; each next one doubles.
const FIRST_BUCKET: f64 = 50e-6;
const BUCKETS: u16 = 22;

/// 50 µs to ~100 s, doubling: covers a tiny MLP and a model that sleeps.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(FIRST_BUCKET, 2.0, BUCKETS))
}

/// Rows per call: 1, 2, 4, ... 4096 (the most `max-batch-size` allows).
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// How many recent events (instances replaced, versions swapped) the status
/// page shows.
const EVENTS_KEPT: usize = 50;

/// The host's metrics registry and its families.
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    request_duration: Seconds<OutcomeLabels>,
    queue_duration: Seconds<ModelLabels>,
    compute_duration: Seconds<ModelLabels>,
    pending: Family<ModelLabels, Gauge>,
    instances: Family<ModelLabels, Gauge>,
    busy: Family<ModelLabels, Gauge>,
    missing: Family<ModelLabels, Gauge>,
    replacements: Family<CauseLabels, Counter>,
    boot_failures: Family<ModelLabels, Counter>,
    instance_memory: Family<InstanceLabels, Gauge>,
    body_timeouts: Counter,
    task_restarts: Family<TaskLabels, Counter>,
    busy_seconds: Family<ModelLabels, Counter<f64, AtomicU64>>,
    pending_seconds: Family<ModelLabels, Counter<f64, AtomicU64>>,
    batch_size: Family<ModelLabels, Histogram, fn() -> Histogram>,
    /// Residency: loads, evictions, resident bytes against the budget.
    pub loads: crate::core::loads::LoadMetrics,
    /// The newest last: instances replaced, versions loaded and swapped.
    events: Mutex<VecDeque<Event>>,
}

/// Something a person watching the host wants to see: an instance replaced
/// (and why), a version swapped in, a model unloaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub model: String,
    pub version: String,
    pub what: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasm_host");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "inference_requests",
            "Inference requests by model, version and outcome: success, bad_input, model_error, \
             trap, timeout, memory_cap, overloaded, cancelled (the client left first)",
            requests.clone(),
        );
        let request_duration: Seconds<OutcomeLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "inference_request_duration",
            "Time from the request's arrival to its response, by outcome",
            Unit::Seconds,
            request_duration.clone(),
        );
        let queue_duration: Seconds<ModelLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "inference_queue_duration",
            "Time a request waited for a free instance",
            Unit::Seconds,
            queue_duration.clone(),
        );
        let compute_duration: Seconds<ModelLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "inference_compute_duration",
            "Time a request spent in the guest's predict",
            Unit::Seconds,
            compute_duration.clone(),
        );
        let pending = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "pending_requests",
            "Inference requests waiting for an instance or being computed",
            pending.clone(),
        );
        let instances = Family::<ModelLabels, Gauge>::default();
        registry.register("instances", "Instances of each model", instances.clone());
        let busy = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "instances_busy",
            "Instances serving a request",
            busy.clone(),
        );
        let missing = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "instances_missing",
            "Instances a model should have but could not boot; it retries with backoff",
            missing.clone(),
        );
        let replacements = Family::<CauseLabels, Counter>::default();
        registry.register(
            "instance_replacements",
            "Instances thrown away and replaced, by cause: trap, timeout, memory_cap, cancelled, \
             recycled",
            replacements.clone(),
        );
        let boot_failures = Family::<ModelLabels, Counter>::default();
        registry.register(
            "instance_boot_failures",
            "Attempts to boot an instance that failed",
            boot_failures.clone(),
        );
        let instance_memory = Family::<InstanceLabels, Gauge>::default();
        registry.register_with_unit(
            "instance_memory",
            "Linear memory each instance holds",
            Unit::Bytes,
            instance_memory.clone(),
        );
        let busy_seconds = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "instance_busy",
            "Integral over time of instances serving a request: rate() over any window is the \
             average number busy in it (divide by wasm_host_instances for the busy ratio), exact \
             however short each request is; what an autoscaler should scale on",
            Unit::Seconds,
            busy_seconds.clone(),
        );
        let pending_seconds = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "pending_requests",
            "Integral over time of wasm_host_pending_requests: rate() over any window is the \
             average number of requests waiting or computing in it",
            Unit::Seconds,
            pending_seconds.clone(),
        );
        let batch_size: Family<ModelLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(batch_histogram);
        registry.register(
            "batch_size",
            "Rows per guest call of a model that batches (max-batch-size): how well concurrent \
             requests are joined",
            batch_size.clone(),
        );
        let body_timeouts = Counter::default();
        registry.register(
            "request_body_timeouts",
            "Connections closed because a request body did not arrive within --body-timeout",
            body_timeouts.clone(),
        );
        let task_restarts = Family::<TaskLabels, Counter>::default();
        registry.register(
            "background_task_restarts",
            "Background tasks (the repository poll, an elastic pool's reaper) that panicked and \
             were restarted: each is a bug worth a report, logged with its message",
            task_restarts.clone(),
        );
        let traces = crate::telemetry::otel::counters();
        registry.register(
            "trace_spans_exported",
            "Spans sent to the OpenTelemetry collector (--otlp-endpoint)",
            traces.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans lost because the collector was down or slow, or the export queue was full: \
             requests are never held up for them",
            traces.dropped.clone(),
        );
        let loads = crate::core::loads::LoadMetrics::register(&mut registry);
        Metrics {
            loads,
            registry,
            requests,
            request_duration,
            queue_duration,
            compute_duration,
            pending,
            instances,
            busy,
            missing,
            replacements,
            boot_failures,
            instance_memory,
            body_timeouts,
            task_restarts,
            busy_seconds,
            pending_seconds,
            batch_size,
            events: Mutex::new(VecDeque::with_capacity(EVENTS_KEPT)),
        }
    }

    /// Records an event for the status page; the oldest go first.
    pub fn event(&self, model: &str, version: &str, what: String) {
        let mut events = self.events.lock().unwrap();
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(Event {
            at_ms: now_ms(),
            model: model.to_owned(),
            version: version.to_owned(),
            what,
        });
    }

    /// The recent events, newest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().iter().rev().cloned().collect()
    }

    /// The Prometheus text exposition format (0.0.4), which every scraper
    /// and `promtool check metrics` read.
    pub fn render(&self) -> String {
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &self.registry)
            .expect("writing to a String cannot fail");
        to_prometheus_text(&openmetrics)
    }

    /// Counts a background task that died and was restarted.
    pub fn task_restarted(&self, task: &'static str) {
        self.task_restarts.get_or_create(&TaskLabels { task }).inc();
    }

    pub fn body_timed_out(&self) {
        self.body_timeouts.inc();
    }

    /// The handles for one model version, every series created at zero
    /// (the batch sizes only for a model that batches).
    pub fn for_model(self: &Arc<Self>, model: &str, version: &str, batches: bool) -> ModelMetrics {
        let labels = ModelLabels {
            model: model.to_owned(),
            version: version.to_owned(),
        };
        let outcome = |outcome| OutcomeLabels {
            model: model.to_owned(),
            version: version.to_owned(),
            outcome,
        };
        for cause in CAUSES {
            let _ = self.replacements.get_or_create(&CauseLabels {
                model: model.to_owned(),
                version: version.to_owned(),
                cause,
            });
        }
        let _ = self.boot_failures.get_or_create(&labels);
        // A version loaded again under the same labels (a reload of the same
        // file) carries on from the series' value: a counter never goes back.
        let busy_seconds = self.busy_seconds.get_or_create(&labels).clone();
        let pending_seconds = self.pending_seconds.get_or_create(&labels).clone();
        ModelMetrics(Arc::new(ModelHandles {
            by_outcome: OUTCOMES
                .iter()
                .map(|&o| {
                    let counter = self.requests.get_or_create(&outcome(o)).clone();
                    let histogram = self.request_duration.get_or_create(&outcome(o)).clone();
                    (o, counter, histogram)
                })
                .collect(),
            queue_duration: self.queue_duration.get_or_create(&labels).clone(),
            compute_duration: self.compute_duration.get_or_create(&labels).clone(),
            pending: self.pending.get_or_create(&labels).clone(),
            instances: self.instances.get_or_create(&labels).clone(),
            busy: self.busy.get_or_create(&labels).clone(),
            missing: self.missing.get_or_create(&labels).clone(),
            batch_size: batches.then(|| self.batch_size.get_or_create(&labels).clone()),
            busy_time: Integral::starting_at(busy_seconds.get()),
            pending_time: Integral::starting_at(pending_seconds.get()),
            busy_seconds,
            pending_seconds,
            stats: Stats::default(),
            metrics: Arc::clone(self),
            labels,
        }))
    }
}

/// The crate writes OpenMetrics, whose counters are declared without the
/// `_total` their samples carry and which has `# UNIT` and `# EOF` lines; the
/// older text format wants the declared name to be the sample's name.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let declared = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .and_then(|rest| rest.split(' ').next());
        match declared {
            Some(name) if counters.contains(&name) => {
                let (head, tail) = line.split_at(7 + name.len());
                text.push_str(head);
                text.push_str("_total");
                text.push_str(tail);
            }
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch at the monotonic instant `at`, from one
/// pair of readings taken at the first call: a request's end is read once,
/// on the monotonic clock, rather than once more on the wall clock. A step
/// of the system clock after start-up is not followed.
fn wall_ms(at: Instant) -> u64 {
    static BASE: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    let (base, base_ms) = *BASE.get_or_init(|| (Instant::now(), now_ms()));
    let since = at.saturating_duration_since(base).as_millis() as u64;
    base_ms.saturating_add(since)
}
