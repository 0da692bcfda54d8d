//! A model's settings: one struct, read from the model's `model.toml`, from
//! the repository API's `config`, or left to the host's flags.
//!
//! Every key is optional; an unset key takes the host's flag. Sizes and
//! durations are written as the flags take them (`memory-limit = "64MiB"`,
//! `timeout = "2s"`) or as plain numbers (bytes, seconds).

use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use crate::cli::{parse_duration, parse_size};
use crate::pool::PoolConfig;

/// What a model may set for itself. Unknown keys are refused, so a typo is
/// an error that names the key rather than a setting silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelSettings {
    #[serde(alias = "instances_count")]
    pub instances: Option<usize>,
    #[serde(default, alias = "memory_limit", deserialize_with = "size")]
    pub memory_limit: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    #[serde(alias = "max_queue")]
    pub max_queue: Option<usize>,
    #[serde(default, alias = "queue_timeout", deserialize_with = "duration")]
    pub queue_timeout: Option<Duration>,
    #[serde(alias = "max_requests")]
    pub max_requests: Option<u64>,
    #[serde(alias = "max_requests_jitter")]
    pub max_requests_jitter: Option<u64>,
    /// Which numbered version folder to serve (default: the highest).
    pub version: Option<u64>,
    /// Triton's `instance_group: [{"count": N}]`, read as `instances`, so a
    /// Triton model config works as is.
    #[serde(default, alias = "instance_group")]
    instance_group: Vec<InstanceGroup>,
    /// Other Triton model config keys (`name`, `platform`, `max_batch_size`,
    /// ...) that a Triton client may send along: accepted and not acted on.
    #[serde(default, rename = "name")]
    _name: Option<IgnoredAny>,
    #[serde(default, rename = "platform")]
    _platform: Option<IgnoredAny>,
    #[serde(default, rename = "backend")]
    _backend: Option<IgnoredAny>,
    #[serde(default, rename = "max_batch_size")]
    _max_batch_size: Option<IgnoredAny>,
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
    #[serde(default, rename = "output")]
    _output: Option<IgnoredAny>,
    #[serde(default, rename = "version_policy")]
    _version_policy: Option<IgnoredAny>,
    #[serde(default, rename = "dynamic_batching")]
    _dynamic_batching: Option<IgnoredAny>,
    #[serde(default, rename = "parameters")]
    _parameters: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct InstanceGroup {
    #[serde(default)]
    count: Option<usize>,
    #[serde(default, rename = "kind")]
    _kind: Option<IgnoredAny>,
}

/// Settings with every key decided: what a served model runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub pool: PoolConfig,
    /// Deadline of one request in the guest.
    pub timeout: Duration,
}

impl ModelSettings {
    /// Reads `model.toml`.
    pub fn from_toml(text: &str) -> Result<ModelSettings, String> {
        toml::from_str(text).map_err(|err| err.to_string())
    }

    /// Reads the repository API's `config` parameter (JSON).
    pub fn from_json(text: &str) -> Result<ModelSettings, String> {
        serde_json::from_str(text).map_err(|err| err.to_string())
    }

    /// These settings over `base`: keys set here win.
    pub fn over(&self, base: &ModelSettings) -> ModelSettings {
        ModelSettings {
            instances: self.instances().or(base.instances()),
            memory_limit: self.memory_limit.or(base.memory_limit),
            timeout: self.timeout.or(base.timeout),
            max_queue: self.max_queue.or(base.max_queue),
            queue_timeout: self.queue_timeout.or(base.queue_timeout),
            max_requests: self.max_requests.or(base.max_requests),
            max_requests_jitter: self.max_requests_jitter.or(base.max_requests_jitter),
            version: self.version.or(base.version),
            ..ModelSettings::default()
        }
    }

    fn instances(&self) -> Option<usize> {
        self.instances
            .or_else(|| self.instance_group.iter().find_map(|g| g.count))
    }

    /// Every key decided, unset ones from the host's `defaults`; checked.
    pub fn resolve(&self, defaults: &Settings) -> Result<Settings, String> {
        let d = &defaults.pool;
        let instances = self.instances().unwrap_or(d.instances);
        if instances == 0 || instances > 1024 {
            return Err(format!("instances = {instances}: use 1 to 1024"));
        }
        let memory_limit = match self.memory_limit {
            Some(bytes) => usize::try_from(bytes).unwrap_or(usize::MAX),
            None => d.memory_limit,
        };
        if !(1 << 20..=4 << 30).contains(&memory_limit) {
            return Err(format!(
                "memory-limit = {memory_limit} bytes: use 1MiB to 4GiB (wasm32's whole space)"
            ));
        }
        let explicit = self.instances().is_some();
        Ok(Settings {
            pool: PoolConfig {
                instances,
                // A model sized explicitly may grow to twice that, as TTIN
                // does for the host's own count.
                max_instances: if explicit {
                    instances * 2
                } else {
                    d.max_instances.max(instances)
                },
                memory_limit,
                queue_timeout: self.queue_timeout.unwrap_or(d.queue_timeout),
                max_queue: self.max_queue.unwrap_or(d.max_queue),
                max_requests: self.max_requests.or(d.max_requests),
                max_requests_jitter: self.max_requests_jitter.unwrap_or(d.max_requests_jitter),
            },
            timeout: self.timeout.unwrap_or(defaults.timeout),
        })
    }
}

/// A size: a string as the flags take it, or a number of bytes.
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(text)) => parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A duration: a string as the flags take it, or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Seconds(f64),
        Text(String),
    }
    let text = match Option::<Time>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Time::Seconds(s)) => s.to_string(),
        Some(Time::Text(text)) => text,
    };
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        Settings {
            pool: PoolConfig {
                instances: 4,
                max_instances: 8,
                memory_limit: 256 << 20,
                queue_timeout: Duration::from_secs(30),
                max_queue: 1024,
                max_requests: None,
                max_requests_jitter: 0,
            },
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn model_toml_keys_win_and_unset_keys_take_the_host_flags() {
        let toml = ModelSettings::from_toml(
            "instances = 2\nmemory-limit = \"64MiB\"\ntimeout = \"500ms\"\nmax-queue = 8\n",
        )
        .unwrap();
        let settings = toml.resolve(&defaults()).unwrap();
        assert_eq!(settings.pool.instances, 2);
        assert_eq!(settings.pool.max_instances, 4);
        assert_eq!(settings.pool.memory_limit, 64 << 20);
        assert_eq!(settings.timeout, Duration::from_millis(500));
        assert_eq!(settings.pool.max_queue, 8);
        assert_eq!(settings.pool.queue_timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_json_config_overrides_model_toml_and_reads_tritons_instance_group() {
        let toml = ModelSettings::from_toml("instances = 2\ntimeout = 3").unwrap();
        let json = ModelSettings::from_json(
            r#"{"name": "digits", "max_batch_size": 0, "instance_group": [{"count": 5, "kind": "KIND_CPU"}]}"#,
        )
        .unwrap();
        let settings = json.over(&toml).resolve(&defaults()).unwrap();
        assert_eq!(settings.pool.instances, 5);
        assert_eq!(settings.timeout, Duration::from_secs(3));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_names() {
        let err = ModelSettings::from_toml("instancez = 2").unwrap_err();
        assert!(err.contains("instancez"), "{err}");
        let err = ModelSettings::from_toml("memory-limit = \"12 parsecs\"").unwrap_err();
        assert!(err.contains("not a size") || err.contains("unit"), "{err}");
        let err = ModelSettings::from_toml("instances = 0")
            .unwrap()
            .resolve(&defaults());
        assert!(err.unwrap_err().contains("instances = 0"));
    }
}
