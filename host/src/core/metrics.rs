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

/// A served model's handles into the host's metrics, and its statistics.
#[derive(Clone)]
pub struct ModelMetrics(Arc<ModelHandles>);

pub struct ModelHandles {
    by_outcome: Vec<(&'static str, Counter, Histogram)>,
    queue_duration: Histogram,
    compute_duration: Histogram,
    pending: Gauge,
    instances: Gauge,
    busy: Gauge,
    missing: Gauge,
    busy_seconds: Counter<f64, AtomicU64>,
    pending_seconds: Counter<f64, AtomicU64>,
    batch_size: Option<Histogram>,
    /// Instances busy, integrated over time.
    busy_time: Integral,
    /// Requests pending, integrated over time.
    pending_time: Integral,
    pub stats: Stats,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
}

/// The integral over time of a level that moves up and down by one (busy
/// instances, pending requests), brought up to date at every move and when
/// read, so that it is exact at any instant. A mutex rather than atomics:
/// level, time and sum must move together, or a reading could go backwards,
/// which Prometheus takes for a counter reset.
#[derive(Default)]
pub struct Integral(Mutex<IntegralState>);

#[derive(Default)]
struct IntegralState {
    level: u64,
    since: Option<Instant>,
    /// Level × nanoseconds, summed.
    sum_ns: u128,
}

impl IntegralState {
    fn advance(&mut self, now: Instant) {
        if let Some(since) = self.since {
            self.sum_ns += u128::from(self.level) * now.saturating_duration_since(since).as_nanos();
            // Times read on different threads can arrive out of order.
            self.since = Some(now.max(since));
        } else {
            self.since = Some(now);
        }
    }
}

impl Integral {
    fn starting_at(seconds: f64) -> Integral {
        Integral(Mutex::new(IntegralState {
            sum_ns: (seconds * 1e9) as u128,
            ..IntegralState::default()
        }))
    }

    /// The level rose by one at `at`. The caller passes the time it has
    /// already read for the same event; an `at` before the last move counts
    /// as that move's time, so the integral never goes backwards.
    pub fn rise_at(&self, at: Instant) {
        let mut state = self.0.lock().unwrap();
        state.advance(at);
        state.level += 1;
    }

    /// The level fell by one at `at` (see [`Integral::rise_at`]).
    pub fn fall_at(&self, at: Instant) {
        let mut state = self.0.lock().unwrap();
        state.advance(at);
        state.level = state.level.saturating_sub(1);
    }

    /// Level-seconds so far.
    pub fn seconds(&self) -> f64 {
        let mut state = self.0.lock().unwrap();
        state.advance(Instant::now());
        state.sum_ns as f64 / 1e9
    }

    /// Brings a counter up to the integral's value, under the same lock,
    /// so that two scrapes at once cannot add the same time twice.
    fn export(&self, counter: &Counter<f64, AtomicU64>) {
        let mut state = self.0.lock().unwrap();
        state.advance(Instant::now());
        let delta = state.sum_ns as f64 / 1e9 - counter.get();
        if delta > 0.0 {
            counter.inc_by(delta);
        }
    }
}

/// Success latencies in the same buckets as the histograms, readable (the
/// client crate's histograms are write-only): the status page takes p50 and
/// p99 from the difference between two readings.
pub struct Buckets([AtomicU64; BUCKETS as usize + 1]);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Buckets {
    fn observe(&self, took: Duration) {
        let ratio = took.as_secs_f64() / FIRST_BUCKET;
        let index = if ratio <= 1.0 {
            0
        } else {
            (ratio.log2().ceil() as usize).min(BUCKETS as usize)
        };
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Each bucket's upper bound in seconds (the last is unbounded: `null`)
    /// and its count (not cumulative).
    pub fn json(&self) -> serde_json::Value {
        let bounds: Vec<Option<f64>> = (0..=BUCKETS as i32)
            .map(|i| (i < i32::from(BUCKETS)).then(|| FIRST_BUCKET * 2f64.powi(i)))
            .collect();
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        serde_json::json!({ "bounds": bounds, "counts": counts })
    }
}

/// Counts and nanoseconds as Triton's statistics extension reports them.
#[derive(Default)]
pub struct Stats {
    pub success: Timed,
    pub fail: Timed,
    pub queue: Timed,
    pub compute_infer: Timed,
    /// Guest calls (Triton's `execution_count`).
    pub executions: AtomicU64,
    /// Batched calls by their rows, and their time (Triton's `batch_stats`).
    pub batches: Mutex<std::collections::BTreeMap<u64, (u64, u64)>>,
    /// Milliseconds since the epoch of the last inference, 0 if none.
    pub last_inference_ms: AtomicU64,
    /// Successful requests' durations, for the status page.
    pub latency: Buckets,
}

/// A count and a total of nanoseconds.
#[derive(Default)]
pub struct Timed {
    pub count: AtomicU64,
    pub ns: AtomicU64,
}

impl Timed {
    fn add(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            took.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

impl std::ops::Deref for ModelMetrics {
    type Target = ModelHandles;
    fn deref(&self) -> &ModelHandles {
        &self.0
    }
}

impl ModelHandles {
    /// The name the model is served under.
    pub fn model_name(&self) -> &str {
        &self.labels.model
    }

    /// A request began at `at`: it counts as pending until [`Self::request_done`].
    pub fn request_begins(&self, at: Instant) {
        self.pending.inc();
        self.pending_time.rise_at(at);
    }

    /// A request that began at `started` ended at `ended` with `outcome`.
    /// The caller reads the clock: one reading serves the pending level, the
    /// duration and Triton's `last_inference`.
    pub fn request_done(&self, outcome: &'static str, started: Instant, ended: Instant) {
        self.pending.dec();
        self.pending_time.fall_at(ended);
        let Some((_, count, duration)) = self.by_outcome.iter().find(|(o, ..)| *o == outcome)
        else {
            debug_assert!(false, "unknown outcome {outcome}");
            return;
        };
        let took = ended.saturating_duration_since(started);
        count.inc();
        duration.observe(took.as_secs_f64());
        if outcome == "success" {
            self.stats.success.add(took);
            self.stats.latency.observe(took);
        } else if outcome != "cancelled" {
            self.stats.fail.add(took);
        }
        self.stats
            .last_inference_ms
            .store(wall_ms(ended), Ordering::Relaxed);
    }

    /// An instance was leased at `at`.
    pub fn busy_begins(&self, at: Instant) {
        self.busy_time.rise_at(at);
    }

    /// An instance came back at `at`.
    pub fn busy_ends(&self, at: Instant) {
        self.busy_time.fall_at(at);
    }

    /// Instance-seconds spent serving requests so far.
    pub fn busy_seconds(&self) -> f64 {
        self.busy_time.seconds()
    }

    /// The host's registry these handles belong to.
    pub fn host(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Records an event for the status page.
    pub fn event(&self, what: String) {
        self.metrics
            .event(&self.labels.model, &self.labels.version, what);
    }

    pub fn queued(&self, waited: Duration) {
        self.queue_duration.observe(waited.as_secs_f64());
        self.stats.queue.add(waited);
    }

    pub fn computed(&self, took: Duration) {
        self.compute_duration.observe(took.as_secs_f64());
        self.stats.compute_infer.add(took);
        self.stats.executions.fetch_add(1, Ordering::Relaxed);
    }

    /// A model that batches made a call of `rows` rows, in `took`.
    pub fn batch_executed(&self, rows: usize, took: Duration) {
        if let Some(histogram) = &self.batch_size {
            histogram.observe(rows as f64);
        }
        let mut batches = self.stats.batches.lock().unwrap();
        let (count, ns) = batches.entry(rows as u64).or_default();
        *count += 1;
        *ns += took.as_nanos().min(u64::MAX as u128) as u64;
    }

    /// Brings the scrape-time series up to date: the instance gauges and
    /// the integrals.
    pub fn set_instances(&self, total: usize, busy: usize, missing: usize) {
        self.instances.set(total as i64);
        self.busy.set(busy as i64);
        self.missing.set(missing as i64);
        self.busy_time.export(&self.busy_seconds);
        self.pending_time.export(&self.pending_seconds);
    }

    pub fn replaced(&self, cause: &'static str) {
        self.metrics
            .replacements
            .get_or_create(&CauseLabels {
                model: self.labels.model.clone(),
                version: self.labels.version.clone(),
                cause,
            })
            .inc();
    }

    pub fn boot_failed(&self) {
        self.metrics.boot_failures.get_or_create(&self.labels).inc();
    }

    pub fn instance_memory(&self, instance: u64, bytes: usize) {
        self.metrics
            .instance_memory
            .get_or_create(&self.instance_labels(instance))
            .set(bytes as i64);
    }

    pub fn instance_gone(&self, instance: u64) {
        self.metrics
            .instance_memory
            .remove(&self.instance_labels(instance));
    }

    fn instance_labels(&self, instance: u64) -> InstanceLabels {
        InstanceLabels {
            model: self.labels.model.clone(),
            instance: instance.to_string(),
        }
    }

    /// Removes this version's series: the model was unloaded or replaced.
    pub fn remove(&self) {
        let m = &self.metrics;
        for outcome in OUTCOMES {
            let labels = OutcomeLabels {
                model: self.labels.model.clone(),
                version: self.labels.version.clone(),
                outcome,
            };
            m.requests.remove(&labels);
            m.request_duration.remove(&labels);
        }
        for cause in CAUSES {
            m.replacements.remove(&CauseLabels {
                model: self.labels.model.clone(),
                version: self.labels.version.clone(),
                cause,
            });
        }
        for family in [&m.pending, &m.instances, &m.busy, &m.missing] {
            family.remove(&self.labels);
        }
        m.busy_seconds.remove(&self.labels);
        m.pending_seconds.remove(&self.labels);
        m.queue_duration.remove(&self.labels);
        m.compute_duration.remove(&self.labels);
        m.boot_failures.remove(&self.labels);
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
