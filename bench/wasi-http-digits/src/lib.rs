//! Bench only: the digits model served by `wasmtime serve`, the peer
//! wasm-host is measured against (`bench/run.sh`).
//!
//! A `wasi:http/proxy` component that answers `POST /v2/models/digits/infer`
//! with the same JSON request and response as wasm-host's Open Inference
//! Protocol route, computed by the same code: `guest-model/src/mlp.rs` and
//! its embedded weights, included as a module rather than as a crate
//! dependency, so that this component exports `wasi:http/incoming-handler`
//! only and not also the model contract guest-model exports.
//!
//! `wasmtime serve` calls `handle` once per request on an instance it takes
//! from its pool (`--max-instance-reuse-count`): everything per request here
//! is what the peer's guest does, and the HTTP parsing, the pool and the
//! lifting of the request and response are `wasmtime serve`'s.
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p wasi-http-digits`.

#[allow(dead_code)] // the bench uses the model's math, not all of its API
#[path = "../../../guest-model/src/mlp.rs"]
mod mlp;

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Request {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<Input>,
}

#[derive(Deserialize)]
pub struct Input {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    data: Vec<f32>,
}

#[derive(Serialize)]
pub struct Response<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: (Output<'a, f32>, Output<'a, i64>),
}

#[derive(Serialize)]
pub struct Output<'a, T> {
    name: &'a str,
    datatype: &'a str,
    shape: Vec<u64>,
    data: Vec<T>,
}

/// The digits model on one request body: `Ok` with the response's JSON, or
/// `Err` with a status and an error message.
pub fn infer(body: &[u8]) -> Result<Vec<u8>, (u16, String)> {
    let bad = |why: String| (400, why);
    let request: Request =
        serde_json::from_slice(body).map_err(|err| bad(format!("inference request: {err}")))?;
    let mlp = mlp::Mlp::embedded();
    let cols = mlp.input_size();
    let [x] = &request.inputs[..] else {
        return Err(bad("expected one input, `x`".into()));
    };
    if x.name != "x" || x.datatype != "FP32" || !matches!(x.shape[..], [_, c] if c == cols as u64) {
        return Err(bad(format!("expected x: FP32 [rows, {cols}]")));
    }
    let rows = x.shape[0] as usize;
    if x.data.len() != rows * cols {
        return Err(bad("x: data does not match its shape".into()));
    }
    let mut probabilities = vec![0.0; rows * mlp.classes()];
    let mut labels = vec![0; rows];
    mlp.predict_batch(&x.data, &mut probabilities, &mut labels);
    let response = Response {
        model_name: "digits",
        model_version: "1",
        id: request.id,
        outputs: (
            Output {
                name: "probabilities",
                datatype: "FP32",
                shape: vec![rows as u64, mlp.classes() as u64],
                data: probabilities,
            },
            Output {
                name: "label",
                datatype: "INT64",
                shape: vec![rows as u64],
                data: labels,
            },
        ),
    };
    serde_json::to_vec(&response).map_err(|err| (500, err.to_string()))
}

#[cfg(target_arch = "wasm32")]
mod component {
    use wasip2::http::types::{
        Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
        ResponseOutparam,
    };
    use wasip2::io::streams::StreamError;

    struct Digits;

    wasip2::http::proxy::export!(Digits);

    impl wasip2::exports::http::incoming_handler::Guest for Digits {
        fn handle(request: IncomingRequest, out: ResponseOutparam) {
            let path = request.path_with_query().unwrap_or_default();
            let (status, body) =
                if !matches!(request.method(), Method::Post) || path != "/v2/models/digits/infer" {
                    (404, br#"{"error":"not found"}"#.to_vec())
                } else {
                    match read_body(request).and_then(|body| super::infer(&body)) {
                        Ok(body) => (200, body),
                        Err((status, why)) => (status, error_body(&why)),
                    }
                };
            let headers =
                Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())])
                    .expect("a valid header");
            let response = OutgoingResponse::new(headers);
            response.set_status_code(status).expect("a valid status");
            let outgoing = response.body().expect("the response body");
            ResponseOutparam::set(out, Ok(response));
            let stream = outgoing.write().expect("the response stream");
            // One host call per 4096 bytes, the most a blocking write takes.
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .expect("writing the response");
            }
            drop(stream);
            OutgoingBody::finish(outgoing, None).expect("finishing the response");
        }
    }

    fn read_body(request: IncomingRequest) -> Result<Vec<u8>, (u16, String)> {
        let incoming = request
            .consume()
            .map_err(|()| (400, "no request body".to_string()))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| (400, "no request body".to_string()))?;
            // Large reads: std's read_to_end would probe with small ones,
            // each a host call.
            loop {
                match stream.blocking_read(64 << 10) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(err)) => {
                        return Err((400, format!("reading the body: {}", err.to_debug_string())));
                    }
                }
            }
        }
        IncomingBody::finish(incoming);
        Ok(body)
    }

    fn error_body(why: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "error": why })).expect("JSON")
    }
}
