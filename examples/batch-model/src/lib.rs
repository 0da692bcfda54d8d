//! A test fixture for dynamic batching: rows in, rows out, a way to see how
//! a row was batched, and marker values that break the whole call, so the
//! host's promise (one bad request never fails its batch-mates) can be
//! tested.
//!
//! Input `x`: FP32 `[-1, -1]` (rows of any one length). Outputs, one row
//! per input row:
//! - `y` FP32 `[-1, -1]`: `2 × x`;
//! - `batch` INT64 `[-1]`: the rows of the call that computed the row, so
//!   a test can tell a batched answer from one computed alone;
//! - `label` BYTES `[-1]`: `"row <x[0]>"`, to test splitting BYTES outputs.
//!
//! A row whose first value is a marker fails the call it is in:
//!
//! | `x[0]` | does |
//! |---:|---|
//! | -1001 | panics (a trap) |
//! | -1002 | spins forever (the deadline) |
//! | -1003 | allocates until the memory cap stops it |
//! | -1004 | returns `invalid-input` |
//! | -1005 | returns one row too few of `y` (outputs that cannot be split) |
//!
//! The request parameter `work_us` makes each call compute for that many
//! microseconds before it answers, whatever its rows: a model with a fixed
//! cost per call, where batching pays most.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};

struct Batch;

impl Model for Batch {
    fn metadata() -> Metadata {
        Metadata {
            name: "batch".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("x", Datatype::Fp32, &[-1, -1])],
            outputs: vec![
                TensorSpec::new("y", Datatype::Fp32, &[-1, -1]),
                TensorSpec::new("batch", Datatype::Int64, &[-1]),
                TensorSpec::new("label", Datatype::Bytes, &[-1]),
            ],
        }
    }

    fn predict(
        inputs: Vec<Tensor>,
        parameters: Option<Vec<(String, String)>>,
    ) -> Result<Vec<Tensor>, Error> {
        let [x] = wasm_host_guest::inputs(inputs)?;
        let (rows, columns) = match x.shape[..] {
            [rows, columns] if columns > 0 => (rows as usize, columns as usize),
            _ => return Err(Error::invalid_input("x: expected [rows, columns > 0]")),
        };
        let x = x.to_f32()?;
        if let Some(us) = wasm_host_guest::parameter(&parameters, "work_us") {
            let us: u64 = us
                .parse()
                .map_err(|_| Error::invalid_input(format!("work_us: {us} is not a number")))?;
            work(Duration::from_micros(us));
        }
        let mut short = false;
        for row in x.chunks_exact(columns) {
            match row[0] {
                -1001.0 => panic!("batch-model: a row asked to panic"),
                -1002.0 => spin(),
                -1003.0 => exhaust_memory(),
                -1004.0 => return Err(Error::invalid_input("batch-model: a row is invalid")),
                -1005.0 => short = true,
                _ => {}
            }
        }
        let y: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
        let y_rows = if short { rows - 1 } else { rows };
        let labels: Vec<String> = x
            .chunks_exact(columns)
            .map(|row| format!("row {}", row[0]))
            .collect();
        // In the order `metadata()` declares them: y, batch, label.
        Ok(vec![
            Tensor::from_f32(vec![y_rows as u64, columns as u64], &y[..y_rows * columns]),
            Tensor::from_i64(vec![rows as u64], &vec![rows as i64; rows]),
            Tensor {
                datatype: Datatype::Bytes,
                shape: vec![rows as u64],
                data: bytes_elements(&labels),
            },
        ])
    }
}

/// `BYTES` data: each element's length (u32, little-endian), then its bytes.
fn bytes_elements(elements: &[String]) -> Vec<u8> {
    let mut data = Vec::new();
    for element in elements {
        data.extend_from_slice(&(element.len() as u32).to_le_bytes());
        data.extend_from_slice(element.as_bytes());
    }
    data
}

/// Computes for `how_long`: a fixed cost per call.
fn work(how_long: Duration) {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < how_long {
        for _ in 0..100 {
            n = black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    black_box(n);
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 16 << 20];
        block[0] = 1;
        held.push(black_box(block));
    }
}

wasm_host_guest::export_model!(Batch);
