//! A fuzzer for the request decoders, run for a bounded time by the test
//! command: arbitrary bytes, mutations of valid requests, and random JSON
//! trees built from the protocol's own vocabulary. Every input must either
//! decode into tensors that agree with their shapes and the model's metadata,
//! or be refused with a 4xx; nothing may panic.
//!
//! `FUZZ_SECONDS` sets the budget (default 3 s per decoder); `FUZZ_SEED`
//! replays a run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasm_host::contract::{Datatype, Metadata, TensorSpec};
use wasm_host::protocol::{self, Inference};

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
        assert_eq!(tensor.name, spec.name);
        assert_eq!(tensor.datatype, spec.datatype);
        assert_eq!(tensor.shape.len(), spec.shape.len());
        protocol::check_output(tensor).expect("decoded data agrees with its shape");
    }
}

type Decoder = fn(&[u8], Option<usize>, &Metadata) -> Result<Inference, wasm_host::error::ApiError>;

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

fn fuzz(name: &str, binary: bool, decode: Decoder) {
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 * 0x9e37_79b9 + 1);
    let mut rng = Rng(seed | 1);
    let metadata = metadata();
    let seeds = seeds();
    let (seed_json_len, seed_binary) = binary_seed();
    let deadline = Instant::now() + Duration::from_secs(seconds);
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
                    err.status.is_client_error() && !err.message.is_empty(),
                    "{name}: {} for {:?}",
                    err.status,
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
