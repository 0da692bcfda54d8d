//! What residency (design §11, more models than memory) counts: loads by
//! cause, evictions, how long a load takes, and the resident bytes against
//! the budget. Kept apart from [`crate::core::metrics`]'s per-request
//! families: these series are per registered model, not per served one,
//! so they outlive an eviction (an evicted model's request series go with
//! it; its load and eviction counts stay).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    model: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    model: String,
}

/// The families; cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
pub struct LoadMetrics {
    loads: Family<LoadLabels, Counter>,
    evictions: Family<NameLabels, Counter>,
    load_seconds: Histogram,
    resident_bytes: Gauge,
    budget_bytes: Gauge,
    registered: Gauge,
    resident: Gauge,
}

impl LoadMetrics {
    pub fn register(registry: &mut Registry) -> LoadMetrics {
        let loads = Family::<LoadLabels, Counter>::default();
        registry.register(
            "model_loads",
            "Models loaded, by cause: demand (a request for a registered model that was not \
             resident), explicit (the repository API), poll (the repository rescan), startup",
            loads.clone(),
        );
        let evictions = Family::<NameLabels, Counter>::default();
        registry.register(
            "model_evictions",
            "Models unloaded, least recently used first, to make room under --memory-budget \
             for another's load; they stay registered and load again on their next request",
            evictions.clone(),
        );
        // 100 µs to ~100 s, doubling: a compile-cache hit of a small model
        // up to a cold compile of a large one.
        let load_seconds = Histogram::new(exponential_buckets(100e-6, 2.0, 21));
        registry.register_with_unit(
            "model_load_duration",
            "Time from a load's start to its model serving: read, compile (or compile-cache \
             hit), metadata, instances booted",
            Unit::Seconds,
            load_seconds.clone(),
        );
        let resident_bytes = Gauge::default();
        registry.register_with_unit(
            "resident_memory",
            "Memory the resident models reserve: the sum of instances × memory limit, what \
             --memory-budget bounds",
            Unit::Bytes,
            resident_bytes.clone(),
        );
        let budget_bytes = Gauge::default();
        registry.register_with_unit(
            "memory_budget",
            "--memory-budget: the most the resident models may reserve",
            Unit::Bytes,
            budget_bytes.clone(),
        );
        let registered = Gauge::default();
        registry.register(
            "models_registered",
            "Models the host knows and serves, resident or not",
            registered.clone(),
        );
        let resident = Gauge::default();
        registry.register(
            "models_resident",
            "Models loaded now, with instances (or an elastic pool) ready",
            resident.clone(),
        );
        LoadMetrics {
            loads,
            evictions,
            load_seconds,
            resident_bytes,
            budget_bytes,
            registered,
            resident,
        }
    }

    pub fn loaded(&self, model: &str, cause: &'static str, seconds: f64) {
        self.loads
            .get_or_create(&LoadLabels {
                model: model.to_owned(),
                cause,
            })
            .inc();
        self.load_seconds.observe(seconds);
    }

    pub fn evicted(&self, model: &str) {
        self.evictions
            .get_or_create(&NameLabels {
                model: model.to_owned(),
            })
            .inc();
    }

    /// A model that is no longer registered (unloaded by the API, its
    /// folder gone) takes its series with it, so the families stay bounded
    /// by the models registered.
    pub fn forget(&self, model: &str) {
        for cause in super::loads::CAUSES {
            self.loads.remove(&LoadLabels {
                model: model.to_owned(),
                cause,
            });
        }
        self.evictions.remove(&NameLabels {
            model: model.to_owned(),
        });
    }

    /// The residency gauges, set by the registry after every change.
    pub fn set_residency(
        &self,
        resident_bytes: u64,
        budget: u64,
        registered: usize,
        resident: usize,
    ) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.resident_bytes.set(gauge(resident_bytes));
        self.budget_bytes.set(gauge(budget));
        self.registered.set(gauge(registered as u64));
        self.resident.set(gauge(resident as u64));
    }
}

/// Every cause a load is counted under.
pub const CAUSES: [&str; 4] = ["demand", "explicit", "poll", "startup"];
