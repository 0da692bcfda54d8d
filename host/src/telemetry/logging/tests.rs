use super::*;

fn pairs(list: &[(&str, LogValue)]) -> Vec<(String, LogValue)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[test]
fn an_update_takes_booleans_a_verbose_level_and_a_format() {
    let update = LogUpdate::parse(pairs(&[
        ("log_info", LogValue::Bool(false)),
        ("log_verbose_level", LogValue::Uint(2)),
        ("log_format", LogValue::Text("ISO8601".into())),
        ("log_error", LogValue::Unset),
    ]))
    .unwrap();
    assert_eq!(
        update,
        LogUpdate {
            log_info: Some(false),
            log_verbose_level: Some(2),
            log_format: Some(LogLineFormat::Iso8601),
            ..LogUpdate::default()
        }
    );
    let json = LogUpdate::from_json(&json!({"log_warning": "false", "log_verbose_level": 1}));
    assert_eq!(json.unwrap().log_warning, Some(false));
}

#[test]
fn a_bad_key_or_value_is_refused_with_a_message_naming_it() {
    let cases = [
        (
            "log_info",
            LogValue::Uint(1),
            "log_info must be true or false",
        ),
        (
            "log_verbose_level",
            LogValue::Text("-1".into()),
            "log_verbose_level must be",
        ),
        (
            "log_verbose_level",
            LogValue::Uint(1 << 40),
            "log_verbose_level must be",
        ),
        (
            "log_format",
            LogValue::Text("xml".into()),
            "log_format must be",
        ),
        (
            "log_file",
            LogValue::Text("/etc/x".into()),
            "never writes to a path",
        ),
        (
            "log_level",
            LogValue::Bool(true),
            "unknown log setting \"log_level\"",
        ),
    ];
    for (key, value, needle) in cases {
        let err = LogUpdate::parse(pairs(&[(key, value)])).unwrap_err();
        assert!(err.contains(needle), "{key}: {err}");
    }
    assert!(LogUpdate::parse(pairs(&[("log_file", LogValue::Text(String::new()))])).is_ok());
    let many: Vec<_> = (0..MAX_KEYS + 1)
        .map(|_| ("log_info".to_owned(), LogValue::Bool(true)))
        .collect();
    assert!(LogUpdate::parse(many).unwrap_err().contains("at most"));
    assert!(LogUpdate::from_json(&json!([1])).is_err());
}

#[test]
fn levels_stay_ordered_or_the_update_is_refused() {
    let now = LogSettings::default();
    let off = |info, warning, error| LogUpdate {
        log_info: Some(info),
        log_warning: Some(warning),
        log_error: Some(error),
        ..LogUpdate::default()
    };
    assert!(now.updated(&off(true, false, true)).is_err());
    assert!(now.updated(&off(false, true, false)).is_err());
    for (info, warning, error, level) in [
        (true, true, true, "info"),
        (false, true, true, "warn"),
        (false, false, true, "error"),
        (false, false, false, "off"),
    ] {
        let next = now.updated(&off(info, warning, error)).unwrap();
        assert_eq!(next.directives(), vec![level]);
    }
}

#[test]
fn the_verbose_level_turns_on_the_hosts_debug_then_trace_lines() {
    let at = |log_verbose_level| LogSettings {
        log_verbose_level,
        ..LogSettings::default()
    };
    assert_eq!(at(0).directives(), vec!["info"]);
    assert_eq!(at(1).directives(), vec!["info", "wasm_host=debug"]);
    assert_eq!(at(7).directives(), vec!["info", "wasm_host=trace"]);
    let shown = filter("hyper=debug", &at(1)).to_string();
    for part in ["hyper=debug", "wasm_host=debug", "info"] {
        assert!(shown.contains(part), "{shown}");
    }
}

#[test]
fn applying_swaps_a_filter_in_and_reports_the_settings() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let control = LogControl::new("info", move |f: EnvFilter| {
        record.lock().unwrap().push(f.to_string());
        Ok(())
    });
    let update = LogUpdate {
        log_info: Some(false),
        log_verbose_level: Some(1),
        ..LogUpdate::default()
    };
    let now = control.apply(&update).unwrap();
    assert!(!now.log_info && now.log_verbose_level == 1);
    assert_eq!(control.settings(), now);
    let filters = seen.lock().unwrap().clone();
    assert_eq!(filters.len(), 1);
    assert!(filters[0].contains("wasm_host=debug") && filters[0].contains("warn"));
    assert_eq!(now.to_json()["log_info"], json!(false));
    assert_eq!(now.to_json()["log_file"], json!(""));
    // A refused update changes nothing.
    let bad = LogUpdate {
        log_error: Some(false),
        ..LogUpdate::default()
    };
    assert!(control.apply(&bad).is_err());
    assert_eq!(control.settings(), now);
}
