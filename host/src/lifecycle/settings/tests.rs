use super::*;

fn defaults() -> Settings {
    Settings {
        pool: PoolConfig {
            instances: 4,
            max_instances: 8,
            min_instances: None,
            idle_timeout: Duration::from_secs(60),
            memory_limit: 256 << 20,
            queue_timeout: Duration::from_secs(30),
            max_queue: 1024,
            max_requests: None,
            max_requests_jitter: 0,
        },
        timeout: Duration::from_secs(30),
        batching: None,
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

/// The pool settings a `model.toml` resolves to on a host.
fn pool_of(toml: &str, host: &Settings) -> PoolConfig {
    ModelSettings::from_toml(toml)
        .unwrap()
        .resolve(host)
        .unwrap()
        .pool
}

#[test]
fn min_or_max_instances_make_an_elastic_pool_that_starts_at_its_minimum() {
    let toml =
        ModelSettings::from_toml("min-instances = 0\nmax-instances = 8\nidle-timeout = \"5s\"")
            .unwrap();
    let pool = toml.resolve(&defaults()).unwrap().pool;
    assert_eq!(
        (pool.instances, pool.max_instances, pool.min_instances),
        (0, 8, Some(0))
    );
    assert_eq!(pool.idle_timeout, Duration::from_secs(5));
    // Only a maximum: at least one instance, the host's idle timeout.
    let pool = pool_of("max-instances = 3", &defaults());
    assert_eq!(
        (pool.instances, pool.max_instances, pool.min_instances),
        (1, 3, Some(1))
    );
    assert_eq!(pool.idle_timeout, Duration::from_secs(60));
    // Only a minimum: up to the host's instance count.
    let pool = pool_of("min_instances = 2", &defaults());
    assert_eq!(
        (pool.instances, pool.max_instances, pool.min_instances),
        (2, 4, Some(2))
    );
}

#[test]
fn a_model_that_sets_only_instances_keeps_a_fixed_pool_on_an_elastic_host() {
    let mut host = defaults();
    host.pool.min_instances = Some(0);
    host.pool.instances = 0;
    host.pool.max_instances = 16;
    let inherits = ModelSettings::default().resolve(&host).unwrap().pool;
    assert_eq!(
        (
            inherits.instances,
            inherits.max_instances,
            inherits.min_instances
        ),
        (0, 16, Some(0))
    );
    let fixed = pool_of("instances = 3", &host);
    assert_eq!(
        (fixed.instances, fixed.max_instances, fixed.min_instances),
        (3, 6, None)
    );
    let capped = pool_of("max-instances = 2", &host);
    assert_eq!(
        (capped.instances, capped.max_instances, capped.min_instances),
        (0, 2, Some(0))
    );
}

#[test]
fn contradictory_pool_sizes_are_refused_with_their_names() {
    for (toml, says) in [
        (
            "min-instances = 5\nmax-instances = 2",
            "min-instances = 5 is more than max-instances = 2",
        ),
        ("max-instances = 0", "max-instances = 0"),
        ("max-instances = 20000", "max-instances = 20000"),
        (
            "instances = 9\nmin-instances = 1\nmax-instances = 8",
            "instances = 9 is outside",
        ),
        ("max-instances = 2\nidle-timeout = \"1ms\"", "idle-timeout"),
    ] {
        let err = ModelSettings::from_toml(toml).unwrap().resolve(&defaults());
        assert!(err.as_ref().unwrap_err().contains(says), "{toml}: {err:?}");
    }
}

#[test]
fn batching_keys_and_tritons_dynamic_batching_block_set_a_batch_config() {
    let toml = "max-batch-size = 16\nmax-queue-delay = 500\npreferred-batch-sizes = [8, 4, 8]";
    let batching = ModelSettings::from_toml(toml)
        .unwrap()
        .resolve(&defaults())
        .unwrap()
        .batching
        .unwrap();
    assert_eq!(batching.max_batch_size, 16);
    assert_eq!(batching.max_queue_delay, Duration::from_micros(500));
    assert_eq!(batching.preferred_batch_sizes, vec![4, 8]);
    let triton = ModelSettings::from_json(
        r#"{"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 100,
            "preferred_batch_size": [2], "preserve_ordering": false}}"#,
    )
    .unwrap()
    .resolve(&defaults())
    .unwrap()
    .batching
    .unwrap();
    assert_eq!(
        (
            triton.max_batch_size,
            triton.max_queue_delay,
            triton.preferred_batch_sizes
        ),
        (8, Duration::from_micros(100), vec![2])
    );
    // "2ms" as text; 0 or 1 turns a host's batching off for one model.
    let mut host = defaults();
    host.batching = Some(batching);
    let model = pool_settings("max-queue-delay = \"2ms\"", &host)
        .batching
        .unwrap();
    assert_eq!(
        (model.max_batch_size, model.max_queue_delay),
        (16, Duration::from_millis(2))
    );
    assert_eq!(pool_settings("max-batch-size = 0", &host).batching, None);
    assert_eq!(
        ModelSettings::default()
            .resolve(&defaults())
            .unwrap()
            .batching,
        None
    );
}

fn pool_settings(toml: &str, host: &Settings) -> Settings {
    ModelSettings::from_toml(toml)
        .unwrap()
        .resolve(host)
        .unwrap()
}

#[test]
fn batching_keys_that_cannot_work_are_refused_with_their_names() {
    for (toml, says) in [
        ("max-queue-delay = 100", "need max-batch-size"),
        (
            "max-batch-size = 1\npreferred-batch-sizes = [1]",
            "need max-batch-size",
        ),
        ("max-batch-size = 5000", "max-batch-size = 5000"),
        (
            "max-batch-size = 8\npreferred-batch-sizes = [16]",
            "preferred-batch-sizes has 16",
        ),
        (
            "max-batch-size = 8\nmax-queue-delay = \"5s\"",
            "use at most 1s",
        ),
    ] {
        let err = ModelSettings::from_toml(toml).unwrap().resolve(&defaults());
        assert!(err.as_ref().unwrap_err().contains(says), "{toml}: {err:?}");
    }
}

/// A property test over generated `model.toml`s (fixed seed, so a
/// failure reproduces): hostile numbers, floats, units and types never
/// panic, and whatever resolves is bounded, so no arithmetic on it can
/// overflow later (a deadline, a queue, a pool's growth).
#[test]
fn any_model_toml_resolves_to_bounded_settings_or_a_message_never_a_panic() {
    let keys = [
        "instances",
        "min-instances",
        "max-instances",
        "idle-timeout",
        "memory-limit",
        "timeout",
        "max-queue",
        "queue-timeout",
        "max-requests",
        "max-requests-jitter",
        "version",
        "max-batch-size",
        "max-queue-delay",
    ];
    let values = [
        "0",
        "1",
        "2",
        "-1",
        "1e19",
        "1e20",
        "1e308",
        "-1e20",
        "nan",
        "inf",
        "0.0000001",
        "18446744073709551615",
        "9223372036854775807",
        "4294967296",
        "\"1e20s\"",
        "\"9999999999m\"",
        "\"64MiB\"",
        "\"16EiB\"",
        "\"99999999999TiB\"",
        "\"2s\"",
        "\"500us\"",
        "\"\"",
        "true",
        "[1, 2]",
        "{}",
    ];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut resolved, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let mut toml = String::new();
        let mut used = std::collections::HashSet::new();
        for _ in 0..(next() % 4 + 1) {
            let key = keys[(next() % keys.len() as u64) as usize];
            if used.insert(key) {
                let value = values[(next() % values.len() as u64) as usize];
                toml.push_str(&format!("{key} = {value}\n"));
            }
        }
        let Ok(parsed) = ModelSettings::from_toml(&toml) else {
            refused += 1;
            continue;
        };
        let Ok(settings) = parsed.resolve(&defaults()) else {
            refused += 1;
            continue;
        };
        resolved += 1;
        let week = super::values::LONGEST_DURATION;
        assert!(settings.timeout <= week, "{toml}");
        assert!(settings.pool.queue_timeout <= week, "{toml}");
        assert!(settings.pool.idle_timeout <= week, "{toml}");
        assert!(
            std::time::Instant::now()
                .checked_add(settings.timeout)
                .is_some()
        );
        assert!(settings.pool.max_instances <= MOST_INSTANCES, "{toml}");
        assert!(settings.pool.max_queue <= MOST_QUEUED, "{toml}");
        assert!(settings.pool.memory_limit <= 4 << 30, "{toml}");
        assert!(
            settings.pool.max_requests_jitter <= MOST_REQUESTS_JITTER,
            "{toml}"
        );
    }
    assert!(
        resolved > 100 && refused > 100,
        "{resolved} resolved, {refused} refused"
    );
}

#[test]
fn durations_too_long_to_add_to_a_clock_are_refused_at_load() {
    for toml in [
        "timeout = 1e19",
        "timeout = 1e20",
        "queue-timeout = \"1e20\"",
        "idle-timeout = 99999999999\nmax-instances = 2",
    ] {
        let err = match ModelSettings::from_toml(toml) {
            Err(err) => err,
            Ok(parsed) => parsed.resolve(&defaults()).unwrap_err(),
        };
        assert!(
            err.contains("days") || err.contains("duration"),
            "{toml}: {err}"
        );
    }
}
