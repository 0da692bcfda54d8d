//! Prometheus metrics, named as operators of Triton and KServe expect them:
//! what happened to each request, where its time went (waiting for an
//! instance, computing in one), how many are pending, and how the instances
//! are doing. An autoscaler (HPA, KEDA) can scale on `pending_requests` or
//! the queue-duration histogram.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    instance: String,
}

type Seconds = Family<Outcome, Histogram, fn() -> Histogram>;

/// Every outcome a request can have, each with its counter and histogram
/// made once: a family lookup (a lock and a hash) per request showed in the
/// profile.
const OUTCOMES: [&str; 8] = [
    "success",
    "bad_input",
    "model_error",
    "trap",
    "timeout",
    "memory_cap",
    "overloaded",
    "cancelled",
];

/// Why instances are replaced; each counter exists from the start at zero,
/// so a query over it never meets a missing series.
const CAUSES: [&str; 5] = ["trap", "timeout", "memory_cap", "cancelled", "recycled"];

pub struct Metrics {
    registry: Registry,
    by_outcome: Vec<(&'static str, Counter, Histogram)>,
    queue_duration: Histogram,
    compute_duration: Histogram,
    pending: Gauge,
    instances: Gauge,
    busy: Gauge,
    replacements: Family<Cause, Counter>,
    instance_memory: Family<InstanceLabel, Gauge>,
    missing: Gauge,
    boot_failures: Counter,
    body_timeouts: Counter,
}

/// 50 µs to ~100 s, doubling: covers a tiny MLP and a model that sleeps.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasm_host");
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "inference_requests",
            "Inference requests by outcome: success, bad_input, model_error, trap, timeout, memory_cap, overloaded, cancelled (the client left first)",
            requests.clone(),
        );
        let request_duration: Seconds = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "inference_request_duration",
            "Time from the request's arrival to its response, by outcome",
            Unit::Seconds,
            request_duration.clone(),
        );
        let queue_duration = latency_histogram();
        registry.register_with_unit(
            "inference_queue_duration",
            "Time a request waited for a free instance",
            Unit::Seconds,
            queue_duration.clone(),
        );
        let compute_duration = latency_histogram();
        registry.register_with_unit(
            "inference_compute_duration",
            "Time a request spent in the guest's predict",
            Unit::Seconds,
            compute_duration.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "pending_requests",
            "Inference requests waiting for an instance or being computed",
            pending.clone(),
        );
        let instances = Gauge::default();
        registry.register(
            "instances",
            "Instances of the current model",
            instances.clone(),
        );
        let busy = Gauge::default();
        registry.register(
            "instances_busy",
            "Instances serving a request",
            busy.clone(),
        );
        let replacements = Family::<Cause, Counter>::default();
        registry.register(
            "instance_replacements",
            "Instances thrown away and replaced, by cause: trap, timeout, memory_cap, cancelled, recycled",
            replacements.clone(),
        );
        let instance_memory = Family::<InstanceLabel, Gauge>::default();
        registry.register_with_unit(
            "instance_memory",
            "Linear memory each instance holds",
            Unit::Bytes,
            instance_memory.clone(),
        );
        for cause in CAUSES {
            let _ = replacements.get_or_create(&Cause { cause });
        }
        let missing = Gauge::default();
        registry.register(
            "instances_missing",
            "Instances the pool should have but could not boot; it retries with backoff",
            missing.clone(),
        );
        let boot_failures = Counter::default();
        registry.register(
            "instance_boot_failures",
            "Attempts to boot an instance that failed",
            boot_failures.clone(),
        );
        let body_timeouts = Counter::default();
        registry.register(
            "request_body_timeouts",
            "Connections closed because a request body did not arrive within --body-timeout",
            body_timeouts.clone(),
        );
        let by_outcome = OUTCOMES
            .iter()
            .map(|&outcome| {
                let labels = Outcome { outcome };
                let counter = requests.get_or_create(&labels).clone();
                let histogram = request_duration.get_or_create(&labels).clone();
                (outcome, counter, histogram)
            })
            .collect();
        Metrics {
            registry,
            by_outcome,
            queue_duration,
            compute_duration,
            pending,
            instances,
            busy,
            replacements,
            instance_memory,
            missing,
            boot_failures,
            body_timeouts,
        }
    }

    /// The Prometheus text exposition format (0.0.4), which every scraper
    /// and `promtool check metrics` read.
    pub fn render(&self) -> String {
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &self.registry)
            .expect("writing to a String cannot fail");
        to_prometheus_text(&openmetrics)
    }

    pub fn request_done(&self, outcome: &'static str, took: Duration) {
        let Some((_, count, duration)) = self.by_outcome.iter().find(|(o, ..)| *o == outcome)
        else {
            debug_assert!(false, "unknown outcome {outcome}");
            return;
        };
        count.inc();
        duration.observe(took.as_secs_f64());
    }

    pub fn queued(&self, waited: Duration) {
        self.queue_duration.observe(waited.as_secs_f64());
    }

    pub fn computed(&self, took: Duration) {
        self.compute_duration.observe(took.as_secs_f64());
    }

    /// Counts a request as pending until the returned guard is dropped.
    pub fn pending(&self) -> PendingGuard<'_> {
        self.pending.inc();
        PendingGuard(&self.pending)
    }

    pub fn set_instances(&self, total: usize, busy: usize, missing: usize) {
        self.instances.set(total as i64);
        self.busy.set(busy as i64);
        self.missing.set(missing as i64);
    }

    pub fn boot_failed(&self) {
        self.boot_failures.inc();
    }

    pub fn body_timed_out(&self) {
        self.body_timeouts.inc();
    }

    pub fn replaced(&self, cause: &'static str) {
        self.replacements.get_or_create(&Cause { cause }).inc();
    }

    pub fn instance_memory(&self, instance: u64, bytes: usize) {
        let labels = InstanceLabel {
            instance: instance.to_string(),
        };
        self.instance_memory
            .get_or_create(&labels)
            .set(bytes as i64);
    }

    pub fn instance_gone(&self, instance: u64) {
        self.instance_memory.remove(&InstanceLabel {
            instance: instance.to_string(),
        });
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

pub struct PendingGuard<'a>(&'a Gauge);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
