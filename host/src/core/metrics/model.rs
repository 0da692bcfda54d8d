//! A served model's handles into the host's metrics ([`ModelMetrics`]), made
//! once when it loads, and the statistics Triton's extension reports.

use super::*;

/// A served model's handles into the host's metrics, and its statistics.
#[derive(Clone)]
pub struct ModelMetrics(pub(super) Arc<ModelHandles>);

pub struct ModelHandles {
    pub(super) by_outcome: Vec<(&'static str, Counter, Histogram)>,
    pub(super) queue_duration: Histogram,
    pub(super) compute_duration: Histogram,
    pub(super) pending: Gauge,
    pub(super) instances: Gauge,
    pub(super) busy: Gauge,
    pub(super) missing: Gauge,
    pub(super) busy_seconds: Counter<f64, AtomicU64>,
    pub(super) pending_seconds: Counter<f64, AtomicU64>,
    pub(super) batch_size: Option<Histogram>,
    /// Instances busy, integrated over time.
    pub(super) busy_time: Integral,
    /// Requests pending, integrated over time.
    pub(super) pending_time: Integral,
    pub stats: Stats,
    pub(super) metrics: Arc<Metrics>,
    pub(super) labels: ModelLabels,
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
