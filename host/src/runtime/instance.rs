//! One instance of a model: its own store, memory and WASI context, and the
//! only place a guest is called.
//!
//! Guest calls run as async calls on the tokio runtime rather than on a thread
//! per instance: the HTTP task that owns a request calls the guest itself, so
//! there is no hand-off between threads per request, and a guest that sleeps
//! on a WASI clock waits as a suspended future. Compute-bound guests yield to
//! the runtime on every epoch tick, which keeps the accept loop and `/health`
//! responsive with every instance busy.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use crate::core::error::{self, Kind};
use crate::runtime::contract::{ModelError, Predictor, PredictorPre, Tensor};
use crate::runtime::engine::EPOCH_TICK;
use crate::runtime::escape;
use crate::runtime::sandbox::{GuestState, OUTPUT_LIMIT, OUTPUT_LINES};

/// Names one incarnation of an instance, like a worker's PID: a replacement
/// gets a new id.
pub type InstanceId = u64;

/// Why a call did not produce outputs.
#[derive(Debug)]
pub enum Fault {
    /// The model rejected its input (`invalid-input`); the instance is fine.
    InvalidInput(String),
    /// The model reported an error of its own (`internal`); the instance is fine.
    Failed(String),
    /// The guest trapped (panic, `unreachable`, stack overflow, ...).
    Trap(String),
    /// The call ran past its deadline.
    Timeout(Duration),
    /// The guest tried to grow its memory past the cap.
    MemoryCap(usize),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::InvalidInput(why) => write!(f, "invalid input: {why}"),
            Fault::Failed(why) => write!(f, "model error: {why}"),
            Fault::Trap(why) => write!(f, "trap: {why}"),
            Fault::Timeout(limit) => write!(f, "ran past its deadline of {limit:?}"),
            Fault::MemoryCap(limit) => write!(f, "hit its memory cap of {} MiB", limit >> 20),
        }
    }
}

impl Fault {
    /// The metrics label for a fault that replaces its instance.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::InvalidInput(_) => "bad_input",
            Fault::Failed(_) => "model_error",
            Fault::Trap(_) => "trap",
            Fault::Timeout(_) => "timeout",
            Fault::MemoryCap(_) => "memory_cap",
        }
    }

    /// After a trap, a timeout or a failed grow the store is poisoned (and a
    /// Rust guest's heap may be inconsistent): the instance must be replaced.
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, Fault::InvalidInput(_) | Fault::Failed(_))
    }
}

impl From<Fault> for error::Error {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::InvalidInput(why) => {
                error::Error::bad_input(format!("the model rejected the input: {why}"))
            }
            Fault::Failed(why) => error::Error::model_failed(format!("the model failed: {why}")),
            Fault::Trap(why) => error::Error::new(
                Kind::Trap,
                format!("the model trapped: {why}; its instance was replaced, retrying is safe"),
            ),
            Fault::Timeout(limit) => error::Error::new(
                Kind::DeadlineExceeded,
                format!(
                    "the model ran past its deadline of {limit:?} and was stopped; \
                     raise --timeout if it needs longer"
                ),
            ),
            Fault::MemoryCap(limit) => error::Error::new(
                Kind::MemoryCap,
                format!(
                    "the model hit its memory cap of {} MiB and was stopped; \
                     send a smaller input or raise --memory-limit",
                    limit >> 20
                ),
            ),
        }
    }
}

pub struct Instance {
    pub id: InstanceId,
    store: Store<GuestState>,
    bindings: Predictor,
    /// Requests served, for `--max-requests` recycling.
    pub served: u64,
    recycle_after: Option<u64>,
    /// The linear memory last reported by [`Instance::memory_changed`].
    memory_reported: Option<usize>,
}

/// How long a guest may take to start (its start functions) or to answer
/// `metadata()`; generous, since it is not on any request's path.
pub const SETUP_DEADLINE: Duration = Duration::from_secs(10);

/// Runs a set-up step (instantiation, `metadata()`) within [`SETUP_DEADLINE`]
/// of wall-clock time. The epoch check stops a guest that computes too long;
/// only this stops one that sleeps on a WASI clock, where no epoch check runs.
pub async fn set_up<T>(
    step: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    match tokio::time::timeout(SETUP_DEADLINE, step).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::msg(format!(
            "it did not finish within the set-up deadline of {SETUP_DEADLINE:?}"
        ))),
    }
}

/// What a guest does at an epoch tick.
#[derive(Debug, PartialEq, Eq)]
enum Tick {
    /// Past its deadline, having run since it last got a thread: stop it.
    Stop,
    /// Past its deadline, but it has barely run since it got its thread
    /// back: let it run one more tick before judging it.
    Run,
    /// Within its deadline: yield, so other requests get the thread.
    Yield,
}

/// The deadline rule. A guest that yields at a tick for fairness waits in
/// the runtime's queue, and on a busy host that wait can outlast a short
/// `--timeout` (tokio wakes yielded tasks only when a worker parks or every
/// 61 polls). Judged on resuming, a request that needed microseconds would
/// get a 504 for time it spent waiting for the host: that was the 1 good
/// request in 16,000 that timed out under poison traffic and signal storms.
/// So a guest past its deadline is stopped only once it has had half a tick
/// of its own since it last got a thread back; one that really runs too long
/// is stopped at most one tick late.
fn tick(now: Instant, deadline: Instant, resumed: Instant) -> Tick {
    if now < deadline {
        Tick::Yield
    } else if now.duration_since(resumed) >= EPOCH_TICK / 2 {
        Tick::Stop
    } else {
        Tick::Run
    }
}

/// A store with the sandbox, the memory cap and the deadline check installed,
/// its deadline set for setting up.
pub fn new_store(engine: &Engine, memory_limit: usize) -> Store<GuestState> {
    let mut store = Store::new(engine, GuestState::new(memory_limit));
    store.data_mut().deadline = Instant::now() + SETUP_DEADLINE;
    store.limiter(|state| &mut state.memory);
    store.epoch_deadline_callback(|store| {
        let state = store.data();
        match tick(Instant::now(), state.deadline, state.resumed.get()) {
            Tick::Stop => Ok(UpdateDeadline::Interrupt),
            Tick::Run => Ok(UpdateDeadline::Continue(1)),
            Tick::Yield => {
                let resumed = Arc::clone(&state.resumed);
                // tokio's yield_now, not wasmtime's plain Yield: a task that
                // wakes itself goes to tokio's LIFO slot and runs again at
                // once, which let two spinning guests starve `/health` for
                // 600 ms (a test).
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(async move {
                        tokio::task::yield_now().await;
                        resumed.set(Instant::now());
                    }),
                ))
            }
        }
    });
    store.set_epoch_deadline(1);
    store
}

impl Instance {
    pub async fn new(
        engine: &Engine,
        pre: &PredictorPre<GuestState>,
        id: InstanceId,
        memory_limit: usize,
        recycle_after: Option<u64>,
    ) -> wasmtime::Result<Instance> {
        let mut store = new_store(engine, memory_limit);
        let bindings = set_up(pre.instantiate_async(&mut store)).await?;
        Ok(Instance {
            id,
            store,
            bindings,
            served: 0,
            recycle_after,
            memory_reported: None,
        })
    }

    /// Whether `--max-requests` says this instance has served enough.
    pub fn recycle_due(&self) -> bool {
        self.recycle_after.is_some_and(|limit| self.served >= limit)
    }

    /// Linear memory the instance holds, in bytes.
    pub fn memory_in_use(&self) -> usize {
        self.store.data().memory.in_use()
    }

    /// [`Instance::memory_in_use`], if it changed since the last time this
    /// returned it (always, the first time).
    pub fn memory_changed(&mut self) -> Option<usize> {
        let now = self.memory_in_use();
        (self.memory_reported != Some(now)).then(|| {
            self.memory_reported = Some(now);
            now
        })
    }

    /// Calls the guest's `predict`, starting `now` (the caller's reading of
    /// the clock, shared with its metrics). The deadline is enforced twice: by the epoch
    /// callback while the guest computes, and by a timer while it waits in a
    /// host call (a WASI sleep), where no epoch check runs. `inputs` follow
    /// the metadata's order; no parameters go over as `none`, which costs the
    /// guest no allocation (an empty list would cost one).
    pub async fn predict(
        &mut self,
        inputs: &[Tensor],
        parameters: &[(String, String)],
        now: Instant,
        timeout: Duration,
    ) -> Result<Vec<Tensor>, Fault> {
        self.served += 1;
        // The cap's flag is about this call: a refused grow that an earlier
        // call survived must not turn this call's trap into a 507.
        self.store.data_mut().memory.hit = false;
        // Settings are bounded (a week at most), but a deadline is never
        // allowed to overflow into a panic.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
        self.store.data_mut().deadline = deadline;
        self.store.data().resumed.set(now);
        self.store.set_epoch_deadline(1);
        let result = {
            let parameters = (!parameters.is_empty()).then_some(parameters);
            let call = self.bindings.wasm_host_model_model().call_predict(
                &mut self.store,
                inputs,
                parameters,
            );
            let mut call = std::pin::pin!(call);
            // Most calls finish in their first poll: only a call that yields
            // (an epoch tick, a WASI wait) gets a timer. The profile showed
            // the timer wheel's insert and removal on every request otherwise.
            let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(result) => Ok(result),
                Poll::Pending => {
                    // The guest yielded for the runtime's sake (an epoch tick):
                    // give the thread back before polling it again.
                    tokio::task::yield_now().await;
                    tokio::time::timeout_at(deadline.into(), call).await
                }
            }
        };
        let stderr = self.log_guest_output();
        match result {
            Err(_elapsed) => Err(Fault::Timeout(timeout)),
            Ok(Ok(Ok(outputs))) => Ok(outputs),
            Ok(Ok(Err(ModelError::InvalidInput(why)))) => Err(Fault::InvalidInput(why)),
            Ok(Ok(Err(ModelError::Internal(why)))) => Err(Fault::Failed(why)),
            Ok(Err(err)) => Err(self.classify(err, timeout, stderr)),
        }
    }

    fn classify(&self, err: wasmtime::Error, timeout: Duration, stderr: Option<String>) -> Fault {
        let memory = &self.store.data().memory;
        if memory.hit {
            return Fault::MemoryCap(memory.limit);
        }
        let cause = match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => return Fault::Timeout(timeout),
            Some(trap) => trap.to_string(),
            None => super::root_cause(&err),
        };
        Fault::Trap(match stderr.as_deref().and_then(panic_message) {
            Some(message) => format!("{cause} ({message})"),
            None => cause,
        })
    }

    /// Moves what the guest printed during the call into the host log, tagged
    /// with its id, escaped, and bounded by [`OUTPUT_LIMIT`] bytes and
    /// [`OUTPUT_LINES`] lines per stream; returns its stderr for a trap message.
    fn log_guest_output(&self) -> Option<String> {
        let data = self.store.data();
        let mut stderr = None;
        for (stream, output) in [("stdout", &data.stdout), ("stderr", &data.stderr)] {
            let Some((text, dropped_bytes)) = output.take() else {
                continue;
            };
            let mut lines = text.lines().filter(|line| !line.trim().is_empty());
            for line in lines.by_ref().take(OUTPUT_LINES) {
                tracing::info!(target: "guest", instance = self.id, stream, "{}", escape::for_log(line));
            }
            let dropped_lines = lines.count();
            if dropped_bytes > 0 || dropped_lines > 0 {
                tracing::warn!(target: "guest", instance = self.id, stream,
                    "dropped {dropped_lines} lines and {dropped_bytes} bytes of guest output \
                     past the per-call limits ({OUTPUT_LINES} lines, {} KiB per stream)",
                    OUTPUT_LIMIT / 1024);
            }
            if stream == "stderr" {
                stderr = Some(text);
            }
        }
        stderr
    }
}

/// A Rust guest that panics prints "panicked at FILE:LINE:COL:" and the
/// message before it traps with `unreachable`; the message is worth more to a
/// user than the trap.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at ")?;
    let message: Vec<&str> = stderr[start..]
        .lines()
        .take_while(|line| !line.starts_with("note: "))
        .map(str::trim)
        .collect();
    let message: String = message.join(" ").chars().take(500).collect();
    Some(escape::for_log(&message).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_past_its_deadline_is_stopped_only_after_running_since_it_resumed() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Within the deadline: yield for fairness.
        assert_eq!(tick(at(50), at(100), at(0)), Tick::Yield);
        // Ran from 0 to 105 with a deadline of 100: stop.
        assert_eq!(tick(at(105), at(100), at(0)), Tick::Stop);
        // Yielded at 5, waited in the runtime's queue until 250, and the
        // tick fires at once on resuming: it has not run yet, let it.
        assert_eq!(tick(at(250), at(100), at(250)), Tick::Run);
        // One tick later it is still running: now it is its own time.
        assert_eq!(tick(at(255), at(100), at(250)), Tick::Stop);
    }
}
