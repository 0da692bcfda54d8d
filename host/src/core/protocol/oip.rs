//! The Open Inference Protocol's infer request and response, in JSON and
//! with the binary tensor data extension.

use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::elements::{Elements, bytes_elements, encode_elements, json_size_floor};
use super::parameters::CLASSIFICATION;
use super::{
    Capped, Given, Inference, Parts, Wanted, check_count, input_datatype, parse_json, too_large,
};
use crate::core::error::Error;
use crate::runtime::contract::{Datatype, Metadata, Tensor};

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutputJson>>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Deserialize)]
struct RequestedOutputJson {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// The OIP parameters wasm-host acts on, and the others, which a request's
/// top level passes through to its response (the contract gives models no
/// parameters, so nothing else could act on them).
#[derive(Deserialize, Default)]
struct Parameters {
    binary_data_size: Option<u64>,
    binary_data: Option<bool>,
    binary_data_output: Option<bool>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// Decodes an Open Inference Protocol infer request. With the binary tensor
/// data extension, `json_len` (the `Inference-Header-Content-Length` header)
/// splits the body into the JSON header and the raw tensor bytes that follow
/// it, in input order, each as long as its `binary_data_size`.
pub fn decode_infer(
    body: &[u8],
    json_len: Option<usize>,
    metadata: &Metadata,
) -> Result<Inference, Error> {
    let (header, mut binary) = match json_len {
        Some(len) if len <= body.len() => body.split_at(len),
        Some(len) => {
            return Err(Error::bad_input(format!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            )));
        }
        None => (body, &[][..]),
    };
    let request: InferRequest = parse_json(header, "inference request")?;
    let mut given = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = input_datatype(&input.name, &input.datatype)?;
        let (bytes, count) = match (input.parameters.binary_data_size, &input.data) {
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(Error::bad_input(format!(
                        "input {:?} has binary_data_size {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                (bytes.to_vec(), raw_count(&input.name, bytes, datatype)?)
            }
            (None, Some(data)) => {
                let encoded = encode_elements(data, datatype, &input.name)?;
                (encoded.bytes, encoded.count as u64)
            }
            (Some(_), Some(_)) => {
                return Err(Error::bad_input(format!(
                    "input {:?} has both \"data\" and a binary_data_size; send one",
                    input.name
                )));
            }
            (None, None) => {
                return Err(Error::bad_input(format!(
                    "input {:?} has no \"data\" (and no binary_data_size)",
                    input.name
                )));
            }
        };
        check_count(&input.name, &input.shape, count)?;
        given.push(Given {
            name: input.name,
            tensor: Tensor {
                datatype,
                shape: input.shape,
                data: bytes,
            },
        });
    }
    if !binary.is_empty() {
        return Err(Error::bad_input(format!(
            "{} bytes of binary data follow the JSON header but no input claims them \
             (set binary_data_size on each binary input)",
            binary.len()
        )));
    }
    let binary_outputs = request.parameters.binary_data_output.unwrap_or(false);
    let outputs = request.outputs.map(|outputs| {
        outputs
            .into_iter()
            .map(|mut output| Wanted {
                binary: output.parameters.binary_data.unwrap_or(binary_outputs),
                classification: output.parameters.other.remove(CLASSIFICATION),
                name: output.name,
            })
            .collect()
    });
    Inference::new(
        Parts {
            id: request.id,
            given,
            outputs,
            binary_outputs,
            parameters: request.parameters.other,
        },
        metadata,
    )
}

/// How many elements an input's raw little-endian data holds, or why it
/// is not whole elements.
pub fn raw_count(input: &str, bytes: &[u8], datatype: Datatype) -> Result<u64, Error> {
    raw_element_count(bytes, datatype).ok_or_else(|| {
        Error::bad_input(format!(
            "input {input:?}: {} bytes are not a whole number of {datatype} elements",
            bytes.len()
        ))
    })
}

/// How many elements raw little-endian data holds; `None` if it does not
/// divide into whole elements.
fn raw_element_count(bytes: &[u8], datatype: Datatype) -> Option<u64> {
    match datatype.element_size() {
        Some(size) => bytes
            .len()
            .is_multiple_of(size)
            .then_some((bytes.len() / size) as u64),
        None => bytes_elements(bytes).try_fold(0u64, |n, element| element.map(|_| n + 1)),
    }
}

/// One output of an OIP infer response: its data inline, or only its size
/// when the data follows the JSON header in binary.
struct OipOutput<'a> {
    /// The name the metadata gives the output at this position.
    name: &'a str,
    tensor: &'a Tensor,
    binary: bool,
}

impl Serialize for OipOutput<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("name", self.name)?;
        map.serialize_entry("datatype", t.datatype.oip_name())?;
        map.serialize_entry("shape", &t.shape)?;
        if self.binary {
            map.serialize_entry(
                "parameters",
                &serde_json::json!({ "binary_data_size": t.data.len() }),
            )?;
        } else {
            let data = Elements {
                tensor: t,
                nested: false,
            };
            map.serialize_entry("data", &data)?;
        }
        map.end()
    }
}

/// An encoded OIP infer response. `json_len` is set when binary data follows
/// the JSON header: it goes into `Inference-Header-Content-Length`.
pub struct InferResponse {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

/// The OIP infer response, with only the outputs the client asked for, each
/// in the form it asked for, within `limit` bytes (`--max-response`). The
/// name and version are the ones the client addressed; `outputs` are checked
/// ([`super::check_outputs`]), so output i is the one `metadata` declares i-th
/// and takes its name.
pub fn encode_infer_response(
    model_name: &str,
    model_version: &str,
    metadata: &Metadata,
    inference: &Inference,
    outputs: &[Tensor],
    limit: usize,
) -> Result<InferResponse, Error> {
    let selected: Vec<OipOutput> = metadata
        .outputs
        .iter()
        .zip(outputs)
        .filter_map(|(spec, tensor)| {
            let binary = match &inference.outputs {
                None => inference.binary_outputs,
                Some(wanted) => wanted.iter().find(|o| o.name == spec.name)?.binary,
            };
            Some(OipOutput {
                name: &spec.name,
                tensor,
                binary,
            })
        })
        .collect();
    let estimate = selected.iter().fold(256u64, |sum, o| {
        sum.saturating_add(if o.binary {
            o.tensor.data.len() as u64 + 64
        } else {
            json_size_floor(o.tensor, false)
        })
    });
    if estimate > limit as u64 {
        return Err(too_large(limit));
    }
    #[derive(serde::Serialize)]
    struct Response<'a> {
        model_name: &'a str,
        model_version: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
        parameters: &'a serde_json::Map<String, Value>,
        outputs: &'a [OipOutput<'a>],
    }
    let mut body = Capped::new(estimate, limit);
    body.json(&Response {
        model_name,
        model_version,
        id: inference.id.as_deref(),
        parameters: &inference.parameters,
        outputs: &selected,
    })?;
    let json_len = body.body.len();
    let mut binary = false;
    for output in selected.iter().filter(|o| o.binary) {
        body.extend(&output.tensor.data)?;
        binary = true;
    }
    Ok(InferResponse {
        body: body.body,
        json_len: binary.then_some(json_len),
    })
}
