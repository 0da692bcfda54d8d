//! gRPC messages ↔ the contract's tensors and the model's description.
//!
//! An input comes either raw (`raw_input_contents`, one entry per input,
//! little-endian as the contract keeps it) or typed (`contents`, a repeated
//! field per datatype). Outputs answer in the form the inputs came in: raw
//! when the request was raw, as Triton always answers, typed otherwise
//! (raw again if an output is FP16, which has no typed field). Everything
//! past the tensors (which inputs, their specs, the parameters, the
//! requested outputs) is checked by [`Inference::new`], as for HTTP.

use bytes::Bytes;
use serde_json::{Number, Value};

use super::proto::infer_parameter::ParameterChoice;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::*;
use crate::core::error::Error;
use crate::core::protocol::{
    self, CLASSIFICATION, Given, Inference, Parts, Wanted, bytes_elements, check_count,
    input_datatype, raw_count,
};
use crate::edge::triton;
use crate::lifecycle::residency::Described;
use crate::lifecycle::served::ServedModel;
use crate::runtime::contract::{Datatype, Metadata, Tensor, TensorSpec};

/// Decodes an infer request; the flag says whether it came raw.
pub fn decode(request: ModelInferRequest, metadata: &Metadata) -> Result<(Inference, bool), Error> {
    let raw = !request.raw_input_contents.is_empty();
    if raw && request.raw_input_contents.len() != request.inputs.len() {
        return Err(Error::bad_input(format!(
            "the request has {} inputs but {} raw_input_contents; send one per input, in order",
            request.inputs.len(),
            request.raw_input_contents.len()
        )));
    }
    let mut contents = request.raw_input_contents.into_iter();
    let mut given = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        given.push(input_tensor(input, contents.next())?);
    }
    let outputs = (!request.outputs.is_empty()).then(|| {
        request
            .outputs
            .into_iter()
            .map(|mut output| Wanted {
                binary: raw,
                classification: output.parameters.remove(CLASSIFICATION).map(value),
                name: output.name,
            })
            .collect()
    });
    let parts = Parts {
        id: (!request.id.is_empty()).then_some(request.id),
        given,
        outputs,
        binary_outputs: raw,
        parameters: request
            .parameters
            .into_iter()
            .map(|(name, parameter)| (name, value(parameter)))
            .collect(),
    };
    Ok((Inference::new(parts, metadata)?, raw))
}

fn input_tensor(input: InferInputTensor, raw: Option<Bytes>) -> Result<Given, Error> {
    let name = input.name;
    let datatype = input_datatype(&name, &input.datatype)?;
    let shape = input
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| {
            Error::bad_input(format!(
                "input {name:?} has shape {:?}; dimensions cannot be negative",
                input.shape
            ))
        })?;
    let (data, count) = match (raw, input.contents) {
        (Some(bytes), None) => {
            let count = raw_count(&name, &bytes, datatype)?;
            (Vec::from(bytes), count)
        }
        (None, Some(contents)) => typed_input(&name, datatype, contents)?,
        (Some(_), Some(_)) => {
            return Err(Error::bad_input(format!(
                "input {name:?} has contents but the request has raw_input_contents; send one"
            )));
        }
        (None, None) => {
            return Err(Error::bad_input(format!(
                "input {name:?} has no contents (and the request no raw_input_contents)"
            )));
        }
    };
    check_count(&name, &shape, count)?;
    Ok(Given {
        name,
        tensor: Tensor {
            datatype,
            shape,
            data,
        },
    })
}

/// Typed contents as the contract's little-endian bytes, and how many
/// elements they hold. Narrow integers are checked to fit.
fn typed_input(
    name: &str,
    datatype: Datatype,
    c: InferTensorContents,
) -> Result<(Vec<u8>, u64), Error> {
    let misfit = |index: usize, value: &dyn std::fmt::Display| {
        Error::bad_input(format!(
            "input {name:?}: element {index} ({value}) does not fit {datatype}"
        ))
    };
    macro_rules! narrow {
        ($values:expr, $ty:ty) => {{
            let mut data = Vec::with_capacity($values.len() * size_of::<$ty>());
            for (index, &v) in $values.iter().enumerate() {
                let v = <$ty>::try_from(v).map_err(|_| misfit(index, &v))?;
                data.extend_from_slice(&v.to_le_bytes());
            }
            (data, $values.len())
        }};
    }
    let (data, count) = match datatype {
        Datatype::Bool => (
            c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
            c.bool_contents.len(),
        ),
        Datatype::Int8 => narrow!(c.int_contents, i8),
        Datatype::Int16 => narrow!(c.int_contents, i16),
        Datatype::Int32 => narrow!(c.int_contents, i32),
        Datatype::Int64 => narrow!(c.int64_contents, i64),
        Datatype::Uint8 => narrow!(c.uint_contents, u8),
        Datatype::Uint16 => narrow!(c.uint_contents, u16),
        Datatype::Uint32 => narrow!(c.uint_contents, u32),
        Datatype::Uint64 => narrow!(c.uint64_contents, u64),
        Datatype::Fp32 => narrow!(c.fp32_contents, f32),
        Datatype::Fp64 => narrow!(c.fp64_contents, f64),
        Datatype::Bytes => {
            let mut data = Vec::new();
            for element in &c.bytes_contents {
                let len = u32::try_from(element.len()).map_err(|_| {
                    Error::bad_input(format!("input {name:?}: an element is over 4 GiB"))
                })?;
                data.extend_from_slice(&len.to_le_bytes());
                data.extend_from_slice(element);
            }
            (data, c.bytes_contents.len())
        }
        Datatype::Fp16 => {
            return Err(Error::bad_input(format!(
                "input {name:?} is FP16, which has no typed contents: send it in \
                 raw_input_contents"
            )));
        }
    };
    Ok((data, count as u64))
}

/// The infer response: the outputs the client asked for (all if it named
/// none), in the model's order, within `limit` bytes (`--max-response`).
/// `outputs` are checked ([`protocol::check_outputs`]): output i takes the
/// name the metadata declares i-th.
pub fn encode(
    served: &ServedModel,
    inference: &Inference,
    outputs: Vec<crate::runtime::contract::Tensor>,
    raw: bool,
    limit: usize,
) -> Result<ModelInferResponse, Error> {
    let selected: Vec<(&str, Tensor)> = served
        .model
        .metadata
        .outputs
        .iter()
        .zip(outputs)
        .filter(|(spec, _)| {
            inference.outputs.is_none() || inference.requested(&spec.name).is_some()
        })
        .map(|(spec, t)| (spec.name.as_str(), t))
        .collect();
    let raw = raw || selected.iter().any(|(_, t)| t.datatype == Datatype::Fp16);
    let mut response = ModelInferResponse {
        model_name: served.name.clone(),
        model_version: served.version.clone(),
        id: inference.id.clone().unwrap_or_default(),
        parameters: inference
            .parameters
            .iter()
            .map(|(name, v)| (name.clone(), parameter(v)))
            .collect(),
        outputs: Vec::with_capacity(selected.len()),
        raw_output_contents: Vec::new(),
    };
    for (name, tensor) in selected {
        let contents = (!raw).then(|| typed_output(&tensor));
        response.outputs.push(InferOutputTensor {
            name: name.into(),
            datatype: tensor.datatype.oip_name().into(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            parameters: Default::default(),
            contents,
        });
        if raw {
            response.raw_output_contents.push(Bytes::from(tensor.data));
        }
    }
    if prost::Message::encoded_len(&response) > limit {
        return Err(protocol::too_large(limit));
    }
    Ok(response)
}

/// An output's elements in the typed field of its datatype (not FP16).
fn typed_output(tensor: &Tensor) -> InferTensorContents {
    fn le<const N: usize, T>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
        data.chunks_exact(N)
            .map(|e| from(e.try_into().expect("chunks of N")))
            .collect()
    }
    let data = &tensor.data;
    let mut c = InferTensorContents::default();
    match tensor.datatype {
        Datatype::Bool => c.bool_contents = data.iter().map(|&b| b != 0).collect(),
        Datatype::Int8 => c.int_contents = data.iter().map(|&b| i32::from(b as i8)).collect(),
        Datatype::Int16 => c.int_contents = le(data, |e| i32::from(i16::from_le_bytes(e))),
        Datatype::Int32 => c.int_contents = le(data, i32::from_le_bytes),
        Datatype::Int64 => c.int64_contents = le(data, i64::from_le_bytes),
        Datatype::Uint8 => c.uint_contents = data.iter().map(|&b| u32::from(b)).collect(),
        Datatype::Uint16 => c.uint_contents = le(data, |e| u32::from(u16::from_le_bytes(e))),
        Datatype::Uint32 => c.uint_contents = le(data, u32::from_le_bytes),
        Datatype::Uint64 => c.uint64_contents = le(data, u64::from_le_bytes),
        Datatype::Fp32 => c.fp32_contents = le(data, f32::from_le_bytes),
        Datatype::Fp64 => c.fp64_contents = le(data, f64::from_le_bytes),
        Datatype::Bytes => {
            c.bytes_contents = bytes_elements(data)
                .flatten()
                .map(Bytes::copy_from_slice)
                .collect();
        }
        Datatype::Fp16 => unreachable!("FP16 outputs go raw"),
    }
    c
}

/// A gRPC parameter as the JSON value HTTP would carry.
fn value(parameter: InferParameter) -> Value {
    match parameter.parameter_choice {
        None => Value::Null,
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
        Some(ParameterChoice::Int64Param(n)) => Value::from(n),
        Some(ParameterChoice::Uint64Param(n)) => Value::from(n),
        Some(ParameterChoice::DoubleParam(x)) => {
            Number::from_f64(x).map_or(Value::Null, Value::Number)
        }
        Some(ParameterChoice::StringParam(s)) => Value::String(s),
    }
}

/// A JSON parameter value as a gRPC parameter (echoed in the response).
fn parameter(value: &Value) -> InferParameter {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ParameterChoice::Int64Param(i),
            (None, Some(u)) => ParameterChoice::Uint64Param(u),
            _ => ParameterChoice::DoubleParam(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        other => ParameterChoice::StringParam(other.to_string()),
    };
    InferParameter {
        parameter_choice: Some(choice),
    }
}

/// `ModelMetadata`: the name and version the client addresses.
pub fn model_metadata(served: &Described) -> ModelMetadataResponse {
    let specs = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|s| TensorMetadata {
                name: s.name.clone(),
                datatype: s.datatype.oip_name().into(),
                shape: s.shape.clone(),
            })
            .collect()
    };
    let meta = &served.metadata;
    ModelMetadataResponse {
        name: served.name.clone(),
        versions: vec![served.version.clone()],
        platform: "wasm-host".into(),
        inputs: specs(&meta.inputs),
        outputs: specs(&meta.outputs),
    }
}

/// `ModelConfig`: Triton's configuration, as `GET /v2/models/{m}/config`
/// reports it ([`triton::config`]).
pub fn model_config(served: &Described) -> ModelConfig {
    let data_type =
        |d: Datatype| DataType::from_str_name(triton::config_type(d)).unwrap_or_default() as i32;
    let meta = &served.metadata;
    // A model that batches: dims without the batch dimension, as Triton.
    let skip = usize::from(served.settings.batching.is_some());
    let version_policy = served.version.parse().ok().map(|v| ModelVersionPolicy {
        policy_choice: Some(model_version_policy::PolicyChoice::Specific(
            model_version_policy::Specific { versions: vec![v] },
        )),
    });
    ModelConfig {
        name: served.name.clone(),
        platform: "wasm-host".into(),
        backend: "wasm-host".into(),
        version_policy,
        max_batch_size: triton::max_batch_size(&served.settings) as i32,
        input: meta
            .inputs
            .iter()
            .map(|s| ModelInput {
                name: s.name.clone(),
                data_type: data_type(s.datatype),
                dims: s.shape[skip..].to_vec(),
            })
            .collect(),
        output: meta
            .outputs
            .iter()
            .map(|s| ModelOutput {
                name: s.name.clone(),
                data_type: data_type(s.datatype),
                dims: s.shape[skip..].to_vec(),
            })
            .collect(),
        dynamic_batching: served
            .settings
            .batching
            .as_ref()
            .map(|b| ModelDynamicBatching {
                preferred_batch_size: b.preferred_batch_sizes.iter().map(|&n| n as i32).collect(),
                max_queue_delay_microseconds: b.max_queue_delay.as_micros() as u64,
            }),
        instance_group: vec![ModelInstanceGroup {
            name: served.name.clone(),
            count: served.instances as i32,
            kind: model_instance_group::Kind::Cpu as i32,
        }],
        parameters: triton::config_parameters(&served.settings)
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_owned(),
                    ModelParameter {
                        string_value: value,
                    },
                )
            })
            .collect(),
    }
}
