//! A fuzzer for the request decoders, run for a bounded time by the test
//! command: arbitrary bytes, mutations of valid requests, and random JSON
//! trees built from the protocol's own vocabulary. Every input must either
//! decode into tensors that agree with their shapes and the model's metadata,
//! or be refused with a 4xx; nothing may panic.
//!
//! And one for what comes back from a guest, which is as untrusted as a
//! request: random outputs (names, datatypes, shapes, data lengths) through
//! the output check and both encoders. Every set of outputs must either be
//! refused by the check with a message, or encode into valid JSON within the
//! response limit (or be refused for its size); nothing may panic.
//!
//! `FUZZ_SECONDS` sets the budget (default 3 s per decoder); `FUZZ_SEED`
//! replays a run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasm_host::core::protocol::{self, Inference, RequestedOutput};
use wasm_host::runtime::contract::{Datatype, Metadata, Tensor, TensorSpec};

/// xorshift64*: small, fast and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn metadata() -> Metadata {
    let spec = |name: &str, datatype, shape: &[i64]| TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    };
    Metadata {
        name: "m".into(),
        version: "1".into(),
        inputs: vec![
            spec("x", Datatype::Fp32, &[-1, 4]),
            spec("mask", Datatype::Bool, &[-1]),
            spec("ids", Datatype::Int16, &[2]),
            spec("text", Datatype::Bytes, &[-1]),
            spec("half", Datatype::Fp16, &[1]),
        ],
        outputs: vec![spec("y", Datatype::Fp32, &[-1])],
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let valid = json!({
        "id": "7",
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [5, 6, 7, 8.5]]},
            {"name": "mask", "shape": [3], "datatype": "BOOL", "data": [true, false, true]},
            {"name": "ids", "shape": [2], "datatype": "INT16", "data": [-32768, 32767]},
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["héllo", ""]},
            {"name": "half", "shape": [1], "datatype": "FP16", "data": [0.5]}
        ],
        "outputs": [{"name": "y"}]
    });
    let simple = json!({
        "inputs": {"x": [[1, 2, 3, 4]], "mask": [true], "ids": [1, 2], "text": ["a"], "half": [1.0]}
    });
    vec![
        serde_json::to_vec(&valid).unwrap(),
        serde_json::to_vec(&simple).unwrap(),
        b"{\"inputs\": [[1, 2, 3, 4]]}".to_vec(),
    ]
}

const WORDS: &[&str] = &[
    "inputs",
    "outputs",
    "name",
    "shape",
    "datatype",
    "data",
    "id",
    "parameters",
    "x",
    "mask",
    "ids",
    "text",
    "half",
    "y",
    "FP32",
    "BOOL",
    "INT16",
    "BYTES",
    "FP16",
    "UINT64",
    "fp32",
    "",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 4 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => json!(f64::from_bits(rng.next()).clamp(-1e300, 1e300)),
        4 => json!(*rng.pick(&[0, -1, 1, 2, 4, 64, 65535, 32768, -32769, i64::MAX])),
        5 => Value::String(rng.pick(WORDS).to_string()),
        6 | 7 => (0..rng.below(5))
            .map(|_| random_value(rng, depth + 1))
            .collect(),
        _ => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.below(6) {
                map.insert(rng.pick(WORDS).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// A request-shaped tree with random parts, which reaches deeper into the
/// decoders than random bytes do.
fn random_request(rng: &mut Rng) -> Value {
    let inputs: Vec<Value> = (0..rng.below(4))
        .map(|_| {
            let mut input = serde_json::Map::new();
            for key in ["name", "shape", "datatype", "data"] {
                if rng.below(8) > 0 {
                    let value = match key {
                        "name" => Value::String(rng.pick(WORDS).to_string()),
                        "datatype" => Value::String(rng.pick(WORDS).to_string()),
                        "shape" => (0..rng.below(4))
                            .map(|_| json!(*rng.pick(&[0u64, 1, 2, 3, 4, 1 << 62, u64::MAX])))
                            .collect(),
                        _ => random_value(rng, 1),
                    };
                    input.insert(key.into(), value);
                }
            }
            Value::Object(input)
        })
        .collect();
    if rng.below(3) == 0 {
        json!({ "inputs": random_value(rng, 1) })
    } else {
        json!({ "inputs": inputs, "outputs": random_value(rng, 2) })
    }
}

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 => bytes.insert(at, rng.next() as u8),
            2 => bytes.truncate(at),
            3 => {
                let word = rng.pick(&[
                    "[", "]", "{", "}", ",", ":", "\"", "1e999", "-0", "null", "[[[[",
                ]);
                bytes.splice(at..at, word.bytes());
            }
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    bytes
}

/// What a successful decode promises the model.
fn check_decoded(inference: &Inference, metadata: &Metadata) {
    assert_eq!(inference.inputs.len(), metadata.inputs.len());
    for (tensor, spec) in inference.inputs.iter().zip(&metadata.inputs) {
        assert_eq!(tensor.datatype, spec.datatype);
        assert_eq!(tensor.shape.len(), spec.shape.len());
        protocol::check_data(&spec.name, tensor).expect("decoded data agrees with its shape");
    }
}

type Decoder =
    fn(&[u8], Option<usize>, &Metadata) -> Result<Inference, wasm_host::core::error::Error>;

/// A request with its binary tail: the JSON header's length, and the body.
fn binary_seed() -> (usize, Vec<u8>) {
    let header = json!({
        "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}},
            {"name": "mask", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}},
            {"name": "ids", "shape": [2], "datatype": "INT16", "data": [1, 2]},
            {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}},
            {"name": "half", "shape": [1], "datatype": "FP16", "data": [0.5]}
        ],
        "parameters": {"binary_data_output": true}
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_len = body.len();
    for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&3u32.to_le_bytes());
    body.extend_from_slice(b"abc");
    (json_len, body)
}

/// The run's time budget and seed, from `FUZZ_SECONDS` and `FUZZ_SEED`.
fn budget() -> (Duration, u64) {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 * 0x9e37_79b9 + 1);
    (Duration::from_secs(seconds), seed)
}

fn fuzz(name: &str, binary: bool, decode: Decoder) {
    let (seconds, seed) = budget();
    let mut rng = Rng(seed | 1);
    let metadata = metadata();
    let seeds = seeds();
    let (seed_json_len, seed_binary) = binary_seed();
    let deadline = Instant::now() + seconds;
    let (mut runs, mut decoded) = (0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..256 {
            let (input, json_len) = match rng.below(if binary { 5 } else { 4 }) {
                0 => ((0..rng.below(64)).map(|_| rng.next() as u8).collect(), None),
                1 => (serde_json::to_vec(&random_request(&mut rng)).unwrap(), None),
                2 | 3 => {
                    let seed = rng.pick(&seeds).clone();
                    (mutate(&mut rng, seed), None)
                }
                _ => {
                    // Mostly the true header length, sometimes a little off.
                    let shift = [0, 0, 0, 1, 2, 5].map(|d| d as isize);
                    let len = seed_json_len as isize + rng.pick(&shift) * rng.pick(&[1, -1]);
                    let body = if rng.below(3) == 0 {
                        seed_binary.clone()
                    } else {
                        mutate(&mut rng, seed_binary.clone())
                    };
                    (body, Some(len.max(0) as usize))
                }
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| decode(&input, json_len, &metadata)));
            let Ok(result) = outcome else {
                panic!(
                    "{name} panicked (FUZZ_SEED={seed}) on {:?}",
                    String::from_utf8_lossy(&input)
                );
            };
            match result {
                Ok(inference) => {
                    decoded += 1;
                    check_decoded(&inference, &metadata);
                }
                Err(err) => assert!(
                    err.kind == wasm_host::core::error::Kind::BadInput && !err.message.is_empty(),
                    "{name}: {:?} for {:?}",
                    err.kind,
                    String::from_utf8_lossy(&input)
                ),
            }
            runs += 1;
        }
    }
    // Seeds must decode, or the fuzzer is only exercising the JSON parser.
    assert!(decoded > 0, "{name}: nothing decoded in {runs} runs");
    if binary {
        let (len, body) = binary_seed();
        check_decoded(
            &protocol::decode_infer(&body, Some(len), &metadata).unwrap(),
            &metadata,
        );
    }
    eprintln!("{name}: {runs} inputs, {decoded} decoded, seed {seed}");
}

#[test]
fn the_infer_decoder_decodes_or_refuses_with_4xx_and_never_panics() {
    fuzz("decode_infer", true, protocol::decode_infer);
}

#[test]
fn the_predict_decoder_decodes_or_refuses_with_4xx_and_never_panics() {
    fuzz("decode_predict", false, |body, _, metadata| {
        protocol::decode_predict(body, metadata)
    });
}

/// The model whose outputs are fuzzed: one of each kind of spec.
fn output_metadata() -> Metadata {
    let spec = |name: &str, datatype, shape: &[i64]| TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    };
    Metadata {
        name: "m".into(),
        version: "1".into(),
        inputs: vec![spec("x", Datatype::Fp32, &[-1])],
        outputs: vec![
            spec("probabilities", Datatype::Fp32, &[-1, 3]),
            spec("label", Datatype::Int64, &[-1]),
            spec("grid", Datatype::Uint8, &[-1, -1, -1]),
            spec("text", Datatype::Bytes, &[-1]),
            spec("half", Datatype::Fp16, &[2]),
        ],
    }
}

/// A random dimension: mostly small, sometimes zero, sometimes enormous.
fn random_dim(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => *rng.pick(&[1 << 63, u64::MAX, 100_000_000, 1 << 32]),
        _ => rng.below(5) as u64,
    }
}

/// A random output for `spec`: usually close to it, often a little off.
fn random_output(rng: &mut Rng, spec: &TensorSpec) -> Tensor {
    let datatype = if rng.below(10) == 0 {
        *rng.pick(&Datatype::ALL)
    } else {
        spec.datatype
    };
    let rank = if rng.below(10) == 0 {
        rng.below(4)
    } else {
        spec.shape.len()
    };
    let shape: Vec<u64> = (0..rank)
        .map(|i| match spec.shape.get(i) {
            Some(&d) if d >= 0 && rng.below(4) != 0 => d as u64,
            _ => random_dim(rng),
        })
        .collect();
    let count = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 4096);
    let data = match (datatype.element_size(), count, rng.below(5)) {
        (Some(size), Some(n), 0..=2) => (0..n as usize * size).map(|_| rng.next() as u8).collect(),
        (None, Some(n), 0..=2) => {
            let mut data = Vec::new();
            for _ in 0..n {
                let len = rng.below(6);
                data.extend_from_slice(&(len as u32).to_le_bytes());
                data.extend((0..len).map(|_| rng.next() as u8));
            }
            data
        }
        _ => (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
    };
    Tensor {
        datatype,
        shape,
        data,
    }
}

#[test]
fn guest_outputs_are_checked_or_encoded_within_the_limit_and_never_panic() {
    const LIMIT: usize = 64 << 10;
    let (seconds, seed) = budget();
    let mut rng = Rng(seed | 1);
    let metadata = output_metadata();
    let deadline = Instant::now() + seconds;
    let (mut runs, mut accepted, mut encoded) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..256 {
            runs += 1;
            // Outputs are matched to the specs by position: mostly one per
            // spec, sometimes made for another spec (out of order), and
            // sometimes one more or one fewer.
            let mut outputs: Vec<Tensor> = Vec::new();
            for i in 0..metadata.outputs.len() + rng.below(3) - 1 {
                let spec = match metadata.outputs.get(i) {
                    Some(spec) if rng.below(8) != 0 => spec,
                    _ => rng.pick(&metadata.outputs),
                };
                outputs.push(random_output(&mut rng, spec));
            }
            if rng.below(2) == 0 {
                // A set in order now and then, so the encoders get work.
                outputs = metadata
                    .outputs
                    .iter()
                    .map(|spec| random_output(&mut rng, spec))
                    .collect();
            }
            let checked = catch_unwind(AssertUnwindSafe(|| {
                protocol::check_outputs(&outputs, &metadata)
            }))
            .unwrap_or_else(|_| panic!("check_outputs panicked (FUZZ_SEED={seed}) on {outputs:?}"));
            if let Err(why) = checked {
                assert!(!why.is_empty());
                continue;
            }
            accepted += 1;
            let binary = rng.below(2) == 0;
            let inference = Inference {
                id: Some("7".into()),
                inputs: Vec::new().into(),
                outputs: (rng.below(2) == 0).then(|| {
                    vec![RequestedOutput {
                        name: rng.pick(&metadata.outputs).name.clone(),
                        binary: rng.below(2) == 0,
                        classification: None,
                    }]
                }),
                binary_outputs: binary,
                parameters: serde_json::Map::new(),
                timeout: None,
            };
            let encodings = catch_unwind(AssertUnwindSafe(|| {
                let oip = protocol::encode_infer_response(
                    "m", "1", &metadata, &inference, &outputs, LIMIT,
                );
                let simple = protocol::encode_predict_response(&metadata, &outputs, 1, LIMIT);
                (oip, simple)
            }))
            .unwrap_or_else(|_| panic!("an encoder panicked (FUZZ_SEED={seed}) on {outputs:?}"));
            match encodings.0 {
                Ok(response) => {
                    encoded += 1;
                    assert!(response.body.len() <= LIMIT);
                    let json = &response.body[..response.json_len.unwrap_or(response.body.len())];
                    let _: Value = serde_json::from_slice(json).expect("the response is JSON");
                }
                Err(err) => assert!(err.message.contains("--max-response"), "{}", err.message),
            }
            match encodings.1 {
                Ok(body) => {
                    assert!(body.len() <= LIMIT);
                    let _: Value = serde_json::from_slice(&body).expect("the response is JSON");
                }
                Err(err) => assert!(err.message.contains("--max-response"), "{}", err.message),
            }
        }
    }
    assert!(
        accepted > 0 && encoded > 0,
        "{runs} runs, {accepted} accepted, {encoded} encoded"
    );
    eprintln!("outputs: {runs} sets, {accepted} passed the check, {encoded} encoded, seed {seed}");
}
