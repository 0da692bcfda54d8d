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

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use serde_json::{Value, json};

/// The most keys one request may carry: Triton defines seven.
const MAX_KEYS: usize = 16;
/// The most strings one setting's value may have.
const MAX_STRINGS: usize = 4;
/// The longest string a setting's value may have.
const MAX_TEXT: usize = 256;
/// The most models with settings of their own.
pub const MAX_MODELS: usize = 4096;

/// Which information a trace collects: a set of Triton's levels, empty
/// for `OFF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Level(u8);

impl Level {
    pub const OFF: Level = Level(0);
    pub const TIMESTAMPS: Level = Level(1);
    pub const TENSORS: Level = Level(2);

    pub fn is_off(self) -> bool {
        self.0 == 0
    }

    /// Triton's names for the level, `["OFF"]` when off.
    pub fn names(self) -> Vec<String> {
        if self.is_off() {
            return vec!["OFF".into()];
        }
        let mut names = Vec::new();
        if self.0 & Self::TIMESTAMPS.0 != 0 {
            names.push("TIMESTAMPS".into());
        }
        if self.0 & Self::TENSORS.0 != 0 {
            names.push("TENSORS".into());
        }
        names
    }

    fn parse(names: &[String]) -> Result<Level, String> {
        if names.is_empty() {
            return Err("trace_level needs a level: OFF, TIMESTAMPS or TENSORS".into());
        }
        let mut level = Level::OFF;
        for name in names {
            level.0 |= match name.as_str() {
                "OFF" if names.len() == 1 => 0,
                "OFF" => return Err("trace_level OFF goes alone".into()),
                "TIMESTAMPS" => Self::TIMESTAMPS.0,
                "TENSORS" => Self::TENSORS.0,
                other => {
                    return Err(format!(
                        "trace_level must be OFF, TIMESTAMPS or TENSORS, not {}",
                        quoted(other)
                    ));
                }
            };
        }
        Ok(level)
    }
}

/// One setting's values, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Values {
    pub level: Level,
    /// One request in `rate` is traced; at least 1.
    pub rate: u32,
    /// Requests still to trace; -1: no limit.
    pub count: i64,
    pub log_frequency: u32,
}

impl Values {
    /// Triton's JSON for these values.
    pub fn to_json(&self) -> Value {
        let mut object = serde_json::Map::new();
        for (key, value) in self.pairs() {
            let value = if key == "trace_level" {
                json!(value)
            } else {
                json!(value.into_iter().next().unwrap_or_default())
            };
            object.insert(key.to_owned(), value);
        }
        Value::Object(object)
    }

    /// The same as `(key, strings)` pairs, for gRPC's map.
    pub fn pairs(&self) -> [(&'static str, Vec<String>); 6] {
        [
            ("trace_level", self.level.names()),
            ("trace_rate", vec![self.rate.to_string()]),
            ("trace_count", vec![self.count.to_string()]),
            ("log_frequency", vec![self.log_frequency.to_string()]),
            ("trace_file", vec![String::new()]),
            ("trace_mode", vec!["opentelemetry".into()]),
        ]
    }
}

/// What a request does to one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Change<T> {
    #[default]
    Keep,
    Set(T),
    /// `null`: a model follows the global value again; the global value
    /// goes back to its start-up one.
    Clear,
}

/// A request's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceUpdate {
    pub level: Change<Level>,
    pub rate: Change<u32>,
    pub count: Change<i64>,
    pub log_frequency: Change<u32>,
}

/// A setting's value as it arrives: a string or a list of strings (JSON),
/// a `SettingValue` (gRPC); `None` is JSON `null` or an empty gRPC value.
pub type Given = Option<Vec<String>>;

impl TraceUpdate {
    /// The changes `(key, value)` pairs ask for, or a message naming the
    /// first key that cannot be honoured.
    pub fn parse(pairs: impl IntoIterator<Item = (String, Given)>) -> Result<Self, String> {
        let mut update = TraceUpdate::default();
        for (n, (key, given)) in pairs.into_iter().enumerate() {
            if n >= MAX_KEYS {
                return Err(format!(
                    "a trace settings request has at most {MAX_KEYS} keys"
                ));
            }
            if let Some(strings) = &given
                && (strings.len() > MAX_STRINGS || strings.iter().any(|s| s.len() > MAX_TEXT))
            {
                return Err(format!(
                    "{}: at most {MAX_STRINGS} values of up to {MAX_TEXT} bytes",
                    quoted(&key)
                ));
            }
            let one = || -> Result<Option<&str>, String> {
                match given.as_deref() {
                    None => Ok(None),
                    Some([value]) => Ok(Some(value)),
                    Some(_) => Err(format!("{key} takes one value")),
                }
            };
            match key.as_str() {
                "trace_level" => {
                    update.level = match &given {
                        None => Change::Clear,
                        Some(names) => Change::Set(Level::parse(names)?),
                    }
                }
                "trace_rate" => {
                    update.rate = change(one()?, |text| {
                        number(text, 1, u32::MAX.into())
                            .map(|n| n as u32)
                            .ok_or_else(|| {
                                format!(
                                    "trace_rate must be a whole number from 1 to {}, not {}",
                                    u32::MAX,
                                    quoted(text)
                                )
                            })
                    })?
                }
                "trace_count" => {
                    update.count = change(one()?, |text| {
                        number(text, -1, i32::MAX.into()).ok_or_else(|| {
                            format!(
                                "trace_count must be -1 (no limit) or a whole number up to {}, \
                                 not {}",
                                i32::MAX,
                                quoted(text)
                            )
                        })
                    })?
                }
                "log_frequency" => {
                    update.log_frequency = change(one()?, |text| {
                        number(text, 0, u32::MAX.into())
                            .map(|n| n as u32)
                            .ok_or_else(|| {
                                format!(
                                    "log_frequency must be a whole number from 0 to {}, not {}",
                                    u32::MAX,
                                    quoted(text)
                                )
                            })
                    })?
                }
                "trace_file" => {
                    if one()?.is_some_and(|path| !path.is_empty()) {
                        return Err("trace_file cannot be set: wasm-host exports spans over \
                                    OTLP and never writes to a path a client names"
                            .into());
                    }
                }
                "trace_mode" => {
                    if let Some(mode) = one()?
                        && mode != "opentelemetry"
                    {
                        return Err(format!(
                            "trace_mode is \"opentelemetry\" (spans exported over OTLP), not {}: \
                             wasm-host does not write Triton's trace files",
                            quoted(mode)
                        ));
                    }
                }
                "trace_config" => {
                    if given.is_some() {
                        return Err("trace_config cannot be changed over the API: the exporter \
                                    is configured when the host starts (the OTEL_* environment)"
                            .into());
                    }
                }
                other => {
                    return Err(format!(
                        "unknown trace setting {}; the settings are trace_level, trace_rate, \
                         trace_count, log_frequency, trace_file, trace_mode",
                        quoted(other)
                    ));
                }
            }
        }
        Ok(update)
    }

    /// The changes a JSON body asks for: an object whose values are
    /// strings, lists of strings or `null` (numbers are taken too).
    pub fn from_json(body: &Value) -> Result<Self, String> {
        let Some(object) = body.as_object() else {
            return Err("a trace settings request is a JSON object".into());
        };
        if object.len() > MAX_KEYS {
            return Err(format!(
                "a trace settings request has at most {MAX_KEYS} keys"
            ));
        }
        let mut pairs = Vec::with_capacity(object.len());
        for (key, value) in object {
            let text = |value: &Value| match value {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!(
                    "{}: values are strings or lists of strings",
                    quoted(key)
                )),
            };
            let given = match value {
                Value::Null => None,
                Value::Array(items) if items.len() <= MAX_STRINGS => {
                    Some(items.iter().map(text).collect::<Result<_, _>>()?)
                }
                Value::Array(_) => {
                    return Err(format!("{}: at most {MAX_STRINGS} values", quoted(key)));
                }
                other => Some(vec![text(other)?]),
            };
            pairs.push((key.clone(), given));
        }
        Self::parse(pairs)
    }
}

/// `Clear` for `None`, else the parsed value.
fn change<T>(
    given: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Change<T>, String> {
    Ok(match given {
        None => Change::Clear,
        Some(text) => Change::Set(parse(text)?),
    })
}

/// A whole number in `min..=max`, digits with an optional leading minus.
fn number(text: &str, min: i64, max: i64) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| (min..=max).contains(n))
}

/// A client's string for an error message, cut short.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    format!("{cut:?}")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn update(body: Value) -> TraceUpdate {
        TraceUpdate::from_json(&body).unwrap()
    }

    fn refused(body: Value) -> String {
        TraceUpdate::from_json(&body).unwrap_err()
    }

    fn traced(settings: &TraceSettings, model: &str, requests: usize) -> usize {
        (0..requests).filter(|_| settings.admit(model)).count()
    }

    #[test]
    fn without_an_exporter_nothing_is_traced_and_with_one_everything() {
        let off = TraceSettings::new(false);
        assert_eq!(off.values(None).level, Level::OFF);
        assert_eq!(traced(&off, "m", 10), 0);
        let on = TraceSettings::new(true);
        assert_eq!(
            on.values(None),
            Values {
                level: Level::TIMESTAMPS,
                rate: 1,
                count: -1,
                log_frequency: 0
            }
        );
        assert_eq!(traced(&on, "m", 10), 10);
        assert_eq!(
            on.values(None).to_json(),
            json!({"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
                   "log_frequency": "0", "trace_file": "", "trace_mode": "opentelemetry"})
        );
    }

    #[test]
    fn one_request_in_rate_is_traced() {
        let s = TraceSettings::new(true);
        s.apply(None, &update(json!({"trace_rate": "4"}))).unwrap();
        let picks: Vec<bool> = (0..8).map(|_| s.admit("m")).collect();
        assert_eq!(
            picks,
            [false, false, false, true, false, false, false, true]
        );
    }

    #[test]
    fn the_count_counts_down_and_zero_stops_tracing() {
        let s = TraceSettings::new(true);
        s.apply(None, &update(json!({"trace_count": "3"}))).unwrap();
        assert_eq!(traced(&s, "m", 10), 3);
        assert_eq!(s.values(None).count, 0);
        s.apply(None, &update(json!({"trace_count": "-1"})))
            .unwrap();
        assert_eq!(traced(&s, "m", 10), 10);
        assert_eq!(s.values(None).count, -1);
    }

    #[test]
    fn a_models_own_settings_override_the_global_ones_key_by_key() {
        let s = TraceSettings::new(false);
        let v = s
            .apply(
                Some("a"),
                &update(json!({"trace_level": ["TIMESTAMPS"], "trace_count": "2"})),
            )
            .unwrap();
        assert_eq!((v.level, v.rate, v.count), (Level::TIMESTAMPS, 1, 2));
        assert_eq!(traced(&s, "b", 5), 0, "b follows the global OFF");
        assert_eq!(traced(&s, "a", 5), 2, "a has its own count");
        // a's rate follows the global one until it sets its own.
        s.apply(None, &update(json!({"trace_rate": "7"}))).unwrap();
        assert_eq!(s.values(Some("a")).rate, 7);
        assert_eq!(s.values(Some("b")).level, Level::OFF);
    }

    #[test]
    fn null_clears_a_models_key_and_a_model_with_none_left_follows_the_global() {
        let s = TraceSettings::new(false);
        s.apply(
            Some("a"),
            &update(json!({"trace_level": "TIMESTAMPS", "trace_rate": "2"})),
        )
        .unwrap();
        assert!(s.on.load(Ordering::Relaxed));
        let v = s
            .apply(Some("a"), &update(json!({"trace_rate": null})))
            .unwrap();
        assert_eq!((v.level, v.rate), (Level::TIMESTAMPS, 1));
        s.apply(Some("a"), &update(json!({"trace_level": null})))
            .unwrap();
        assert!(s.state.read().unwrap().models.is_empty());
        assert!(!s.on.load(Ordering::Relaxed), "all OFF again: one load");
        assert_eq!(traced(&s, "a", 3), 0);
    }

    #[test]
    fn null_for_a_global_key_restores_its_start_up_value() {
        let s = TraceSettings::new(true);
        s.apply(
            None,
            &update(json!({"trace_level": ["OFF"], "trace_rate": "9"})),
        )
        .unwrap();
        assert_eq!(traced(&s, "m", 3), 0);
        let v = s
            .apply(
                None,
                &update(json!({"trace_level": null, "trace_rate": null})),
            )
            .unwrap();
        assert_eq!((v.level, v.rate), (Level::TIMESTAMPS, 1));
    }

    #[test]
    fn tensors_is_accepted_and_reported_and_traces_as_timestamps() {
        let s = TraceSettings::new(false);
        let v = s
            .apply(
                None,
                &update(json!({"trace_level": ["TIMESTAMPS", "TENSORS"]})),
            )
            .unwrap();
        assert_eq!(v.level.names(), ["TIMESTAMPS", "TENSORS"]);
        let v = s
            .apply(None, &update(json!({"trace_level": ["TENSORS"]})))
            .unwrap();
        assert_eq!(v.level.names(), ["TENSORS"]);
        assert!(s.admit("m"));
    }

    #[test]
    fn bad_values_are_refused_with_a_message_naming_the_setting() {
        let cases = [
            (
                json!({"trace_rate": "0"}),
                "trace_rate must be a whole number from 1",
            ),
            (json!({"trace_rate": "abc"}), "trace_rate must be"),
            (json!({"trace_rate": "99999999999"}), "trace_rate must be"),
            (
                json!({"trace_rate": ["1", "2"]}),
                "trace_rate takes one value",
            ),
            (json!({"trace_count": "-2"}), "trace_count must be -1"),
            (json!({"trace_count": "1.5"}), "trace_count must be"),
            (json!({"log_frequency": "-1"}), "log_frequency must be"),
            (
                json!({"trace_level": ["OFF", "TIMESTAMPS"]}),
                "OFF goes alone",
            ),
            (json!({"trace_level": ["LOUD"]}), "not \"LOUD\""),
            (json!({"trace_level": []}), "needs a level"),
            (json!({"trace_file": "/etc/x"}), "never writes to a path"),
            (
                json!({"trace_mode": "triton"}),
                "does not write Triton's trace files",
            ),
            (
                json!({"trace_config": ["url=http://x"]}),
                "configured when the host starts",
            ),
            (
                json!({"trace_sample": "1"}),
                "unknown trace setting \"trace_sample\"",
            ),
            (json!({"trace_rate": true}), "values are strings"),
            (
                json!({"trace_level": ["A", "B", "C", "D", "E"]}),
                "at most 4 values",
            ),
            (json!({"trace_rate": "9".repeat(300)}), "up to 256 bytes"),
            (json!(["trace_rate"]), "a JSON object"),
        ];
        for (body, needle) in cases {
            let err = refused(body.clone());
            assert!(err.contains(needle), "{body}: {err}");
        }
        let many: serde_json::Map<String, Value> =
            (0..20).map(|i| (format!("k{i}"), json!("1"))).collect();
        assert!(refused(Value::Object(many)).contains("at most 16 keys"));
        // What Triton's clients send back unchanged is accepted.
        let echo = update(json!({"trace_file": "", "trace_mode": "opentelemetry",
                                 "trace_rate": 5, "log_frequency": "10"}));
        assert_eq!(echo.rate, Change::Set(5));
        assert_eq!(echo.log_frequency, Change::Set(10));
    }

    #[test]
    fn model_overrides_are_bounded() {
        let s = TraceSettings::new(false);
        let one = update(json!({"trace_rate": "2"}));
        for i in 0..MAX_MODELS {
            s.apply(Some(&format!("m{i}")), &one).unwrap();
        }
        assert!(
            s.apply(Some("one-more"), &one)
                .unwrap_err()
                .contains("at most")
        );
        assert!(
            s.apply(Some("m0"), &one).is_ok(),
            "an existing one may change"
        );
    }
}
