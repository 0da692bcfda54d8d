//! Micro-benchmarks of the costs wasm-host's speed rests on, through the
//! library's public API: a guest `predict` against the same math run natively,
//! instantiation, and replacing an instance after a trap.
//!
//! `cargo bench -p wasm-host --bench micro` (after `make guests`). No
//! criterion, to keep the build lean: each figure is a plain timing loop,
//! reported as the median and the 10th/90th percentiles of its samples.
//! `MICRO_SAMPLES` sets the number of samples (default 201); `MICRO_TSV=FILE`
//! also writes the results as tab-separated values for `bench/run.sh`;
//! `MICRO_ONLY=echo` runs only the echo model's calls, for as long as
//! `MICRO_SAMPLES` says, which is what to profile the call boundary with
//! (`perf record -- target/release/deps/micro-*`).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasm_host::model::{self, Model};
use wasm_host::runtime::cache::CompileCache;
use wasm_host::runtime::contract::{Datatype, Tensor};
use wasm_host::runtime::engine;
use wasm_host::runtime::instance::Instance;

/// The digits model's math, natively: the same crate the guest is built
/// from, so the comparison is the same code on both sides of the sandbox.
use guest_model::mlp;

const MEMORY_LIMIT: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Calls per sample for sub-microsecond work, so each sample is well above
/// the clock's resolution.
const CALLS_PER_SAMPLE: u32 = 200;

fn main() {
    let samples: usize = std::env::var("MICRO_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(201);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let rows = runtime.block_on(run(samples));

    println!();
    println!(
        "{:<52} {:>10} {:>10} {:>10}",
        "micro-benchmark", "median", "p10", "p90"
    );
    for row in &rows {
        println!(
            "{:<52} {:>10} {:>10} {:>10}",
            row.name,
            show(row.median),
            show(row.p10),
            show(row.p90)
        );
    }
    let median = |name: &str| Some(rows.iter().find(|r| r.name == name)?.median);
    if let (Some(guest), Some(native), Some(math)) = (
        median(GUEST_PREDICT),
        median(NATIVE_PREDICT),
        median(NATIVE_MATH),
    ) {
        let guest = guest.as_secs_f64();
        println!();
        println!(
            "guest predict / native predict (same work) = {:.2}x",
            guest / native.as_secs_f64()
        );
        println!(
            "guest predict / native math only           = {:.2}x",
            guest / math.as_secs_f64()
        );
    }

    if let Ok(path) = std::env::var("MICRO_TSV") {
        let mut tsv = String::from("name\tmedian_ns\tp10_ns\tp90_ns\n");
        for row in &rows {
            tsv += &format!(
                "{}\t{}\t{}\t{}\n",
                row.name,
                row.median.as_nanos(),
                row.p10.as_nanos(),
                row.p90.as_nanos()
            );
        }
        std::fs::write(&path, tsv).unwrap_or_else(|err| panic!("cannot write {path}: {err}"));
    }
}

const GUEST_PREDICT: &str = "predict, digits, 1 row: in the guest";
const NATIVE_PREDICT: &str = "predict, digits, 1 row: native (same work)";
const ECHO_PREDICT: &str = "predict, echo, 64 floats: in the guest (call cost)";
const NATIVE_MATH: &str = "predict, digits, 1 row: native (math only)";

struct Row {
    name: &'static str,
    median: Duration,
    p10: Duration,
    p90: Duration,
}

impl Row {
    /// Summarises samples, each the time of `per_sample` operations.
    fn new(name: &'static str, mut samples: Vec<Duration>, per_sample: u32) -> Row {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] / per_sample;
        Row {
            name,
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
        }
    }
}

fn show(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{:.2} µs", ns as f64 / 1e3)
    } else if ns < 10_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// A component built by `make guests`; `MICRO_WASM_DIR` points elsewhere
/// (for example at guests built with other flags).
fn component(file: &str) -> PathBuf {
    let dir = std::env::var_os("MICRO_WASM_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"),
        PathBuf::from,
    );
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: run `make guests` first",
        path.display()
    );
    path
}

/// A tensor; the contract names it by its position in the model's metadata.
fn tensor(datatype: Datatype, shape: Vec<u64>, data: Vec<u8>) -> Tensor {
    Tensor {
        datatype,
        shape,
        data,
    }
}

/// Row 0 of the reference inputs, the row every benchmark of the project sends.
fn digits_row() -> Vec<f32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-model/weights/digits_reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let reference: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    reference["inputs"][0]
        .as_array()
        .expect("inputs[0] is an array")
        .iter()
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect()
}

/// What the guest's `predict` does with its tensors, natively: decode `x`,
/// run the MLP, encode `probabilities` and `label`.
fn native_predict(mlp: &mlp::Mlp, inputs: &[Tensor]) -> Vec<Tensor> {
    let x: Vec<f32> = inputs[0]
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let rows = x.len() / mlp.input_size();
    let mut probabilities = vec![0.0; rows * mlp.classes()];
    let mut labels = vec![0; rows];
    mlp.predict_batch(&x, &mut probabilities, &mut labels);
    vec![
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
    ]
}

async fn run(samples: usize) -> Vec<Row> {
    let (engine, allocator, _) = engine::build(16, MEMORY_LIMIT).expect("an engine");
    engine::start_epoch_ticker(&engine);
    eprintln!(
        "micro: {allocator}, memory limit {} MiB",
        MEMORY_LIMIT >> 20
    );
    let linker = model::linker(&engine).expect("a linker");
    let load = |file: &str| {
        let path = component(file);
        let (engine, linker) = (&engine, &linker);
        async move {
            Arc::new(
                Model::load(
                    engine,
                    linker,
                    &path,
                    MEMORY_LIMIT,
                    &CompileCache::new(None),
                )
                .await
                .unwrap_or_else(|err| panic!("cannot load {}: {err:#}", path.display())),
            )
        }
    };
    let mut rows = Vec::new();
    let row = digits_row();
    let inputs = vec![tensor(
        Datatype::Fp32,
        vec![1, row.len() as u64],
        row.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )];
    let echo = load("echo_model.wasm").await;
    if std::env::var("MICRO_ONLY").is_ok_and(|only| only == "echo") {
        let mut instance = Instance::new(&engine, &echo.pre, 1, MEMORY_LIMIT, None)
            .await
            .expect("an echo instance");
        let times = time_predict(&mut instance, &inputs, samples).await;
        rows.push(Row::new(ECHO_PREDICT, times, CALLS_PER_SAMPLE));
        return rows;
    }
    let digits = load("guest_model.wasm").await;
    let fault = load("fault_model.wasm").await;
    let big = load("big_model.wasm").await;

    // predict: the guest against the same code natively, on one row.
    let mlp = mlp::Mlp::embedded();
    let mut instance = Instance::new(&engine, &digits.pre, 1, MEMORY_LIMIT, None)
        .await
        .expect("a digits instance");
    let guest = instance
        .predict(&inputs, &[], Instant::now(), TIMEOUT)
        .await
        .expect("predict");
    let same = |a: &[Tensor], b: &[Tensor]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(a, b)| {
                (a.datatype == b.datatype) && (a.shape == b.shape) && (a.data == b.data)
            })
    };
    assert!(
        same(&guest, &native_predict(mlp, &inputs)),
        "the guest and the native code disagree"
    );
    let times = time_predict(&mut instance, &inputs, samples).await;
    rows.push(Row::new(GUEST_PREDICT, times, CALLS_PER_SAMPLE));
    drop(instance);

    // The fixed cost of a guest call: the smallest model, the same 64 floats.
    let mut instance = Instance::new(&engine, &echo.pre, 1, MEMORY_LIMIT, None)
        .await
        .expect("an echo instance");
    let times = time_predict(&mut instance, &inputs, samples).await;
    rows.push(Row::new(ECHO_PREDICT, times, CALLS_PER_SAMPLE));
    drop(instance);

    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        for _ in 0..CALLS_PER_SAMPLE {
            black_box(native_predict(mlp, black_box(&inputs)));
        }
        times.push(started.elapsed());
    }
    rows.push(Row::new(NATIVE_PREDICT, times, CALLS_PER_SAMPLE));

    let mut times = Vec::with_capacity(samples);
    let (mut probabilities, mut label) = (vec![0.0; mlp.classes()], [0]);
    for _ in 0..samples {
        let started = Instant::now();
        for _ in 0..CALLS_PER_SAMPLE {
            mlp.predict_batch(black_box(&row), &mut probabilities, &mut label);
            black_box((&probabilities, &label));
        }
        times.push(started.elapsed());
    }
    rows.push(Row::new(NATIVE_MATH, times, CALLS_PER_SAMPLE));

    // Instantiation alone, from the pre-instance and the pool's slots; the
    // drop is outside the timed part.
    for (name, model) in [
        ("instantiate, digits (130 KiB component)", &digits),
        ("instantiate, big (16 MiB of weights)", &big),
    ] {
        let mut times = Vec::with_capacity(samples);
        for id in 0..samples {
            let started = Instant::now();
            let instance = Instance::new(&engine, &model.pre, id as u64, MEMORY_LIMIT, None)
                .await
                .expect("an instance");
            times.push(started.elapsed());
            drop(black_box(instance));
        }
        rows.push(Row::new(name, times, 1));
    }

    // A trap, then what the pool does about it: drop the poisoned instance
    // and instantiate a fresh one in its slot.
    let panic = vec![tensor(
        Datatype::Int64,
        vec![2],
        [1i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
    )];
    let mut instance = Instance::new(&engine, &fault.pre, 0, MEMORY_LIMIT, None)
        .await
        .expect("a fault instance");
    let (mut trap_times, mut drop_times, mut replace_times) = (Vec::new(), Vec::new(), Vec::new());
    for id in 1..=samples as u64 {
        let started = Instant::now();
        let trap = instance
            .predict(&panic, &[], Instant::now(), TIMEOUT)
            .await
            .unwrap_err();
        trap_times.push(started.elapsed());
        assert!(trap.poisons_instance(), "kind 1 traps: {trap}");

        let started = Instant::now();
        drop(instance);
        drop_times.push(started.elapsed());
        instance = Instance::new(&engine, &fault.pre, id, MEMORY_LIMIT, None)
            .await
            .expect("a replacement");
        replace_times.push(started.elapsed());
    }
    rows.push(Row::new(
        "trapping call (guest panic → Trap)",
        trap_times,
        1,
    ));
    rows.push(Row::new(
        "drop a trapped instance (its slot is reset)",
        drop_times,
        1,
    ));
    rows.push(Row::new(
        "replace after a trap (drop + instantiate)",
        replace_times,
        1,
    ));
    rows
}

/// `samples` timings of `CALLS_PER_SAMPLE` guest calls each.
async fn time_predict(instance: &mut Instance, inputs: &[Tensor], samples: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        for _ in 0..CALLS_PER_SAMPLE {
            black_box(
                instance
                    .predict(black_box(inputs), &[], Instant::now(), TIMEOUT)
                    .await
                    .unwrap(),
            );
        }
        times.push(started.elapsed());
    }
    times
}
