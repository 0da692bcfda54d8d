use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::json;

use super::{
    ControlConfig, Drain, bearer, changes_allowed, check_token, constant_time_eq, drain_mode,
    load_config, load_parameters, uploaded,
};
use crate::core::error::Kind;
use crate::core::name::ModelName;
use crate::lifecycle::repository::ModelControl;
use crate::lifecycle::settings::ModelSettings;

fn control(mode: ModelControl, token: Option<&str>) -> ControlConfig {
    ControlConfig {
        mode,
        token: token.map(str::to_owned),
        repository: None,
    }
}

#[test]
fn without_a_token_every_call_is_allowed_and_with_one_only_the_right_bearer() {
    let open = control(ModelControl::Explicit, None);
    assert!(check_token(&open, None).is_ok());
    assert!(check_token(&open, Some("anything")).is_ok());
    let guarded = control(ModelControl::Explicit, Some("s3cret-token"));
    assert!(check_token(&guarded, Some("s3cret-token")).is_ok());
    for given in [None, Some(""), Some("s3cret"), Some("S3CRET-TOKEN")] {
        let err = check_token(&guarded, given).unwrap_err();
        assert_eq!(err.kind, Kind::Unauthenticated, "{given:?}");
        assert!(
            err.message.contains("Authorization: Bearer"),
            "{}",
            err.message
        );
    }
}

#[test]
fn the_token_is_read_from_a_bearer_authorization_header_only() {
    let mut headers = HeaderMap::new();
    assert_eq!(bearer(&headers), None);
    headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
    assert_eq!(bearer(&headers), Some("abc"));
    headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
    assert_eq!(bearer(&headers), None);
    headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
    assert_eq!(bearer(&headers), None);
}

#[test]
fn loads_unloads_and_drains_are_forbidden_unless_model_control_is_on() {
    let err = changes_allowed(&control(ModelControl::None, None)).unwrap_err();
    assert_eq!(err.kind, Kind::Forbidden);
    assert!(
        err.message.contains("--model-control explicit"),
        "{}",
        err.message
    );
    assert!(changes_allowed(&control(ModelControl::Explicit, None)).is_ok());
    assert!(changes_allowed(&control(ModelControl::Poll, None)).is_ok());
}

#[test]
fn a_load_takes_its_config_and_base64_files_and_ignores_other_parameters() {
    let body = json!({ "parameters": {
        "config": "{\"instances\": 3}",
        "file:1/model.wasm": "AGFzbQ==",
        "something_else": 7,
    }});
    let parameters = load_parameters(&body).unwrap();
    assert_eq!(parameters.config, Some(json!("{\"instances\": 3}")));
    assert_eq!(
        parameters.files,
        vec![("1/model.wasm".to_owned(), b"\0asm".to_vec())]
    );
    let empty = load_parameters(&json!({})).unwrap();
    assert!(empty.config.is_none() && empty.files.is_empty());
}

#[test]
fn a_file_parameter_that_is_not_a_base64_string_is_a_400_naming_it() {
    for (value, needle) in [
        (json!(42), "file:m.wasm must be a base64 string"),
        (json!("not base64!"), "file:m.wasm is not base64"),
    ] {
        let body = json!({ "parameters": { "file:m.wasm": value } });
        let err = load_parameters(&body).err().expect("refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains(needle), "{}", err.message);
    }
}

#[test]
fn a_load_config_is_json_in_a_string_or_an_object_and_a_bad_one_is_a_400() {
    assert_eq!(load_config(None).unwrap(), ModelSettings::default());
    let from_string = load_config(Some(json!("{\"instances\": 3}"))).unwrap();
    let from_object = load_config(Some(json!({ "instances": 3 }))).unwrap();
    assert_eq!(from_string, from_object);
    assert_ne!(from_string, ModelSettings::default());
    for bad in [json!("{not json"), json!({ "instances": "many" })] {
        let err = load_config(Some(bad.clone())).unwrap_err();
        assert_eq!(err.kind, Kind::BadInput, "{bad}");
        assert!(
            err.message.starts_with("parameters.config: "),
            "{}",
            err.message
        );
    }
}

#[test]
fn an_upload_needs_exactly_one_component_and_never_native_code() {
    let name = ModelName::parse("m").unwrap();
    let component = b"\0asm\x0d\0\x01\0".to_vec();
    let settings = ModelSettings::default;
    let refused = |files: Vec<(&str, Vec<u8>)>| {
        let files = files.into_iter().map(|(p, b)| (p.to_owned(), b)).collect();
        let err = uploaded(&name, files, settings()).err().expect("refused");
        assert_eq!(err.kind, Kind::BadInput);
        err.message
    };
    let elf = refused(vec![("1/model.cwasm", b"\x7fELF....".to_vec())]);
    assert!(elf.contains("native code"), "{elf}");
    let none = refused(vec![("README", b"hello".to_vec())]);
    assert!(none.contains("none of the file: parameters"), "{none}");
    let two = refused(vec![
        ("a.wasm", component.clone()),
        ("b.wasm", component.clone()),
    ]);
    assert!(two.starts_with("2 file: parameters"), "{two}");
    // Other files ride along; the component's folder names its version.
    let files = vec![
        ("1/model.wasm".to_owned(), component.clone()),
        ("1/notes.txt".to_owned(), b"notes".to_vec()),
    ];
    let request = uploaded(&name, files, settings()).unwrap();
    assert_eq!(request.version.as_deref(), Some("1"));
    assert_eq!(request.bytes, component);
    assert!(request.path.is_none() && request.replaces.is_none());
}

#[test]
fn an_uploads_version_is_its_folder_when_that_is_a_number() {
    let name = ModelName::parse("m").unwrap();
    let version = |path: &str| {
        let files = vec![(path.to_owned(), b"\0asm\x0d\0\x01\0".to_vec())];
        uploaded(&name, files, ModelSettings::default())
            .unwrap()
            .version
    };
    assert_eq!(version("12/model.wasm").as_deref(), Some("12"));
    assert_eq!(version("model.wasm"), None);
    assert_eq!(version("v1/model.wasm"), None);
    assert_eq!(version("/model.wasm"), None);
}

#[test]
fn drain_serves_or_refuses_as_asked_and_undrain_always_turns_it_off() {
    assert_eq!(drain_mode(&json!({}), true).unwrap(), Drain::Serve);
    assert_eq!(
        drain_mode(&json!({ "refuse": false }), true).unwrap(),
        Drain::Serve
    );
    assert_eq!(
        drain_mode(&json!({ "refuse": true }), true).unwrap(),
        Drain::Refuse
    );
    assert_eq!(
        drain_mode(&json!({ "refuse": true }), false).unwrap(),
        Drain::Off
    );
    assert_eq!(drain_mode(&json!({}), false).unwrap(), Drain::Off);
    let err = drain_mode(&json!({ "refuse": "yes" }), true).expect_err("refused");
    assert_eq!(err.status, StatusCode::BAD_REQUEST);
    assert!(
        err.message.contains("refuse must be true or false"),
        "{}",
        err.message
    );
}

#[test]
fn tokens_match_only_when_equal_whatever_their_lengths() {
    let token = b"s3cret-token";
    assert!(constant_time_eq(token, token));
    for given in [
        &b""[..],
        b"s",
        b"s3cret-toke",
        b"s3cret-tokeN",
        b"s3cret-token!",
    ] {
        assert!(!constant_time_eq(given, token), "{given:?}");
    }
}
