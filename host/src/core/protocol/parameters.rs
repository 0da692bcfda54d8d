//! The request parameters wasm-host acts on or refuses, whatever the
//! protocol: Triton's `timeout` (µs) shortens the request's deadline; its
//! sequence and priority parameters, which wasm-host cannot honour, are a
//! 400 that says so rather than being passed on and silently ignored; an
//! output's `classification` asks for the top k classes.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{RequestedOutput, Wanted, describe_specs};
use crate::core::error::Error;
use crate::runtime::contract::{Datatype, Metadata};

/// The requested output parameter of Triton's classification extension
/// (tritonclient's `InferRequestedOutput(name, class_count=k)`).
pub(crate) const CLASSIFICATION: &str = "classification";

/// Parameters Triton gives meaning to and wasm-host cannot honour. Each is
/// accepted only at its "off" value (0, false, ""), which some clients send
/// by default.
const UNSUPPORTED: [(&str, &str); 4] = [
    ("sequence_id", SEQUENCES),
    ("sequence_start", SEQUENCES),
    ("sequence_end", SEQUENCES),
    (
        "priority",
        "wasm-host serves every request of a model in arrival order",
    ),
];

const SEQUENCES: &str = "wasm-host has no sequence batcher and keeps no state between requests";

/// Takes the parameters wasm-host acts on out of a request's parameters,
/// leaving those the model gets, and returns the client's deadline.
pub(crate) fn take_host_parameters(
    parameters: &mut Map<String, Value>,
) -> Result<Option<Duration>, Error> {
    for (name, why) in UNSUPPORTED {
        match parameters.remove(name) {
            Some(value) if !is_off(&value) => {
                return Err(Error::bad_input(format!(
                    "parameter {name:?} ({value}) is not supported: {why}; leave it out"
                )));
            }
            _ => {}
        }
    }
    let Some(value) = parameters.remove("timeout") else {
        return Ok(None);
    };
    match value.as_u64() {
        // Triton's "no timeout".
        Some(0) => Ok(None),
        Some(micros) => Ok(Some(Duration::from_micros(micros))),
        None => Err(Error::bad_input(format!(
            "parameter \"timeout\" must be a whole number of microseconds, not {value}"
        ))),
    }
}

fn is_off(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Checks an output a request names: the model declares it, and a
/// classification asks for a whole number of classes of a numeric output.
/// `classification: 0` is Triton's "no classification".
pub(crate) fn requested_output(
    wanted: Wanted,
    metadata: &Metadata,
) -> Result<RequestedOutput, Error> {
    let Some(spec) = metadata.outputs.iter().find(|s| s.name == wanted.name) else {
        return Err(Error::bad_input(format!(
            "model {} has no output {:?}; its outputs are {}",
            metadata.name,
            wanted.name,
            describe_specs(&metadata.outputs)
        )));
    };
    let classification = match wanted.classification {
        None => None,
        Some(value) => match value.as_u64() {
            Some(0) => None,
            Some(_) if matches!(spec.datatype, Datatype::Bytes | Datatype::Bool) => {
                return Err(Error::bad_input(format!(
                    "output {:?} is {}: classification ranks numbers, so it needs a numeric output",
                    wanted.name, spec.datatype
                )));
            }
            Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
            None => {
                return Err(Error::bad_input(format!(
                    "output {:?}: parameter \"classification\" must be a whole number of \
                     classes, not {value}",
                    wanted.name
                )));
            }
        },
    };
    Ok(RequestedOutput {
        name: wanted.name,
        binary: wanted.binary,
        classification,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: serde_json::Value) -> Map<String, Value> {
        json.as_object().unwrap().clone()
    }

    #[test]
    fn timeout_is_taken_in_microseconds_and_zero_means_none() {
        let mut p = params(serde_json::json!({"timeout": 1500, "scale": 2}));
        let timeout = take_host_parameters(&mut p).unwrap();
        assert_eq!(timeout, Some(Duration::from_micros(1500)));
        assert_eq!(
            p,
            params(serde_json::json!({"scale": 2})),
            "the model gets the rest"
        );
        let mut p = params(serde_json::json!({"timeout": 0}));
        assert_eq!(take_host_parameters(&mut p).unwrap(), None);
        let mut p = params(serde_json::json!({"timeout": -5}));
        let err = take_host_parameters(&mut p).unwrap_err();
        assert!(err.message.contains("microseconds"), "{}", err.message);
    }

    #[test]
    fn sequence_and_priority_are_refused_unless_off() {
        for (name, value) in [
            ("sequence_id", serde_json::json!(7)),
            ("sequence_id", serde_json::json!("abc")),
            ("sequence_start", serde_json::json!(true)),
            ("priority", serde_json::json!(1)),
        ] {
            let mut p = Map::new();
            p.insert(name.into(), value);
            let err = take_host_parameters(&mut p).unwrap_err();
            assert!(err.message.contains("not supported"), "{}", err.message);
            assert!(err.message.contains(name), "{}", err.message);
        }
        let mut p = params(serde_json::json!(
            {"sequence_id": 0, "sequence_start": false, "sequence_end": false, "priority": 0}
        ));
        assert_eq!(take_host_parameters(&mut p).unwrap(), None);
        assert!(p.is_empty(), "{p:?}");
    }
}
