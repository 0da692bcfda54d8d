//! Triton's logging extension (`GET/POST /v2/logging`, gRPC `LogSettings`):
//! the log settings a client reads and changes at run time, and the filter
//! they rebuild.
//!
//! The settings map onto one `EnvFilter`, swapped in through a reload
//! handle: `log_error`, `log_warning`, `log_info` pick the default level,
//! `log_verbose_level` 1 shows `debug` lines of the host's own target
//! (`wasm_host`) and 2 its `trace` lines. `RUST_LOG` stays the base: its
//! per-target directives are kept, and only its bare level is replaced by
//! the one the settings give, once a client has changed them. Until then
//! the filter is `RUST_LOG` as given (or `info`).
//!
//! tracing's levels are ordered, a level showing every level above it, so
//! `log_info` on with `log_warning` off (or `log_warning` on with
//! `log_error` off) cannot be honoured and is refused. `log_format` is
//! accepted and reported but changes nothing: the line format is
//! `--log-format`'s, and its timestamps are already RFC 3339 (ISO 8601).
//! `log_file` is refused unless empty: the host logs to stderr only, and
//! never writes to a path a client names.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tracing_subscriber::EnvFilter;

/// The default level when `RUST_LOG` is unset or does not parse.
const DEFAULT_FILTER: &str = "info";

/// The most keys a logging request may carry: Triton defines six.
const MAX_KEYS: usize = 16;

/// The highest verbose level: 2 already shows every `trace` line.
const MAX_VERBOSE: u32 = 100;

/// Triton's log settings, as `GET /v2/logging` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub log_info: bool,
    pub log_warning: bool,
    pub log_error: bool,
    /// 0: no verbose lines; 1: the host's `debug` lines; 2 and up: its
    /// `trace` lines too.
    pub log_verbose_level: u32,
    /// `default` or `ISO8601`: reported, not applied (see the module).
    pub log_format: LogLineFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLineFormat {
    Default,
    Iso8601,
}

impl LogLineFormat {
    fn name(self) -> &'static str {
        match self {
            LogLineFormat::Default => "default",
            LogLineFormat::Iso8601 => "ISO8601",
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            log_info: true,
            log_warning: true,
            log_error: true,
            log_verbose_level: 0,
            log_format: LogLineFormat::Default,
        }
    }
}

/// One change a client asks for; `None` leaves a setting as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogUpdate {
    pub log_info: Option<bool>,
    pub log_warning: Option<bool>,
    pub log_error: Option<bool>,
    pub log_verbose_level: Option<u32>,
    pub log_format: Option<LogLineFormat>,
}

/// A value as it arrives: JSON over HTTP, a `SettingValue` over gRPC.
#[derive(Debug, Clone, PartialEq)]
pub enum LogValue {
    Bool(bool),
    Uint(u64),
    Text(String),
    /// JSON `null`, or a gRPC value with no parameter set: no change.
    Unset,
}

impl LogUpdate {
    /// An update from `(key, value)` pairs; a message naming the key for
    /// anything unknown, mistyped or out of range.
    pub fn parse(pairs: impl IntoIterator<Item = (String, LogValue)>) -> Result<Self, String> {
        let mut update = LogUpdate::default();
        for (count, (key, value)) in pairs.into_iter().enumerate() {
            if count >= MAX_KEYS {
                return Err(format!(
                    "a log settings request has at most {MAX_KEYS} keys"
                ));
            }
            let bool_of = |value: &LogValue| match value {
                LogValue::Bool(b) => Ok(*b),
                LogValue::Text(t) if t == "true" || t == "false" => Ok(t == "true"),
                other => Err(format!("{key} must be true or false, not {}", shown(other))),
            };
            if value == LogValue::Unset {
                if !KEYS.contains(&key.as_str()) {
                    return Err(unknown(&key));
                }
                continue;
            }
            match key.as_str() {
                "log_info" => update.log_info = Some(bool_of(&value)?),
                "log_warning" => update.log_warning = Some(bool_of(&value)?),
                "log_error" => update.log_error = Some(bool_of(&value)?),
                "log_verbose_level" => {
                    let level = match &value {
                        LogValue::Uint(n) => Some(*n),
                        LogValue::Text(t) if t.len() <= 20 => t.parse().ok(),
                        _ => None,
                    };
                    match level {
                        Some(n) if n <= u64::from(MAX_VERBOSE) => {
                            update.log_verbose_level = Some(n as u32)
                        }
                        _ => {
                            return Err(format!(
                                "log_verbose_level must be a whole number from 0 to \
                                 {MAX_VERBOSE}, not {}",
                                shown(&value)
                            ));
                        }
                    }
                }
                "log_format" => {
                    update.log_format = Some(match &value {
                        LogValue::Text(t) if t == "default" => LogLineFormat::Default,
                        LogValue::Text(t) if t == "ISO8601" => LogLineFormat::Iso8601,
                        other => {
                            return Err(format!(
                                "log_format must be \"default\" or \"ISO8601\", not {}",
                                shown(other)
                            ));
                        }
                    })
                }
                "log_file" => match &value {
                    LogValue::Text(t) if t.is_empty() => {}
                    _ => {
                        return Err(
                            "log_file cannot be set: wasm-host logs to stderr only and never \
                             writes to a path a client names"
                                .into(),
                        );
                    }
                },
                _ => return Err(unknown(&key)),
            }
        }
        Ok(update)
    }

    /// An update from a JSON body: an object of settings.
    pub fn from_json(body: &Value) -> Result<Self, String> {
        let Some(object) = body.as_object() else {
            return Err("a log settings request is a JSON object".into());
        };
        let pairs = object.iter().map(|(key, value)| {
            let value = match value {
                Value::Null => LogValue::Unset,
                Value::Bool(b) => LogValue::Bool(*b),
                Value::Number(n) => n
                    .as_u64()
                    .map_or(LogValue::Text(n.to_string()), LogValue::Uint),
                Value::String(s) => LogValue::Text(s.clone()),
                other => LogValue::Text(other.to_string()),
            };
            (key.clone(), value)
        });
        Self::parse(pairs)
    }
}

const KEYS: [&str; 6] = [
    "log_file",
    "log_info",
    "log_warning",
    "log_error",
    "log_verbose_level",
    "log_format",
];

fn unknown(key: &str) -> String {
    let key: String = key.chars().take(64).collect();
    format!(
        "unknown log setting {key:?}; the settings are {}",
        KEYS.join(", ")
    )
}

/// A value for an error message, cut short.
fn shown(value: &LogValue) -> String {
    let text = match value {
        LogValue::Bool(b) => b.to_string(),
        LogValue::Uint(n) => n.to_string(),
        LogValue::Text(t) => format!("{t:?}"),
        LogValue::Unset => "null".into(),
    };
    text.chars().take(64).collect()
}

impl LogSettings {
    /// These settings with `update` applied, or why it cannot be.
    pub fn updated(&self, update: &LogUpdate) -> Result<LogSettings, String> {
        let next = LogSettings {
            log_info: update.log_info.unwrap_or(self.log_info),
            log_warning: update.log_warning.unwrap_or(self.log_warning),
            log_error: update.log_error.unwrap_or(self.log_error),
            log_verbose_level: update.log_verbose_level.unwrap_or(self.log_verbose_level),
            log_format: update.log_format.unwrap_or(self.log_format),
        };
        if (next.log_info && !next.log_warning) || (next.log_warning && !next.log_error) {
            return Err(
                "log levels are ordered here: a level shows every level above it, so log_info \
                 needs log_warning and log_warning needs log_error; turn the lower level off \
                 first (or in the same request)"
                    .into(),
            );
        }
        Ok(next)
    }

    /// The directives these settings add over `RUST_LOG`'s: the bare
    /// level, then the host's verbose level.
    pub fn directives(&self) -> Vec<&'static str> {
        let level = if self.log_info {
            "info"
        } else if self.log_warning {
            "warn"
        } else if self.log_error {
            "error"
        } else {
            "off"
        };
        let mut directives = vec![level];
        match self.log_verbose_level {
            0 => {}
            1 => directives.push("wasm_host=debug"),
            _ => directives.push("wasm_host=trace"),
        }
        directives
    }

    /// Triton's JSON for these settings.
    pub fn to_json(&self) -> Value {
        json!({
            "log_file": "",
            "log_info": self.log_info,
            "log_warning": self.log_warning,
            "log_error": self.log_error,
            "log_verbose_level": self.log_verbose_level,
            "log_format": self.log_format.name(),
        })
    }

    /// The same, as `(key, value)` pairs for gRPC's map.
    pub fn pairs(&self) -> [(&'static str, LogValue); 6] {
        [
            ("log_file", LogValue::Text(String::new())),
            ("log_info", LogValue::Bool(self.log_info)),
            ("log_warning", LogValue::Bool(self.log_warning)),
            ("log_error", LogValue::Bool(self.log_error)),
            (
                "log_verbose_level",
                LogValue::Uint(self.log_verbose_level.into()),
            ),
            ("log_format", LogValue::Text(self.log_format.name().into())),
        ]
    }
}

/// Swaps the log filter in; `Err` says why it could not.
type Reload = dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync;

/// The live log settings and the handle that applies them: cheap to clone,
/// shared by the endpoints of both protocols.
#[derive(Clone)]
pub struct LogControl {
    inner: Arc<Inner>,
}

struct Inner {
    /// `RUST_LOG` as given (when it parses), else `info`.
    base: String,
    reload: Box<Reload>,
    /// Held while a change is built and applied, so two changes at once
    /// cannot leave the filter and the settings apart.
    settings: Mutex<LogSettings>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("base", &self.inner.base)
            .field("settings", &self.settings())
            .finish()
    }
}

impl LogControl {
    /// Settings applied through `reload`, over the filter `base`.
    pub fn new(
        base: impl Into<String>,
        reload: impl Fn(EnvFilter) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        LogControl {
            inner: Arc::new(Inner {
                base: base.into(),
                reload: Box::new(reload),
                settings: Mutex::new(LogSettings::default()),
            }),
        }
    }

    /// Settings that change no filter: for a process without the host's
    /// subscriber (tests, tools).
    pub fn detached() -> Self {
        Self::new(DEFAULT_FILTER, |_| Ok(()))
    }

    /// `RUST_LOG` if it is set and parses, else `info`.
    pub fn base_from_env() -> String {
        match std::env::var(EnvFilter::DEFAULT_ENV) {
            Ok(given) if EnvFilter::builder().parse(&given).is_ok() => given,
            _ => DEFAULT_FILTER.to_owned(),
        }
    }

    pub fn settings(&self) -> LogSettings {
        self.inner.settings.lock().unwrap().clone()
    }

    /// Applies `update`: the filter is rebuilt and swapped in, and the new
    /// settings returned.
    pub fn apply(&self, update: &LogUpdate) -> Result<LogSettings, String> {
        let mut settings = self.inner.settings.lock().unwrap();
        let next = settings.updated(update)?;
        // Said before the change, under the filter that shows it: a line
        // that turns info off is the last info line, and says why.
        if *settings != next {
            tracing::info!(
                "log settings: info {}, warning {}, error {}, verbose level {}",
                next.log_info,
                next.log_warning,
                next.log_error,
                next.log_verbose_level
            );
        }
        (self.inner.reload)(filter(&self.inner.base, &next))?;
        *settings = next.clone();
        Ok(next)
    }
}

/// The filter `base` gives alone: the first one, before any change.
pub fn filter_of(base: &str) -> EnvFilter {
    EnvFilter::builder()
        .parse(base)
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// The filter for `settings` over `base`: the base's directives, its bare
/// level replaced by the settings' one, then the verbose level.
pub fn filter(base: &str, settings: &LogSettings) -> EnvFilter {
    settings
        .directives()
        .into_iter()
        .fold(filter_of(base), |filter, directive| {
            filter.add_directive(directive.parse().expect("a valid directive"))
        })
}

#[cfg(test)]
mod tests;
