//! The wire formats: JSON in, tensors out, and back.
//!
//! Two request forms are understood: the Open Inference Protocol's infer
//! request (`/v2/models/{name}/infer`) and the simple form of `/predict`
//! (`{"inputs": [[...]]}` or `{"inputs": {"x": [[...]]}}`). Both are decoded
//! into the contract's tensors and checked against the model's metadata here,
//! so a request with the wrong name, datatype or shape is a 400 that names the
//! mistake, and the model never sees it.

mod classification;
mod elements;
mod oip;
mod parameters;
mod simple;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::core::error::Error;
use crate::runtime::contract::{Datatype, Metadata, Tensor, TensorSpec};

pub use classification::{classify, classify_requested};
pub use elements::{Elements, bytes_elements, check_data, element_count, json_size_floor};
pub use oip::{InferResponse, decode_infer, encode_infer_response, raw_count};
pub(crate) use parameters::CLASSIFICATION;
pub use simple::{decode_predict, encode_predict_response};

/// A decoded, validated inference request.
#[derive(Debug)]
pub struct Inference {
    /// Echoed back in the OIP response.
    pub id: Option<String>,
    /// In the order of `metadata.inputs`; shared, so that a batch can
    /// join them with other requests' without copying them first.
    pub inputs: Arc<[Tensor]>,
    /// Outputs the client asked for; `None` means all of them.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Whether outputs not named in `outputs` come back as binary data
    /// (the request-level `binary_data_output` parameter).
    pub binary_outputs: bool,
    /// Request-level parameters wasm-host does not act on: passed to the
    /// model, and echoed in the response.
    pub parameters: serde_json::Map<String, Value>,
    /// The client's deadline for the request (Triton's `timeout` parameter),
    /// which can only shorten the model's.
    pub timeout: Option<Duration>,
}

/// What a request form has decoded before the checks every form shares.
pub(crate) struct Parts {
    pub id: Option<String>,
    /// The inputs as given, in any order.
    pub given: Vec<Given>,
    pub outputs: Option<Vec<Wanted>>,
    pub binary_outputs: bool,
    pub parameters: serde_json::Map<String, Value>,
}

/// An input as a request names it, before it is checked and put in its
/// place: the contract's tensors carry no names, a tensor is named by its
/// position in the metadata.
pub(crate) struct Given {
    pub name: String,
    pub tensor: Tensor,
}

/// An output as a request names it, before it is checked.
pub(crate) struct Wanted {
    pub name: String,
    pub binary: bool,
    /// The output's `classification` parameter, as given.
    pub classification: Option<Value>,
}

impl Inference {
    /// Checks what every request form must: each declared input given once
    /// and fitting its spec, each requested output declared (and, for
    /// classification, numeric), and the parameters wasm-host acts on or
    /// refuses.
    pub(crate) fn new(parts: Parts, metadata: &Metadata) -> Result<Inference, Error> {
        let mut parameters = parts.parameters;
        let timeout = parameters::take_host_parameters(&mut parameters)?;
        let outputs = match parts.outputs {
            Some(wanted) => Some(
                wanted
                    .into_iter()
                    .map(|w| parameters::requested_output(w, metadata))
                    .collect::<Result<_, _>>()?,
            ),
            None => None,
        };
        Ok(Inference {
            id: parts.id,
            inputs: order_and_check(parts.given, metadata)?.into(),
            outputs,
            binary_outputs: parts.binary_outputs,
            parameters,
            timeout,
        })
    }

    /// The parameters as the contract carries them: names and JSON values
    /// (a string parameter arrives as its bare text).
    pub fn model_parameters(&self) -> Vec<(String, String)> {
        self.parameters
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (name.clone(), value)
            })
            .collect()
    }

    /// The requested output of this name, if the client named outputs.
    pub fn requested(&self, name: &str) -> Option<&RequestedOutput> {
        self.outputs.as_ref()?.iter().find(|o| o.name == name)
    }
}

/// An output the client asked for, and in which form.
#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
    /// Triton's classification extension: the top k classes instead of
    /// the tensor.
    pub classification: Option<usize>,
}

/// An input's datatype from its OIP name.
pub(crate) fn input_datatype(input: &str, name: &str) -> Result<Datatype, Error> {
    Datatype::from_oip_name(name).ok_or_else(|| {
        Error::bad_input(format!(
            "input {input:?} has unknown datatype {name:?}; use one of {}",
            Datatype::ALL.map(Datatype::oip_name).join(", ")
        ))
    })
}

/// Checks that an input's data holds as many elements as its shape says.
pub(crate) fn check_count(input: &str, shape: &[u64], count: u64) -> Result<(), Error> {
    let expected = element_count(shape);
    if expected == Some(count) {
        return Ok(());
    }
    let expected = expected.map_or("more than 2^64".into(), |n| n.to_string());
    Err(Error::bad_input(format!(
        "input {input:?} has shape {shape:?} ({expected} elements) but its data holds {count}"
    )))
}

pub(crate) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|err| {
        let kind = if err.is_syntax() || err.is_eof() {
            "malformed JSON"
        } else {
            "invalid"
        };
        Error::bad_input(format!("{kind} {what}: {err}"))
    })
}

/// Puts the inputs in the order the model declared them and checks each
/// against its spec: every declared input present once, nothing else. The
/// contract names an input by its place in this order.
pub(crate) fn order_and_check(
    mut given: Vec<Given>,
    metadata: &Metadata,
) -> Result<Vec<Tensor>, Error> {
    if let Some(extra) = given
        .iter()
        .find(|t| !metadata.inputs.iter().any(|s| s.name == t.name))
    {
        return Err(unknown_input(&extra.name, metadata));
    }
    let mut ordered = Vec::with_capacity(metadata.inputs.len());
    for spec in &metadata.inputs {
        let mut matching = given.iter().filter(|t| t.name == spec.name);
        let (Some(_), None) = (matching.next(), matching.next()) else {
            let count = given.iter().filter(|t| t.name == spec.name).count();
            return Err(Error::bad_input(if count == 0 {
                format!(
                    "input {:?} is missing; model {} expects {}",
                    spec.name,
                    metadata.name,
                    describe_specs(&metadata.inputs)
                )
            } else {
                format!("input {:?} is given {count} times", spec.name)
            }));
        };
        let index = given.iter().position(|t| t.name == spec.name).unwrap();
        let Given { name, tensor } = given.swap_remove(index);
        check_spec(&name, &tensor, spec, &metadata.name)?;
        ordered.push(tensor);
    }
    Ok(ordered)
}

fn check_spec(name: &str, tensor: &Tensor, spec: &TensorSpec, model: &str) -> Result<(), Error> {
    if tensor.datatype != spec.datatype {
        return Err(Error::bad_input(format!(
            "input {name:?} has datatype {} but model {model} expects {}",
            tensor.datatype, spec.datatype
        )));
    }
    if !spec.fits(&tensor.shape) {
        return Err(Error::bad_input(format!(
            "input {name:?} has shape {:?} but model {model} expects {:?} (-1 means any size)",
            tensor.shape, spec.shape
        )));
    }
    Ok(())
}

pub(crate) fn unknown_input(name: &str, metadata: &Metadata) -> Error {
    Error::bad_input(format!(
        "model {} has no input {name:?}; its inputs are {}",
        metadata.name,
        describe_specs(&metadata.inputs)
    ))
}

pub(crate) fn describe_specs(specs: &[TensorSpec]) -> String {
    let described: Vec<String> = specs
        .iter()
        .map(|s| format!("{} ({} {:?})", s.name, s.datatype, s.shape))
        .collect();
    described.join(", ")
}

/// Checks what a model returned against what its metadata declares, before
/// anything is encoded: output i is the output declared i-th, so every
/// declared output returned, in order and nothing more, with the declared
/// datatype and rank, fixed dimensions as declared, and data that agrees with
/// its shape. A guest is untrusted; an output that breaks the contract is the
/// model's fault (a 500 that names the violation), and the instance itself is
/// fine.
pub fn check_outputs(outputs: &[Tensor], metadata: &Metadata) -> Result<(), String> {
    let model = &metadata.name;
    let declared = &metadata.outputs;
    if outputs.len() != declared.len() {
        let declared_list = format!(
            "declares {}: {}, in that order",
            declared.len(),
            describe_specs(declared)
        );
        return Err(match declared.get(outputs.len()) {
            Some(missing) => format!(
                "model {model} did not return output {:?}, which its metadata declares: it \
                 returned {} outputs, and {declared_list}",
                missing.name,
                outputs.len()
            ),
            None => format!(
                "model {model} returned {} outputs but its metadata {declared_list}",
                outputs.len()
            ),
        });
    }
    for (output, spec) in outputs.iter().zip(declared) {
        let name = &spec.name;
        if output.datatype != spec.datatype {
            return Err(format!(
                "model {model} returned output {name:?} as {} but declares {}",
                output.datatype, spec.datatype
            ));
        }
        if !spec.fits(&output.shape) {
            return Err(format!(
                "model {model} returned output {name:?} with shape {:?} but declares {:?}",
                output.shape, spec.shape
            ));
        }
        check_data(name, output).map_err(|why| format!("model {model} returned {why}"))?;
    }
    Ok(())
}

/// A response body that grows to its limit and no further, so a model's
/// output cannot make the host build a body of any size: encoding stops
/// with an error at the limit instead.
pub(crate) struct Capped {
    pub body: Vec<u8>,
    limit: usize,
}

impl Capped {
    /// A body expected to take about `estimate` bytes, allowed `limit`.
    pub fn new(estimate: u64, limit: usize) -> Capped {
        let estimate = usize::try_from(estimate).unwrap_or(usize::MAX);
        Capped {
            body: Vec::with_capacity(estimate.min(limit)),
            limit,
        }
    }

    /// Appends raw bytes (binary tensor data) within the limit.
    pub fn extend(&mut self, bytes: &[u8]) -> Result<(), Error> {
        std::io::Write::write_all(self, bytes).map_err(|_| too_large(self.limit))
    }

    /// Serializes `value` as JSON into the body, within the limit.
    pub fn json(&mut self, value: &impl serde::Serialize) -> Result<(), Error> {
        serde_json::to_writer(&mut *self, value).map_err(|err| {
            if err.is_io() {
                too_large(self.limit)
            } else {
                Error::model_failed(format!("cannot encode the response: {err}"))
            }
        })
    }
}

/// serde_json writes a response in many small pieces, each through
/// `write_all`: taking the whole piece in one step, instead of the default
/// loop over `write`, took the digits request from 105,400 to 102,900
/// instructions (bench/instructions.py).
impl std::io::Write for Capped {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.body.len() + bytes.len() > self.limit {
            return Err(std::io::Error::other("over the response limit"));
        }
        self.body.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The error for a response past `--max-response`.
pub(crate) fn too_large(limit: usize) -> Error {
    Error::model_failed(format!(
        "the model's outputs make a response larger than {} MiB (--max-response); \
             ask for fewer outputs, use binary tensor data, or raise --max-response",
        limit >> 20
    ))
}

/// Model metadata in the OIP form of `GET /v2/models/{name}`.
pub fn model_metadata(metadata: &Metadata) -> Value {
    let specs = |specs: &[TensorSpec]| -> Value {
        specs
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "datatype": s.datatype.oip_name(),
                    "shape": s.shape,
                })
            })
            .collect()
    };
    serde_json::json!({
        "name": metadata.name,
        "versions": [metadata.version],
        "platform": "wasm-host",
        "inputs": specs(&metadata.inputs),
        "outputs": specs(&metadata.outputs),
    })
}

#[cfg(test)]
mod tests {
    use super::elements::{f16_to_f32, f32_to_f16};
    use super::*;
    use crate::runtime::contract::Datatype;

    fn digits() -> Metadata {
        Metadata {
            name: "digits".into(),
            version: "1".into(),
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: Datatype::Fp32,
                shape: vec![-1, 64],
            }],
            outputs: vec![TensorSpec {
                name: "label".into(),
                datatype: Datatype::Int64,
                shape: vec![-1],
            }],
        }
    }

    #[test]
    fn a_shape_whose_element_count_overflows_is_rejected_not_wrapped() {
        // 2^58 × 64 = 2^64, which wraps to 0 and would match empty data.
        let body = br#"{"inputs":[{"name":"x","shape":[288230376151711744,64],"datatype":"FP32","data":[]}]}"#;
        let err = decode_infer(body, None, &digits()).unwrap_err();
        assert_eq!(err.kind, crate::core::error::Kind::BadInput);
        assert!(err.message.contains("more than 2^64"), "{}", err.message);
    }

    #[test]
    fn a_single_example_without_its_batch_dimension_is_a_batch_of_one() {
        let body = serde_json::to_vec(&serde_json::json!({ "inputs": vec![0.5; 64] })).unwrap();
        let inference = decode_predict(&body, &digits()).unwrap();
        assert_eq!(inference.inputs[0].shape, vec![1, 64]);
        assert_eq!(inference.inputs[0].data.len(), 64 * 4);
    }

    #[test]
    fn outputs_are_nested_by_shape_and_floats_keep_their_precision() {
        let tensor = Tensor {
            datatype: Datatype::Fp32,
            shape: vec![2, 2],
            data: [0.1f32, 0.2, 0.3, 0.4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let nested = serde_json::to_string(&Elements {
            tensor: &tensor,
            nested: true,
        })
        .unwrap();
        assert_eq!(nested, "[[0.1,0.2],[0.3,0.4]]");
        check_data("p", &tensor).unwrap();
    }

    #[test]
    fn fp16_converts_both_ways() {
        for value in [0.0f32, 1.0, -2.5, 65504.0, 0.000061035156, 5.9604645e-8] {
            assert_eq!(f16_to_f32(f32_to_f16(value)), value, "{value}");
        }
        assert_eq!(f32_to_f16(1e6), 0x7c00, "overflow is infinity");
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }
}
