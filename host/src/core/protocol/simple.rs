//! The simple form of `/predict`: nested JSON arrays in, outputs by name
//! out, with the instance that served the request.

use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::elements::{Elements, element_count, encode_elements, json_size_floor};
use super::{
    Capped, Given, Inference, describe_specs, order_and_check, parse_json, too_large, unknown_input,
};
use crate::core::error::Error;
use crate::runtime::contract::{Metadata, Tensor};

#[derive(Deserialize)]
struct PredictRequest {
    inputs: Value,
}

/// Decodes the simple `/predict` form. A bare array feeds the model's only
/// input; an object maps input names to nested arrays. Shapes are read from
/// the nesting, and one example without its batch dimension (`[64 floats]`
/// for a `[-1, 64]` input) is taken as a batch of one.
pub fn decode_predict(body: &[u8], metadata: &Metadata) -> Result<Inference, Error> {
    let request: PredictRequest = parse_json(body, "predict request")?;
    let named: Vec<(String, &Value)> = match &request.inputs {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        value @ Value::Array(_) => match metadata.inputs.as_slice() {
            [only] => vec![(only.name.clone(), value)],
            specs => {
                return Err(Error::bad_input(format!(
                    "model {} takes {} inputs ({}): send {{\"inputs\": {{\"name\": [...], ...}}}}",
                    metadata.name,
                    specs.len(),
                    describe_specs(specs)
                )));
            }
        },
        _ => {
            return Err(Error::bad_input(
                "\"inputs\" must be an array (for a single-input model) or an object of named arrays",
            ));
        }
    };
    let mut given = Vec::with_capacity(named.len());
    for (name, value) in named {
        let Some(spec) = metadata.inputs.iter().find(|s| s.name == name) else {
            return Err(unknown_input(&name, metadata));
        };
        let mut shape = nested_shape(value, &name)?;
        if shape.len() + 1 == spec.shape.len() && matches!(spec.shape.first(), Some(-1 | 1)) {
            shape.insert(0, 1);
        }
        let data = encode_elements(value, spec.datatype, &name)?;
        given.push(Given {
            name,
            tensor: Tensor {
                datatype: spec.datatype,
                shape,
                data: data.bytes,
            },
        });
    }
    Ok(Inference {
        id: None,
        inputs: order_and_check(given, metadata)?.into(),
        outputs: None,
        binary_outputs: false,
        parameters: serde_json::Map::new(),
        timeout: None,
    })
}

/// The shape of a rectangular nest of JSON arrays.
fn nested_shape(value: &Value, name: &str) -> Result<Vec<u64>, Error> {
    let mut shape = Vec::new();
    let mut level = value;
    while let Value::Array(items) = level {
        shape.push(items.len() as u64);
        match items.first() {
            Some(first) => level = first,
            None => break,
        }
    }
    // Every sibling must have the same shape as the first one.
    fn check(value: &Value, shape: &[u64]) -> bool {
        match (value, shape.split_first()) {
            (Value::Array(items), Some((&len, rest))) => {
                items.len() as u64 == len && items.iter().all(|item| check(item, rest))
            }
            (Value::Array(_), None) => false,
            (_, Some(_)) => false,
            (_, None) => true,
        }
    }
    if !check(value, &shape) {
        return Err(Error::bad_input(format!(
            "input {name:?} is ragged: every row must have the same length"
        )));
    }
    Ok(shape)
}

/// The `/predict` response: outputs by name, nested by shape; `prediction`
/// when the model has a `label` output (a scalar for one example, else a list);
/// and the id of the instance that served it. At most `limit` bytes.
/// `outputs` are checked ([`super::check_outputs`]): output i takes the name
/// `metadata` declares i-th.
pub fn encode_predict_response(
    metadata: &Metadata,
    outputs: &[Tensor],
    instance: u64,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    struct Outputs<'a>(&'a Metadata, &'a [Tensor]);
    impl Serialize for Outputs<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.1.len()))?;
            for (spec, t) in self.0.outputs.iter().zip(self.1) {
                let nested = Elements {
                    tensor: t,
                    nested: true,
                };
                map.serialize_entry(&spec.name, &nested)?;
            }
            map.end()
        }
    }
    struct Prediction<'a>(&'a Tensor);
    impl Serialize for Prediction<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let flat = Elements {
                tensor: self.0,
                nested: false,
            };
            if element_count(&self.0.shape) != Some(1) {
                return flat.serialize(serializer);
            }
            // One example: the bare element rather than a list of one.
            match serde_json::to_value(flat).map_err(serde::ser::Error::custom)? {
                Value::Array(mut one) if one.len() == 1 => one.pop().unwrap().serialize(serializer),
                other => other.serialize(serializer),
            }
        }
    }
    #[derive(serde::Serialize)]
    struct Response<'a> {
        model: &'a str,
        instance: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        prediction: Option<Prediction<'a>>,
        outputs: Outputs<'a>,
    }
    let label = metadata
        .outputs
        .iter()
        .zip(outputs)
        .find_map(|(spec, t)| (spec.name == "label").then_some(t));
    let estimate = outputs.iter().chain(label).fold(256u64, |sum, t| {
        sum.saturating_add(json_size_floor(t, true))
    });
    if estimate > limit as u64 {
        return Err(too_large(limit));
    }
    let mut body = Capped::new(estimate, limit);
    body.json(&Response {
        model: &metadata.name,
        instance,
        prediction: label.map(Prediction),
        outputs: Outputs(metadata, outputs),
    })?;
    Ok(body.body)
}
