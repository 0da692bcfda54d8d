//! `wasm-host plan`: the tutorial's own question. How many instances does
//! this model need to sustain R requests per second on this machine?
//!
//! Little's law: requests in flight = arrival rate × time in the system. At
//! `rate` requests per second, each taking `latency`, `rate × latency`
//! requests are in flight, each holding an instance. That is the answer
//! unless the cores run out first: a model that computes for `cpu` seconds a
//! call can run at most `cores / cpu` calls per second however many instances
//! there are. And never fewer instances than cores: an instance runs on one
//! core at a time, and an idle one costs only tens of KiB.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Failure;
use crate::commands::cli::PlanArgs;
use crate::core::protocol;
use crate::model::Model;
use crate::runtime::contract::{Metadata, Tensor};
use crate::runtime::instance::Instance;

const MEMORY_LIMIT: usize = 256 << 20;

/// The least time CPU use is measured over, so that the average is steady.
const CPU_WINDOW: Duration = Duration::from_secs(1);

pub async fn run(args: PlanArgs) -> Result<(), Failure> {
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.samples == 0 {
        return Err(Failure::new(
            2,
            "--rate must be a positive number of requests per second and --samples at least 1",
        ));
    }
    let (engine, linker) = super::tool_engine(MEMORY_LIMIT)?;
    let cache = args.code.compile_cache();
    let model = Model::load(&engine, &linker, &args.model, MEMORY_LIMIT, &cache)
        .await
        .map_err(super::model_failure)?;
    let model = Arc::new(model);
    let inputs = match &args.input {
        Some(json) => protocol::decode_predict(json.as_bytes(), &model.metadata)
            .map_err(|err| Failure::new(2, format!("--input: {}", err.message)))?
            .inputs
            .to_vec(),
        None => zeros(&model.metadata),
    };
    let mut instance = Instance::new(&engine, &model.pre, 1, MEMORY_LIMIT, None)
        .await
        .map_err(|err| Failure::new(Failure::MODEL, crate::runtime::root_cause(&err)))?;

    timed_call(&mut instance, &inputs).await?; // warm-up: first-touch faults, lazy statics
    // Latency: exactly the `--samples` calls the report names.
    let mut latencies = Vec::with_capacity(args.samples as usize);
    for _ in 0..args.samples {
        latencies.push(timed_call(&mut instance, &inputs).await?);
    }
    latencies.sort();
    let latency = latencies[latencies.len() / 2];
    // CPU time per call: the average over a separate loop of at least a
    // second, steadier than any one call.
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut cpu_calls: u32 = 0;
    while cpu_calls == 0 || started.elapsed() < CPU_WINDOW {
        timed_call(&mut instance, &inputs).await?;
        cpu_calls += 1;
    }
    let cpu_window = started.elapsed();
    let cpu = ((process_cpu() - cpu_before) / cpu_calls).min(latency);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let in_flight = args.rate * latency.as_secs_f64();
    let needed = in_flight.ceil().max(1.0) as u64;
    let instances = needed.max(cores as u64);
    let core_limit = cores as f64 / cpu.as_secs_f64().max(1e-9);
    let meta = &model.metadata;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model:     {} v{} ({})",
        meta.name,
        meta.version,
        args.model.display()
    );
    let _ = writeln!(
        out,
        "latency:   {latency:.1?} median of {} timed calls (fastest {:.1?}, slowest {:.1?})",
        latencies.len(),
        latencies[0],
        latencies[latencies.len() - 1]
    );
    let _ = writeln!(
        out,
        "cpu:       {cpu:.1?} per call, over {cpu_calls} more calls in {cpu_window:.1?}"
    );
    let _ = writeln!(out, "cores:     {cores}");
    let _ = writeln!(
        out,
        "in flight: {:.1} requests at {} req/s (Little's law: {} req/s × {:.3} s)",
        in_flight,
        args.rate,
        args.rate,
        latency.as_secs_f64()
    );
    let per_core = format!(
        "at least one instance per core ({cores}): an instance runs on one core at a time, and \
         an idle one costs only tens of KiB"
    );
    if args.rate > core_limit {
        let _ = writeln!(
            out,
            "limit:     the cores: {cores} cores sustain about {core_limit:.0} req/s of this model; \
             more instances will not help, add machines"
        );
        let per_machine = ((core_limit * latency.as_secs_f64()).ceil() as u64).max(cores as u64);
        let _ = writeln!(
            out,
            "plan:      run {per_machine} instances per machine on ~{} machines ({per_core})",
            (args.rate / core_limit).ceil() as u64
        );
    } else {
        let _ = writeln!(
            out,
            "limit:     the instance count (the cores could sustain about {core_limit:.0} req/s; \
             guest time only, HTTP adds tens of µs per request)"
        );
        if instances > needed {
            let _ = writeln!(out, "why:       {needed} would carry the load; {per_core}");
        }
        let _ = writeln!(
            out,
            "plan:      wasm-host --instances {instances} {}",
            args.model.display()
        );
    }
    super::print(&out)?;
    Ok(())
}

async fn timed_call(instance: &mut Instance, inputs: &[Tensor]) -> Result<Duration, Failure> {
    let started = Instant::now();
    instance
        .predict(
            inputs,
            &[],
            std::time::Instant::now(),
            Duration::from_secs(600),
        )
        .await
        .map_err(|fault| Failure::new(Failure::MODEL, format!("the model failed: {fault}")))?;
    Ok(started.elapsed())
}

/// A request of zeros matching the model's inputs, any-size dimensions as 1.
fn zeros(metadata: &Metadata) -> Vec<Tensor> {
    metadata
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<u64> = spec.shape.iter().map(|&d| d.max(1) as u64).collect();
            let count: u64 = shape.iter().product();
            // A BYTES element of zero length is its 4-byte length prefix.
            let size = spec.datatype.element_size().unwrap_or(4);
            Tensor {
                datatype: spec.datatype,
                shape,
                data: vec![0; count as usize * size],
            }
        })
        .collect()
}

/// CPU time this process has used (every thread, user plus system), to
/// the nanosecond: /proc's 10 ms ticks read zero for a model that sleeps.
fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill in.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
