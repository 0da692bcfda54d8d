//! A model's settings: one struct, read from the model's `model.toml`, from
//! the repository API's `config`, or left to the host's flags.
//!
//! Every key is optional; an unset key takes the host's flag. Sizes and
//! durations are written as the flags take them (`memory-limit = "64MiB"`,
//! `timeout = "2s"`) or as plain numbers (bytes, seconds).

pub mod values;

use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use crate::pool::PoolConfig;
use values::{parse_duration, parse_queue_delay, parse_size};

/// A model's batching settings (`max-batch-size`, `max-queue-delay`,
/// `preferred-batch-sizes` in model.toml, or the flags).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Most rows (the sum of the requests' dimension 0) in one call.
    pub max_batch_size: usize,
    /// How long a batch that holds an instance may wait for more requests
    /// (Triton's `max_queue_delay_microseconds`); 0: batch only what is
    /// already waiting.
    pub max_queue_delay: Duration,
    /// Sizes at which a batch goes at once, without waiting out the delay
    /// (Triton's `preferred_batch_size`).
    pub preferred_batch_sizes: Vec<usize>,
}

/// What a model may set for itself. Unknown keys are refused, so a typo is
/// an error that names the key rather than a setting silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelSettings {
    #[serde(alias = "instances_count")]
    pub instances: Option<usize>,
    /// With `max-instances`, makes the pool elastic: it keeps this many
    /// when idle (0: scale to zero).
    #[serde(alias = "min_instances")]
    pub min_instances: Option<usize>,
    #[serde(alias = "max_instances")]
    pub max_instances: Option<usize>,
    #[serde(default, alias = "idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
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
    /// Never evicted to make room for another model under `--load
    /// on-demand` (design §11); an explicit unload still unloads it.
    pub pinned: Option<bool>,
    /// Join concurrent requests into calls of up to this many rows (0 or 1:
    /// no batching). Triton's `max_batch_size` is read as this key.
    #[serde(alias = "max_batch_size")]
    pub max_batch_size: Option<usize>,
    /// How long a batch holding an instance waits for more requests: a
    /// number of microseconds, or a duration ("500us", "2ms").
    #[serde(default, alias = "max_queue_delay", deserialize_with = "micros")]
    pub max_queue_delay: Option<Duration>,
    /// Batch sizes that go at once, without waiting out the delay.
    #[serde(alias = "preferred_batch_sizes")]
    pub preferred_batch_sizes: Option<Vec<usize>>,
    /// Triton's `dynamic_batching { max_queue_delay_microseconds,
    /// preferred_batch_size }`, read as the two keys above.
    #[serde(default, alias = "dynamic_batching")]
    dynamic_batching: Option<DynamicBatching>,
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
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
    #[serde(default, rename = "output")]
    _output: Option<IgnoredAny>,
    #[serde(default, rename = "version_policy")]
    _version_policy: Option<IgnoredAny>,
    #[serde(default, rename = "parameters")]
    _parameters: Option<IgnoredAny>,
}

/// Triton's `dynamic_batching` block; its other keys (queue policies,
/// priorities) are accepted and not acted on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct DynamicBatching {
    #[serde(default)]
    max_queue_delay_microseconds: Option<u64>,
    #[serde(default)]
    preferred_batch_size: Option<Vec<usize>>,
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
    /// `None`: every request runs in a call of its own.
    pub batching: Option<BatchConfig>,
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
            min_instances: self.min_instances.or(base.min_instances),
            max_instances: self.max_instances.or(base.max_instances),
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            memory_limit: self.memory_limit.or(base.memory_limit),
            timeout: self.timeout.or(base.timeout),
            max_queue: self.max_queue.or(base.max_queue),
            queue_timeout: self.queue_timeout.or(base.queue_timeout),
            max_requests: self.max_requests.or(base.max_requests),
            max_requests_jitter: self.max_requests_jitter.or(base.max_requests_jitter),
            version: self.version.or(base.version),
            pinned: self.pinned.or(base.pinned),
            max_batch_size: self.max_batch_size.or(base.max_batch_size),
            max_queue_delay: self.max_queue_delay().or(base.max_queue_delay()),
            preferred_batch_sizes: self
                .preferred_batch_sizes()
                .or(base.preferred_batch_sizes()),
            ..ModelSettings::default()
        }
    }

    fn instances(&self) -> Option<usize> {
        self.instances
            .or_else(|| self.instance_group.iter().find_map(|g| g.count))
    }

    fn max_queue_delay(&self) -> Option<Duration> {
        self.max_queue_delay.or_else(|| {
            let micros = self
                .dynamic_batching
                .as_ref()?
                .max_queue_delay_microseconds?;
            Some(Duration::from_micros(micros))
        })
    }

    fn preferred_batch_sizes(&self) -> Option<Vec<usize>> {
        self.preferred_batch_sizes
            .clone()
            .or_else(|| self.dynamic_batching.as_ref()?.preferred_batch_size.clone())
    }

    /// Every key decided, unset ones from the host's `defaults`; checked.
    pub fn resolve(&self, defaults: &Settings) -> Result<Settings, String> {
        let d = &defaults.pool;
        let (instances, max_instances, min_instances) = self.pool_size(d)?;
        let memory_limit = match self.memory_limit {
            Some(bytes) => usize::try_from(bytes).unwrap_or(usize::MAX),
            None => d.memory_limit,
        };
        if !(1 << 20..=4 << 30).contains(&memory_limit) {
            return Err(format!(
                "memory-limit = {memory_limit} bytes: use 1MiB to 4GiB (wasm32's whole space)"
            ));
        }
        let idle_timeout = self.idle_timeout.unwrap_or(d.idle_timeout);
        if idle_timeout < Duration::from_millis(10) {
            return Err(format!(
                "idle-timeout = {idle_timeout:?}: use 10ms or more (e.g. \"30s\")"
            ));
        }
        let max_queue = self.max_queue.unwrap_or(d.max_queue);
        if max_queue > MOST_QUEUED {
            return Err(format!(
                "max-queue = {max_queue}: use at most {MOST_QUEUED} (requests waiting for an \
                 instance)"
            ));
        }
        let jitter = self.max_requests_jitter.unwrap_or(d.max_requests_jitter);
        if jitter > MOST_REQUESTS_JITTER {
            return Err(format!(
                "max-requests-jitter = {jitter}: use at most {MOST_REQUESTS_JITTER}"
            ));
        }
        Ok(Settings {
            pool: PoolConfig {
                instances,
                max_instances,
                min_instances,
                idle_timeout,
                memory_limit,
                queue_timeout: self.queue_timeout.unwrap_or(d.queue_timeout),
                max_queue,
                max_requests: self.max_requests.or(d.max_requests),
                max_requests_jitter: jitter,
            },
            timeout: self.timeout.unwrap_or(defaults.timeout),
            batching: self.batching(defaults.batching.as_ref())?,
        })
    }

    /// Batching from these keys over the host's: a model's
    /// `max-batch-size` turns it on (2 or more) or off (0 or 1); its delay
    /// and preferred sizes apply to whichever maximum it gets.
    fn batching(&self, host: Option<&BatchConfig>) -> Result<Option<BatchConfig>, String> {
        let max = match self.max_batch_size {
            Some(n) => n,
            None => host.map_or(0, |h| h.max_batch_size),
        };
        let delay = self.max_queue_delay();
        let preferred = self.preferred_batch_sizes();
        if max <= 1 {
            if delay.is_some() || preferred.is_some() {
                return Err(
                    "max-queue-delay and preferred-batch-sizes need max-batch-size = 2 or more"
                        .into(),
                );
            }
            return Ok(None);
        }
        if max > MOST_BATCH_ROWS {
            return Err(format!(
                "max-batch-size = {max}: use 2 to {MOST_BATCH_ROWS} (0: no batching)"
            ));
        }
        let max_queue_delay = delay
            .or(host.map(|h| h.max_queue_delay))
            .unwrap_or(Duration::ZERO);
        if max_queue_delay > LONGEST_QUEUE_DELAY {
            return Err(format!(
                "max-queue-delay = {max_queue_delay:?}: use at most {LONGEST_QUEUE_DELAY:?}; \
                 it is added to the latency of a request that waits for batch-mates"
            ));
        }
        let mut preferred_batch_sizes = preferred
            .or(host.map(|h| h.preferred_batch_sizes.clone()))
            .unwrap_or_default();
        if let Some(bad) = preferred_batch_sizes.iter().find(|&&n| n == 0 || n > max) {
            return Err(format!(
                "preferred-batch-sizes has {bad}: each must be from 1 to max-batch-size = {max}"
            ));
        }
        preferred_batch_sizes.sort_unstable();
        preferred_batch_sizes.dedup();
        Ok(Some(BatchConfig {
            max_batch_size: max,
            max_queue_delay,
            preferred_batch_sizes,
        }))
    }
}

impl ModelSettings {
    /// Instances at start, the most, and the elastic minimum if any. A model
    /// that sets only `instances` gets a fixed pool even on an elastic host;
    /// one that sets `min-instances` or `max-instances` (or inherits them)
    /// gets an elastic one, which starts at its minimum.
    fn pool_size(&self, d: &PoolConfig) -> Result<(usize, usize, Option<usize>), String> {
        let fixed_here = self.instances().is_some()
            && self.min_instances.is_none()
            && self.max_instances.is_none();
        let host_elastic = d.min_instances.is_some();
        let elastic = !fixed_here
            && (self.min_instances.is_some() || self.max_instances.is_some() || host_elastic);
        if !elastic {
            let instances = self.instances().unwrap_or(d.instances);
            if instances == 0 || instances > MOST_INSTANCES {
                return Err(format!(
                    "instances = {instances}: use 1 to {MOST_INSTANCES}, or min-instances = 0 \
                     to scale to zero"
                ));
            }
            // A model sized explicitly may grow to twice that, as TTIN does
            // for the host's own count.
            let max = match self.instances() {
                Some(n) => n * 2,
                None => d.max_instances.max(instances),
            };
            return Ok((instances, max, None));
        }
        let min = self.min_instances.or(d.min_instances).unwrap_or(1);
        let max = self
            .max_instances
            .or(host_elastic.then_some(d.max_instances))
            .unwrap_or_else(|| self.instances().unwrap_or(d.instances).max(min).max(1));
        if max == 0 || max > MOST_INSTANCES {
            return Err(format!("max-instances = {max}: use 1 to {MOST_INSTANCES}"));
        }
        if min > max {
            return Err(format!(
                "min-instances = {min} is more than max-instances = {max}"
            ));
        }
        let start = match self.instances() {
            Some(n) if !(min..=max).contains(&n) => {
                return Err(format!(
                    "instances = {n} is outside min-instances = {min} to max-instances = {max}: \
                     an elastic pool starts with `instances` (default: its minimum)"
                ));
            }
            Some(n) => n,
            None => min,
        };
        Ok((start, max, Some(min)))
    }
}

/// The most instances one model may have (the host's budget decides how
/// many fit).
const MOST_INSTANCES: usize = 16384;

/// The most requests one model may keep waiting for an instance.
const MOST_QUEUED: usize = 1 << 20;

/// The most extra requests `max-requests-jitter` may add.
const MOST_REQUESTS_JITTER: u64 = 1 << 40;

/// The most rows one batched call may have.
const MOST_BATCH_ROWS: usize = 4096;

/// The longest a batch may hold an instance waiting for requests.
const LONGEST_QUEUE_DELAY: Duration = Duration::from_secs(1);

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

/// A queue delay: a string as `--max-queue-delay` takes it, or a number
/// of microseconds (as Triton's `max_queue_delay_microseconds`).
fn micros<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Delay {
        Micros(u64),
        Text(String),
    }
    match Option::<Delay>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Delay::Micros(us)) => Ok(Some(Duration::from_micros(us))),
        Some(Delay::Text(text)) => parse_queue_delay(&text)
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
mod tests;
