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

use crate::contract::{ModelError, Predictor, Tensor};
use crate::model::Model;
use crate::escape;
use crate::sandbox::{GuestState, OUTPUT_LIMIT, OUTPUT_LINES};

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

pub struct Instance {
    pub id: InstanceId,
    /// The model this instance was made from: after a reload, instances of
    /// the old model finish their request and retire.
    pub model: Arc<Model>,
    store: Store<GuestState>,
    bindings: Predictor,
    /// Requests served, for `--max-requests` recycling.
    pub served: u64,
    recycle_after: Option<u64>,
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

/// A store with the sandbox, the memory cap and the deadline check installed,
/// its deadline set for setting up.
pub fn new_store(engine: &Engine, memory_limit: usize) -> Store<GuestState> {
    let mut store = Store::new(engine, GuestState::new(memory_limit));
    store.data_mut().deadline = Instant::now() + SETUP_DEADLINE;
    store.limiter(|state| &mut state.memory);
    store.epoch_deadline_callback(|store| {
        if Instant::now() >= store.data().deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            // tokio's yield_now, not wasmtime's plain Yield: a task that wakes
            // itself goes to tokio's LIFO slot and runs again at once, which
            // let two spinning guests starve `/health` for 600 ms (a test).
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
    store.set_epoch_deadline(1);
    store
}

impl Instance {
    pub async fn new(
        engine: &Engine,
        model: Arc<Model>,
        id: InstanceId,
        memory_limit: usize,
        recycle_after: Option<u64>,
    ) -> wasmtime::Result<Instance> {
        let mut store = new_store(engine, memory_limit);
        let bindings = set_up(model.pre.instantiate_async(&mut store)).await?;
        Ok(Instance {
            id,
            model,
            store,
            bindings,
            served: 0,
            recycle_after,
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

    /// Calls the guest's `predict`. The deadline is enforced twice: by the epoch
    /// callback while the guest computes, and by a timer while it waits in a
    /// host call (a WASI sleep), where no epoch check runs.
    pub async fn predict(
        &mut self,
        inputs: &[Tensor],
        parameters: &[(String, String)],
        timeout: Duration,
    ) -> Result<Vec<Tensor>, Fault> {
        self.served += 1;
        // The cap's flag is about this call: a refused grow that an earlier
        // call survived must not turn this call's trap into a 507.
        self.store.data_mut().memory.hit = false;
        let deadline = Instant::now() + timeout;
        self.store.data_mut().deadline = deadline;
        self.store.set_epoch_deadline(1);
        let result = {
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
            None => crate::model::root_cause(&err),
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
