//! Triton's trace settings (`GET/POST /v2[/models/{m}]/trace/setting`,
//! gRPC `TraceSetting`): which requests are traced, globally and per model,
//! and [`TraceSettings::admit`], the per-request question the tracing code
//! asks.
//!
//! The settings are Triton's: `trace_level` (`OFF`, or `TIMESTAMPS` and/or
//! `TENSORS`), `trace_rate` (1 request in N), `trace_count` (how many more
//! requests to trace, -1 for no limit; it counts down), `log_frequency`.
//! A model's settings override the global ones key by key; a key it does
//! not set, or sets to `null`, follows the global value, and a model with
//! no key of its own left follows the global settings entirely, as in
//! Triton. A `null` for a global key restores the start-up value.
//!
//! What differs from Triton, and why: `TENSORS` is accepted and reported
//! but traces as `TIMESTAMPS` does (spans carry timings and attributes,
//! never tensor data). `trace_mode` is `opentelemetry` and only that:
//! Triton's own mode writes JSON trace files. `trace_file` is refused unless
//! empty, and `trace_config` always: the host never writes to a path a
//! client names, and the exporter is configured when the host starts (the
//! `OTEL_*` environment). `log_frequency` is accepted and reported and
//! changes nothing: spans leave through the exporter, not files.
//! `trace_rate` is at least 1 (Triton's 0, "only requests that carry a
//! trace context", is refused). An unknown key is refused, where Triton
//! ignores it: a misspelt setting should not look applied.

#[cfg(test)]
mod tests;
pub mod update;

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use update::{Change, Level, TraceUpdate, Values};

/// The most models with settings of their own.
pub const MAX_MODELS: usize = 4096;

/// A setting in use: its values and its counters.
struct Slot {
    level: Level,
    rate: u32,
    log_frequency: u32,
    /// Requests still to trace; -1: no limit.
    count: AtomicI64,
    /// Requests seen, for the 1-in-`rate` choice.
    seen: AtomicU64,
}

/// A model's own settings: `None` follows the global value. A model with
/// any setting of its own counts its own requests for the rate; its count
/// is its own only if it set one.
#[derive(Default)]
struct Override {
    level: Option<Level>,
    rate: Option<u32>,
    log_frequency: Option<u32>,
    count: Option<AtomicI64>,
    seen: AtomicU64,
}

impl Override {
    fn is_empty(&self) -> bool {
        self.level.is_none()
            && self.rate.is_none()
            && self.log_frequency.is_none()
            && self.count.is_none()
    }
}

struct State {
    global: Slot,
    models: HashMap<String, Override>,
}

/// Triton's trace settings store, global and per model: what the trace
/// endpoints read and change, and what [`TraceSettings::admit`] consults
/// for every request.
pub struct TraceSettings {
    /// Whether any setting, global or a model's, traces at all: while none
    /// does, `admit` is this one load.
    on: AtomicBool,
    /// The start-up values, which a `null` for a global key restores.
    defaults: Values,
    state: RwLock<State>,
}

impl std::fmt::Debug for TraceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSettings")
            .field("on", &self.on.load(Ordering::Relaxed))
            .field("global", &self.values(None))
            .finish()
    }
}

impl TraceSettings {
    /// The start-up settings: every request traced (`TIMESTAMPS`, rate 1,
    /// no count limit) when `export_on` (an exporter is configured), else
    /// `OFF`.
    pub fn new(export_on: bool) -> Self {
        let defaults = Values {
            level: if export_on {
                Level::TIMESTAMPS
            } else {
                Level::OFF
            },
            rate: 1,
            count: -1,
            log_frequency: 0,
        };
        TraceSettings {
            on: AtomicBool::new(!defaults.level.is_off()),
            defaults,
            state: RwLock::new(State {
                global: Slot {
                    level: defaults.level,
                    rate: defaults.rate,
                    log_frequency: defaults.log_frequency,
                    count: AtomicI64::new(defaults.count),
                    seen: AtomicU64::new(0),
                },
                models: HashMap::new(),
            }),
        }
    }

    /// Whether this request, to `model`, is traced: its level is not `OFF`,
    /// it is the rate's 1 in N, and the count is not spent (it is counted
    /// down here). While every setting is `OFF` this costs one atomic load.
    pub fn admit(&self, model: &str) -> bool {
        if !self.on.load(Ordering::Relaxed) {
            return false;
        }
        let state = self.state.read().unwrap();
        let global = &state.global;
        let own = if state.models.is_empty() {
            None
        } else {
            state.models.get(model)
        };
        match own {
            None => sample(global.level, global.rate, &global.seen, &global.count),
            Some(own) => sample(
                own.level.unwrap_or(global.level),
                own.rate.unwrap_or(global.rate),
                &own.seen,
                own.count.as_ref().unwrap_or(&global.count),
            ),
        }
    }

    /// The settings in force: the global ones, or `model`'s (its own where
    /// it has them, the global ones elsewhere).
    pub fn values(&self, model: Option<&str>) -> Values {
        let state = self.state.read().unwrap();
        let global = &state.global;
        let own = model.and_then(|m| state.models.get(m));
        let count = own
            .and_then(|o| o.count.as_ref())
            .unwrap_or(&global.count)
            .load(Ordering::Relaxed);
        Values {
            level: own.and_then(|o| o.level).unwrap_or(global.level),
            rate: own.and_then(|o| o.rate).unwrap_or(global.rate),
            count,
            log_frequency: own
                .and_then(|o| o.log_frequency)
                .unwrap_or(global.log_frequency),
        }
    }

    /// Applies `update` to the global settings (`model` `None`) or to a
    /// model's, and answers the settings now in force there. The caller
    /// checks that the model exists.
    pub fn apply(&self, model: Option<&str>, update: &TraceUpdate) -> Result<Values, String> {
        {
            let mut state = self.state.write().unwrap();
            match model {
                None => self.apply_global(&mut state.global, update),
                Some(name) => {
                    if !state.models.contains_key(name) && state.models.len() >= MAX_MODELS {
                        return Err(format!(
                            "at most {MAX_MODELS} models may have trace settings of their own"
                        ));
                    }
                    let own = state.models.entry(name.to_owned()).or_default();
                    apply_own(own, update);
                    if own.is_empty() {
                        state.models.remove(name);
                    }
                }
            }
            let on = !state.global.level.is_off()
                || state
                    .models
                    .values()
                    .any(|m| m.level.is_some_and(|l| !l.is_off()));
            self.on.store(on, Ordering::Relaxed);
        }
        let values = self.values(model);
        if *update != TraceUpdate::default() {
            tracing::info!(
                "trace settings for {}: level {}, rate {}, count {}",
                model.unwrap_or("all models"),
                values.level.names().join("+"),
                values.rate,
                values.count
            );
        }
        Ok(values)
    }

    fn apply_global(&self, global: &mut Slot, update: &TraceUpdate) {
        let d = &self.defaults;
        if let Some(level) = pick(update.level, d.level) {
            global.level = level;
        }
        if let Some(rate) = pick(update.rate, d.rate) {
            global.rate = rate;
            global.seen.store(0, Ordering::Relaxed);
        }
        if let Some(count) = pick(update.count, d.count) {
            global.count.store(count, Ordering::Relaxed);
        }
        if let Some(log_frequency) = pick(update.log_frequency, d.log_frequency) {
            global.log_frequency = log_frequency;
        }
    }
}

/// The new global value a change gives: `Clear` restores the default.
fn pick<T>(change: Change<T>, default: T) -> Option<T> {
    match change {
        Change::Keep => None,
        Change::Set(value) => Some(value),
        Change::Clear => Some(default),
    }
}

fn apply_own(own: &mut Override, update: &TraceUpdate) {
    fn set<T>(slot: &mut Option<T>, change: Change<T>) {
        match change {
            Change::Keep => {}
            Change::Set(value) => *slot = Some(value),
            Change::Clear => *slot = None,
        }
    }
    set(&mut own.level, update.level);
    set(&mut own.rate, update.rate);
    set(&mut own.log_frequency, update.log_frequency);
    match update.count {
        Change::Keep => {}
        Change::Set(count) => own.count = Some(AtomicI64::new(count)),
        Change::Clear => own.count = None,
    }
    if update.rate != Change::Keep {
        own.seen.store(0, Ordering::Relaxed);
    }
}

/// Whether a request is traced under one setting: counted among those
/// seen, the 1 in `rate`, and within the count, which it takes one from.
fn sample(level: Level, rate: u32, seen: &AtomicU64, count: &AtomicI64) -> bool {
    if level.is_off() || count.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
    if !n.is_multiple_of(u64::from(rate.max(1))) {
        return false;
    }
    match count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        (c > 0).then(|| c - 1)
    }) {
        Ok(_) => true,
        // -1: no limit; 0: spent by another request meanwhile.
        Err(c) => c < 0,
    }
}
