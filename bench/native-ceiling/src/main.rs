//! The ceiling wasm-host is benchmarked against: the digits model served with
//! the same HTTP stack (hyper 1, HTTP/1.1 keep-alive, TCP_NODELAY, a tokio
//! multi-thread runtime) and the same JSON codec (`wasm_host::core::protocol`), but
//! with the model's math called natively (`guest_model::mlp`) instead of in a
//! WebAssembly instance. Whatever wasm-host is slower by is the price of the
//! sandbox and the pool.
//!
//! Serves `POST /predict` and `POST /v2/models/digits/infer` and nothing else;
//! every answer names instance 0. Usage: `native-ceiling --bind 127.0.0.1:8001`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use guest_model::mlp::Mlp;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasm_host::core::protocol::{
    check_outputs, decode_infer, decode_predict, encode_infer_response, encode_predict_response,
};
use wasm_host::runtime::contract::{Datatype, Metadata, Tensor, TensorSpec};

#[tokio::main]
async fn main() {
    let bind = parse_bind();
    let listener = TcpListener::bind(bind)
        .await
        .unwrap_or_else(|err| fail(&format!("cannot listen on {bind}: {err}")));
    let metadata = Arc::new(metadata(Mlp::embedded()));
    eprintln!("native-ceiling: listening on http://{bind}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let metadata = Arc::clone(&metadata);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let metadata = Arc::clone(&metadata);
                async move { Ok::<_, Infallible>(handle(&metadata, request).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The guest's metadata, word for word (guest-model/src/lib.rs).
fn metadata(mlp: &Mlp) -> Metadata {
    let spec = |name: &str, datatype, shape: &[i64]| TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    };
    Metadata {
        name: "digits".into(),
        version: "1".into(),
        inputs: vec![spec("x", Datatype::Fp32, &[-1, mlp.input_size() as i64])],
        outputs: vec![
            spec("probabilities", Datatype::Fp32, &[-1, mlp.classes() as i64]),
            spec("label", Datatype::Int64, &[-1]),
        ],
    }
}

async fn handle(metadata: &Metadata, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let infer = match (request.method(), request.uri().path()) {
        (&Method::POST, "/v2/models/digits/infer") => true,
        (&Method::POST, "/predict") => false,
        _ => return respond(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    };
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return respond(StatusCode::BAD_REQUEST, error_body(&err.to_string())),
    };
    // JSON only: the binary tensor extension (Inference-Header-Content-Length)
    // is not part of the benchmark.
    let decoded = if infer {
        decode_infer(&body, None, metadata)
    } else {
        decode_predict(&body, metadata)
    };
    let inference = match decoded {
        Ok(inference) => inference,
        Err(err) => return fail_with(err),
    };
    let outputs = match predict(&inference.inputs[0]) {
        Ok(outputs) => outputs,
        Err(why) => return respond(StatusCode::BAD_REQUEST, error_body(&why)),
    };
    // The host checks every guest output before encoding it; so does this.
    if let Err(why) = check_outputs(&outputs, metadata) {
        return respond(StatusCode::INTERNAL_SERVER_ERROR, error_body(&why));
    }
    let mut response = if infer {
        let encoded = match encode_infer_response(
            &metadata.name,
            &metadata.version,
            metadata,
            &inference,
            &outputs,
            usize::MAX,
        ) {
            Ok(encoded) => encoded,
            Err(err) => return fail_with(err),
        };
        let mut response = respond(StatusCode::OK, encoded.body);
        if let Some(len) = encoded.json_len {
            // The client asked for binary outputs: say where the JSON ends.
            let headers = response.headers_mut();
            headers.insert("inference-header-content-length", HeaderValue::from(len));
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        response
    } else {
        match encode_predict_response(metadata, &outputs, 0, usize::MAX) {
            Ok(body) => respond(StatusCode::OK, body),
            Err(err) => fail_with(err),
        }
    };
    response
        .headers_mut()
        .insert("x-instance-id", HeaderValue::from(0));
    response
}

/// What the guest's `predict` does, natively: decode `x`, run the MLP, encode
/// `probabilities` FP32 [rows, 10] and `label` INT64 [rows], in that order,
/// the metadata's.
fn predict(x: &Tensor) -> Result<Vec<Tensor>, String> {
    let mlp = Mlp::embedded();
    let cols = mlp.input_size();
    // The decoder checked the data against the shape and the metadata.
    if !matches!(x.shape[..], [_, c] if c == cols as u64) {
        return Err(format!(
            "x: expected shape [rows, {cols}], got {:?}",
            x.shape
        ));
    }
    let inputs: Vec<f32> = x
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let rows = inputs.len() / cols;
    let mut probabilities = vec![0.0; rows * mlp.classes()];
    let mut labels = vec![0; rows];
    mlp.predict_batch(&inputs, &mut probabilities, &mut labels);
    let tensor = |datatype, shape: Vec<u64>, data: Vec<u8>| Tensor {
        datatype,
        shape,
        data,
    };
    Ok(vec![
        tensor(
            Datatype::Fp32,
            vec![rows as u64, mlp.classes() as u64],
            probabilities.iter().flat_map(|p| p.to_le_bytes()).collect(),
        ),
        tensor(
            Datatype::Int64,
            vec![rows as u64],
            labels.iter().flat_map(|l| l.to_le_bytes()).collect(),
        ),
    ])
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_body(why: &str) -> Vec<u8> {
    let escaped = why.replace('\\', "\\\\").replace('"', "\\\"");
    format!(r#"{{"error":"{escaped}"}}"#).into_bytes()
}

fn parse_bind() -> SocketAddr {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => "127.0.0.1:8001".parse().unwrap(),
        [flag, addr] if flag == "--bind" => addr
            .parse()
            .unwrap_or_else(|err| fail(&format!("--bind {addr}: {err}"))),
        _ => fail("usage: native-ceiling [--bind ADDR]  (default 127.0.0.1:8001)"),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("native-ceiling: {message}");
    std::process::exit(2);
}

/// A protocol error as the host's HTTP edge answers it.
fn fail_with(err: wasm_host::core::error::Error) -> Response<Full<Bytes>> {
    let err = wasm_host::edge::http::error::ApiError::from(err);
    respond(err.status, err.body().into_bytes())
}
