//! The wire formats: JSON in, tensors out, and back.
//!
//! Two request forms are understood: the Open Inference Protocol's infer
//! request (`/v2/models/{name}/infer`) and the simple form of `/predict`
//! (`{"inputs": [[...]]}` or `{"inputs": {"x": [[...]]}}`). Both are decoded
//! into the contract's tensors and checked against the model's metadata here,
//! so a request with the wrong name, datatype or shape is a 400 that names the
//! mistake, and the model never sees it.

use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::contract::{Datatype, Metadata, Tensor, TensorSpec};
use crate::error::ApiError;

/// A decoded, validated inference request.
#[derive(Debug)]
pub struct Inference {
    /// Echoed back in the OIP response.
    pub id: Option<String>,
    /// In the order of `metadata.inputs`.
    pub inputs: Vec<Tensor>,
    /// Outputs the client asked for; `None` means all of them.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Whether outputs not named in `outputs` come back as binary data
    /// (the request-level `binary_data_output` parameter).
    pub binary_outputs: bool,
}

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

/// The OIP parameters wasm-host acts on; others are accepted and ignored.
#[derive(Deserialize, Default)]
struct Parameters {
    binary_data_size: Option<u64>,
    binary_data: Option<bool>,
    binary_data_output: Option<bool>,
}

/// An output the client asked for, and in which form.
#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
}

#[derive(Deserialize)]
struct PredictRequest {
    inputs: Value,
}

/// Decodes an Open Inference Protocol infer request. With the binary tensor
/// data extension, `json_len` (the `Inference-Header-Content-Length` header)
/// splits the body into the JSON header and the raw tensor bytes that follow
/// it, in input order, each as long as its `binary_data_size`.
pub fn decode_infer(
    body: &[u8],
    json_len: Option<usize>,
    metadata: &Metadata,
) -> Result<Inference, ApiError> {
    let (header, mut binary) = match json_len {
        Some(len) if len <= body.len() => body.split_at(len),
        Some(len) => {
            return Err(ApiError::bad_request(format!(
                "Inference-Header-Content-Length is {len} but the body has only {} bytes",
                body.len()
            )));
        }
        None => (body, &[][..]),
    };
    let request: InferRequest = parse_json(header, "inference request")?;
    let mut given = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = Datatype::from_oip_name(&input.datatype).ok_or_else(|| {
            ApiError::bad_request(format!(
                "input {:?} has unknown datatype {:?}; use one of {}",
                input.name,
                input.datatype,
                Datatype::ALL.map(Datatype::oip_name).join(", ")
            ))
        })?;
        let (bytes, count) = match (input.parameters.binary_data_size, &input.data) {
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(ApiError::bad_request(format!(
                        "input {:?} has binary_data_size {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                let count = raw_element_count(bytes, datatype).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "input {:?}: {size} bytes are not a whole number of {datatype} elements",
                        input.name
                    ))
                })?;
                (bytes.to_vec(), count)
            }
            (None, Some(data)) => {
                let encoded = encode_elements(data, datatype, &input.name)?;
                (encoded.bytes, encoded.count as u64)
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "input {:?} has both \"data\" and a binary_data_size; send one",
                    input.name
                )));
            }
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "input {:?} has no \"data\" (and no binary_data_size)",
                    input.name
                )));
            }
        };
        let expected = element_count(&input.shape);
        if expected != Some(count) {
            let expected = expected.map_or("more than 2^64".into(), |n| n.to_string());
            return Err(ApiError::bad_request(format!(
                "input {:?} has shape {:?} ({expected} elements) but its data holds {count}",
                input.name, input.shape
            )));
        }
        given.push(Tensor {
            name: input.name,
            datatype,
            shape: input.shape,
            data: bytes,
        });
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the JSON header but no input claims them \
             (set binary_data_size on each binary input)",
            binary.len()
        )));
    }
    let binary_outputs = request.parameters.binary_data_output.unwrap_or(false);
    let outputs = match request.outputs {
        Some(outputs) => Some(check_requested_outputs(outputs, binary_outputs, metadata)?),
        None => None,
    };
    Ok(Inference {
        id: request.id,
        inputs: order_and_check(given, metadata)?,
        outputs,
        binary_outputs,
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

/// Decodes the simple `/predict` form. A bare array feeds the model's only
/// input; an object maps input names to nested arrays. Shapes are read from
/// the nesting, and one example without its batch dimension (`[64 floats]`
/// for a `[-1, 64]` input) is taken as a batch of one.
pub fn decode_predict(body: &[u8], metadata: &Metadata) -> Result<Inference, ApiError> {
    let request: PredictRequest = parse_json(body, "predict request")?;
    let named: Vec<(String, &Value)> = match &request.inputs {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        value @ Value::Array(_) => match metadata.inputs.as_slice() {
            [only] => vec![(only.name.clone(), value)],
            specs => {
                return Err(ApiError::bad_request(format!(
                    "model {} takes {} inputs ({}): send {{\"inputs\": {{\"name\": [...], ...}}}}",
                    metadata.name,
                    specs.len(),
                    describe_specs(specs)
                )));
            }
        },
        _ => {
            return Err(ApiError::bad_request(
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
        given.push(Tensor {
            name,
            datatype: spec.datatype,
            shape,
            data: data.bytes,
        });
    }
    Ok(Inference {
        id: None,
        inputs: order_and_check(given, metadata)?,
        outputs: None,
        binary_outputs: false,
    })
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| {
        let kind = if err.is_syntax() || err.is_eof() {
            "malformed JSON"
        } else {
            "invalid"
        };
        ApiError::bad_request(format!("{kind} {what}: {err}"))
    })
}

fn check_requested_outputs(
    requested: Vec<RequestedOutputJson>,
    binary_by_default: bool,
    metadata: &Metadata,
) -> Result<Vec<RequestedOutput>, ApiError> {
    requested
        .into_iter()
        .map(|output| {
            if metadata.outputs.iter().any(|s| s.name == output.name) {
                Ok(RequestedOutput {
                    binary: output.parameters.binary_data.unwrap_or(binary_by_default),
                    name: output.name,
                })
            } else {
                Err(ApiError::bad_request(format!(
                    "model {} has no output {:?}; its outputs are {}",
                    metadata.name,
                    output.name,
                    describe_specs(&metadata.outputs)
                )))
            }
        })
        .collect()
}

/// Puts the inputs in the order the model declared them and checks each
/// against its spec: every declared input present once, nothing else.
fn order_and_check(mut given: Vec<Tensor>, metadata: &Metadata) -> Result<Vec<Tensor>, ApiError> {
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
            return Err(ApiError::bad_request(if count == 0 {
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
        let tensor = given.swap_remove(index);
        check_spec(&tensor, spec, &metadata.name)?;
        ordered.push(tensor);
    }
    Ok(ordered)
}

fn check_spec(tensor: &Tensor, spec: &TensorSpec, model: &str) -> Result<(), ApiError> {
    if tensor.datatype != spec.datatype {
        return Err(ApiError::bad_request(format!(
            "input {:?} has datatype {} but model {model} expects {}",
            tensor.name, tensor.datatype, spec.datatype
        )));
    }
    let fits = tensor.shape.len() == spec.shape.len()
        && tensor
            .shape
            .iter()
            .zip(&spec.shape)
            .all(|(&got, &want)| want == -1 || got as i64 == want);
    if !fits {
        return Err(ApiError::bad_request(format!(
            "input {:?} has shape {:?} but model {model} expects {:?} (-1 means any size)",
            tensor.name, tensor.shape, spec.shape
        )));
    }
    Ok(())
}

fn unknown_input(name: &str, metadata: &Metadata) -> ApiError {
    ApiError::bad_request(format!(
        "model {} has no input {name:?}; its inputs are {}",
        metadata.name,
        describe_specs(&metadata.inputs)
    ))
}

fn describe_specs(specs: &[TensorSpec]) -> String {
    let described: Vec<String> = specs
        .iter()
        .map(|s| format!("{} ({} {:?})", s.name, s.datatype, s.shape))
        .collect();
    described.join(", ")
}

/// The shape of a rectangular nest of JSON arrays.
fn nested_shape(value: &Value, name: &str) -> Result<Vec<u64>, ApiError> {
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
        return Err(ApiError::bad_request(format!(
            "input {name:?} is ragged: every row must have the same length"
        )));
    }
    Ok(shape)
}

struct Encoded {
    bytes: Vec<u8>,
    count: usize,
}

/// Flattens a (possibly nested) JSON array into little-endian elements.
fn encode_elements(data: &Value, datatype: Datatype, name: &str) -> Result<Encoded, ApiError> {
    let mut out = Encoded {
        bytes: Vec::with_capacity(64 * datatype.element_size().unwrap_or(8)),
        count: 0,
    };
    encode_into(data, datatype, name, &mut out)?;
    Ok(out)
}

fn encode_into(
    value: &Value,
    datatype: Datatype,
    name: &str,
    out: &mut Encoded,
) -> Result<(), ApiError> {
    if let Value::Array(items) = value {
        for item in items {
            encode_into(item, datatype, name, out)?;
        }
        return Ok(());
    }
    let index = out.count;
    let wrong = || {
        ApiError::bad_request(format!(
            "element {index} of input {name:?} is {value}, which is not a valid {datatype}"
        ))
    };
    let b = &mut out.bytes;
    macro_rules! int {
        ($t:ty) => {{
            let v = match value {
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|v| <$t>::try_from(v).ok())
                    .or_else(|| n.as_u64().and_then(|v| <$t>::try_from(v).ok())),
                _ => None,
            };
            b.extend_from_slice(&v.ok_or_else(wrong)?.to_le_bytes());
        }};
    }
    match datatype {
        Datatype::Bool => match value {
            Value::Bool(v) => b.push(*v as u8),
            _ => return Err(wrong()),
        },
        Datatype::Uint8 => int!(u8),
        Datatype::Uint16 => int!(u16),
        Datatype::Uint32 => int!(u32),
        Datatype::Uint64 => int!(u64),
        Datatype::Int8 => int!(i8),
        Datatype::Int16 => int!(i16),
        Datatype::Int32 => int!(i32),
        Datatype::Int64 => int!(i64),
        Datatype::Fp16 => {
            let v = value.as_f64().ok_or_else(wrong)?;
            b.extend_from_slice(&f32_to_f16(v as f32).to_le_bytes());
        }
        Datatype::Fp32 => {
            let v = value.as_f64().ok_or_else(wrong)?;
            b.extend_from_slice(&(v as f32).to_le_bytes());
        }
        Datatype::Fp64 => {
            let v = value.as_f64().ok_or_else(wrong)?;
            b.extend_from_slice(&v.to_le_bytes());
        }
        Datatype::Bytes => {
            let v = value.as_str().ok_or_else(wrong)?;
            let len = u32::try_from(v.len()).map_err(|_| wrong())?;
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(v.as_bytes());
        }
    }
    out.count += 1;
    Ok(())
}

/// Checks that a tensor the model returned holds as many elements as its shape
/// says, so that encoding it cannot read past its data.
pub fn check_output(tensor: &Tensor) -> Result<(), String> {
    let count: u64 = tensor.shape.iter().product();
    let ok = match tensor.datatype.element_size() {
        Some(size) => tensor.data.len() as u64 == count * size as u64,
        None => {
            bytes_elements(&tensor.data).count() as u64 == count
                && bytes_elements(&tensor.data).all(|e| e.is_some())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the model returned output {:?} with shape {:?} and {} bytes of {} data, which do not agree",
            tensor.name,
            tensor.shape,
            tensor.data.len(),
            tensor.datatype
        ))
    }
}

/// The number of elements a shape holds; `None` if it overflows, which no
/// real tensor does (and which must not wrap around to pass a check).
fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// Splits `BYTES` data (u32 length, then bytes, per element); `None` marks a
/// truncated element.
fn bytes_elements(mut data: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            data = &[];
            return Some(None);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            data = &[];
            return Some(None);
        }
        let (element, rest) = rest.split_at(len);
        data = rest;
        Some(Some(element))
    })
}

/// Serializes a tensor's elements as JSON: flat (OIP) or nested by shape
/// (`/predict`). Floats are written from their own precision, so an FP32
/// round-trips exactly without float64 noise digits.
pub struct Elements<'a> {
    pub tensor: &'a Tensor,
    pub nested: bool,
}

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let shape: &[u64] = if self.nested { &t.shape } else { &[] };
        let size = t.datatype.element_size();
        if let Some(size) = size {
            Chunk {
                datatype: t.datatype,
                shape,
                data: &t.data,
                size,
            }
            .serialize(serializer)
        } else {
            // BYTES is rare and variable-length: flat only.
            let mut seq = serializer.serialize_seq(None)?;
            for element in bytes_elements(&t.data).flatten() {
                seq.serialize_element(&String::from_utf8_lossy(element))?;
            }
            seq.end()
        }
    }
}

struct Chunk<'a> {
    datatype: Datatype,
    shape: &'a [u64],
    data: &'a [u8],
    size: usize,
}

impl Serialize for Chunk<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Nested: one level per dimension past the first.
        if let Some((&rows, inner)) = self.shape.split_first()
            && !inner.is_empty()
        {
            let mut seq = serializer.serialize_seq(Some(rows as usize))?;
            let row_bytes = if rows == 0 {
                0
            } else {
                self.data.len() / rows as usize
            };
            for row in 0..rows as usize {
                seq.serialize_element(&Chunk {
                    shape: inner,
                    data: &self.data[row * row_bytes..(row + 1) * row_bytes],
                    ..*self
                })?;
            }
            return seq.end();
        }
        let mut seq = serializer.serialize_seq(Some(self.data.len() / self.size))?;
        for e in self.data.chunks_exact(self.size) {
            match self.datatype {
                Datatype::Bool => seq.serialize_element(&(e[0] != 0))?,
                Datatype::Uint8 => seq.serialize_element(&e[0])?,
                Datatype::Int8 => seq.serialize_element(&(e[0] as i8))?,
                Datatype::Uint16 => seq.serialize_element(&u16::from_le_bytes([e[0], e[1]]))?,
                Datatype::Int16 => seq.serialize_element(&i16::from_le_bytes([e[0], e[1]]))?,
                Datatype::Fp16 => {
                    seq.serialize_element(&f16_to_f32(u16::from_le_bytes([e[0], e[1]])))?
                }
                Datatype::Uint32 => seq.serialize_element(&u32::from_le_bytes(arr(e)))?,
                Datatype::Int32 => seq.serialize_element(&i32::from_le_bytes(arr(e)))?,
                Datatype::Fp32 => seq.serialize_element(&f32::from_le_bytes(arr(e)))?,
                Datatype::Uint64 => seq.serialize_element(&u64::from_le_bytes(arr(e)))?,
                Datatype::Int64 => seq.serialize_element(&i64::from_le_bytes(arr(e)))?,
                Datatype::Fp64 => seq.serialize_element(&f64::from_le_bytes(arr(e)))?,
                Datatype::Bytes => unreachable!("BYTES has no fixed element size"),
            }
        }
        seq.end()
    }
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("chunk of the element size")
}

/// One output of an OIP infer response: its data inline, or only its size
/// when the data follows the JSON header in binary.
struct OipOutput<'a> {
    tensor: &'a Tensor,
    binary: bool,
}

impl Serialize for OipOutput<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("name", &t.name)?;
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
/// in the form it asked for.
pub fn encode_infer_response(
    metadata: &Metadata,
    inference: &Inference,
    outputs: &[Tensor],
) -> InferResponse {
    let selected: Vec<OipOutput> = outputs
        .iter()
        .filter_map(|tensor| {
            let binary = match &inference.outputs {
                None => inference.binary_outputs,
                Some(wanted) => wanted.iter().find(|o| o.name == tensor.name)?.binary,
            };
            Some(OipOutput { tensor, binary })
        })
        .collect();
    #[derive(serde::Serialize)]
    struct Response<'a> {
        model_name: &'a str,
        model_version: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: &'a [OipOutput<'a>],
    }
    let mut body = serde_json::to_vec(&Response {
        model_name: &metadata.name,
        model_version: &metadata.version,
        id: inference.id.as_deref(),
        outputs: &selected,
    })
    .expect("serializing to memory cannot fail");
    let json_len = body.len();
    let mut binary = false;
    for output in selected.iter().filter(|o| o.binary) {
        body.extend_from_slice(&output.tensor.data);
        binary = true;
    }
    InferResponse {
        body,
        json_len: binary.then_some(json_len),
    }
}

/// The `/predict` response: outputs by name, nested by shape; `prediction`
/// when the model has a `label` output (a scalar for one example, else a list);
/// and the id of the instance that served it.
pub fn encode_predict_response(metadata: &Metadata, outputs: &[Tensor], instance: u64) -> Vec<u8> {
    struct Outputs<'a>(&'a [Tensor]);
    impl Serialize for Outputs<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for t in self.0 {
                let nested = Elements {
                    tensor: t,
                    nested: true,
                };
                map.serialize_entry(&t.name, &nested)?;
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
            match serde_json::to_value(flat).map_err(serde::ser::Error::custom)? {
                Value::Array(mut one) if one.len() == 1 => one.pop().unwrap().serialize(serializer),
                many => many.serialize(serializer),
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
    serde_json::to_vec(&Response {
        model: &metadata.name,
        instance,
        prediction: outputs.iter().find(|t| t.name == "label").map(Prediction),
        outputs: Outputs(outputs),
    })
    .expect("serializing to memory cannot fail")
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

/// Rounds to nearest-even; overflow becomes infinity, as numpy does.
fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if mantissa != 0 { 0x200 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let exp16 = exp - 127 + 15;
    if exp16 >= 0x1f {
        return sign | 0x7c00;
    }
    if exp16 <= 0 {
        if exp16 < -10 {
            return sign;
        }
        let m = mantissa | 0x80_0000;
        let shift = (14 - exp16) as u32;
        let half = 1 << (shift - 1);
        let rounded = m + half - 1 + ((m >> shift) & 1);
        return sign | (rounded >> shift) as u16;
    }
    let rounded = mantissa + 0xfff + ((mantissa >> 13) & 1);
    if rounded & 0x80_0000 != 0 {
        // The mantissa carried into the exponent.
        let exp16 = exp16 + 1;
        if exp16 >= 0x1f {
            return sign | 0x7c00;
        }
        return sign | ((exp16 as u16) << 10);
    }
    sign | ((exp16 as u16) << 10) | (rounded >> 13) as u16
}

fn f16_to_f32(half: u16) -> f32 {
    let sign = ((half & 0x8000) as u32) << 16;
    let exp = ((half >> 10) & 0x1f) as u32;
    let mantissa = (half & 0x3ff) as u32;
    let bits = match (exp, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m × 2^-24.
            let magnitude = m as f32 * 2f32.powi(-24);
            return if sign == 0 { magnitude } else { -magnitude };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(err.status, 400);
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
            name: "p".into(),
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
        check_output(&tensor).unwrap();
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
