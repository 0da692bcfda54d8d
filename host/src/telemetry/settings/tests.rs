use serde_json::{Value, json};

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
