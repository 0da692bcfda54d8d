//! The trace settings' vocabulary, and the checks on what a client sends:
//! Triton's levels ([`Level`]), the values a setting reports ([`Values`]),
//! and a request's changes ([`TraceUpdate`]) parsed from a JSON body or
//! gRPC's `(key, value)` pairs. It lives apart from the store in
//! [`super`] because it is pure: every refusal (an unknown key, a rate of
//! 0, a `trace_file`) is decided here, before any setting in force changes.

use serde_json::{Value, json};

/// The most keys one request may carry: Triton defines seven.
const MAX_KEYS: usize = 16;
/// The most strings one setting's value may have.
const MAX_STRINGS: usize = 4;
/// The longest string a setting's value may have.
const MAX_TEXT: usize = 256;

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
